"""`python -m reformer.evaluate` and `scripts/reproduce_duplication.py`."""

import json
import os

import jax
import pytest

from reformer.config import ConfigError
from reformer.evaluation import checkpoint as evaluate
from reformer.model.models import init_params
from reformer.train import train_and_evaluate
from reformer.training import sharding
from reformer.training.state import load_params, make_model
from tests.conftest import REPO, load_config, run_module, run_script

LSH_OVERRIDES = {"attention_types": ("lsh",), "lsh_chunk_len": 8, "n_hashes": 2}


def lsh_config():
    config = load_config("tiny")
    for k, v in LSH_OVERRIDES.items():
        config.model[k] = v
    return config


@pytest.fixture(scope="module")
def lsh_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lsh"))
    return workdir, train_and_evaluate(lsh_config(), workdir)


def test_cli_matches_the_trainers_last_evaluation(lsh_run):
    workdir, last = lsh_run
    proc = run_module(
        [
            "reformer.evaluate",
            "--config=configs/tiny.py",
            f"--workdir={workdir}",
            "--config.model.attention_types=('lsh',)",
            "--config.model.lsh_chunk_len=8",
            "--config.model.n_hashes=2",
            "--config.eval.split=test",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(workdir, "eval_test.json")) as f:
        record = json.load(f)
    assert record["step"] == 20 and record["split"] == "test"
    assert record["n_hashes"] == 2 and record["attention_types"] == ["lsh"]
    assert record["tokens"] == 2 * 8 * 15  # eval batches x batch size x second copy
    assert record["loss"] == pytest.approx(last["loss"], rel=1e-5)
    assert record["accuracy"] == pytest.approx(last["accuracy"])
    assert "bits/token" in proc.stderr + proc.stdout


def test_more_hashes_and_full_attention_reuse_the_weights(lsh_run):
    workdir, _ = lsh_run
    mesh = sharding.make_mesh()
    config = lsh_config()
    model = make_model(config)
    params, step = load_params(config, workdir, model, mesh)
    results = {}
    for types, n in ((("lsh",), 2), (("lsh",), 8), (("full_shared_qk",), 0)):
        config.eval.attention_types, config.eval.n_hashes = types, n
        results[(types[0], n)] = evaluate.evaluate_params(config, model, params, step, mesh)
    assert results[("lsh", 8)]["n_hashes"] == 8
    assert "n_hashes" not in results[("full_shared_qk", 0)]
    # Different attention gives different (finite) losses from the same weights.
    losses = {k: r["loss"] for k, r in results.items()}
    assert len(set(losses.values())) == 3, losses
    assert all(jax.numpy.isfinite(v) for v in losses.values())


def test_evaluation_attention_runs_the_trained_weights():
    """A full-attention model evaluated as local attention whose one chunk covers the whole
    sequence computes the same function, so the loss is equal only if the renamed
    parameters are the trained ones."""
    config = load_config("tiny")
    config.model.local_chunk_len = config.data.seq_len
    mesh = sharding.make_mesh()
    model = make_model(config)
    params = init_params(model, jax.random.key(3), 1, 32)
    full = evaluate.evaluate_params(config, model, params, 0, mesh)
    config.eval.attention_types = ("local",)
    local = evaluate.evaluate_params(config, model, params, 0, mesh)
    assert local["attention_types"] == ["local"]
    assert local["loss"] == pytest.approx(full["loss"], rel=1e-6)
    other = init_params(model, jax.random.key(4), 1, 32)
    # Other weights (even untrained ones, whose losses are all near log(vocab)) differ.
    assert evaluate.evaluate_params(config, model, other, 0, mesh)["loss"] != pytest.approx(
        full["loss"], rel=1e-6
    )


def test_incompatible_attention_and_missing_checkpoint_are_clear_errors(lsh_run, tmp_path):
    workdir, _ = lsh_run
    config = lsh_config()
    config.eval.attention_types = ("full",)
    with pytest.raises(ConfigError, match="config.eval.attention_types"):
        evaluate.score_checkpoint(config, workdir)
    with pytest.raises(ConfigError, match="no checkpoint to evaluate"):
        evaluate.score_checkpoint(lsh_config(), str(tmp_path))
    config = lsh_config()
    config.eval.split = "dev"
    with pytest.raises(ConfigError, match="config.eval.split"):
        evaluate.score_checkpoint(config, workdir)


def test_reproduce_duplication_toy_scale_end_to_end(tmp_path):
    out, md = tmp_path / "t.json", tmp_path / "t.md"
    proc = run_script(
        "reproduce_duplication.py",
        [
            "--scale=toy",
            "--rows=full,lsh2",  # One full-attention row and one LSH row.
            f"--workdir={tmp_path / 'runs'}",
            f"--out={out}",
            f"--markdown={md}",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    rows, cols = ("full", "lsh2"), ("full", "lsh8", "lsh4", "lsh2", "lsh1")
    assert sorted((r["train"], r["eval"]) for r in records) == sorted(
        (r, c) for r in rows for c in cols
    )
    for r in records:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["steps"] == 4 and r["seq_len"] == 16 and r["device"]
    lines = md.read_text().splitlines()
    assert lines[0] == "| Train \\ Eval | Full | LSH-8 | LSH-4 | LSH-2 | LSH-1 |"
    body = [ln for ln in lines[2:] if ln.startswith("| ")]
    assert [ln.split(" | ")[0] for ln in body] == ["| Full attention", "| LSH-2"]
    assert all(ln.count("%") == 5 for ln in body)
    # Merging the JSON rebuilds the same table.
    merged = tmp_path / "m.md"
    proc = run_script(
        "reproduce_duplication.py",
        [f"--merge={out}", f"--out={tmp_path / 'm.json'}", f"--markdown={merged}"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert merged.read_text() == md.read_text()


def test_reproduce_duplication_rejects_unknown_rows():
    proc = run_script("reproduce_duplication.py", ["--rows=lsh3"])
    assert proc.returncode == 2 and "--rows" in proc.stderr and "lsh3" in proc.stderr


def text_config():
    config = load_config("tiny")
    config.data.name = "text"
    config.data.path = os.path.join(REPO, "..", "shared", "data", "tinyshakespeare_input.txt")
    config.model.vocab_size = 258
    config.train.num_steps = 10
    config.eval.batch_size = 64
    return config


def test_byte_data_resumes_exactly_and_evaluates_the_whole_test_split(tmp_path):
    from tests.test_train import read_metrics

    straight = str(tmp_path / "straight")
    train_and_evaluate(text_config(), straight)
    resumed = str(tmp_path / "resumed")
    config = text_config()
    config.train.num_steps = 5
    train_and_evaluate(config, resumed)
    train_and_evaluate(text_config(), resumed)
    losses = [r["loss"] for r in read_metrics(straight)]
    assert losses == pytest.approx([r["loss"] for r in read_metrics(resumed)], rel=1e-6)

    config = text_config()
    config.eval.split = "test"
    record = evaluate.evaluate_checkpoint(config, straight)
    with open(config.data.path, "rb") as f:
        n = len(f.read())
    assert record["tokens"] == n - n * 95 // 100  # Every test byte, once.
    assert record["bits_per_byte"] == record["bits_per_token"] < 8.0
    assert os.path.exists(os.path.join(straight, "eval_test.json"))
