"""The model: the registry of attention types, `ModelConfig`, layers, the reversible stack,
the blocks every model is built from, and the models (`ReformerLM`, `ReformerEncoder`,
`ReformerEncoderDecoder`)."""

from reformer.model.model_config import ModelConfig  # noqa: F401
from reformer.model.models import (  # noqa: F401
    ReformerEncoder,
    ReformerEncoderDecoder,
    ReformerLM,
    init_params,
    make_model,
)
