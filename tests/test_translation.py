"""Translation end to end on a slice of Multi30k: a tiny encoder-decoder trains (its
vocabulary made at the start), is evaluated with beam search and sacreBLEU, and translates a
file from the command line."""

from __future__ import annotations

import json
import os

import pytest

from reformer.config import ConfigError, validate
from reformer.evaluation.checkpoint import evaluate_checkpoint
from reformer.train import train_and_evaluate
from tests.conftest import REPO, load_config, run_module

MULTI30K = os.path.join(REPO, "..", "shared", "data", "multi30k")


def slice_files(directory, n_train: int = 400, n_val: int = 24) -> str:
    """The first pairs of Multi30k as DIR/{train,val}.{en,de}; returns DIR."""
    os.makedirs(directory, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        for lang in ("en", "de"):
            with open(os.path.join(MULTI30K, f"{split}.{lang}")) as f:
                lines = [next(f) for _ in range(n)]
            with open(os.path.join(directory, f"{split}.{lang}"), "w") as f:
                f.writelines(lines)
    return str(directory)


def tiny_config(directory: str):
    c = load_config("multi30k", "cpu")
    m, d, t = c.model, c.data, c.train
    m.vocab_size, m.d_model, m.d_ff, m.n_heads, m.d_head = 600, 32, 64, 2, 16
    m.n_layers = m.n_encoder_layers = 1
    d.train_files = os.path.join(directory, "train.{lang}")
    d.validation_files = os.path.join(directory, "val.{lang}")
    d.seq_len = d.source_len = 32
    m.max_len = 32
    d.batch_tokens = 512
    t.num_steps, t.log_every, t.eval_every, t.checkpoint_every = 6, 3, 0, 6
    c.optimizer.warmup_steps = 2
    c.eval.batch_size, c.eval.beam_size = 8, 2
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = slice_files(tmp_path_factory.mktemp("multi30k"))
    workdir = str(tmp_path_factory.mktemp("translation") / "run")
    config = tiny_config(directory)
    train_and_evaluate(config, workdir)
    return config, workdir, directory


def test_trains_with_its_vocabulary_and_scores_bleu(trained):
    config, workdir, _ = trained
    assert os.path.isfile(os.path.join(workdir, "vocab.model"))
    record = evaluate_checkpoint(config, workdir)
    assert record["step"] == 6 and record["sentences"] == 24
    assert 0 <= record["bleu_cased"] <= 100 and 0 <= record["bleu_uncased"] <= 100
    assert "case:mixed" in record["signature_cased"]
    with open(os.path.join(workdir, "eval_validation.json")) as f:
        assert json.load(f)["bleu_cased"] == record["bleu_cased"]
    with open(record["hypotheses"]) as f:
        assert len(f.read().splitlines()) == 24


def test_translate_a_file_from_the_command_line(trained, tmp_path):
    _, workdir, directory = trained
    inputs = tmp_path / "in.en"
    inputs.write_text("A man is riding a bike.\nTwo dogs play in the snow.\nHello!\n")
    output = tmp_path / "out.de"
    overrides = [
        f"--config.data.train_files={directory}/train.{{lang}}",
        f"--config.data.validation_files={directory}/val.{{lang}}",
        "--config.model.vocab_size=600",
        "--config.model.d_model=32",
        "--config.model.d_ff=64",
        "--config.model.n_heads=2",
        "--config.model.d_head=16",
        "--config.model.n_layers=1",
        "--config.model.n_encoder_layers=1",
        "--config.model.max_len=32",
        "--config.data.seq_len=32",
        "--config.data.source_len=32",
        "--config.data.batch_tokens=512",
    ]
    common = ["--config", "configs/multi30k.py:cpu", "--workdir", workdir, *overrides]
    result = run_module(
        ["reformer.translate", *common, "--input", str(inputs), "--output", str(output)]
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert len(output.read_text().splitlines()) == 3
    bad = run_module(["reformer.translate", *common])
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: give --text SENTENCE or --input FILE"), bad.stderr


def test_translation_config_errors_name_the_field(tmp_path):
    c = tiny_config(str(tmp_path))
    c.model.attention_types = ("lsh",)
    c.data.batch_tokens = 16
    with pytest.raises(ConfigError) as error:
        validate(c)
    text = str(error.value)
    assert f"config.data.train_files: no such file: {tmp_path}/train.en" in text
    assert "config.data.batch_tokens: must hold at least one pair" in text
    assert "config.model.attention_types: translation batches sentences" in text


def test_label_smoothing_term_is_the_mean_negative_log_probability():
    import jax
    import jax.numpy as jnp
    import numpy as np

    from reformer.model.blocks import loss_and_metrics

    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    tokens = jnp.asarray([[1, 2, 0], [4, 0, 0]])
    weights = (tokens != 0).astype(jnp.float32)
    _, sums = loss_and_metrics(logits, tokens, weights)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    np.testing.assert_allclose(sums["smooth_sum"], -(logp.mean(-1) * weights).sum(), rtol=1e-6)
    picked = np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(sums["loss_sum"], -(picked * weights).sum(), rtol=1e-6)
