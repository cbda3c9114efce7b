"""scripts/reproduce_enwik8_ablations.py: the model grid, and a toy-scale run end to end."""

import json
import os
import sys

import pytest

from tests.conftest import REPO, run_script
from tests.test_text_data import fake_enwik8

sys.path.insert(0, os.path.join(REPO, "scripts"))
import reproduce_enwik8_ablations as script  # noqa: E402

REQUIRED = {
    "figure",
    "model",
    "attention_types",
    "shared_qk",
    "reversible",
    "residual",
    "n_hashes_train",
    "n_hashes_eval",
    "split",
    "bits_per_byte",
    "steps",
    "train_minutes",
    "device",
    "seq_len",
}


def test_models_differ_from_their_comparison_in_one_setting_only():
    scale = script.SCALES["cpu"]
    cfg = {
        name: script.model_config("data", "", scale, spec)
        for name, spec in script.all_models(scale).items()
    }

    def diff(a, b):
        da, db = cfg[a].to_dict(), cfg[b].to_dict()
        return {
            (g, k) for g in da if isinstance(da[g], dict) for k in da[g] if da[g][k] != db[g][k]
        }

    assert diff("full_separate_qk", "full_shared_qk") == {("model", "attention_types")}
    assert diff("full_shared_qk", "full_shared_qk_reversible") == {("model", "residual")}
    assert cfg["full_shared_qk"].model.residual == "standard"  # the regular Transformer
    assert diff("lsh2", "lsh4") == {("model", "n_hashes")}
    assert diff("full_shared_qk", "lsh1") == {("model", "attention_types")}
    # The context models: same tokens per step, lengths 512 .. 8192.
    lengths = [cfg[f"reformer_{n}"].data.seq_len for n in scale["context"]]
    assert lengths == [512, 2048, 8192]
    assert {cfg[f"reformer_{n}"].train.batch_size * n for n in scale["context"]} == {
        scale["tokens"]
    }
    assert all(cfg[f"reformer_{n}"].model.residual == "reversible" for n in scale["context"])
    # The paper's ablation depth and long sequences.
    assert {c.model.n_layers for c in cfg.values()} == {3}
    assert cfg["lsh8"].data.seq_len >= 4096


def test_eval_hashes_are_the_trained_ones_and_eight():
    models = script.MODELS
    assert script.eval_hashes(models["lsh1"]) == (1, 8)
    assert script.eval_hashes(models["lsh8"]) == (8,)
    assert script.eval_hashes(models["full_shared_qk"]) == (None,)


def test_seed_reaches_every_model():
    spec = script.MODELS["lsh2"]
    assert script.model_config("d", "", script.SCALES["toy"], spec).train.seed == 0
    assert script.model_config("d", "", script.SCALES["toy"], spec, seed=3).train.seed == 3


@pytest.mark.parametrize("seq_len", [64, 256, 512, 4096, 8192])
def test_axial_shape_covers_the_length(seq_len):
    a, b = script.axial_shape(seq_len)
    assert a * b == seq_len and a >= b


def test_toy_run_end_to_end(tmp_path):
    """One model of each kind (Figure 3, Figure 4 with its extra 8-hash evaluation, context)
    through training, both splits, the table and the plot."""
    data = tmp_path / "enwik8_small"
    data.write_bytes(fake_enwik8(60_000))
    out = tmp_path / "ablations.json"
    proc = run_script(
        "reproduce_enwik8_ablations.py",
        [
            "--scale=toy",
            "--models=full_separate_qk,full_shared_qk,lsh2,reformer_64",
            f"--data={data}",
            f"--workdir={tmp_path / 'runs'}",
            f"--tfds_dir={tmp_path / 'tfds'}",
            f"--out={out}",
        ],
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    models = [r for r in records if r["model"] != "xz"]
    for r in models:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["steps"] == script.SCALES["toy"]["steps"] and r["seed"] == 0
        assert 0 < r["bits_per_byte"] < 12
    seen = {(r["figure"], r["model"], r["n_hashes_eval"], r["split"]) for r in models}
    for split in ("validation", "test"):
        assert ("3", "full_separate_qk", None, split) in seen
        assert ("3", "full_shared_qk", None, split) in seen
        assert ("4", "full_shared_qk", None, split) in seen
        assert ("4", "lsh2", 2, split) in seen and ("4", "lsh2", 8, split) in seen
        assert ("context", "reformer_64", 2, split) in seen
    # Every byte of each split once, whatever the window.
    test_bytes = {r["bytes"] for r in models if r["split"] == "test"}
    assert len(test_bytes) == 1
    xz = [r for r in records if r["model"] == "xz"]
    assert len(xz) == 1 and xz[0]["bytes"] == test_bytes.pop()
    assert (tmp_path / "ablations.png").stat().st_size > 20_000
    table = (tmp_path / "ablations.md").read_text()
    assert "| 4 | lsh2 | 256 | standard | 2 / 8 |" in table
    assert "xz -9e" in table


def test_unknown_model_is_refused_with_the_allowed_ones(tmp_path):
    proc = run_script(
        "reproduce_enwik8_ablations.py", ["--models=lsh3", f"--data={tmp_path}"], timeout=120
    )
    assert proc.returncode != 0
    assert "lsh3" in proc.stderr and "lsh4" in proc.stderr
