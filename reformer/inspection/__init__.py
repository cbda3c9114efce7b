"""A look inside attention, above the model: one layer's buckets and attention weights on
one input as the model's own forward pass computes them (`capture`), the sparse patterns
made explicit (`patterns`), arrays and pictures (`report`, `pictures`), the command's work
(`command`) and the duplication task's twin statistics (`duplication`)."""

from reformer.inspection.report import inspect_layer, write_inspection  # noqa: F401
