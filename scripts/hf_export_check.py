"""A workdir's language model scored by HuggingFace's Reformer after export, beside this
project's score: the same evaluation windows, the same number of hash rounds.

    python scripts/hf_export_check.py --config configs/enwik8.py:cpu --workdir W \\
        --set data.path=../shared/data/enwik8_prefix_4154399 [--split test] \\
        [--n_hashes 4] [--max_batches 0] [--float64] [--out W/hf_check.json]

The latest checkpoint is exported (`reformer/interop/hf_export.py`) to a temporary
directory and loaded with `transformers.ReformerModelWithLMHead`; both models score the
windows `reformer.evaluate` scores (every byte of the split once; the first `--max_batches`
batches of `eval.batch_size` windows, 0 = all) with `--n_hashes` hash rounds (default
`eval.n_hashes`, else the model's). Local and full layers agree to float precision; LSH
layers hash with random rotations in both (each its own draw), so the two numbers agree
only to about 1%. Prints both and writes them as JSON to `--out` if given. `--set
group.field=value` (repeatable; the value a Python literal or a string) sets a config field
as `--config.group.field=value` did for training.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import tempfile
import time


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="config file[:variant] of the workdir")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--n_hashes", type=int, default=0, help="0 = eval.n_hashes or model's")
    parser.add_argument("--batch_size", type=int, default=0, help="0 = eval.batch_size")
    parser.add_argument("--max_batches", type=int, default=0, help="0 = the whole split")
    parser.add_argument("--float64", action="store_true", help="run HF in float64")
    parser.add_argument("--out", default=None, help="JSON file of the result")
    parser.add_argument(
        "--set", action="append", default=[], help="a config override, e.g. data.path=FILE"
    )
    args = parser.parse_args()
    for item in args.set:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            parser.error(f"--set {item}: expected group.field=value, e.g. data.path=FILE")
    return args


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # A string, e.g. a path.


def load_config(args: argparse.Namespace):
    from reformer.config import load_config_file

    path, _, variant = args.config.partition(":")
    config = load_config_file(path, variant or None)
    for item in args.set:  # As the training command was given them.
        name, _, text = item.partition("=")
        group, _, field = name.partition(".")
        config[group][field] = _value(text)
    e = config.eval
    e.split = args.split
    e.n_hashes = args.n_hashes or e.n_hashes or config.model.n_hashes
    e.batch_size = args.batch_size or e.batch_size
    return config


def hf_bits(hf_dir: str, batches: list[dict], n_hashes: int, float64: bool) -> dict:
    """HF's summed negative log-likelihood (bits) and scored tokens over `batches`."""
    import numpy as np
    import torch
    import transformers

    model = transformers.ReformerModelWithLMHead.from_pretrained(hf_dir).eval()
    model = model.double() if float64 else model
    bits, tokens = 0.0, 0.0
    for batch in batches:
        targets, weights = batch["tokens"], batch["weights"]
        ids = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
        with torch.no_grad():
            logits = model(torch.tensor(ids, dtype=torch.long), num_hashes=n_hashes).logits
        logp = torch.log_softmax(logits.double(), dim=-1).numpy()
        picked = np.take_along_axis(logp, targets[..., None].astype(np.int64), axis=-1)[..., 0]
        bits -= float((picked * weights).sum()) / math.log(2)
        tokens += float(weights.sum())
    return {"bits": bits, "tokens": tokens}


def main() -> None:
    args = arguments()
    import jax

    from reformer import data
    from reformer.config import ConfigError
    from reformer.evaluation.checkpoint import jitted_eval_fn
    from reformer.interop.hf_export import export_params
    from reformer.training import sharding
    from reformer.training.state import load_params, make_model
    from reformer.training.steps import evaluate

    try:
        config = load_config(args)
        if config.model.kind != "lm":
            raise ConfigError(f"model.kind = {config.model.kind!r}: this check scores an 'lm'")
        mesh = sharding.make_mesh(config.mesh)
        model = make_model(config)
        params, step = load_params(config, args.workdir, model, mesh)
        batches = data.make_eval_batches(config, whole_split=True)
        batches = batches[: args.max_batches or None]
        start = time.time()
        ours = evaluate(jitted_eval_fn(config, model, params, mesh), params, mesh, batches)
        ours_seconds = time.time() - start
        with tempfile.TemporaryDirectory(prefix="reformer_hf_") as hf_dir:
            export_params(config, jax.device_get(params), hf_dir, step=int(step))
            start = time.time()
            hf = hf_bits(hf_dir, batches, config.eval.n_hashes, args.float64)
            hf_seconds = time.time() - start
    except ConfigError as e:
        sys.exit(f"error: {e}")
    result = report(args, config, int(step), ours, hf)
    result.update(seconds_ours=round(ours_seconds, 1), seconds_hf=round(hf_seconds, 1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"Wrote {args.out}")


def report(args, config, step: int, ours: dict, hf: dict) -> dict:
    """Prints and returns the comparison record."""
    import transformers

    hf_value = hf["bits"] / max(hf["tokens"], 1.0)
    unit = "byte" if config.model.vocab_size == 258 else "token"
    result = {
        "workdir": args.workdir,
        "step": step,
        "split": config.eval.split,
        "n_hashes": config.eval.n_hashes,
        "attention_types": list(config.model.attention_types),
        "tokens": ours["tokens"],
        f"bits_per_{unit}_ours": ours["bits_per_token"],
        f"bits_per_{unit}_hf": hf_value,
        "relative_difference": hf_value / ours["bits_per_token"] - 1.0,
        "hf_dtype": "float64" if args.float64 else "float32",
        "transformers": transformers.__version__,
    }
    print(
        f"{config.eval.split} at step {step}, {config.eval.n_hashes} hashes, "
        f"{ours['tokens']:,} {unit}s: ours {ours['bits_per_token']:.4f} bits/{unit}, "
        f"HF {hf_value:.4f} bits/{unit} ({100 * result['relative_difference']:+.2f}%)"
    )
    return result


if __name__ == "__main__":
    main()
