"""Inspection (`reformer/inspection/`, `python -m reformer.inspect`): the buckets it reports
are the ones the model's own forward pass hashes into, and its attention weights sum to 1
and reproduce what the layer's attention computed for every head."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reformer.attention import lsh
from reformer.attention.self_attention import INTERMEDIATES, LSHSelfAttention
from reformer.inspection import capture, patterns, report
from reformer.model.model_config import ModelConfig
from reformer.model.models import init_params, make_model
from reformer.train import train_and_evaluate
from tests.conftest import load_config, run_module

LENGTH = 32


def tiny_model(**fields) -> tuple[ModelConfig, dict]:
    """configs/tiny.py's model with `fields` changed, and random parameters."""
    config = load_config("tiny")
    for name, value in fields.items():
        config.model[name] = value
    cfg = ModelConfig.from_config(config.model)
    return cfg, init_params(make_model(cfg), jax.random.key(1), 1, LENGTH)


# A reversible LM whose LSH layer 2 is in the pattern's second repeat, and a bidirectional
# encoder with padding, position chunks (the capture runs twice), full and local attention.
MODELS = {
    "lm": dict(
        attention_types=("lsh", "local"),
        n_layers=4,
        residual="reversible",
        lsh_chunk_len=8,
        local_chunk_len=8,
        n_hashes=2,
    ),
    "encoder": dict(
        kind="masked_lm",
        attention_types=("lsh", "full_shared_qk", "full", "local"),
        n_layers=4,
        local_chunk_len=8,
        residual="standard",
        lsh_chunk_len=4,
        n_hashes=2,
        position_chunk_size=8,
    ),
}
N_HASHES = {"lm": 3, "encoder": None}  # 3: more rounds than the model trained with


LAYERS = {"lm": (2,), "encoder": (0, 1, 2, 3)}  # the LM's layer 2: LSH, second repeat
HASH_KEY = 7


def tokens_of(kind: str) -> np.ndarray:
    """One sequence for the LM (as `report.inspect_layer` reads), two for the encoder, with
    padding inside and at the end."""
    tokens = np.random.default_rng(0).integers(1, 16, (2, LENGTH)).astype(np.int32)
    if kind == "lm":
        return tokens[:1]
    tokens[0, 10:13], tokens[1, 27:] = 0, 0
    return tokens


def _recording(monkeypatch, calls: list) -> None:
    """Every one-head attention call of the model records `(first input, output, buckets or
    None)` as it runs (`jax.debug.callback`: the values of the model's own forward pass)."""

    def record(q, out, buckets=None):
        calls.append(
            (np.asarray(q), np.asarray(out), None if buckets is None else np.asarray(buckets))
        )

    def wrap(original, has_buckets):
        def recorded(q, *args, **kwargs):
            result = original(q, *args, **kwargs)
            out, buckets = result if has_buckets else (result, None)
            jax.debug.callback(record, q, out, *(() if buckets is None else (buckets,)))
            return result

        return recorded

    monkeypatch.setattr(lsh, "lsh_attention", wrap(lsh.lsh_attention, True))
    monkeypatch.setattr(lsh, "local_attention", wrap(lsh.local_attention, False))
    monkeypatch.setattr(lsh, "full_attention", wrap(lsh.full_attention, False))


def _matching(calls: list, q_LxK: np.ndarray):
    """The recorded call whose first input is `q_LxK` (to float tolerance)."""
    found = [c for c in calls if c[0].shape == q_LxK.shape and np.allclose(c[0], q_LxK, atol=1e-5)]
    assert len(found) >= 1, "no attention call of the model's forward pass had these inputs"
    return found[0]


def _expanded(module, kind: str):
    """Jitted `(q, k, v, mask, buckets) -> (weights, visible, weights @ values)` of one head
    of the attention `module` over all `LENGTH` queries."""

    def fn(q, k, v, mask, buckets):
        plan = patterns.head_plan(module, kind, mask, buckets, LENGTH)
        pattern = patterns.expand(plan, q, k, jnp.arange(LENGTH))
        out = patterns.pattern_output(plan, pattern, v)
        return pattern.weights_QxNxE, pattern.visible_QxNxE, out

    return jax.jit(fn)


def _check_head(fn, q, k, v, mask, buckets, outputs) -> None:
    """The weights sum to 1 over the keys the query sees and reproduce each of `outputs`."""
    weights, visible, out = (np.asarray(a) for a in fn(q, k, v, mask, buckets))
    np.testing.assert_allclose(weights.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert not weights[~visible].any()
    for expected in outputs:
        np.testing.assert_allclose(out, expected, atol=2e-5)


@pytest.mark.parametrize("kind", ["lm", pytest.param("encoder", marks=pytest.mark.slow)])
def test_buckets_and_weights_are_the_models_own(kind, monkeypatch):
    """For every layer kind: the reported buckets equal those the model's forward pass (same
    hash key) hashed into, every query's weights sum to 1 over the keys it sees, and the
    weights times the values give the output the model's attention computed for that head."""
    cfg, params = tiny_model(**MODELS[kind])
    tokens, hash_key, n_hashes = tokens_of(kind), jax.random.key(HASH_KEY), N_HASHES[kind]
    captures = [
        capture.capture_layer(cfg, params, tokens, i, hash_key, n_hashes) for i in LAYERS[kind]
    ]
    calls: list = []
    _recording(monkeypatch, calls)
    model = make_model(cfg)
    model.apply({"params": params}, jnp.asarray(tokens), n_hashes=n_hashes, rngs={"hash": hash_key})
    for cap in captures:
        fn = _expanded(cap.module, cap.kind)
        for b in range(tokens.shape[0]):
            mask = None if cap.mask is None else cap.mask[b]
            for h in range(cfg.n_heads):
                proj = {name: np.asarray(a[b, h]) for name, a in cap.projections.items()}
                shared = "query_key" in proj
                q, k = (proj["query_key"], None) if shared else (proj["query"], proj["key"])
                _, model_out, model_buckets = _matching(calls, q)
                buckets = None if cap.buckets is None else cap.buckets[b, h]
                if cap.kind == "lsh":
                    assert buckets.shape[0] == (n_hashes or cfg.n_hashes)
                    np.testing.assert_array_equal(buckets, model_buckets)
                outputs = (model_out, cap.heads_out[b, h])
                _check_head(fn, q, k, proj["value"], mask, buckets, outputs)
    kinds = {cap.kind for cap in captures}
    assert kinds == ({"lsh"} if kind == "lm" else {"lsh", "full_shared_qk", "full", "local"})


@pytest.mark.parametrize("causal", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_appendix_a_options(causal):
    """Without attention across buckets and without duplicate attention (paper, Appendix A),
    the weights still reproduce the LSH kernel's output."""
    module = LSHSelfAttention(
        n_heads=2,
        d_head=8,
        chunk_len=4,
        n_hashes=3,
        causal=causal,
        n_chunks_after=0 if causal else 1,
        attend_across_buckets=False,
        allow_duplicate_attention=False,
    )
    x = jax.random.normal(jax.random.key(0), (1, LENGTH, 16))
    variables = module.init(jax.random.key(1), x)
    (_, buckets), state = module.apply(variables, x, mutable=[INTERMEDIATES])
    sown = state[INTERMEDIATES]
    qk, v = (sown["projections"][0][n][0] for n in ("query_key", "value"))
    fn = _expanded(module, "lsh")
    for h in range(2):
        _check_head(fn, qk[h], None, v[h], None, buckets[0, h], (sown["heads_out"][0][0, h],))


def test_inspect_layer_arrays_and_files(tmp_path):
    """The window maps hold the weights of the entries that fall in them, only where a round
    lets the query see the key; the buckets are the capture's; the files are written."""
    cfg, params = tiny_model(**MODELS["lm"])
    tokens, layer, n_hashes = tokens_of("lm"), LAYERS["lm"][0], N_HASHES["lm"]
    hash_key = jax.random.key(HASH_KEY)
    arrays = report.inspect_layer(
        cfg,
        params,
        tokens[0],
        layer,
        n_hashes=n_hashes,
        heads=(1,),
        queries=(8, 24),
        keys=(4, 20),
        hash_key=hash_key,
    )
    assert arrays["kind"] == "lsh" and arrays["weights"].shape == (1, 16, 16)
    assert arrays["seen"].shape == (1, 16, 3, 16) and arrays["entry_keys"].shape == (1, 16, 3, 16)
    np.testing.assert_allclose(arrays["weights"].sum(-1) + arrays["outside"], 1.0, atol=1e-5)
    assert not arrays["weights"][~arrays["seen"].any(axis=2)].any()
    cap = capture.capture_layer(cfg, params, tokens, layer, hash_key, n_hashes)
    np.testing.assert_array_equal(arrays["buckets"], cap.buckets[0])
    assert (arrays["bucket_sizes"].sum(-1) == LENGTH).all()
    with pytest.raises(ValueError, match="not within"):
        report.inspect_layer(cfg, params, tokens[0], layer, queries=(0, LENGTH + 1))
    paths = report.write_inspection(arrays, str(tmp_path), query=20, diagonal=16)
    names = ["layer2.npz"] + [f"layer2_head1_{n}.png" for n in ("buckets", "attention", "query20")]
    assert [os.path.basename(p) for p in paths] == names
    with np.load(paths[0]) as saved:
        np.testing.assert_array_equal(saved["weights"], arrays["weights"])
    for path in paths[1:]:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny LSH language model on the duplication task, trained for 2 steps."""
    config = load_config("tiny")
    config.model.attention_types, config.model.lsh_chunk_len = ("lsh",), 8
    config.train.num_steps = config.train.eval_every = config.train.checkpoint_every = 2
    config.eval.num_batches = 1
    path = str(tmp_path_factory.mktemp("inspect"))
    train_and_evaluate(config, path)
    return path


@pytest.mark.slow
def test_command_writes_pictures_and_arrays(workdir, tmp_path):
    out = str(tmp_path / "out")
    args = [
        "reformer.inspect",
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        "--config.model.attention_types=('lsh',)",
        "--config.model.lsh_chunk_len=8",
        "--config.train.num_steps=2",
    ]
    proc = run_module(
        [
            *args,
            "--layer=0",
            "--example=3",
            "--n_hashes=2",
            "--query=20",
            "--diagonal=16",
            f"--out={out}",
        ]
    )
    assert proc.returncode == 0, proc.stderr
    names = sorted(os.listdir(out))
    for h in range(2):
        for name in ("buckets", "attention", "query20"):
            assert f"layer0_head{h}_{name}.png" in names
            with open(os.path.join(out, f"layer0_head{h}_{name}.png"), "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    arrays = np.load(os.path.join(out, "layer0.npz"))
    assert arrays["buckets"].shape == (2, 2, LENGTH) and int(arrays["n_rounds"]) == 2
    np.testing.assert_allclose(arrays["weights"].sum(-1) + arrays["outside"], 1.0, atol=1e-5)
    bad = run_module([*args, "--ids=1,2,3", "--window=0:9", f"--out={out}"])
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: query window 0:9")
