"""Paths (`reformer/storage.py`) without a storage service: what is refused and how, and the
local side of writing whole files and moving trees. Cloud Storage itself is tested against an
emulator in tests/test_gcs.py."""

from __future__ import annotations

import os

import pytest

from reformer import storage
from reformer.config import ConfigError, validate
from tests.conftest import REPO, load_config, run_module


@pytest.mark.parametrize(
    "path", ["runs/x", "/tmp/runs/x", "gs://test-bucket/runs/x", "gs://my_bucket.v2", "a:b/c"]
)
def test_local_and_gs_paths_are_accepted(path):
    assert storage.problem(path) is None
    assert storage.check(path, "--workdir") == path


@pytest.mark.parametrize(
    "path, message",
    [
        ("gs:/bucket/x", r"looks like a URL \(gs:/\.\.\.\)"),
        ("s3://bucket/x", r"looks like a URL \(s3:/\.\.\.\)"),
        ("hf://org/model", r"looks like a URL \(hf:/\.\.\.\)"),
        ("file:///tmp/x", r"looks like a URL \(file:/\.\.\.\)"),
        ("gs://", "does not name a valid bucket"),
        ("gs://Upper/x", "does not name a valid bucket"),
    ],
)
def test_url_like_paths_are_refused_naming_the_field(path, message):
    with pytest.raises(ConfigError, match=rf"^--workdir: '{path}' {message}"):
        storage.check(path, "--workdir")


@pytest.mark.parametrize("workdir", ["gs:/bucket/run", "s3://bucket/run"])
def test_url_like_workdir_is_refused_not_created(workdir):
    result = run_module(["reformer.train", "--config", "configs/tiny.py", "--workdir", workdir])
    assert result.returncode == 2, result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"error: --workdir: '{workdir}' looks like a URL"), result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(REPO, workdir.split(":")[0] + ":"))


def test_config_paths_are_checked_like_the_workdir():
    c = load_config("tiny")
    c.data.name, c.model.vocab_size = "text", 258
    c.data.path = "gs:/bucket/data.txt"
    c.train.init_from = "s3://bucket/run"
    c.data.tfds_dir = "gs://bucket/tfds"
    with pytest.raises(ConfigError) as error:
        validate(c)
    text = str(error.value)
    assert "config.data.path: 'gs:/bucket/data.txt' looks like a URL" in text
    assert "config.train.init_from: 's3://bucket/run' looks like a URL" in text
    assert "config.data.tfds_dir: gs://bucket/tfds: prepared TFDS records are read" in text


def test_write_text_replaces_a_file_whole(tmp_path):
    path = str(tmp_path / "config.json")
    storage.write_text(path, "first")
    storage.write_text(path, "second")
    assert storage.read_text(path) == "second"
    assert os.listdir(tmp_path) == ["config.json"]  # No temporary file left behind.


def test_move_tree_and_listdir_locally(tmp_path):
    src = tmp_path / "checkpoints" / "20"
    (src / "state").mkdir(parents=True)
    (src / "state" / "a").write_bytes(b"123")
    dst = storage.join(str(tmp_path), "corrupt", "20-1")
    storage.move_tree(str(src), dst)
    assert not src.exists()
    assert storage.read_bytes(storage.join(dst, "state", "a")) == b"123"
    assert storage.listdir(str(tmp_path)) == ["checkpoints", "corrupt"]
    assert storage.listdir(str(tmp_path / "missing")) == []


def test_the_supervisor_names_orbaxs_commit_file(tmp_path):
    from reformer.training import checkpoints, supervise

    assert supervise.COMMIT_FILE == checkpoints._commit_file()
    assert "No complete checkpoint" in supervise.last_checkpoint(str(tmp_path))
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    assert supervise.last_checkpoint(str(tmp_path)).startswith("Last complete checkpoint: step 20")
