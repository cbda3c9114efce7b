"""The encoder-decoder: cross-attention (full and LSH), reversible gradients through the
encoder output, cached decoding against the forward pass, beam search, and training on
the synthetic reverse task."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer.attention import caches, lsh
from reformer.decoding import beam
from reformer.decoding import sampling as decode
from reformer.evaluation.checkpoint import score_checkpoint
from reformer.model.layers import layer_norm
from reformer.model.model_config import ModelConfig
from reformer.model.models import ReformerEncoderDecoder, ReformerLM, init_params
from reformer.train import train_and_evaluate
from tests.conftest import load_config, read_metrics, run_module

SOURCE, TARGET = 40, 24  # different lengths on purpose


def encdec_config(**overrides) -> ModelConfig:
    m = load_config("reverse").model
    m.d_model, m.d_ff, m.max_len = 32, 64, SOURCE
    m.local_chunk_len = m.lsh_chunk_len = 8
    for k, v in overrides.items():
        m[k] = v
    return ModelConfig.from_config(m)


def source_and_target(seed=0, batch=2):
    k1, k2 = jax.random.split(jax.random.key(seed))
    source = jax.random.randint(k1, (batch, SOURCE), 2, 16).at[:, :7].set(0)  # left padding
    return source, jax.random.randint(k2, (batch, TARGET), 2, 16)


@pytest.fixture(scope="module")
def full_cross():
    cfg = encdec_config(cross_attention="full", attention_types=("full", "full_shared_qk"))
    params = init_params(ReformerEncoderDecoder(cfg), jax.random.key(0), 1, SOURCE)
    return cfg, params


def test_parameters_of_the_encoder_decoder(full_cross):
    cfg, params = full_cross
    assert set(params) == {"embed", "encoder", "decoder", "logits"}  # one shared table
    layer = params["decoder"]["layers"]["0_full"]
    assert set(layer) == {"attention", "cross_attention", "feed_forward"}
    assert "cross_attention" not in params["encoder"]["layers"]["0_local"]
    memory_width = cfg.n_streams * cfg.d_model  # keys and values read the encoder output
    assert layer["cross_attention"]["attention"]["key"]["kernel"].shape[1] == memory_width
    separate = dataclasses.replace(cfg, share_embeddings=False)
    p = init_params(ReformerEncoderDecoder(separate), jax.random.key(0), 1, SOURCE)
    assert "embed" not in p and "embed" in p["encoder"] and "embed" in p["decoder"]


def test_cached_decoding_equals_the_forward_pass_with_full_cross_attention():
    """Logits at every target position through the caches (prefill of 5, then one step per
    position; the source encoded once) equal the training forward pass's, 1e-5, with full,
    full shared-QK and local self-attention in the decoder."""
    types = ("full", "full_shared_qk", "local")
    cfg = encdec_config(cross_attention="full", attention_types=types, n_layers=3)
    model = ReformerEncoderDecoder(cfg)
    params = init_params(model, jax.random.key(1), 1, SOURCE)
    source, target = source_and_target()
    key = jax.random.key(2)  # also hashes the encoder's LSH layer, as decoding does
    expected = model.apply({"params": params}, source, target, rngs={"hash": key})
    for prefix in (5, TARGET):
        got = decode.cached_logits(cfg, params, target, key, source, n_hashes=2, prefix=prefix)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_lsh_cross_attention_decodes_the_training_function():
    """One head: the training function (all queries at once) and the decoding cache (the
    source sorted once, then the queries one at a time) give the same outputs, 1e-5."""
    k = jax.random.split(jax.random.key(3), 5)
    q, keys, v = (jax.random.normal(k[i], (n, 16)) for i, n in enumerate((TARGET, SOURCE, SOURCE)))
    mask = jnp.arange(SOURCE) >= 7
    rotations = jax.random.normal(k[3], (16, 2, 4))  # 8 buckets, 2 rounds
    want, _ = lsh.lsh_cross_attention(q, keys, v, rotations, chunk_len=4, mask=mask)
    cache = caches.cross_attention_cache(
        "lsh", keys[None, None], v[None, None], mask[None], rotations=rotations[None]
    )
    got = jnp.concatenate(
        [
            caches.cross_attention_step(
                "lsh", q[None, None, t : t + 1], cache, d_head=16, chunk_len=4
            )[0, 0]
            for t in range(TARGET)
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # A query sees 2 * chunk_len keys per round: fewer than all 33 real keys.
    assert float(jnp.abs(want).max()) > 0


@pytest.mark.parametrize("kind", ["full", "lsh"])
def test_a_query_that_sees_no_source_key_gets_zeros(kind):
    """An all-padding source: cross-attention adds nothing (zeros), in training and when
    decoding."""
    k = jax.random.split(jax.random.key(4), 4)
    q = jax.random.normal(k[0], (TARGET, 16))
    keys, v = (jax.random.normal(k[i], (SOURCE, 16)) for i in (1, 2))
    mask = jnp.zeros((SOURCE,), bool)
    rotations = jax.random.normal(k[3], (16, 2, 4))
    if kind == "lsh":
        out = lsh.lsh_cross_attention(q, keys, v, rotations, chunk_len=4, mask=mask)[0]
    else:
        out = lsh.cross_attention(q, keys, v, mask=mask)
    assert float(jnp.abs(out).max()) == 0.0
    cache = caches.cross_attention_cache(
        kind, keys[None, None], v[None, None], mask[None], rotations=rotations[None]
    )
    step = caches.cross_attention_step(kind, q[None, None, :3], cache, d_head=16, chunk_len=4)
    assert float(jnp.abs(step).max()) == 0.0


def test_reversible_gradients_equal_two_stream_gradients_through_the_encoder():
    """The decoder's three halves per layer and the encoder output's gradient summed over
    the decoder layers: the reversible custom_vjp gives autodiff's gradients, with LSH
    self- and cross-attention and dropout."""
    rev = encdec_config(
        residual="reversible",
        cross_attention="lsh",
        attention_types=("lsh",),
        encoder_attention_types=("lsh",),
        n_encoder_layers=1,
        dropout=0.1,
    )
    plain = dataclasses.replace(rev, residual="two_stream")
    source, target = source_and_target(5)
    params = init_params(ReformerEncoderDecoder(rev), jax.random.key(6), 1, SOURCE)
    rngs = {"dropout": jax.random.key(7), "hash": jax.random.key(8)}
    weights = jnp.ones(target.shape)

    def grads(cfg):
        def loss(p):
            out = ReformerEncoderDecoder(cfg).apply(
                {"params": p}, source, target, deterministic=False, weights=weights, rngs=rngs
            )
            return out[0]

        return jax.value_and_grad(loss)(params)

    (l_rev, g_rev), (l_plain, g_plain) = grads(rev), grads(plain)
    np.testing.assert_allclose(l_rev, l_plain, rtol=1e-6)
    flat_rev, flat_plain = (jax.tree.leaves(g) for g in (g_rev, g_plain))
    for a, b in zip(flat_rev, flat_plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    encoder_grad = jax.tree.leaves(g_rev["encoder"]["layers"])
    assert max(float(jnp.abs(g).max()) for g in encoder_grad) > 0  # reached the encoder


def markov_lm():
    """A real `ReformerLM` whose layers add nothing (zero output projections): its logits
    at t are a function of token t - 1 only, set to a chosen transition table. From the
    start, token 2 (p 0.5) or 3 (p 0.4); after 2 every token is unlikely (the end id 1 at
    0.2, the likeliest); after 3 the end id at 0.95. Greedy takes 2, then the end id (p
    0.1); the better sequence is 3 and the end id (p 0.38)."""
    m = load_config("tiny").model
    m.vocab_size, m.d_model, m.n_layers, m.attention_types = 8, 16, 2, ("full",)
    cfg = ModelConfig.from_config(m)
    params = init_params(ReformerLM(cfg), jax.random.key(0), 1, 8)
    layers = params["layers"]["0_full"]
    out = layers["attention"]["attention"]["out"]
    out["kernel"] = jnp.zeros_like(out["kernel"])
    for name in ("wo_kernel", "wo_bias"):
        layers["feed_forward"]["ff"][name] = jnp.zeros_like(layers["feed_forward"]["ff"][name])
    params["pos_embed"] = jnp.zeros_like(params["pos_embed"])
    table = np.full((8, 8), 0.5 / 6)
    table[:, 1] = 0.5
    table[0] = [0, 0.1, 0.5, 0.4, 0, 0, 0, 0]
    table[2] = [0, 0.2] + [0.8 / 6] * 6
    table[3] = [0, 0.95] + [0.05 / 6] * 6
    table = np.maximum(table, 1e-6)
    table /= table.sum(1, keepdims=True)
    embedding = jnp.asarray(np.eye(8, 16, dtype=np.float32) * 3.0)
    params["embed"]["embedding"] = embedding
    features = layer_norm(
        params["final_norm"], jnp.concatenate([embedding, embedding], -1), cfg.layer_norm_eps
    )
    kernel = np.linalg.lstsq(np.asarray(features), np.log(table), rcond=None)[0]
    params["logits"]["kernel"] = jnp.asarray(kernel, jnp.float32)
    params["logits"]["bias"] = jnp.zeros_like(params["logits"]["bias"])
    return cfg, params, np.log(table)


def test_beam_search_finds_a_better_sequence_than_greedy():
    cfg, params, logp = markov_lm()
    prompt, key = jnp.zeros((1, 0), jnp.int32), jax.random.key(0)
    greedy = decode.generate(cfg, params, prompt, 4, key, decode.Sampling(temperature=0.0))
    np.testing.assert_array_equal(greedy, [[2, 1, 0, 0]])  # ends at the end id
    tokens, score = beam.beam_search(cfg, params, prompt, 4, key, beam_size=4)
    np.testing.assert_array_equal(tokens, [[3, 1, 0, 0]])
    penalty = beam.length_penalty(2, beam.LENGTH_PENALTY)
    np.testing.assert_allclose(score, [(logp[0, 3] + logp[3, 1]) / penalty], rtol=1e-3)
    assert float(score[0]) > (logp[0, 2] + logp[2, 1]) / penalty
    one, _ = beam.beam_search(cfg, params, prompt, 4, key, beam_size=1)
    np.testing.assert_array_equal(one, greedy)


def test_beam_size_one_is_greedy_for_the_encoder_decoder(full_cross):
    cfg, params = full_cross
    source, _ = source_and_target(9)
    prompt, key = jnp.zeros((2, 0), jnp.int32), jax.random.key(1)
    greedy = decode.generate(
        cfg, params, prompt, 10, key, decode.Sampling(temperature=0.0), source_BxS=source
    )
    one, _ = beam.beam_search(cfg, params, prompt, 10, key, beam_size=1, source_BxS=source)
    np.testing.assert_array_equal(one, greedy)
    four, scores = beam.beam_search(cfg, params, prompt, 10, key, beam_size=4, source_BxS=source)
    assert four.shape == (2, 10) and np.all(np.isfinite(scores))
    with pytest.raises(ValueError, match="decodes from a source"):
        decode.generate(cfg, params, prompt, 3, key)


def test_trains_on_the_reverse_task(tmp_path):
    config = load_config("reverse")
    config.model.d_model, config.model.d_ff = 32, 64
    config.data.source_len, config.data.seq_len, config.model.max_len = 32, 40, 40
    config.model.local_chunk_len = config.model.lsh_chunk_len = 8
    config.train.num_steps, config.train.log_every = 40, 10
    config.train.eval_every = config.train.checkpoint_every = 40
    train_and_evaluate(config, str(tmp_path))
    losses = [r["loss"] for r in read_metrics(str(tmp_path))]
    assert losses[-1] < losses[0] - 0.2, losses


def test_train_evaluate_and_decode_from_the_command_line(tmp_path):
    workdir = str(tmp_path / "reverse")
    args = [
        "--config",
        "configs/reverse.py:full",
        "--workdir",
        workdir,
        "--config.model.d_model=32",
        "--config.model.d_ff=64",
        "--config.data.source_len=16",
        "--config.data.seq_len=24",
        "--config.model.max_len=24",
        "--config.model.local_chunk_len=8",
        "--config.model.lsh_chunk_len=8",
        "--config.train.num_steps=10",
        "--config.train.log_every=5",
        "--config.train.eval_every=10",
        "--config.train.checkpoint_every=10",
        "--config.eval.num_batches=1",
        "--config.eval.batch_size=4",
    ]
    run = run_module(["reformer.train", *args])
    assert run.returncode == 0, run.stderr[-3000:]
    run = run_module(
        ["reformer.evaluate", *args, "--config.eval.free_running=True", "--config.eval.cached=True"]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with open(os.path.join(workdir, "eval_validation.json")) as f:
        record = json.load(f)
    assert record["sequences"] == 4 and 0.0 <= record["exact_match"] <= 1.0 and record["cached"]
    run = run_module(
        ["reformer.sample", *args, "--source_ids=5,6,7", "--length=6", "--beam_size=2"]
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ids = run.stdout.strip().splitlines()[-1].split(",")
    assert 1 <= len(ids) <= 6 and all(0 <= int(t) < 16 for t in ids), run.stdout
    run = run_module(["reformer.sample", *args, "--length=6"])
    assert run.returncode == 2 and "--source_ids" in run.stderr


@pytest.mark.slow
def test_learns_the_reverse_task_free_running_with_lsh_cross_attention(tmp_path):
    """configs/reverse.py as it is (LSH cross-attention, reversible, 3000 steps with 2
    hashes): at least 99% of held-out targets (65..128 tokens) reproduced exactly by greedy
    decoding through the caches with the evaluation hash count (8). About 12 minutes on 2
    CPU cores."""
    config = load_config("reverse")
    workdir = str(tmp_path)
    train_and_evaluate(config, workdir)
    config.eval.free_running = True
    record, _ = score_checkpoint(config, workdir)
    assert record["exact_match"] >= 0.99, record
