"""scripts/reproduce_enwik8_ablations.py: the model grid, and a toy-scale run end to end."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, load_script, run_script
from tests.test_text_data import fake_enwik8

script = load_script("reproduce_enwik8_ablations")

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
    context = scale["context"]
    lengths = [cfg[f"reformer_{n}"].data.seq_len for n in context["lengths"]]
    assert lengths == [512, 2048, 8192]
    assert {cfg[f"reformer_{n}"].train.batch_size * n for n in context["lengths"]} == {
        context["tokens"]
    }
    assert all(cfg[f"reformer_{n}"].model.residual == "reversible" for n in context["lengths"])
    assert {c.model.n_layers for c in cfg.values()} == {3}  # the paper's ablation depth


@pytest.mark.parametrize("scale", sorted(script.SCALES))
def test_the_lsh_window_is_at_most_an_eighth_of_the_sequence(scale):
    """A query sees its chunk and the one before: LSH is tested, not full attention."""
    for name in ("lsh1", "lsh8"):
        c = script.model_config("d", "", script.SCALES[scale], script.MODELS[name])
        assert 2 * c.model.lsh_chunk_len <= c.data.seq_len // 8


def test_eval_hashes_are_the_trained_ones_and_eight():
    models = script.MODELS
    assert script.eval_hashes(models["lsh1"]) == (1, 8)
    assert script.eval_hashes(models["lsh8"]) == (8,)
    assert script.eval_hashes(models["full_shared_qk"]) == (None,)


def test_seed_reaches_every_model_and_names_its_workdir():
    spec = script.MODELS["lsh2"]
    assert script.model_config("d", "", script.SCALES["toy"], spec).train.seed == 0
    assert script.model_config("d", "", script.SCALES["toy"], spec, seed=3).train.seed == 3
    assert script.run_name("lsh2", 0) == "lsh2"
    assert script.run_name("lsh2", 1) == "lsh2_seed1"


def scores(**bpb):
    """Validation and test records of seed 0, trained hashes, `model=bits per byte`."""
    return [
        {"model": m, "seed": 0, "split": split, "n_hashes_train": None, "n_hashes_eval": None,
         "bits_per_byte": v + (0.1 if split == "test" else 0)}
        for m, v in bpb.items() for split in ("validation", "test")
    ]  # fmt: skip


def test_a_second_seed_goes_to_comparisons_closer_than_the_threshold():
    records = scores(
        full_separate_qk=2.50, full_shared_qk=2.54, full_shared_qk_reversible=2.60,
        lsh8=2.56, lsh4=2.565, lsh2=2.70, lsh1=2.90,
    )  # fmt: skip
    # shared-QK 1.6% apart, reversible 2.4%, LSH-8/full 0.8%, LSH-4/LSH-8 0.2%: in that order.
    assert script.second_seed_models(records, 0, 0.02) == [
        "full_separate_qk", "full_shared_qk", "lsh8", "lsh4",
    ]  # fmt: skip
    assert script.second_seed_models(records, 0, 0.0) == []
    assert script.second_seed_models(records, 1, 0.02) == []  # no records of seed 1
    # An LSH model's own hashes decide, not the 8-hash evaluation.
    extra = [dict(r, n_hashes_train=4, n_hashes_eval=8, bits_per_byte=2.0) for r in records
             if r["model"] == "lsh4"]  # fmt: skip
    lsh = [dict(r, n_hashes_train=int(r["model"][3:]), n_hashes_eval=int(r["model"][3:]))
           if r["model"].startswith("lsh") else r for r in records]  # fmt: skip
    assert script.second_seed_models(extra + lsh, 0, 0.02) == script.second_seed_models(
        records, 0, 0.02
    )


def test_train_minutes_add_up_the_intervals_across_a_stop(tmp_path):
    rows = [
        {"step": 10, "split": "train", "steps_per_sec": 2.0},
        {"step": 20, "split": "train", "steps_per_sec": 1.0},
        {"step": 20, "split": "eval", "bits_per_token": 3.0},
        {"step": 25, "split": "train", "steps_per_sec": 0.5},  # stopped after 5 steps
        {"step": 30, "split": "train", "steps_per_sec": 1.0},  # resumed at step 25
    ]
    lines = [json.dumps(r) for r in rows] + ['{"step": 40, "spl']  # a line cut short
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert script.train_minutes(str(tmp_path)) == pytest.approx((5 + 10 + 10 + 5) / 60)


def test_scores_are_reused_only_for_the_same_run(tmp_path, capsys):
    """A finished model's scores stand for its settings and steps, nothing else."""
    config = script.model_config("d", "", script.SCALES["toy"], script.MODELS["lsh2"])
    (tmp_path / "config.json").write_text(config.to_json())
    records = [{"model": "lsh2", "steps": config.train.num_steps, "bits_per_byte": 3.0}]
    (tmp_path / script.RECORDS_FILE).write_text(json.dumps(records))
    assert script.scored(config, str(tmp_path)) == records
    elsewhere = script.model_config("e", "/tmp/x", script.SCALES["toy"], script.MODELS["lsh2"])
    assert script.scored(elsewhere, str(tmp_path)) == records  # the data's location aside
    other = script.with_settings(script.SCALES["toy"], ["buckets=4"])
    assert script.scored(script.model_config("d", "", other, script.MODELS["lsh2"]),
                         str(tmp_path)) is None  # fmt: skip
    longer = script.model_config("d", "", script.SCALES["toy"], script.MODELS["lsh2"], steps=9)
    assert script.scored(longer, str(tmp_path)) is None


TOY_MODELS = "full_shared_qk,full_shared_qk_reversible,lsh2"


def toy_args(tmp_path, data, name: str) -> list[str]:
    return [
        "--scale=toy",
        f"--models={TOY_MODELS}",
        "--second_seed_below=0",
        f"--data={data}",
        f"--workdir={tmp_path / name}",
        f"--tfds_dir={tmp_path / 'tfds'}",
        f"--out={tmp_path / name}.json",
    ]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "train_minutes"} for r in records]


def test_toy_run_end_to_end_and_resumed_after_an_interruption(tmp_path):
    """Figure 3's regular and reversible models and Figure 4's LSH model (with its extra
    8-hash evaluation) through training, both splits, the table and the plot; then the same
    run killed once its first model is scored and started again gives the same JSON."""
    data = tmp_path / "enwik8_small"
    data.write_bytes(fake_enwik8(60_000))
    proc = run_script("reproduce_enwik8_ablations.py", toy_args(tmp_path, data, "whole"), 900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    whole = json.loads((tmp_path / "whole.json").read_text())
    models = [r for r in whole if r["model"] != "xz"]
    for r in models:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["steps"] == script.SCALES["toy"]["steps"] and r["seed"] == 0
        assert 0 < r["bits_per_byte"] < 12 and r["train_minutes"] > 0
    seen = {(r["figure"], r["model"], r["residual"], r["n_hashes_eval"], r["split"])
            for r in models}  # fmt: skip
    for split in ("validation", "test"):
        assert ("3", "full_shared_qk", "standard", None, split) in seen
        assert ("4", "full_shared_qk", "standard", None, split) in seen
        assert ("3", "full_shared_qk_reversible", "reversible", None, split) in seen
        assert ("4", "lsh2", "standard", 2, split) in seen
        assert ("4", "lsh2", "standard", 8, split) in seen
    # Every byte of each split once, whatever the window; xz -9e on the same bytes.
    for split in ("validation", "test"):
        n_bytes = {r["bytes"] for r in models if r["split"] == split}
        xz = [r for r in whole if r["model"] == "xz" and r["split"] == split]
        assert len(n_bytes) == 1 and len(xz) == 1 and xz[0]["bytes"] == n_bytes.pop()
        assert 0 < xz[0]["bits_per_byte"] < 9
    assert (tmp_path / "whole.png").stat().st_size > 20_000
    table = (tmp_path / "whole.md").read_text()
    assert "| 4 | lsh2 | 0 | 256 | standard | 2 / 8 |" in table
    assert "| reversible against regular (Figure 3) | full_shared_qk_reversible against" in table
    assert "xz -9e" in table

    # A report of what is scored so far trains nothing and leaves the unfinished model out.
    report = toy_args(tmp_path, data, "whole")
    report[1] = f"--models={TOY_MODELS},lsh4"
    report[-1] = f"--out={tmp_path / 'report.json'}"
    proc = run_script("reproduce_enwik8_ablations.py", [*report, "--report_only"], 300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Not scored yet, so left out: lsh4" in proc.stdout
    assert not (tmp_path / "whole" / "lsh4").exists()
    assert json.loads((tmp_path / "report.json").read_text()) == whole

    # Killed (as a preempted host is) once the first model is scored, then started again.
    first = tmp_path / "cut" / "full_shared_qk" / script.RECORDS_FILE
    cmd = [sys.executable, os.path.join("scripts", "reproduce_enwik8_ablations.py")]
    # Where the kill lands in the second model varies (before, during or after its
    # training): every landing point must give the same JSON, to the last bit (XLA:CPU runs
    # the same programs on the same inputs, and the trainer resumes exactly).
    with open(tmp_path / "cut.log", "w") as log:
        proc = subprocess.Popen([*cmd, *toy_args(tmp_path, data, "cut")], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 600
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        proc.kill()
        proc.wait()
    assert first.exists(), (tmp_path / "cut.log").read_text()[-3000:]
    scored = first.stat().st_mtime
    proc = run_script("reproduce_enwik8_ablations.py", toy_args(tmp_path, data, "cut"), 900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scored before" in proc.stdout
    assert first.stat().st_mtime == scored  # the first model was neither trained nor scored again
    cut = json.loads((tmp_path / "cut.json").read_text())
    assert without_timing(cut) == without_timing(whole)


def test_unknown_model_is_refused_with_the_allowed_ones(tmp_path):
    proc = run_script(
        "reproduce_enwik8_ablations.py", ["--models=lsh3", f"--data={tmp_path}"], timeout=120
    )
    assert proc.returncode != 0
    assert "lsh3" in proc.stderr and "lsh4" in proc.stderr


def test_settings_override_the_scale_with_values_of_its_types():
    scale = script.SCALES["cpu"]
    changed = script.with_settings(scale, ["buckets=4", "lr=1e-3", "tokens=8192"])
    assert (changed["buckets"], changed["lr"], changed["tokens"]) == (4, 1e-3, 8192)
    assert scale["buckets"] == 2  # the table itself is left alone
    config = script.model_config("d", "", changed, script.MODELS["lsh1"])
    assert (config.model.n_buckets, config.train.batch_size) == (4, 8)
    assert script.with_settings(scale, ["lr=1"])["lr"] == 1.0
    for bad, says in (("bucket=4", "buckets"), ("buckets=4.5", "int"), ("steps=x", "int"),
                      ("context=1", "KEY one of"), ("buckets", "KEY=VALUE")):  # fmt: skip
        with pytest.raises(ValueError, match=says):
            script.with_settings(scale, [bad])
