"""The model family: the residual kinds, the bidirectional encoder with its padding masks and
heads, and workdirs written before `model.residual` existed."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reformer.config as config_lib
from reformer import data
from reformer.attention import self_attention as attention
from reformer.decoding import sampling as decode
from reformer.model.blocks import AttentionHalf, FeedForwardHalf
from reformer.model.layers import layer_norm
from reformer.model.model_config import ModelConfig, layer_params
from reformer.model.models import ReformerEncoder, ReformerLM, init_params, shift_right
from reformer.train import train_and_evaluate
from reformer.training import checkpoints, steps
from reformer.training.optimizer import make_optimizer
from reformer.training.state import load_params, make_init_state, make_model
from tests.conftest import REPO, load_config, read_metrics, run_module
from tests.jacobians import embedded_jacobian

LEGACY_WORKDIR = os.path.join(REPO, "tests", "data", "legacy_workdir")


def model_config(**overrides) -> ModelConfig:
    m = load_config("tiny").model
    m.attention_types, m.n_layers = ("full", "local"), 4
    m.local_chunk_len = m.lsh_chunk_len = 8
    for k, v in overrides.items():
        m[k] = v
    return ModelConfig.from_config(m)


def tokens(shape, seed=0, low=1, high=16):
    return jax.random.randint(jax.random.key(seed), shape, low, high)


def test_standard_is_the_one_stream_pre_layernorm_transformer():
    """`standard` computes x + F(LN(x)), x + G(LN(x)) layer by layer, then LN and the output
    layer: checked against the halves applied by hand."""
    cfg = model_config(residual="standard")
    model = ReformerLM(cfg)
    toks = tokens((2, 32))
    params = init_params(model, jax.random.key(1), 1, 32)
    got = model.apply({"params": params}, toks)

    inputs = shift_right(toks)
    x = params["embed"]["embedding"][inputs] + params["pos_embed"][:32]
    for i in range(cfg.n_layers):
        p = layer_params(params["layers"], cfg, i)
        half = AttentionHalf(cfg, cfg.attention_type(i))
        x = x + half.apply({"params": p["attention"]}, x, None, deterministic=True)[0]
        x = x + FeedForwardHalf(cfg).apply({"params": p["feed_forward"]}, x, deterministic=True)
    y = layer_norm(params["final_norm"], x, cfg.layer_norm_eps)
    want = y @ params["logits"]["kernel"] + params["logits"]["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert params["final_norm"]["scale"].shape == (cfg.d_model,)


def test_standard_differs_from_two_stream():
    """Given the parameters they share (embeddings, layers), `standard` and `two_stream`
    are different functions; `two_stream` and `reversible` are one function."""
    two, std = model_config(residual="two_stream"), model_config(residual="standard")
    toks = tokens((2, 32))
    p_two = init_params(ReformerLM(two), jax.random.key(1), 1, 32)
    own = init_params(ReformerLM(std), jax.random.key(1), 1, 32)
    p_std = {**p_two, "final_norm": own["final_norm"], "logits": own["logits"]}
    out_two = ReformerLM(two).apply({"params": p_two}, toks)
    out_std = ReformerLM(std).apply({"params": p_std}, toks)
    assert float(jnp.abs(out_two - out_std).max()) > 1e-2
    out_rev = ReformerLM(dataclasses.replace(two, residual="reversible")).apply(
        {"params": p_two}, toks
    )
    np.testing.assert_allclose(out_rev, out_two, rtol=1e-6, atol=1e-6)


def test_training_without_a_hash_rng_is_refused():
    cfg = model_config(attention_types=("lsh",), n_layers=2)
    model = ReformerLM(cfg)
    toks = tokens((1, 32))
    params = init_params(model, jax.random.key(0), 1, 32)
    with pytest.raises(ValueError, match="needs a 'hash' rng"):
        model.apply(
            {"params": params}, toks, deterministic=False, rngs={"dropout": jax.random.key(1)}
        )
    model.apply({"params": params}, toks)  # Deterministic: a fixed key, repeatable.


# ---- Legacy fields and workdirs ----


def test_config_file_with_legacy_fields_loads(tmp_path):
    path = tmp_path / "old.py"
    path.write_text(
        "from reformer.config import default_config\n"
        "def get_config():\n"
        "    c = default_config()\n"
        "    c.model.reversible = True\n"
        "    c.model.ff_chunk_size = 16\n"
        "    return c\n"
    )
    config = config_lib.load_config_file(str(path))
    assert config.model.residual == "reversible" and config.model.position_chunk_size == 16
    assert "reversible" not in config.model and "ff_chunk_size" not in config.model
    config_lib.validate(config)


def test_contradicting_legacy_field_is_refused():
    config = load_config("tiny")
    config.model.residual = "standard"
    config.model.reversible = True
    with pytest.raises(config_lib.ConfigError, match="model.reversible=True .* contradicts"):
        config_lib.validate(config)


def legacy_run_config():
    """The config the legacy workdir was trained with, in today's field names."""
    config = load_config("tiny")
    m = config.model
    m.residual, m.attention_types, m.position_chunk_size = "reversible", ("lsh", "local"), 8
    m.lsh_chunk_len = m.local_chunk_len = 8
    m.n_hashes, m.d_model, m.d_ff, m.d_head = 2, 16, 32, 8
    return config


def test_workdir_written_before_residual_restores_with_the_same_logits(tmp_path):
    """A workdir written before `model.residual` and `model.position_chunk_size` (its
    config.json holds `reversible` and `ff_chunk_size`) passes the compatibility check,
    restores and gives the logits it gave then, and resumes training."""
    workdir = str(tmp_path / "wd")
    shutil.copytree(LEGACY_WORKDIR, workdir)
    config = legacy_run_config()
    with open(os.path.join(workdir, "config.json")) as f:
        assert "reversible" in json.load(f)["model"]
    params, step = load_params(config, workdir, make_model(config))
    assert step == 2
    expected = np.load(os.path.join(workdir, "expected_logits.npz"))
    logits = make_model(config).apply({"params": params}, jnp.asarray(expected["tokens"]))
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-6, atol=1e-6)

    other = legacy_run_config()
    other.model.residual = "standard"
    with pytest.raises(config_lib.ConfigError, match="model.residual: checkpoint has 'reversible'"):
        checkpoints.check_config_matches(workdir, other)


# ---- The encoder ----


def encoder_config(types, **overrides) -> ModelConfig:
    return model_config(
        kind="masked_lm", attention_types=types, n_layers=2 * len(types), **overrides
    )


def padded_pair(n_real: int, short: int, long: int, seed=0):
    """The same real tokens padded with 0 to two lengths."""
    real = tokens((2, n_real), seed)
    return (jnp.pad(real, ((0, 0), (0, length - n_real))) for length in (short, long))


@pytest.mark.parametrize("types", [("full",), ("local",), ("full", "local")])
def test_encoder_outputs_at_real_positions_ignore_extra_padding(types):
    cfg = encoder_config(types, residual="reversible")
    model = ReformerEncoder(cfg)
    params = init_params(model, jax.random.key(0), 1, 48)
    short, long = padded_pair(21, 24, 48)
    out_short = model.apply({"params": params}, short)
    out_long = model.apply({"params": params}, long)
    np.testing.assert_allclose(out_short[:, :21], out_long[:, :21], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("types", [("full",), ("local",), ("lsh",)])
def test_encoder_is_bidirectional_and_padding_is_never_attended(types, monkeypatch):
    """Through gradients with respect to the embedded inputs: an output depends on later
    positions (bidirectional), and no output at a real position depends on a padded one (no
    padded key receives attention weight, in LSH layers as well)."""
    cfg = encoder_config(types, n_buckets=4, n_hashes=2)
    model = ReformerEncoder(cfg)
    inputs = jnp.pad(tokens((1, 24)), ((0, 0), (0, 8)))
    params = model.init({"params": jax.random.key(0)}, inputs)["params"]
    jac = embedded_jacobian(model, params, inputs, monkeypatch)  # [L_out, L_in, D]
    dependence = np.abs(jac).sum(-1)
    assert np.all(dependence[:24, 24:] == 0.0), "a real position depends on padding"
    assert dependence[0, 1:8].sum() > 0.0, "the first output ignores the positions after it"


def test_lsh_encoder_padding_changes_only_the_round_boundary_chunks():
    """With a fixed bucket count, appending padding changes LSH outputs at real positions
    only in the first and last chunk of each round's sorted real positions (their
    neighbour chunk across the round boundary becomes padding); elsewhere within 1e-5."""
    chunk, n_real = 8, 32
    module = attention.LSHSelfAttention(
        n_heads=1, d_head=16, chunk_len=chunk, n_buckets=4, n_hashes=2, causal=False,
        n_chunks_after=1,
    )  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (1, n_real, 16))
    x_long = jnp.pad(x, ((0, 0), (0, 16), (0, 0)))
    mask_long = jnp.arange(48)[None] < n_real
    rngs = {"hash": jax.random.key(3)}
    params = module.init({"params": jax.random.key(1), **rngs}, x)
    out, buckets = module.apply(params, x, rngs=rngs)
    out_long, buckets_long = module.apply(params, x_long, mask_long, rngs=rngs)
    np.testing.assert_array_equal(buckets[0, 0], buckets_long[0, 0, :, :n_real])
    boundary = set()
    for round_buckets in np.asarray(buckets[0, 0]):
        order = np.lexsort((np.arange(n_real), round_buckets))
        boundary |= set(order[:chunk]) | set(order[-chunk:])
    inner = np.array(sorted(set(range(n_real)) - boundary))
    assert inner.size > 0
    np.testing.assert_allclose(out[0, inner], out_long[0, inner], rtol=1e-5, atol=1e-5)


# ---- The encoder's heads, trained ----


def encoder_run_config(variant: str, **train):
    config = load_config("encoder", variant)
    config.model.d_model, config.model.d_ff, config.model.n_layers = 32, 64, 2
    config.data.word_len, config.data.seq_len = 15, 32
    config.model.max_len = 32
    config.model.lsh_chunk_len = config.model.local_chunk_len = 8
    for k, v in train.items():
        config.train[k] = v
    return config


@pytest.mark.parametrize("variant", ["masked_lm", "classifier"])
def test_encoder_heads_fit_a_batch(variant):
    """A few optimizer steps on one batch of the task lower its loss: the loss, the head
    (per position, or pooled over the real positions) and the gradients are wired up."""
    config = encoder_run_config(variant)
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 3e-3, 1
    model = make_model(config)
    tx = make_optimizer(config.optimizer)
    state = make_init_state(config, model, tx)(jax.random.key(0))
    batch = jax.tree.map(jnp.asarray, next(data.make_train_stream(config)))
    step = jax.jit(
        lambda s, b: steps.train_step(
            s, b, jax.random.key(1), model=model, tx=tx, schedule=lambda _: 0.0
        )
    )
    losses = []
    for _ in range(40):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss_sum"] / metrics["weight_sum"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_masked_lm_trains_and_evaluates_from_the_command_line(tmp_path):
    workdir = str(tmp_path / "mlm")
    overrides = [
        "--config.model.d_model=32",
        "--config.model.d_ff=64",
        "--config.data.word_len=15",
        "--config.data.seq_len=32",
        "--config.model.max_len=32",
        "--config.model.lsh_chunk_len=8",
        "--config.model.local_chunk_len=8",
        "--config.train.num_steps=30",
        "--config.train.log_every=10",
        "--config.train.eval_every=30",
        "--config.train.checkpoint_every=30",
    ]
    args = ["--config", "configs/encoder.py:masked_lm", "--workdir", workdir, *overrides]
    run = run_module(["reformer.train", *args])
    assert run.returncode == 0, run.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(workdir)]
    assert losses[-1] < losses[0], losses
    run = run_module(["reformer.evaluate", *args])
    assert run.returncode == 0, run.stderr[-3000:]
    with open(os.path.join(workdir, "eval_validation.json")) as f:
        record = json.load(f)
    assert record["step"] == 30 and record["tokens"] > 0 and 0 <= record["accuracy"] <= 1
    run = run_module(["reformer.sample", *args, "--prompt_ids=1,2"])
    assert run.returncode == 2 and "sampling needs a language model" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("variant,accuracy", [("masked_lm", 0.99), ("classifier", 0.95)])
def test_encoder_learns_a_task_that_needs_a_far_token(variant, accuracy, tmp_path):
    """configs/encoder.py as it is (2 reversible layers, local + LSH): the masked symbols
    and the label need each symbol's counterpart 64 positions away (local attention sees
    16). About 4 minutes each on 2 CPU cores."""
    config = load_config("encoder", variant)
    result = train_and_evaluate(config, str(tmp_path))
    assert result["accuracy"] >= accuracy, result


def test_standard_decodes_through_the_caches_as_its_forward_pass():
    """The one-stream Transformer decodes with the same caches: logits through them equal
    the forward pass's (full and local layers, a prefill of 5 and then one step each)."""
    cfg = model_config(residual="standard")
    model = ReformerLM(cfg)
    params = init_params(model, jax.random.key(3), 1, 32)
    toks = tokens((2, 32), seed=4)
    want = model.apply({"params": params}, toks)
    got = decode.cached_logits(cfg, params, toks, jax.random.key(5), n_hashes=1, prefix=5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
