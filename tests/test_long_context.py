"""The one-million-token variant of the enwik8 model compiles (its memory is read, nothing is
run; a long test)."""

from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import REPO, load_config

sys.path.insert(0, os.path.join(REPO, "scripts"))
from bench_memory import step_memory  # noqa: E402


@pytest.mark.slow
def test_the_1m_variant_compiles_and_its_memory_is_read():
    config = load_config("enwik8", "1m")
    assert config.data.seq_len == 1 << 20 and config.model.dtype == "bfloat16"
    bf16 = step_memory(config)
    config.model.dtype = "float32"
    f32 = step_memory(config)
    # One float32 activation at 1M tokens and d_model 1024 is 4 GiB; bfloat16 products
    # need less than float32 ones (docs/benchmarks.md has the numbers).
    assert 4 * 2**30 < bf16["total_bytes"] < f32["total_bytes"], (bf16, f32)


@pytest.mark.slow
def test_memory_breakdown_names_every_part_and_the_gradient_needs_more_than_the_forward():
    from bench_long_context import breakdown

    records = {r["part"]: r for r in breakdown(4096, "float32")}
    assert set(records) == {
        "forward (loss)",
        "gradient (no optimizer)",
        "train step",
        "local attention half: forward + backward",
        "lsh attention half: forward + backward",
        "feed-forward half: forward + backward",
    }
    forward, gradient = records["forward (loss)"], records["gradient (no optimizer)"]
    assert 0 < forward["temp_vectors"] < gradient["temp_vectors"]
    assert gradient["temp_vectors"] <= records["train step"]["temp_vectors"]
