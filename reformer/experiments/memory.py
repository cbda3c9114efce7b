"""XLA memory of one compiled (not run) train step, for the memory benchmarks; with the
device's name for their records and the enwik8 config they start from."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax

from reformer.config.files import load_config_file
from reformer.model.models import example_batch
from reformer.training import steps
from reformer.training.optimizer import make_optimizer, make_schedule
from reformer.training.state import make_init_state, make_model

# The repository's config files (beside the package in the editable install).
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def enwik8_config():
    """`configs/enwik8.py` as it is (the authors' enwik8 model, 65,536 tokens)."""
    return load_config_file(str(CONFIGS / "enwik8.py"))


def device_name() -> str:
    """The device's name for records: "cpu", or the accelerator's kind."""
    d = jax.devices()[0]
    return "cpu" if d.platform == "cpu" else d.device_kind


def step_memory(config) -> dict:
    """Compiles one train step for `config` (batch `train.batch_size`) without running it:
    {"temp_bytes", "total_bytes" (arguments + outputs + temp - aliased), "n_params",
    "compile_s"}."""
    model = make_model(config)
    tx = make_optimizer(config.optimizer)
    seq_len, batch = config.data.seq_len, config.train.batch_size
    state = jax.eval_shape(make_init_state(config, model, tx), jax.random.key(0))
    batch_spec = jax.eval_shape(
        lambda: example_batch(model.cfg, batch, seq_len, config.data.source_len)
    )
    step = functools.partial(
        steps.train_step, model=model, tx=tx, schedule=make_schedule(config.optimizer)
    )
    start = time.time()
    compiled = (
        jax.jit(step, donate_argnums=(0,))
        .lower(state, batch_spec, jax.eval_shape(lambda: jax.random.key(0)))
        .compile()
    )
    m = compiled.memory_analysis()
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {
        "temp_bytes": int(m.temp_size_in_bytes),
        "total_bytes": int(total),
        "n_params": int(n_params),
        "compile_s": round(time.time() - start, 1),
    }
