"""The model card (`README.md`) of an exported HuggingFace directory: how to load and call
the model, its config, the step and the evaluation numbers of the workdir it came from."""

from __future__ import annotations

import json

import ml_collections

from reformer import storage

METRICS = ("bits_per_byte", "bits_per_dim", "bits_per_token", "accuracy", "loss")


def evaluation_records(workdir: str) -> list[tuple[str, dict]]:
    """`(file, record)` of the workdir's evaluations: each `eval_<split>.json` that
    `reformer.evaluate` wrote, and the last evaluation of training in `metrics.jsonl`."""
    records = []
    for name in storage.listdir(workdir):
        if name.startswith("eval_") and name.endswith(".json"):
            try:
                records.append((name, json.loads(storage.read_text(storage.join(workdir, name)))))
            except (OSError, ValueError):
                continue
    path = storage.join(workdir, "metrics.jsonl")
    if storage.isfile(path):
        evals = []
        for line in storage.read_text(path).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # A line cut short by a crash.
            if record.get("split") == "eval":
                evals.append(record)
        if evals:
            records.append(("metrics.jsonl (last evaluation of training)", evals[-1]))
    return records


def _metric(record: dict) -> str:
    name = next((k for k in METRICS if k in record), None)
    if name is None:
        return "-"
    return f"{float(record[name]):.4f} {name.replace('_', ' ')}"


def _evaluation_table(records: list[tuple[str, dict]]) -> list[str]:
    if not records:
        return ["No evaluation records in the workdir (`python -m reformer.evaluate` writes them)."]
    lines = [
        "| source | split | step | score | accuracy | tokens | attention | hashes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source, r in records:
        accuracy = f"{float(r['accuracy']):.4f}" if "accuracy" in r else "-"
        lines.append(
            f"| {source} | {r.get('split', '-')} | {r.get('step', '-')} | {_metric(r)} | "
            f"{accuracy} | {r.get('tokens', '-')} | {'/'.join(r.get('attention_types', []))} | "
            f"{r.get('n_hashes', '-')} |"
        )
    return lines


def _usage(config: ml_collections.ConfigDict, hf: dict) -> list[str]:
    cls = hf["architectures"][0]
    lines = [
        "```python",
        f"from transformers import {cls}",
        f'model = {cls}.from_pretrained("DIR").eval()',
        "```",
        "",
        "Token ids: 0 padding, 1 end"
        + (", byte + 2 for a byte (UTF-8 text)." if config.model.vocab_size == 258 else "."),
    ]
    if config.model.kind == "lm":
        lines.append(
            "The model reads id 0 at position 0: give it `[0, t_0, ..., t_{n-1}]`; the logits "
            "at position i predict `t_i` (the training here shifts its inputs right itself). "
            "`generate()` without input ids starts there."
        )
    else:
        lines.append("Pass `attention_mask = input_ids != 0`: padding is masked in training.")
    if "lsh" in hf["attn_layers"] and hf["lsh_attn_chunk_length"] < hf["max_position_embeddings"]:
        lines.append(
            "LSH layers hash with random rotations that HF draws itself (`hash_seed`), so its "
            "logits differ from this project's in the draw; `num_hashes=N` in the call sets "
            f"the hash rounds (trained with {config.model.n_hashes}, evaluated with "
            f"{config.eval.n_hashes or config.model.n_hashes})."
        )
    if config.model.dtype != "float32":
        lines.append(
            f"Trained with {config.model.dtype} products (float32 weights); HF runs in the "
            "dtype it is loaded in."
        )
    return lines


def model_card(
    config: ml_collections.ConfigDict,
    hf: dict,
    *,
    step: int,
    source: str,
    records: list[tuple[str, dict]],
) -> str:
    """The README of an export: front matter, how to use it, the model's config, the
    evaluations."""
    m = config.model
    kind = "causal language model" if m.kind == "lm" else "masked language model"
    fields = "\n".join(f"| `model.{k}` | `{v!r}` |" for k, v in sorted(m.to_dict().items()))
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- reformer",
        "---",
        "",
        f"# Reformer {kind}",
        "",
        f"Trained in JAX/Flax to step {step}{f' in `{source}`' if source else ''} on "
        f"`{config.data.name}` sequences of {config.data.seq_len} tokens, exported by "
        "`python -m reformer.export` to HuggingFace's PyTorch Reformer: "
        f"{hf['num_hidden_layers']} layers `{hf['attn_layers']}`, d_model {m.d_model}.",
        "",
        "## Use",
        "",
        *_usage(config, hf),
        "",
        "## Evaluation",
        "",
        *_evaluation_table(records),
        "",
        "## Config",
        "",
        "| field | value |",
        "|---|---|",
        fields,
        f"| `data.name` | `{config.data.name!r}` |",
        f"| `data.seq_len` | `{config.data.seq_len!r}` |",
        "",
    ]
    return "\n".join(lines)
