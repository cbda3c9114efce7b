"""scripts/reproduce_enwik8_prefix.py: the xz reference, the table, and (slow) a toy run."""

import json
import lzma
import os

import numpy as np
import pytest

from reformer.experiments.results import xz_bpc
from tests.conftest import load_script, run_script
from tests.test_text_data import fake_enwik8

script = load_script("reproduce_enwik8_prefix")


def test_xz_bpc_is_the_size_of_xz_9e_output_in_bits_per_byte():
    text = b"the quick brown fox jumps over the lazy dog. " * 200
    compressed = lzma.compress(text, preset=9 | lzma.PRESET_EXTREME)
    assert xz_bpc(text) == pytest.approx(8 * len(compressed) / len(text))
    assert xz_bpc(text) < 0.5  # Repetitive text compresses well...
    noise = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    assert xz_bpc(noise) > 8.0  # ...random bytes do not (container overhead).


def test_markdown_table_has_one_row_per_record():
    records = [
        {"model": "reformer", "bpc": 2.1, "n_hashes": 2, "steps": 10, "train_minutes": 1.5},
        {"model": "transformer", "bpc": 2.0, "n_hashes": None, "steps": 10, "train_minutes": 2},
        {"model": "xz", "bpc": 2.55, "n_hashes": None, "steps": None, "train_minutes": None},
    ]
    lines = script.markdown(records).splitlines()
    assert len(lines) == 2 + 3
    assert lines[2] == "| reformer | 2.1000 | 2 | 10 | 1.5 |"
    assert lines[4] == "| xz | 2.5500 | - | - | - |"


@pytest.mark.slow
def test_toy_run_end_to_end(tmp_path):
    data = tmp_path / "enwik8_small"
    data.write_bytes(fake_enwik8(100_000))
    out = tmp_path / "r.json"
    proc = run_script(
        "reproduce_enwik8_prefix.py",
        [
            f"--data={data}",
            f"--workdir={tmp_path / 'runs'}",
            f"--tfds_dir={tmp_path / 'tfds'}",
            "--num_steps=2",
            f"--out={out}",
        ],
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["model"], r["n_hashes"]) for r in records] == [
        ("reformer", 2),
        ("reformer", 4),
        ("reformer", 8),
        ("transformer", None),
        ("xz", None),
    ]
    assert all(r["split"] == "test" and r["bytes"] == 5_000 for r in records)
    assert os.path.exists(tmp_path / "r.png")
