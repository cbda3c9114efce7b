"""Golden values: what a few short trainings and one compiled train step produce, recorded
so that a change meant to keep behaviour (a refactor, a move) can prove it did.

    python -m tests.golden --write     # records tests/data/golden.json

records, on this machine:
- the metrics.jsonl records (timings left out) of `configs/tiny.py` (20 steps),
  `configs/encoder.py:masked_lm`, `configs/reverse.py` and `configs/multi30k.py:cpu` (a few
  steps each with tiny sizes, `RUNS`);
- XLA's `cost_analysis()` (flops, bytes accessed) and `memory_analysis()` of the compiled
  train step of the peers benchmark's model (`scripts/bench_peers.py`: 6 LSH layers,
  d_model 512, 4 hashes, chunk 64) at 4,096 tokens, with the JAX version that compiled it.

`tests/test_golden.py` compares a fresh run with them. The values may change only with a
change that is meant to change what is trained or compiled (a new default, a fix to the
math, a faster kernel, a new JAX): then record them again with the command above and say
why in the commit message.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden.json")
# metrics.jsonl fields that measure time, not the computation.
TIMING_FIELDS = ("time", "steps_per_sec", "tokens_per_sec")
PEERS_SEQ_LEN = 4096


def _small(c, num_steps: int = 6) -> None:
    """A few steps, logged every 2, evaluated and saved at the end, on small batches."""
    t = c.train
    t.num_steps, t.log_every, t.eval_every, t.checkpoint_every = num_steps, 2, num_steps, num_steps
    c.eval.num_batches = 1


def tiny():
    from tests.conftest import load_config

    return load_config("tiny")


def masked_lm():
    from tests.conftest import load_config

    c = load_config("encoder", "masked_lm")
    _small(c)
    c.train.batch_size = c.eval.batch_size = 4
    return c


def reverse():
    from tests.conftest import load_config

    c = load_config("reverse")
    _small(c)
    c.train.batch_size = c.eval.batch_size = 4
    return c


def multi30k(directory: str):
    from tests.test_translation import slice_files
    from tests.test_translation import tiny_config as translation_config

    c = translation_config(slice_files(directory))
    _small(c)
    return c


RUNS = ("tiny", "masked_lm", "reverse", "multi30k")


def run_config(name: str, scratch: str):
    """The config of golden run `name` (data it needs written under `scratch`)."""
    if name == "multi30k":
        return multi30k(os.path.join(scratch, "multi30k_data"))
    return {"tiny": tiny, "masked_lm": masked_lm, "reverse": reverse}[name]()


def train_records(name: str) -> list[dict]:
    """metrics.jsonl of golden run `name` trained from scratch, timings left out."""
    from reformer.train import train_and_evaluate

    with tempfile.TemporaryDirectory() as scratch:
        workdir = os.path.join(scratch, "run")
        train_and_evaluate(run_config(name, scratch), workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def peers_config(seq_len: int = PEERS_SEQ_LEN):
    """The peers benchmark's model (its defaults) as a config."""
    from reformer.config import default_config

    c = default_config()
    m = c.model
    m.vocab_size, m.d_model, m.d_ff, m.n_heads, m.d_head, m.n_layers = 258, 512, 2048, 8, 64, 6
    m.attention_types = ("lsh",)
    m.lsh_chunk_len, m.n_buckets, m.n_hashes = 64, seq_len // 64, 4
    m.causal, m.residual, m.positional = True, "reversible", "axial"
    m.axial_shape, m.axial_dims = (64, 64), (128, 384)
    m.max_len = seq_len
    m.position_chunk_size = 0
    m.dropout = m.attention_dropout = 0.0
    c.data.name, c.data.seq_len = "enwik8", seq_len
    c.train.batch_size = 1
    c.optimizer.name = "adam"
    return c


def compiled_figures() -> dict:
    """XLA's cost and memory analysis of the peers model's compiled train step."""
    import jax
    import numpy as np

    from reformer.config import validate
    from reformer.training import sharding
    from reformer.training.optimizer import make_optimizer
    from reformer.training.state import abstract_state, make_model
    from reformer.training.steps import jit_train_step

    c = peers_config()
    validate(c, num_devices=jax.device_count())
    mesh = sharding.make_mesh(c.mesh)
    model = make_model(c)
    tx = make_optimizer(c.optimizer)
    abstract = abstract_state(c, model, tx, mesh)
    state_sharding = jax.tree.map(lambda a: a.sharding, abstract)
    step = jit_train_step(c, model, tx, mesh, state_sharding)
    shape = (c.train.batch_size, c.data.seq_len)
    batch = {
        "tokens": jax.ShapeDtypeStruct(shape, np.int32, sharding=sharding.batch_sharded(mesh)),
        "weights": jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding.batch_sharded(mesh)),
    }
    rng = jax.eval_shape(lambda: jax.random.key(0))
    compiled = step.lower(abstract, batch, rng).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    return {
        "jax_version": jax.__version__,
        "flops": float(cost["flops"]),
        "bytes_accessed": float(cost["bytes accessed"]),
        "argument_size_in_bytes": int(memory.argument_size_in_bytes),
        "output_size_in_bytes": int(memory.output_size_in_bytes),
        "alias_size_in_bytes": int(memory.alias_size_in_bytes),
        "temp_size_in_bytes": int(memory.temp_size_in_bytes),
    }


def record() -> dict:
    return {
        "runs": {name: train_records(name) for name in RUNS},
        "compiled": compiled_figures(),
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    values = record()
    with open(GOLDEN, "w") as f:
        json.dump(values, f, indent=1)
        f.write("\n")
    print(f"wrote {GOLDEN}")
