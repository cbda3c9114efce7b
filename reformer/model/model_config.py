"""The model's frozen config (`ModelConfig`, from `config.model`) and the layer-naming
rule: layers repeat `model.attention_types`, and the parameters of pattern position `j`
live under `layers/<layer_name(j, type)>/{attention,[cross_attention,]feed_forward}`,
stacked over the repeats. One place for that name, for the models, decoding and checkpoint
conversion."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections

from reformer.config.legacy import migrate
from reformer.config.schema import MODEL

# In mixed precision the residual streams hold multiples of this (see `stream_spacing`).
STREAM_SPACING = 2.0**-16


# Fields of `ModelConfig` that are not config fields, with their defaults.
EXTRA_FIELDS = {
    # Decoding only: with automatic `n_buckets`, the LSH self- and cross-attention buckets
    # training used (`decoding.cache.with_training_length`); 0 = not resolved.
    "decode_n_buckets": 0,
    "cross_n_buckets": 0,
    # Which tower of an encoder-decoder this is ("encoder", "decoder"), "" for a whole
    # model. `kind` holds the model's kind in every tower.
    "tower": "",
}


class _ModelConfigMethods:
    """What `ModelConfig` derives from its fields."""

    @classmethod
    def from_config(cls, model: ml_collections.ConfigDict):
        """From `config.model` (legacy field names are migrated, `config.migrate`); the
        whole model (`tower` "")."""
        group = model.to_dict() if isinstance(model, ml_collections.ConfigDict) else dict(model)
        migrate({"model": group})
        fields = {}
        for name, field in cls._schema.items():
            value = group.get(name, field.default)
            fields[name] = tuple(value) if field.is_tuple else value
        return cls(**fields)

    def attention_type(self, layer: int) -> str:
        return self.attention_types[layer % len(self.attention_types)]

    @property
    def lsh_n_buckets(self) -> int:
        """`n_buckets`, or the product of `bucket_factors`; 0 = automatic."""
        return math.prod(self.bucket_factors) if self.bucket_factors else self.n_buckets

    @property
    def causal_attention(self) -> bool:
        """Whether self-attention is causal: the LM's and the decoder's `causal`; encoders
        (and the encoder tower of an encoder-decoder) are bidirectional."""
        return self.causal and self.kind in ("lm", "encoder_decoder") and self.tower != "encoder"

    @property
    def has_cross_attention(self) -> bool:
        """Whether the layers have a cross-attention half: an encoder-decoder's decoder."""
        return self.kind == "encoder_decoder" and self.tower != "encoder"

    def encoder(self):
        """The encoder tower of an encoder-decoder: bidirectional, with its own pattern and
        depth (`encoder_attention_types`, `n_encoder_layers`; empty or 0: the decoder's)."""
        return dataclasses.replace(
            self,
            tower="encoder",
            attention_types=self.encoder_attention_types or self.attention_types,
            n_layers=self.n_encoder_layers or self.n_layers,
        )

    def decoder(self):
        """The decoder tower of an encoder-decoder: causal self-attention, cross-attention
        (`cross_attention`), feed-forward."""
        return dataclasses.replace(self, tower="decoder")

    @property
    def n_streams(self) -> int:
        """Residual streams: two (reversible, two_stream) or one (standard)."""
        return 1 if self.residual == "standard" else 2

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def stream_spacing(self) -> float | None:
        """The fixed-point grid of the two residual streams (`reversible.on_grid`): 2^-16 in
        mixed precision, so the reversible backward pass reconstructs the inputs that the
        bfloat16 roundings saw, exactly; none in float32, whose reconstruction is exact to
        its last bits already, and none for the one stream of `standard`, which is never
        reconstructed."""
        if self.jnp_dtype == jnp.float32 or self.n_streams == 1:
            return None
        return STREAM_SPACING


def model_config_class(model_fields: dict) -> type:
    """A frozen dataclass of the schema's model fields (`model_fields`, name -> Field, with
    their defaults) and `EXTRA_FIELDS`, with the methods of `_ModelConfigMethods`."""
    cls = dataclasses.make_dataclass(
        "ModelConfig",
        [
            (name, type(f.default), dataclasses.field(default=f.default))
            for name, f in model_fields.items()
        ]
        + [(name, type(v), dataclasses.field(default=v)) for name, v in EXTRA_FIELDS.items()],
        bases=(_ModelConfigMethods,),
        frozen=True,
    )
    cls.__module__ = __name__
    cls.__doc__ = """The model's fields: every field of the config schema's `model` group
    (`reformer/config/schema.py`) with its default, and `EXTRA_FIELDS`; frozen, so modules
    can hold it."""
    cls._schema = model_fields
    return cls


ModelConfig = model_config_class(MODEL)


# The halves of a decoder layer, in order; other layers have the first and the last.
HALVES = ("attention", "cross_attention", "feed_forward")


def layer_name(j: int, kind: str) -> str:
    """The parameter group of pattern position `j` with attention type `kind`."""
    return f"{j}_{kind}"


def layer_names(cfg: ModelConfig) -> list[str]:
    """The parameter groups of the pattern positions, in order."""
    return [layer_name(j, kind) for j, kind in enumerate(cfg.attention_types)]


def layer_params(layers: dict, cfg: ModelConfig, i: int) -> dict:
    """Layer `i`'s parameters (`attention`, `feed_forward`) out of the stacked `layers`."""
    pattern = len(cfg.attention_types)
    group = layers[layer_name(i % pattern, cfg.attention_type(i))]
    return jax.tree.map(lambda a: a[i // pattern], group)


def retype_layers(params: dict, old_types: tuple[str, ...], new_types: tuple[str, ...]) -> dict:
    """The same weights under the layer names of another attention pattern.

    Evaluating an "lsh" model with "full_shared_qk" attention (paper, Table 2) renames
    `0_lsh` to `0_full_shared_qk`. The caller checks that the new attention types have the
    parameters of the old ones.
    """
    layers = dict(params["layers"])
    for j, (old, new) in enumerate(zip(old_types, new_types, strict=True)):
        layers[layer_name(j, new)] = layers.pop(layer_name(j, old))
    return {**params, "layers": layers}
