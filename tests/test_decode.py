"""Cached decoding (`reformer/decoding/sampling.py`) and sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer.decoding import cache
from reformer.decoding import sampling as decode
from reformer.evaluation.scoring import cached_eval_step
from reformer.model.blocks import loss_and_metrics
from reformer.model.model_config import ModelConfig
from reformer.model.models import ReformerLM, init_params
from reformer.tokens import END_ID
from tests.conftest import load_config
from tests.decode_reference import reference_logits

GREEDY = decode.Sampling(temperature=0.0)
CHUNK = 8


def model_config(types, *, reversible=True, positional="axial", **overrides) -> ModelConfig:
    m = load_config("tiny").model
    m.attention_types = types
    m.n_layers = 2 * len(types)
    m.residual = "reversible" if reversible else "two_stream"
    m.positional = positional
    m.local_chunk_len = m.lsh_chunk_len = CHUNK
    m.n_buckets, m.n_hashes = 4, 2
    m.axial_shape, m.axial_dims = (8, 8), (16, 16)
    m.vocab_size = 20
    for k, v in overrides.items():
        m[k] = v
    return ModelConfig.from_config(m)


def make(cfg: ModelConfig, seed: int = 1):
    return init_params(ReformerLM(cfg), jax.random.key(seed), 1, 64)


def random_tokens(key: int, shape) -> jax.Array:
    return jax.random.randint(jax.random.key(key), shape, 2, 20)


def all_rotations(cfg: ModelConfig, hash_key, n_hashes: int) -> list:
    """Each layer's LSH self-attention rotations of a decode with `hash_key` (None for other
    layers), as its cache set-up draws them."""
    caches = cache.init_caches(cfg, 1, 1, n_hashes, hash_key)
    return [c["attention"].get("rotations") for c in caches]


EXACT = {
    "local+full, reversible, axial": model_config(("local", "full")),
    "full, plain, learned positions": model_config(
        ("full",), reversible=False, positional="learned"
    ),
    "full shared-QK": model_config(("full_shared_qk",)),
}


@pytest.fixture(scope="module", params=list(EXACT))
def exact_model(request):
    cfg = EXACT[request.param]
    return cfg, make(cfg)


# Shorter and longer than a chunk (8), and longer than a local layer's ring (16).
@pytest.mark.parametrize("prompt_len", [3, 13, 30])
def test_cached_greedy_equals_rerunning_the_model(exact_model, prompt_len):
    """Each cached greedy token is the argmax of the full model run on the whole prefix, and
    the logits agree: so greedy decoding that re-runs the model gives the same tokens."""
    cfg, params = exact_model
    prompt = random_tokens(2, (2, prompt_len))
    tokens, logits = decode.generate(
        cfg, params, prompt, 24, jax.random.key(3), GREEDY, end_token=None, return_logits=True
    )
    whole = jnp.concatenate([prompt, tokens], axis=1)
    full_logits = ReformerLM(cfg).apply({"params": params}, whole)[:, prompt_len:]
    np.testing.assert_allclose(logits, full_logits, atol=1e-4)
    np.testing.assert_array_equal(tokens, jnp.argmax(full_logits, -1))


def test_cached_equals_uncached_decoding_loop():
    cfg = EXACT["local+full, reversible, axial"]
    params = make(cfg)
    prompt = random_tokens(4, (2, 5))
    args = (cfg, params, prompt, 20, jax.random.key(5))
    for sampling in (GREEDY, decode.Sampling(temperature=1.0)):
        cached = decode.generate(*args, sampling, end_token=None)
        uncached = decode.generate_uncached(*args, sampling, end_token=None)
        np.testing.assert_array_equal(cached, uncached)


def test_prompts_longer_than_a_query_block_prefill_in_blocks():
    """Prefill attends in query blocks of 256 positions: a 300-token prompt spans two."""
    cfg = model_config(("full", "local"), reversible=False, positional="learned", max_len=320)
    params = make(cfg)
    prompt = random_tokens(14, (1, 300))
    tokens, logits = decode.generate(
        cfg, params, prompt, 4, jax.random.key(0), GREEDY, end_token=None, return_logits=True
    )
    whole = jnp.concatenate([prompt, tokens], axis=1)
    full_logits = ReformerLM(cfg).apply({"params": params}, whole)[:, 300:]
    np.testing.assert_allclose(logits, full_logits, atol=1e-4)


def test_bfloat16_models_decode():
    """A bfloat16 model decodes through the same caches: tokens are the argmax of their
    logits, which stay near the float32 ones of the same weights."""
    cfg = model_config(("local", "full"), dtype="bfloat16")
    params = make(EXACT["local+full, reversible, axial"])
    prompt = random_tokens(15, (2, 11))
    tokens, logits = decode.generate(
        cfg, params, prompt, 12, jax.random.key(0), GREEDY, end_token=None, return_logits=True
    )
    assert np.isfinite(np.asarray(logits)).all()
    np.testing.assert_array_equal(tokens, jnp.argmax(logits, -1))
    whole = jnp.concatenate([prompt, tokens], axis=1)
    f32 = ReformerLM(EXACT["local+full, reversible, axial"]).apply({"params": params}, whole)
    np.testing.assert_allclose(logits, f32[:, 11:], atol=0.15)


LSH = model_config(("lsh", "local"))


@pytest.fixture(scope="module")
def lsh_model():
    return LSH, make(LSH)


@pytest.mark.parametrize("prefix", [1, 5, 40])
def test_lsh_decoding_equals_the_slow_reference(lsh_model, prefix):
    """Prefill of `prefix` positions then one step per position, against a NumPy model of
    the one-query LSH semantics (tests/decode_reference.py)."""
    cfg, params = lsh_model
    tokens = random_tokens(6, (2, 40))
    key = jax.random.key(7)
    logits = decode.cached_logits(cfg, params, tokens, key, n_hashes=2, prefix=prefix)
    expected = reference_logits(cfg, params, tokens, all_rotations(cfg, key, 2))
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_lsh_with_full_layers_equals_the_slow_reference():
    cfg = model_config(("lsh", "full"))
    params = make(cfg)
    tokens = random_tokens(16, (2, 24))
    key = jax.random.key(8)
    logits = decode.cached_logits(cfg, params, tokens, key, n_hashes=2, prefix=5)
    expected = reference_logits(cfg, params, tokens, all_rotations(cfg, key, 2))
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_factorized_buckets_decode_as_the_slow_reference():
    cfg = model_config(("lsh",), n_buckets=8, bucket_factors=(2, 4))
    params = make(cfg)
    tokens = random_tokens(17, (2, 24))
    key = jax.random.key(9)
    rotations = all_rotations(cfg, key, 2)
    assert rotations[0].shape[-1] == 3  # (2 + 4) / 2 columns, not 8 / 2.
    logits = decode.cached_logits(cfg, params, tokens, key, n_hashes=2, prefix=5)
    np.testing.assert_allclose(logits, reference_logits(cfg, params, tokens, rotations), atol=1e-4)


def test_automatic_buckets_follow_the_training_length():
    """With `n_buckets = 0`, decoding hashes into the buckets training used at its sequence
    length (`2 * seq_len / lsh_chunk_len`), not at the positions the model could hold."""
    cfg = model_config(("lsh", "local"), n_buckets=0)
    resolved = cache.with_training_length(cfg, 32)
    assert cache.lsh_n_buckets(resolved) == 8 and resolved.n_buckets == 0
    rotations = all_rotations(resolved, jax.random.key(0), 2)
    assert rotations[0].shape == (cfg.n_heads, cfg.d_head, 2, 4)
    assert cache.with_training_length(LSH, 32) == LSH  # explicit buckets stay
    # The eval step decodes with the buckets of its windows' length.
    params = make(cfg)
    tokens = random_tokens(17, (1, 32))
    batch = {"tokens": tokens, "weights": jnp.ones((1, 32))}
    sums = cached_eval_step(params, batch, model=ReformerLM(cfg), n_hashes=2)
    logits = decode.cached_logits(
        resolved, params, tokens, jax.random.key(0), n_hashes=2, prefix=32
    )
    expected = loss_and_metrics(logits, tokens, batch["weights"])[1]
    np.testing.assert_allclose(sums["loss_sum"], expected["loss_sum"], rtol=1e-6)


def test_lsh_semantics_differ_from_training_attention(lsh_model):
    """The reference is not trivially the training forward pass (so the test above tests
    the decoding semantics, not a copy of training)."""
    cfg, params = lsh_model
    tokens = random_tokens(6, (2, 40))
    logits = decode.cached_logits(cfg, params, tokens, jax.random.key(7), n_hashes=2, prefix=40)
    trained = ReformerLM(cfg).apply({"params": params}, tokens)
    assert np.abs(np.asarray(logits) - np.asarray(trained)).max() > 1e-2


def test_lsh_generation_matches_teacher_forcing(lsh_model):
    """`generate` (prefill + steps, rotations from its key) emits the argmax of the
    teacher-forced cached logits of its own output."""
    cfg, params = lsh_model
    prompt = random_tokens(8, (2, 9))
    rng = jax.random.key(9)
    tokens, logits = decode.generate(
        cfg, params, prompt, 20, rng, GREEDY, end_token=None, return_logits=True
    )
    whole = jnp.concatenate([prompt, tokens], axis=1)
    hash_key = jax.random.split(rng)[1]
    forced = decode.cached_logits(cfg, params, whole, hash_key, n_hashes=2, prefix=29)[:, 9:]
    np.testing.assert_allclose(logits, forced, atol=1e-4)
    np.testing.assert_array_equal(tokens, jnp.argmax(forced, -1))


# ------------------------------------------------------------------------------ sampling


def test_fixed_seed_reproduces_and_other_seeds_differ(lsh_model):
    cfg, params = lsh_model
    prompt = random_tokens(10, (3, 4))
    sampling = decode.Sampling(temperature=1.0)

    def run(seed):
        return np.asarray(
            decode.generate(cfg, params, prompt, 16, jax.random.key(seed), sampling, end_token=None)
        )

    first = run(0)
    np.testing.assert_array_equal(first, run(0))
    assert (first != run(1)).any()


def test_temperature_zero_is_greedy_and_tiny_temperatures_approach_it(lsh_model):
    cfg, params = lsh_model
    prompt = random_tokens(11, (2, 6))
    rng = jax.random.key(0)
    greedy, logits = decode.generate(
        cfg, params, prompt, 16, rng, GREEDY, end_token=None, return_logits=True
    )
    np.testing.assert_array_equal(greedy, jnp.argmax(logits, -1))
    cold = decode.generate(cfg, params, prompt, 16, rng, decode.Sampling(1e-4), end_token=None)
    np.testing.assert_array_equal(cold, greedy)


def test_batch_rows_are_independent(lsh_model):
    """A row's samples do not depend on the other rows: changing row 1's prompt leaves rows
    0 and 2 as they were, and row 0 alone is row 0 of the batch."""
    cfg, params = lsh_model
    prompts = random_tokens(12, (3, 7))
    rng = jax.random.key(4)
    sampling = decode.Sampling(temperature=1.0, top_k=10)

    def run(p):
        return np.asarray(decode.generate(cfg, params, p, 12, rng, sampling, end_token=None))

    together = run(prompts)
    changed = run(prompts.at[1].set(random_tokens(13, (7,))))
    assert (changed[1] != together[1]).any()
    np.testing.assert_array_equal(changed[[0, 2]], together[[0, 2]])
    np.testing.assert_array_equal(run(prompts[:1])[0], together[0])


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.5), (5, 0.3)])
def test_top_k_and_top_p_never_emit_excluded_tokens(top_k, top_p):
    logits = jax.random.normal(jax.random.key(0), (64, 20)) * 2.0
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(64))
    sampling = decode.Sampling(temperature=0.7, top_k=top_k, top_p=top_p)
    drawn = []
    for draw in range(30):
        draw_keys = jax.vmap(lambda k, d=draw: jax.random.fold_in(k, d))(keys)
        drawn.append(np.asarray(decode.sample_logits(logits, draw_keys, sampling)))
    drawn = np.stack(drawn, 1)  # [rows, draws]
    for row, tokens in zip(np.asarray(logits), drawn, strict=True):
        probs = np.exp((row - row.max()) / 0.7)
        order = np.argsort(-row)
        allowed = order[:top_k] if top_k else order
        p = probs[allowed] / probs[allowed].sum()
        before = np.cumsum(p) - p
        allowed = set(allowed[before < top_p].tolist())
        assert set(tokens.tolist()) <= allowed
    # Not degenerate: some rows draw tokens other than their most likely one.
    assert any(len(set(t.tolist())) > 1 for t in drawn)


def test_rows_stop_at_the_end_token():
    cfg = model_config(("local",))
    params = make(cfg)
    params["logits"]["bias"] = params["logits"]["bias"].at[END_ID].set(1e3)
    prompt = random_tokens(13, (2, 3))
    tokens = decode.generate(cfg, params, prompt, 6, jax.random.key(0), decode.Sampling())
    np.testing.assert_array_equal(tokens, [[1, 0, 0, 0, 0, 0]] * 2)
    tokens = decode.generate(cfg, params, prompt, 6, jax.random.key(0), end_token=None)
    np.testing.assert_array_equal(tokens, np.ones((2, 6)))


def test_rows_end_at_different_steps():
    """A row that emits the end token keeps it, then holds zeros (tokens and logits) while
    the other rows go on exactly as without an end token."""
    cfg = model_config(("local", "full"))
    params = make(cfg)
    prompt = random_tokens(18, (2, 5))
    rng = jax.random.key(0)
    free, free_logits = decode.generate(
        cfg, params, prompt, 20, rng, GREEDY, end_token=None, return_logits=True
    )
    free = np.asarray(free)
    first = {
        int(t): [int(np.argmax(r == t)) if (r == t).any() else 20 for r in free]
        for t in np.unique(free)
    }
    end, (e0, e1) = next((t, ends) for t, ends in first.items() if ends[0] != ends[1])
    tokens, logits = decode.generate(
        cfg, params, prompt, 20, rng, GREEDY, end_token=end, return_logits=True
    )
    for row, stop in enumerate((e0, e1)):
        kept = min(stop + 1, 20)
        np.testing.assert_array_equal(tokens[row, :kept], free[row, :kept])
        np.testing.assert_array_equal(tokens[row, kept:], 0)
        np.testing.assert_allclose(logits[row, :kept], free_logits[row, :kept], atol=1e-5)
        np.testing.assert_array_equal(logits[row, kept:], 0)


def test_bad_prompts_are_named():
    cfg = model_config(("local",))
    params = make(cfg)
    with pytest.raises(
        ValueError, match=r"token ids must be in 0..19 \(model.vocab_size=20\), got 20"
    ):
        decode.generate(cfg, params, jnp.full((1, 3), 20), 2, jax.random.key(0))
    with pytest.raises(ValueError, match="got -1"):
        decode.generate(cfg, params, jnp.full((1, 3), -1), 2, jax.random.key(0))
    with pytest.raises(ValueError, match="prompt must be token ids"):
        decode.generate(cfg, params, jnp.ones((3,), jnp.int32), 2, jax.random.key(0))
    acausal = model_config(("local",), causal=False)
    with pytest.raises(ValueError, match="needs a causal model"):
        decode.generate(acausal, params, jnp.ones((1, 3), jnp.int32), 2, jax.random.key(0))
    with pytest.raises(ValueError, match="top_k must be an integer"):
        decode.Sampling(top_k=True)


def test_tiny_temperatures_do_not_overflow():
    logits = jnp.array([[0.0, 50.0, 49.0, -3.0]])
    keys = jax.random.key(0)[None]
    token = decode.sample_logits(logits, keys, decode.Sampling(temperature=1e-6))
    assert int(token[0]) == 1


def test_bad_lengths_and_sampling_settings_are_named():
    cfg = model_config(("local",))
    params = make(cfg)
    with pytest.raises(ValueError, match="at most 63"):
        decode.generate(cfg, params, jnp.ones((1, 64), jnp.int32), 1, jax.random.key(0))
    with pytest.raises(ValueError, match="length <= 54"):
        decode.generate(cfg, params, jnp.ones((1, 10), jnp.int32), 60, jax.random.key(0))
    with pytest.raises(ValueError, match="top_p must be in"):
        decode.Sampling(top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be"):
        decode.Sampling(temperature=-1.0)
