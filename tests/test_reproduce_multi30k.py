"""scripts/reproduce_multi30k.py at toy scale: both residuals trained on a slice of Multi30k,
every kept checkpoint scored with beam search and sacreBLEU, and a second run that finds
everything done (no checkpoint decoded again) writes the same records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_translation import slice_files

TOY = [
    "--num_steps=4",
    "--bleu_every=2",
    "--set=model.vocab_size=600",
    "--set=model.d_model=32",
    "--set=model.d_ff=64",
    "--set=model.n_heads=2",
    "--set=model.d_head=16",
    "--set=model.n_layers=1",
    "--set=model.n_encoder_layers=1",
    "--set=data.batch_tokens=512",
    "--set=eval.beam_size=2",
    "--set=eval.batch_size=8",
    "--set=train.log_every=2",
]


@pytest.mark.slow
def test_toy_run_scores_every_checkpoint_and_resumes(tmp_path):
    data = slice_files(tmp_path / "data", n_train=200, n_val=16)
    out = tmp_path / "out.json"
    args = [
        sys.executable,
        os.path.join(REPO, "scripts", "reproduce_multi30k.py"),
        f"--workdir={tmp_path / 'runs'}",
        f"--train_files={data}/train.{{lang}}",
        f"--validation_files={data}/val.{{lang}}",
        f"--out={out}",
        *TOY,
    ]
    run = dict(cwd=REPO, capture_output=True, text=True, timeout=600)
    first = subprocess.run(args, **run)
    assert first.returncode == 0, first.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [(r["residual"], r["steps"], r["final"]) for r in records] == [
        ("reversible", 2, False),
        ("reversible", 4, True),
        ("standard", 2, False),
        ("standard", 4, True),
    ]
    for r in records:
        assert r["config"] == "configs/multi30k.py:cpu" and r["split"] == "validation"
        assert 0 <= r["bleu_cased"] <= 100 and "case:mixed" in r["signature"]
        assert r["sentences"] == 16 and r["train_minutes"] >= 0 and r["device"]
    assert records[1]["train_minutes"] >= records[0]["train_minutes"]  # Toy steps: ~0.
    vocab = (tmp_path / "runs" / "vocab.model").read_bytes()  # One vocabulary for both,
    for residual in ("reversible", "standard"):  # also where the commands look for it.
        assert (tmp_path / "runs" / residual / "vocab.model").read_bytes() == vocab
    assert (tmp_path / "out.png").stat().st_size > 0
    second = subprocess.run(args, **run)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "BLEU" not in second.stdout.split("| model")[0]  # Nothing decoded again.
    assert json.loads(out.read_text()) == records
