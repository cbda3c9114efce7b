"""Export to HuggingFace's Reformer: the exported directory loads in `transformers` and
computes our logits (local and full attention, to 1e-4; LSH under HF's own rotations) and
our greedy tokens; export -> HF -> import gives our parameters back exactly; what HF cannot
hold is refused in one line.

The references run in float64: HF's float32 shared-QK attention rounds a query's
log-sum-exp near the -1e5 self mask (see tests/test_convert_hf.py).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="HF export checks need torch (requirements-dev.txt)")
transformers = pytest.importorskip(
    "transformers", reason="HF export checks need transformers (requirements-dev.txt)"
)

from reformer.attention import self_attention as attention  # noqa: E402
from reformer.config import ConfigError, default_config, load_config_file  # noqa: E402
from reformer.decoding import sampling  # noqa: E402
from reformer.interop import hf_export, hf_import, hf_names  # noqa: E402
from reformer.model.models import shift_right  # noqa: E402
from reformer.train import train_and_evaluate  # noqa: E402
from reformer.training.state import load_params, make_model  # noqa: E402
from tests.conftest import load_config, run_module, run_script  # noqa: E402

SEQ = 64
VOCAB = 40
HASH_SEED = 7
TINY = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")
TINY_LOCAL = ["--config.model.attention_types=('local',)", "--config.model.local_chunk_len=8"]
AXIAL = dict(positional="axial", axial_shape=(8, 8), axial_dims=(12, 20))
MODELS = {  # name -> config.model fields: every exportable kind of layer, residual, position.
    "local": dict(attention_types=("local",), residual="two_stream", **AXIAL),
    "full": dict(attention_types=("full", "full_shared_qk"), ff_activation="gelu_exact"),
    "local_shared_qk": dict(
        attention_types=("local", "full_shared_qk"), positional="none", ff_activation="relu"
    ),
    "masked": dict(kind="masked_lm", attention_types=("full_shared_qk", "full")),
    "lsh": dict(attention_types=("local", "lsh"), n_hashes=2, **AXIAL),
}


def small_config(**model):
    c = default_config()
    c.model.update(
        dict(vocab_size=VOCAB, d_model=32, d_ff=64, n_heads=2, d_head=16, n_layers=2, max_len=SEQ)
    )
    c.model.update(dict(local_chunk_len=16, lsh_chunk_len=16, residual="reversible"))
    c.model.update(model)
    c.data.seq_len = SEQ
    return c


def random_params(config, seed=0):
    """Random parameters of every weight HF has (`hf_names.weights`, the table the export
    reads): LayerNorms and biases far from their starting 1 and 0; no JAX compilation."""
    rng = np.random.default_rng(seed)

    def draw(w):
        a = rng.normal(size=w.shape).astype(np.float32)
        if w.path[-1] == "scale":
            return 1.0 + 0.3 * a
        if "bias" in w.path[-1]:
            return 0.3 * a
        if len(w.shape) == 1 or w.path[0] in ("embed", "axial_pos", "pos_embed"):
            return a  # Tables: normal(1), as initialized.
        return a / np.sqrt(np.prod(w.shape[:-1]))

    return jax.tree.map(jnp.asarray, hf_names.assemble(config.model, draw))


class Exported:
    """A model of ours, its export and the HF model loaded from it (float64)."""

    def __init__(self, config, params, out, hash_seed=None):
        self.config, self.params, self.out = config, params, out
        self.hf_config = hf_export.export_params(config, params, out, hash_seed=hash_seed)
        cls = getattr(transformers, self.hf_config["architectures"][0])
        self.hf = cls.from_pretrained(out).eval().double()
        self.apply = jax.jit(lambda p, t: make_model(config).apply({"params": p}, t))

    def logits(self, tokens):
        """(ours, HF's) logits of `tokens` (an LM's targets, a masked LM's inputs), at the
        positions both score (a masked LM's real ones)."""
        ours = np.asarray(self.apply(self.params, jnp.asarray(tokens)))
        with torch.no_grad():
            if self.config.model.kind == "lm":
                ids = torch.tensor(np.asarray(shift_right(jnp.asarray(tokens))))
                return ours, self.hf(ids).logits.numpy()
            mask = torch.tensor(tokens != 0)
            ref = self.hf(torch.tensor(tokens), attention_mask=mask).logits.numpy()
        return ours[tokens != 0], ref[tokens != 0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> Exported, built when first asked for."""
    built = {}

    def get(name):
        if name not in built:
            config = small_config(**MODELS[name])
            out = str(tmp_path_factory.mktemp(f"hf_{name}"))
            seed = HASH_SEED if name == "lsh" else None
            built[name] = Exported(config, random_params(config), out, hash_seed=seed)
        return built[name]

    return get


def some_tokens(seed, length=SEQ, pad_from=None):
    tokens = np.random.default_rng(seed).integers(2, VOCAB, size=(2, length))
    if pad_from is not None:
        tokens[1, pad_from:] = 0
    return tokens


@pytest.mark.parametrize(
    "name, length",
    [
        ("local", 56),  # Not a multiple of the chunk: HF pads it, chunks see what ours see.
        ("local_shared_qk", SEQ),
        ("masked", SEQ),
        pytest.param("full", SEQ, marks=pytest.mark.slow),  # Its layers: in the two above.
    ],
)
def test_logits_equal_hf(exported, name, length):
    e = exported(name)
    ours, ref = e.logits(some_tokens(1, length, pad_from=40 if name == "masked" else None))
    assert np.abs(ref).max() > 1.0  # Logits of a size where errors would show.
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_lsh_logits_equal_hf_under_its_rotations(exported, monkeypatch):
    """The LSH layers are mapped right: with HF's rotations (its `hash_seed`) in ours the
    logits agree, and they depend on the rotations (another seed gives others)."""
    e = exported("lsh")
    tokens = some_tokens(3)

    def hf_rotations(key, shape):
        torch.manual_seed(HASH_SEED)  # HF reseeds in every LSH layer.
        return np.asarray(torch.randn(shape, dtype=torch.float64).numpy(), np.float32)

    monkeypatch.setattr(attention, "random_rotations", hf_rotations)
    ours, ref = e.logits(tokens)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    set_hash_seed(e.hf, HASH_SEED + 1)
    with torch.no_grad():
        other = e.hf(torch.tensor(np.asarray(shift_right(jnp.asarray(tokens))))).logits.numpy()
    set_hash_seed(e.hf, HASH_SEED)
    assert np.abs(other - ref).max() > 1e-2


def set_hash_seed(hf, seed):
    lsh_class = transformers.models.reformer.modeling_reformer.LSHSelfAttention
    for module in hf.modules():
        if isinstance(module, lsh_class):
            module.hash_seed = seed


@pytest.mark.parametrize("name", ["local", pytest.param("full", marks=pytest.mark.slow)])
def test_hf_generate_gives_our_greedy_tokens(exported, name):
    e = exported(name)
    prompt = some_tokens(4, length=5)
    cfg = make_model(e.config).cfg
    ours = sampling.generate(
        cfg, e.params, jnp.asarray(prompt), 12, jax.random.key(0), sampling.Sampling(0.0)
    )
    with torch.no_grad():
        ids = torch.tensor(np.concatenate([np.zeros((2, 1), np.int64), prompt], axis=1))
        ref = e.hf.generate(ids, max_new_tokens=12, do_sample=False, num_beams=1).numpy()[:, 6:]
    # HF stops when every row has ended (id 1); later entries are 0 in both.
    ours = np.asarray(ours)
    assert not ours[:, ref.shape[1] :].any()
    np.testing.assert_array_equal(ref, ours[:, : ref.shape[1]])


def test_config_json(exported):
    """Every layer written out, buckets resolved, this project's ids, reversible layers."""
    with open(os.path.join(exported("lsh").out, "config.json")) as f:
        hf = json.load(f)
    assert hf["attn_layers"] == ["local", "lsh"] and hf["num_hidden_layers"] == 2
    assert hf["num_buckets"] == 8  # Two per chunk at data.seq_len, as training hashed.
    assert (hf["pad_token_id"], hf["eos_token_id"], hf["hash_seed"]) == (0, 1, HASH_SEED)
    assert (hf["is_decoder"], hf["lsh_num_chunks_after"], hf["hidden_act"]) == (
        True,
        0,
        "gelu_new",
    )
    full = exported("full").hf_config  # Full layers: chunks spanning the sequence.
    assert full["attn_layers"] == ["local", "lsh"]
    assert full["local_attn_chunk_length"] == full["lsh_attn_chunk_length"] == SEQ
    masked = exported("masked").hf_config
    assert masked["architectures"] == ["ReformerForMaskedLM"] and not masked["is_decoder"]
    assert masked["lsh_num_chunks_after"] == masked["local_num_chunks_after"] == 1


def test_factorized_buckets_and_deeper_patterns():
    config = small_config(
        attention_types=("lsh", "local", "lsh"), n_layers=6, bucket_factors=(2, 4), **AXIAL
    )
    hf = hf_export.hf_config(config)
    assert hf["attn_layers"] == ["lsh", "local", "lsh"] * 2
    assert hf["num_buckets"] == [2, 4]
    assert hf_import.config_from_hf(hf).model.bucket_factors == (2, 4)


def test_round_trip_through_hf_is_exact(exported, tmp_path):
    """export -> HF (`from_pretrained`, `save_pretrained`) -> import: the same parameters
    and the same model."""
    e = exported("lsh")
    resaved = str(tmp_path / "resaved")
    e.hf.float().save_pretrained(resaved)
    e.hf.double()
    config_path = hf_import.convert(resaved, str(tmp_path / "back"), seq_len=SEQ)
    back = load_config_file(config_path)
    for field in ("attention_types", "n_layers", "n_hashes", "lsh_chunk_len", "local_chunk_len"):
        assert back.model[field] == e.config.model[field], field
    assert back.model.n_buckets == 8 and back.model.ff_activation == e.config.model.ff_activation
    params, step = load_params(back, str(tmp_path / "back"), make_model(back))
    assert step == 0
    ours = jax.tree.leaves_with_path(e.params)
    theirs = dict(jax.tree.leaves_with_path(params))
    assert len(ours) == len(theirs)
    for path, value in ours:
        np.testing.assert_array_equal(np.asarray(theirs[path]), np.asarray(value), str(path))


def refusal(**model):
    with pytest.raises(ConfigError) as info:
        hf_export.hf_config(small_config(**model))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "model, words",
    [
        (dict(residual="standard"), "model.residual = 'standard'"),
        (dict(kind="encoder_decoder"), "no Reformer encoder-decoder"),
        (dict(kind="classifier"), "dense -> tanh -> projection"),
        (dict(causal=False), "model.causal = False"),
        (
            dict(positional="axial", axial_shape=(4, 4, 4), axial_dims=(8, 8, 16)),
            "model.axial_shape = (4, 4, 4)",
        ),
        (dict(attention_types=("local", "full")), "two local chunk lengths"),
        (dict(attention_types=("lsh", "full_shared_qk")), "two lsh chunk lengths"),
        (dict(kind="masked_lm", attention_types=("local",)), "wraps around"),
        (dict(attention_types=("local", "lsh"), lsh_chunk_len=20), "multiple of 80"),
    ],
)
def test_what_hf_cannot_hold_is_refused(model, words):
    assert words in refusal(**model)


def test_a_full_layer_beside_a_local_chunk_spanning_the_sequence_exports():
    """Genuine local layers whose chunk covers every sequence are full attention already;
    a chunk longer than the model's positions is cut to them (HF attends over the whole
    sequence either way)."""
    config = small_config(attention_types=("local", "full"), local_chunk_len=2 * SEQ)
    assert hf_export.hf_config(config)["local_attn_chunk_length"] == SEQ


def test_command_refuses_in_one_line(tmp_path):
    result = run_module(
        [
            "reformer.export",
            "--config",
            TINY,
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(tmp_path / "out"),
            "--config.model.residual=standard",
        ]
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: cannot export to HuggingFace's Reformer")
    assert len(result.stderr.strip().splitlines()) <= 2  # The error and the usage line.
    assert not os.path.exists(tmp_path / "out")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # Training costs more than the fast suite allows.
    """configs/tiny.py with local attention, trained a few steps, then exported by the
    command."""
    config = load_config("tiny")
    config.model.attention_types, config.model.local_chunk_len = ("local",), 8
    t = config.train
    t.num_steps, t.log_every, t.eval_every, t.checkpoint_every = 6, 3, 6, 6
    workdir = str(tmp_path_factory.mktemp("tiny") / "run")
    train_and_evaluate(config, workdir)
    out = str(tmp_path_factory.mktemp("tiny_hf") / "hf")
    args = ["--config", TINY, "--workdir", workdir, "--out", out, *TINY_LOCAL]
    result = run_module(["reformer.export", *args])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Exported step 6" in result.stdout
    return config, workdir, out


@pytest.mark.slow  # Random models of every kind are compared above.
def test_trained_model_exports_with_its_card(trained):
    config, workdir, out = trained
    params, step = load_params(config, workdir, make_model(config))
    assert step == 6
    hf = transformers.ReformerModelWithLMHead.from_pretrained(out).eval().double()
    tokens = np.random.default_rng(5).integers(1, config.model.vocab_size, size=(2, 32))
    ours = np.asarray(make_model(config).apply({"params": params}, jnp.asarray(tokens)))
    with torch.no_grad():
        ref = hf(torch.tensor(np.asarray(shift_right(jnp.asarray(tokens))))).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
    assert "to step 6" in card and "metrics.jsonl (last evaluation of training)" in card
    assert "`model.local_chunk_len` | `8`" in card


@pytest.mark.slow
def test_check_script_scores_like_hf(trained, tmp_path):
    """scripts/hf_export_check.py: HF's bits per token of the export equal ours (local
    attention: to float precision)."""
    _, workdir, _ = trained
    record = str(tmp_path / "check.json")
    args = ["--config", TINY, "--workdir", workdir, "--out", record, "--split", "validation"]
    sets = [a.replace("--config.", "--set=") for a in TINY_LOCAL]
    result = run_script("hf_export_check.py", [*args, *sets])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(record) as f:
        r = json.load(f)
    assert r["step"] == 6 and r["tokens"] > 0
    assert abs(r["relative_difference"]) < 1e-5
