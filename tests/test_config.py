"""Bad configurations fail at start with a message naming the field."""

import os
import re

import pytest

from reformer.config import ConfigError, default_config, validate
from reformer.trainer import train_and_evaluate
from tests.conftest import load_config, run_module


@pytest.mark.parametrize("name", ["tiny", "duplication"])
def test_shipped_configs_are_valid(name):
    validate(load_config(name))


def test_paper_variant_is_the_papers_setting():
    c = load_config("duplication", "paper")
    validate(c)
    assert (c.model.vocab_size, c.data.word_len, c.data.seq_len) == (128, 511, 1024)
    assert (c.model.n_layers, c.model.d_model, c.model.d_ff, c.model.n_heads) == (1, 256, 256, 4)
    assert c.train.num_steps == 150_000


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        load_config("duplication", "nope")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("train.num_steps", 0, "config.train.num_steps: must be a positive integer"),
        ("train.num_steps", -5, "config.train.num_steps: must be a positive integer"),
        ("train.batch_size", 0, "config.train.batch_size: must be a positive integer"),
        ("model.d_model", 0, "config.model.d_model: must be a positive integer"),
        ("model.n_layers", -1, "config.model.n_layers: must be a positive integer"),
        ("model.n_heads", 0, "config.model.n_heads: must be a positive integer"),
        ("data.seq_len", 0, "config.data.seq_len: must be a positive integer"),
        ("model.vocab_size", 2, "config.model.vocab_size: the duplication task needs"),
        ("data.seq_len", 30, r"config.data.seq_len: the duplication task 0 w 0 w needs seq_len"),
        ("model.attention_types", ("full", "fancy"), "config.model.attention_types: 'fancy'"),
        ("model.n_buckets", 7, "config.model.n_buckets: must be even"),
        ("optimizer.name", "sgd", "config.optimizer.name: must be one of"),
        ("optimizer.schedule", "cosine", "config.optimizer.schedule: must be one of"),
        ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate: must be positive"),
        ("model.dropout", 1.0, r"config.model.dropout: must be in \[0, 1\)"),
        ("data.name", "imagenet", "config.data.name: must be one of"),
    ],
)
def test_bad_values_name_the_field(field, value, match):
    c = load_config("tiny")
    group, name = field.split(".")
    c[group][name] = value
    with pytest.raises(ConfigError, match=match):
        validate(c)


def test_batch_not_divisible_by_device_count():
    c = load_config("tiny")
    c.train.batch_size = 6
    with pytest.raises(
        ConfigError,
        match=r"config.train.batch_size: 6 is not divisible by "
        r"the number of devices \(4\)",
    ):
        validate(c, num_devices=4)


def test_unknown_field_is_named():
    c = load_config("tiny")
    c.model.n_hash = 4  # A typo of n_hashes.
    with pytest.raises(ConfigError, match="unknown config field.*config.model.n_hash"):
        validate(c)


def test_every_field_has_a_comment():
    """Every default field is documented where it is defined."""
    path = os.path.join(os.path.dirname(__file__), "..", "reformer", "config.py")
    with open(path) as f:
        lines = [ln.strip() for ln in f if re.match(r"\s*[mdtoes]\.\w+ = ", ln)]
    assert lines and all("#" in ln for ln in lines), [ln for ln in lines if "#" not in ln]
    assert len(lines) == sum(len(g) for g in default_config().values())


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="is not writable"):
        train_and_evaluate(load_config("tiny"), str(blocker / "workdir"))


def test_command_line_errors(tmp_path):
    """From the command line: a typo in a field, and a bad value, each exit non-zero with
    a message naming the field, and write nothing."""
    workdir = tmp_path / "w"
    typo = run_module(
        [
            "reformer.train",
            "--config",
            "configs/tiny.py",
            "--workdir",
            str(workdir),
            "--config.train.num_stepz=3",
        ]
    )
    assert typo.returncode != 0
    assert "num_stepz" in typo.stderr
    bad = run_module(
        [
            "reformer.train",
            "--config",
            "configs/tiny.py",
            "--workdir",
            str(workdir),
            "--config.train.num_steps=0",
        ]
    )
    assert bad.returncode == 2
    assert "config.train.num_steps: must be a positive integer" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not workdir.exists()
