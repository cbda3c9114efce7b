"""Decoding through the models' caches: the caches' set-up (`cache`), the forward-only pass
through the model's own layers (`layers`), sampling (`generate`) and beam search."""

from reformer.decoding.beam import beam_search  # noqa: F401
from reformer.decoding.sampling import Sampling, generate  # noqa: F401
