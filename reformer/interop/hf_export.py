"""A workdir's model as a HuggingFace Reformer directory that `transformers` loads:
`ReformerModelWithLMHead.from_pretrained(DIR)` for a causal LM (`model.kind = "lm"`),
`ReformerForMaskedLM.from_pretrained(DIR)` for a masked LM.

    export(config, workdir, out)    # python -m reformer.export --config ... --workdir W --out DIR

`out` receives `config.json` (every layer in `attn_layers`, the bucket count resolved, ids 0
padding and 1 end), `model.safetensors` (the weights by the table of `hf_names.weights`) and
a model card `README.md` (the config, the step, the workdir's evaluation records).

HF's layers are `lsh` or `local`. `full` attention becomes a `local` layer whose chunk spans
every sequence the model reads (HF then attends over the whole sequence) and
`full_shared_qk` an `lsh` layer whose chunk spans it (HF then attends over all keys with the
LSH logits and masks, as `full_shared_qk` does). HF has one chunk length per kind, so this
is exact only where the model has no genuine local (resp. LSH) layer; a mix is refused, as
is everything else HF's Reformer cannot hold (`unexportable`).

The causal LM shifts its inputs right itself (`hf_import.py`): HF's logits for input ids
`[0, t_0, ..., t_{L-2}]` are this model's for tokens `[t_0, ..., t_{L-1}]`. HF draws its own
LSH rotations, so LSH layers give HF's logits only in distribution (the round trip back
through `hf_import.py` is exact).
"""

from __future__ import annotations

import json
import math

import jax
import ml_collections
import numpy as np

from reformer import storage
from reformer.attention.hashing import default_n_buckets
from reformer.config.validation import validate
from reformer.console import log
from reformer.errors import ConfigError
from reformer.interop import hf_names
from reformer.interop.hf_card import evaluation_records, model_card
from reformer.tokens import END_ID, PAD_ID
from reformer.training.state import load_params, make_model

# model.kind -> the HF class that loads the export.
HF_CLASSES = {"lm": "ReformerModelWithLMHead", "masked_lm": "ReformerForMaskedLM"}
RESIDUALS = ("reversible", "two_stream")  # HF's layers are reversible; two_stream is the same.


def span(config: ml_collections.ConfigDict) -> int:
    """The longest sequence the model reads: its axial grid or learned table, or without
    positions `max(model.max_len, data.seq_len)`. HF's `max_position_embeddings`, and the
    chunk of a layer that attends over the whole sequence."""
    m = config.model
    if m.positional == "axial":
        return math.prod(m.axial_shape)
    if m.positional == "learned":
        return int(m.max_len)
    return max(int(m.max_len), int(config.data.seq_len))


def _chunk(m, kind: str, whole: str, chunk_len: int, length: int, problems: list[str]) -> int:
    """HF's chunk length of layer kind `kind` (`lsh` or `local`) for a model whose
    attention types may hold `kind` itself and `whole` (the type HF runs as `kind` with a
    chunk of the whole sequence). A chunk longer than every sequence is cut to `length`:
    HF then attends over the whole sequence, as this model does."""
    types = tuple(m.attention_types)
    if whole in types and kind in types and chunk_len < length:
        problems.append(
            f"model.attention_types = {types}: '{whole}' and '{kind}' layers need two {kind} "
            f"chunk lengths in HF ({length} and model.{kind}_chunk_len = {chunk_len}), which "
            f"has one; use one of them, or {kind}_chunk_len >= {length}"
        )
    return length if whole in types else min(chunk_len, length)


def _kind_problems(m) -> list[str]:
    """What HF's Reformer cannot hold in the model's kind, residual, attention types and
    positions, each as `field = value: why (allowed ...)`."""
    problems = []
    if m.kind == "classifier":
        problems.append(
            "model.kind = 'classifier': this classifier mean-pools the real positions into one "
            "linear layer; HF's ReformerForSequenceClassification pools the first token through "
            "dense -> tanh -> projection (exportable kinds: 'lm', 'masked_lm')"
        )
    elif m.kind not in HF_CLASSES:
        problems.append(
            f"model.kind = {m.kind!r}: HF has no Reformer encoder-decoder (transformers "
            f"#8670) (exportable kinds: {', '.join(map(repr, HF_CLASSES))})"
        )
    if m.residual not in RESIDUALS:
        problems.append(
            f"model.residual = {m.residual!r}: HF's Reformer layers are reversible "
            f"(exportable: {', '.join(map(repr, RESIDUALS))})"
        )
    if m.kind == "lm" and not m.causal:
        problems.append("model.causal = False: HF's Reformer LM is causal (exportable: True)")
    unknown = [t for t in m.attention_types if t not in hf_names.HF_KIND]
    if unknown:
        problems.append(
            f"model.attention_types holds {', '.join(map(repr, unknown))}: HF has no such "
            f"layer (exportable: {', '.join(map(repr, hf_names.HF_KIND))})"
        )
    if m.positional == "axial" and len(m.axial_shape) != 2:
        problems.append(
            f"model.axial_shape = {tuple(m.axial_shape)}: HF's axial positions have two axes "
            "(its evaluation reads two)"
        )
    return problems


def chunk_lengths(config: ml_collections.ConfigDict) -> tuple[dict[str, int], list[str]]:
    """`({"lsh": ..., "local": ...} HF chunk lengths, problems)`: full layers run on a
    chunk of the whole sequence, genuine ones on their own; what one length per kind, the
    wrap-around of HF's bidirectional local attention or HF's padding cannot hold is a
    problem."""
    m, length, problems = config.model, span(config), []
    chunks = {
        "lsh": _chunk(m, "lsh", "full_shared_qk", m.lsh_chunk_len, length, problems),
        "local": _chunk(m, "local", "full", m.local_chunk_len, length, problems),
    }
    if m.kind == "masked_lm" and "local" in m.attention_types and m.local_chunk_len < length:
        problems.append(
            f"model.local_chunk_len = {m.local_chunk_len} in a bidirectional model: HF's "
            "bidirectional local attention wraps around the sequence's ends, this model's does "
            f"not (exportable: local_chunk_len >= {length}, or 'full' attention)"
        )
    kinds = {hf_names.HF_KIND.get(t) for t in m.attention_types} - {None}
    lcm = math.lcm(*(chunks[k] for k in kinds)) if kinds else 1
    if lcm > length:
        problems.append(
            f"model.lsh_chunk_len = {m.lsh_chunk_len}, model.local_chunk_len = "
            f"{m.local_chunk_len}: HF pads every input to a multiple of {lcm}, more than the "
            f"{length} positions of the model (exportable: chunk lengths whose least common "
            f"multiple divides {length})"
        )
    return chunks, problems


def unexportable(config: ml_collections.ConfigDict) -> list[str]:
    """Everything of `config` HF's Reformer cannot hold (empty if it exports)."""
    problems = _kind_problems(config.model)
    if not problems:
        problems += chunk_lengths(config)[1]
    return problems


def num_buckets(config: ml_collections.ConfigDict) -> int | list[int]:
    """HF's `num_buckets`: the bucket factors, the count, or the automatic count training
    used at `data.seq_len` (HF's own automatic count rounds to a power of two)."""
    m = config.model
    if m.bucket_factors:
        return [int(f) for f in m.bucket_factors]
    lsh_chunk = chunk_lengths(config)[0]["lsh"]
    return int(m.n_buckets) or default_n_buckets(config.data.seq_len, lsh_chunk)


def _positions(config: ml_collections.ConfigDict) -> dict:
    """HF's position fields: two axial axes, or a learned table (zeros for a model without
    positions)."""
    m = config.model
    if m.positional == "axial":
        return {
            "axial_pos_embds": True,
            "axial_pos_shape": [int(a) for a in m.axial_shape],
            "axial_pos_embds_dim": [int(d) for d in m.axial_dims],
        }
    return {"axial_pos_embds": False}


def hf_config(config: ml_collections.ConfigDict, hash_seed: int | None = None) -> dict:
    """The HF `config.json` (a dict) of the model of `config`; a ConfigError in one line
    names everything HF cannot hold. `hash_seed`: HF's seed of its LSH rotations (None:
    fresh rotations at every call, as in training here)."""
    problems = unexportable(config)
    if problems:
        raise ConfigError("cannot export to HuggingFace's Reformer: " + "; ".join(problems))
    m = config.model
    chunks = chunk_lengths(config)[0]
    pattern = [hf_names.HF_KIND[t] for t in m.attention_types]
    kinds = [pattern[i % len(pattern)] for i in range(m.n_layers)]
    after = 0 if m.kind == "lm" else 1  # Bidirectional layers see one chunk after.
    hf = {
        "architectures": [HF_CLASSES[m.kind]],
        "model_type": "reformer",
        **{hf_field: kind(m[field]) for hf_field, field, kind in hf_names.SAME_FIELDS},
        "num_hidden_layers": int(m.n_layers),
        "attn_layers": kinds,
        "hidden_act": hf_names.HF_ACTIVATION[m.ff_activation],
        "lsh_attn_chunk_length": chunks["lsh"],
        "local_attn_chunk_length": chunks["local"],
        "lsh_num_chunks_before": 1,
        "lsh_num_chunks_after": after,
        "local_num_chunks_before": 1,
        "local_num_chunks_after": after,
        "num_buckets": num_buckets(config) if "lsh" in kinds else None,
        "hash_seed": hash_seed,
        "is_decoder": m.kind == "lm",
        "max_position_embeddings": span(config),
        **_positions(config),
        "lsh_attention_probs_dropout_prob": float(m.attention_dropout),
        "local_attention_probs_dropout_prob": float(m.attention_dropout),
        "chunk_size_lm_head": 0,
        "chunk_size_feed_forward": 0,
        "tie_word_embeddings": False,
        "pad_token_id": PAD_ID,
        "eos_token_id": END_ID,
        # The LM reads id 0 at position 0 (its inputs are shifted right): generation from
        # nothing starts there.
        "bos_token_id": PAD_ID if m.kind == "lm" else None,
    }
    return hf


def state_dict(config: ml_collections.ConfigDict, params) -> dict[str, np.ndarray]:
    """HF's state dict (full keys, float32, contiguous) of this model's parameters."""
    m = config.model
    state = {}
    for w in hf_names.weights(m):
        array = np.ascontiguousarray(w.to_hf(hf_names.leaf(params, w)), np.float32)
        for name in (w.hf, *w.aliases):
            state[hf_names.hf_key(name)] = array.copy()
    if m.positional == "none":  # HF always adds positions: a table of zeros adds none.
        name = hf_names.hf_key("embeddings.position_embeddings.embedding.weight")
        state[name] = np.zeros((span(config), m.d_model), np.float32)
    return state


def _safetensors(state: dict[str, np.ndarray]) -> bytes:
    try:
        from safetensors.numpy import save
    except ImportError as e:
        raise ConfigError(
            "exporting needs the safetensors package (pip install safetensors; it comes "
            "with transformers)"
        ) from e
    return save(state, metadata={"format": "pt"})  # HF loads files marked "pt".


def export_params(
    config: ml_collections.ConfigDict,
    params,
    out: str,
    *,
    step: int = 0,
    source: str = "",
    records: list[tuple[str, dict]] = (),
    hash_seed: int | None = None,
) -> dict:
    """Writes the HF directory `out` of `params` (of the model of `config`, trained to
    `step` in the workdir `source`, with its evaluation `records`); returns the HF config."""
    hf = hf_config(config, hash_seed)
    state = state_dict(config, params)
    storage.prepare_dir(out, "--out")
    storage.write_bytes(storage.join(out, "model.safetensors"), _safetensors(state))
    storage.write_text(storage.join(out, "config.json"), json.dumps(hf, indent=2) + "\n")
    card = model_card(config, hf, step=step, source=source, records=records)
    storage.write_text(storage.join(out, "README.md"), card)
    n = sum(np.size(a) for a in jax.tree.leaves(params))
    log(
        f"Exported step {step}{f' of {source}' if source else ''} ({n:,} parameters, "
        f"{hf['num_hidden_layers']} layers {hf['attn_layers']}) to {out}: load it with "
        f"transformers.{hf['architectures'][0]}.from_pretrained"
    )
    return hf


def export(
    config: ml_collections.ConfigDict, workdir: str, out: str, hash_seed: int | None = None
) -> dict:
    """Exports the latest checkpoint of `workdir` (a model of `config`) to the HF directory
    `out`; returns the HF config. What HF cannot hold is refused before anything is read."""
    validate(config, num_devices=None)
    hf_config(config, hash_seed)
    storage.check(workdir, "--workdir")
    storage.check(out, "--out")
    params, step = load_params(config, workdir, make_model(config), purpose="export")
    return export_params(
        config,
        params,
        out,
        step=int(step),
        source=str(workdir),
        records=evaluation_records(workdir),
        hash_seed=hash_seed,
    )
