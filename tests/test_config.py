"""Bad configurations fail at start with a message naming the field."""

import functools
import os
import re

import jax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reformer.config import ConfigError, default_config, mesh_shape, schema, validate
from reformer.config.__main__ import schema_markdown
from reformer.data import make_train_stream
from reformer.train import train_and_evaluate
from reformer.training.optimizer import make_optimizer, make_schedule
from reformer.training.state import make_init_state, make_model
from reformer.training.steps import train_step
from tests.conftest import REPO, load_config, run_module


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
        ("data.seq_len", 30, r"config.data.seq_len: the duplication task .* needs seq_len"),
        ("model.attention_types", ("full", "fancy"), "config.model.attention_types: 'fancy'"),
        ("model.n_buckets", 7, "config.model.n_buckets: must be even"),
        ("model.bucket_factors", (4, 3), "config.model.bucket_factors: must be even counts"),
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


def test_bucket_factors_must_multiply_to_n_buckets():
    c = load_config("tiny")
    c.model.attention_types, c.model.bucket_factors = ("lsh",), (4, 8)
    c.model.lsh_chunk_len = 8
    validate(c)  # n_buckets 0: the product is the count.
    c.model.n_buckets = 32
    validate(c)
    c.model.n_buckets = 16
    with pytest.raises(ConfigError, match="config.model.bucket_factors: their product 32"):
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


def test_every_field_is_documented_and_the_docs_show_the_schema():
    """Every field of the schema has a doc line, and docs/config.md is the table that
    `python -m reformer.config` prints from the schema (regenerate it with that command)."""
    for group, name, field in schema.fields():
        assert field.doc.strip(), f"{group}.{name} has no doc"
        assert field.resume in (schema.SAME, schema.ON_OFF, schema.FREE), (group, name)
    assert default_config().to_dict() == {
        g: {n: f.default for n, f in members.items()} for g, members in schema.GROUPS.items()
    }
    with open(os.path.join(REPO, "docs", "config.md")) as f:
        assert f.read() == schema_markdown(), "python -m reformer.config > docs/config.md"


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


# --- Layer patterns, several problems at once, the device mesh and data paths. ---------------


def problems(error: ConfigError) -> list[str]:
    """The fields (`group.name`) a ConfigError names, one per reported problem, in order."""
    return re.findall(r"^\s*config\.(\w+\.\w+):", str(error), re.MULTILINE)


@pytest.mark.parametrize("n_layers", [1, 3, 5])
def test_layers_must_repeat_the_attention_pattern(n_layers):
    """The reported cases: a two-type pattern over an odd number of layers."""
    c = load_config("tiny")
    c.model.attention_types = ("local", "lsh")
    c.model.lsh_chunk_len = c.model.local_chunk_len = 16
    c.model.n_layers = n_layers
    with pytest.raises(
        ConfigError,
        match=rf"^config\.model\.n_layers: must be a multiple of "
        rf"len\(model\.attention_types\)=2 .*got {n_layers}$",
    ):
        validate(c)
    c.model.n_layers = 4
    validate(c)


def test_several_problems_are_reported_together():
    c = load_config("tiny")
    c.train.num_steps = 0
    c.optimizer.name = "sgd"
    c.model.n_buckets = 7
    c.mesh.fsdp = 3
    with pytest.raises(ConfigError) as info:
        validate(c, num_devices=4)
    message = str(info.value)
    assert message.startswith("4 problems in the config:\n")
    assert sorted(problems(info.value)) == [
        "mesh.fsdp",
        "model.n_buckets",
        "optimizer.name",
        "train.num_steps",
    ]
    assert "config.mesh.fsdp: 3 does not divide the number of devices (4)" in message


@pytest.mark.parametrize(
    "data, fsdp, num_devices, shape",
    [
        (-1, 1, 8, (8, 1)),
        (2, -1, 8, (2, 4)),
        (-1, 2, 8, (4, 2)),
        (1, -1, 8, (1, 8)),
        (4, 2, 8, (4, 2)),
        (-1, 1, 1, (1, 1)),
    ],
)
def test_mesh_shape(data, fsdp, num_devices, shape):
    assert mesh_shape(data, fsdp, num_devices) == shape


@pytest.mark.parametrize(
    "data, fsdp, num_devices, match",
    [
        (-1, -1, 8, r"^config\.mesh\.data: mesh\.data and mesh\.fsdp cannot both be -1$"),
        (3, 1, 8, r"^config\.mesh\.data: mesh\.data \* mesh\.fsdp = 3 \* 1 = 3 must equal"),
        (4, 4, 8, r"^config\.mesh\.data: .* = 16 must equal the number of devices \(8\)"),
        (-1, 3, 8, r"^config\.mesh\.fsdp: 3 does not divide the number of devices \(8\)$"),
        (3, -1, 8, r"^config\.mesh\.data: 3 does not divide the number of devices \(8\)$"),
        (0, 1, 8, r"^config\.mesh\.data: must be a positive integer or -1"),
        (-1, -2, 8, r"^config\.mesh\.fsdp: must be a positive integer or -1"),
    ],
)
def test_mesh_shape_errors_name_the_field(data, fsdp, num_devices, match):
    with pytest.raises(ConfigError, match=match):
        mesh_shape(data, fsdp, num_devices)


def test_mesh_errors_from_validate():
    c = load_config("tiny")
    c.mesh.data = 3
    with pytest.raises(ConfigError, match=r"^config\.mesh\.data: "):
        validate(c, num_devices=8)
    c.mesh.data, c.mesh.fsdp = 2, -1
    validate(c, num_devices=8)


def test_batch_size_counts_gradient_accumulation():
    c = load_config("tiny")
    c.train.batch_size = 8
    c.train.grad_accum_steps = 4
    with pytest.raises(
        ConfigError,
        match=r"^config\.train\.batch_size: 8 is not divisible by mesh\.data \* mesh\.fsdp \* "
        r"train\.grad_accum_steps = 4 \* 1 \* 4 = 16$",
    ):
        validate(c, num_devices=4)
    validate(c, num_devices=2)  # 2 * 1 * 4 = 8 divides 8.
    c.train.grad_accum_steps = 2
    validate(c, num_devices=4)
    c.mesh.data, c.mesh.fsdp = 2, 2  # The batch is split over both mesh axes.
    validate(c, num_devices=4)
    c.train.grad_accum_steps = 0
    with pytest.raises(ConfigError, match=r"^config\.train\.grad_accum_steps: must be a positive"):
        validate(c, num_devices=4)


def test_eval_batch_size_vs_devices():
    c = load_config("tiny")
    c.eval.batch_size = 6
    with pytest.raises(
        ConfigError,
        match=r"^config\.eval\.batch_size: 6 is not divisible by the number of devices \(4\)$",
    ):
        validate(c, num_devices=4)
    validate(c, num_devices=2)
    c.eval.batch_size = 12
    c.train.grad_accum_steps = 8  # Evaluation does not accumulate: only devices count.
    c.train.batch_size = 32
    validate(c, num_devices=4)


@pytest.mark.parametrize(
    "types, field", [(("lsh",), "lsh_chunk_len"), (("full", "local"), "local_chunk_len")]
)
def test_chunk_longer_than_the_sequence(types, field):
    c = load_config("tiny")  # data.seq_len = 32; both chunk lengths default to 64.
    c.model.attention_types = types
    with pytest.raises(
        ConfigError,
        match=rf"^config\.model\.{field}: 64 is longer than data\.seq_len=32",
    ):
        validate(c)
    c.model[field] = 32
    validate(c)


def test_chunk_length_of_an_unused_attention_type_is_not_checked():
    c = load_config("tiny")
    c.model.attention_types = ("full",)
    c.model.lsh_chunk_len = c.model.local_chunk_len = 1000
    validate(c)


def test_text_data_path(tmp_path):
    c = load_config("tiny")
    c.data.name = "text"
    c.model.vocab_size = 258
    c.data.path = str(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match=r"^config\.data\.path: no such file: .*missing\.txt$"):
        validate(c)
    c.data.path = ""
    with pytest.raises(ConfigError, match=r"^config\.data\.path: data\.name=\"text\" reads"):
        validate(c)
    (tmp_path / "bytes.txt").write_bytes(b"hello world " * 100)
    c.data.path = str(tmp_path / "bytes.txt")
    validate(c)


# --- Property: validate names exactly the fields made invalid; valid configs train. ----------

PATTERNS = [("full",), ("lsh",), ("full", "local"), ("local", "lsh"), ("lsh", "full_shared_qk")]
# Fields the generator may make invalid ("mesh" stands for mesh.data and mesh.fsdp together).
BREAKABLE = (
    "model.residual",
    "model.n_layers",
    "model.lsh_chunk_len",
    "model.local_chunk_len",
    "model.n_buckets",
    "model.n_hashes",
    "model.dropout",
    "model.attention_dropout",
    "model.positional",
    "model.axial_shape",
    "model.axial_dims",
    "model.dtype",
    "model.position_chunk_size",
    "model.loss_chunk_size",
    "model.lsh_heads_per_step",
    "optimizer.name",
    "optimizer.learning_rate",
    "optimizer.schedule",
    "optimizer.clip_norm",
    "train.num_steps",
    "train.grad_accum_steps",
    "train.batch_size",
    "eval.batch_size",
    "data.path",
    "mesh",
)


def expected_mesh(data: int, fsdp: int, num_devices: int):
    """`(shape or None, fields that must be reported)` under the rules of `config.mesh`."""
    bad = {f"mesh.{n}" for n, v in (("data", data), ("fsdp", fsdp)) if not (v == -1 or v > 0)}
    if bad:
        return None, bad
    if data == fsdp == -1:
        return None, {"mesh.data"}
    if data == -1:
        return (
            ((num_devices // fsdp, fsdp), set())
            if num_devices % fsdp == 0
            else (None, {"mesh.fsdp"})
        )
    if fsdp == -1:
        return (
            ((data, num_devices // data), set())
            if num_devices % data == 0
            else (None, {"mesh.data"})
        )
    return ((data, fsdp), set()) if data * fsdp == num_devices else (None, {"mesh.data"})


@st.composite
def generated_configs(draw, num_devices: int, valid_only: bool = False):
    """The tiny config (seq_len 32) with some fields set to valid values and those in a drawn
    set of fields set to values the rules reject. Returns `(config, fields made invalid)`."""
    broken = set() if valid_only else draw(st.sets(st.sampled_from(BREAKABLE), max_size=4))
    c = load_config("tiny")
    bad: set[str] = set()

    def put(field, valid, invalid):
        """Sets `field` to a drawn valid value, or an invalid one if `field` is broken."""
        group, name = field.split(".")
        if field in broken and invalid:
            c[group][name] = draw(st.sampled_from(invalid))
            bad.add(field)
        else:
            c[group][name] = draw(st.sampled_from(valid))

    types = draw(st.sampled_from(PATTERNS))
    c.model.attention_types = types
    n = len(types)
    put("model.n_layers", [n, 2 * n], [0, -1] + ([n + 1] if n > 1 else []))
    for kind, valid in (("lsh", [8, 12, 32]), ("local", [5, 16, 32])):
        used = kind in types
        put(
            f"model.{kind}_chunk_len",
            valid if used else valid + [64, 1000],
            [0, -4] + ([33, 64] if used else []),
        )
    put("model.n_buckets", [0, 2, 4], [3, 7, -2])
    put("model.n_hashes", [1, 2], [0])
    put("model.dropout", [0.0, 0.1], [1.0, -0.1, 1.5])
    put("model.attention_dropout", [0.0, 0.2], [1.0, -0.5])
    put("model.dtype", ["float32", "bfloat16"], ["float16"])
    put("model.position_chunk_size", [0, 5, 16], [-1])
    put("model.loss_chunk_size", [0, 7], [-3])
    assert c.model.n_heads == 2
    put("model.lsh_heads_per_step", [0, 1, 2], [-1, 3])
    put("model.residual", ["reversible", "two_stream", "standard"], ["revnet"])

    axial = {"model.axial_shape", "model.axial_dims"} & broken
    put(
        "model.positional", ["learned", "none", "axial"] if not axial else ["axial"], ["sinusoidal"]
    )
    if c.model.positional == "axial":
        put("model.axial_shape", [(4, 8), (8, 8), (2, 16)], [(4, 4), (32,), (0, 32)])
        put("model.axial_dims", [(16, 16), (8, 24)], [(16, 8), (32,), (0, 32)])

    put("optimizer.name", ["adam", "adafactor"], ["sgd"])
    put("optimizer.learning_rate", [1e-3, 3e-3], [0.0, -1e-3])
    put("optimizer.schedule", ["rsqrt", "constant"], ["cosine"])
    put("optimizer.clip_norm", [1.0, 0.0], [-1.0])
    put("train.num_steps", [1, 20], [0, -5])

    if "data.path" in broken:  # Byte data from a file that does not exist.
        c.data.name = "text"
        c.model.vocab_size = 258
        c.data.path = "/nonexistent/reformer-test-data/bytes.txt"
        bad.add("data.path")

    sizes = [-1, 1, 2, 3, 4, 8, 0]
    meshes = [(d, f, *expected_mesh(d, f, num_devices)) for d in sizes for f in sizes]
    if "mesh" in broken:
        c.mesh.data, c.mesh.fsdp, shape, mesh_bad = draw(
            st.sampled_from([m for m in meshes if m[2] is None])
        )
        bad |= mesh_bad
    else:
        c.mesh.data, c.mesh.fsdp, shape, _ = draw(
            st.sampled_from([m for m in meshes if m[2] is not None])
        )

    put("train.grad_accum_steps", [1, 2], [0, -1])
    # Divisibility is checked only when the mesh (and, for train.batch_size,
    # grad_accum_steps) are fine; otherwise only a non-positive batch size is an error.
    shards = shape[0] * shape[1] if shape else 0
    need = shards * c.train.grad_accum_steps
    if need > 0:  # A multiple of `need` is valid; with need == 1 only sizes <= 0 are not.
        put("train.batch_size", [need, 2 * need], [0] + ([need + 1, need // 2] if need > 1 else []))
    else:
        put("train.batch_size", [4, 8], [0, -8])
    if shards:
        put("eval.batch_size", [shards, 2 * shards], [0] + ([shards + 1] if shards > 1 else []))
    else:
        put("eval.batch_size", [4, 8], [0, -8])
    return c, bad


@settings(max_examples=150, deadline=None, database=None)
@given(st.data())
def test_validate_names_every_field_made_invalid(data):
    num_devices = data.draw(st.sampled_from([1, 2, 4, 8]), label="num_devices")
    config, bad = data.draw(generated_configs(num_devices))
    if not bad:
        validate(config, num_devices=num_devices)
        return
    with pytest.raises(ConfigError) as info:
        validate(config, num_devices=num_devices)
    named = problems(info.value)
    assert set(named) == bad, str(info.value)
    assert len(named) == len(bad), f"one line per bad field:\n{info.value}"
    if len(bad) > 1:
        assert str(info.value).startswith(f"{len(bad)} problems in the config:\n")


# Compiling at a low optimization level keeps each example to a few seconds on CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


@settings(max_examples=4, deadline=None, database=None)
@given(generated_configs(num_devices=1, valid_only=True))
def test_generated_valid_configs_train_one_step(drawn):
    config, bad = drawn
    assert not bad
    validate(config, num_devices=1)
    model = make_model(config)
    tx, schedule = make_optimizer(config.optimizer), make_schedule(config.optimizer)
    key = jax.random.key(config.train.seed)
    state = compiled(make_init_state(config, model, tx), key)(key)
    batch = next(make_train_stream(config))
    assert batch["tokens"].shape == (config.train.batch_size, config.data.seq_len)
    step = functools.partial(
        train_step,
        model=model,
        tx=tx,
        schedule=schedule,
        accum_steps=config.train.grad_accum_steps,
    )
    state, metrics = compiled(step, state, batch, key)(state, batch, key)
    assert int(state.step) == 1
    assert bool(metrics["finite"]), metrics
