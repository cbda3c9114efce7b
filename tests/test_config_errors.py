"""Bad configs and overrides are named all together, in one message, and a read-only workdir
still shows its evaluation."""

import pytest

from reformer.config import ConfigError, validate
from reformer.evaluation import checkpoint as evaluation
from tests.conftest import load_config, run_module


def _problems(message: str) -> list[str]:
    return [line.strip() for line in message.splitlines()[1:]]


def test_unknown_fields_and_bad_values_in_one_message():
    c = load_config("tiny")
    c.model.n_hash = 4  # A typo of n_hashes.
    c.train.num_steps = -5
    c.model.n_heads = 0
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert str(e.value).startswith("3 problems in the config:")
    assert _problems(str(e.value)) == [
        "config.model.n_hash: unknown config field (did you mean config.model.n_hashes?)",
        "config.model.n_heads: must be a positive integer, got 0",
        "config.train.num_steps: must be a positive integer, got -5",
    ]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["--config.train.num_stepz=5", "--config.model.foo=1"],
            [
                "config.train.num_stepz: unknown config field "
                "(did you mean config.train.num_steps?)",
                "config.model.foo: unknown config field",
            ],
        ),
        (
            ["--config.train.num_steps=-5", "--config.model.foo=1", "--config.model.n_heads", "0"],
            [
                "config.model.foo: unknown config field",
                "config.model.n_heads: must be a positive integer, got 0",
                "config.train.num_steps: must be a positive integer, got -5",
            ],
        ),
    ],
)
def test_command_line_names_every_bad_field(tmp_path, overrides, expected):
    """Unknown overrides used to stop the flags parser at the first one; bad values of known
    fields went unmentioned beside an unknown one."""
    proc = run_module(
        ["reformer.train", "--config=configs/tiny.py", f"--workdir={tmp_path}/w", *overrides],
        timeout=120,
    )
    assert proc.returncode == 2
    error = proc.stderr.split("error: ", 1)[1].split("\nUsage:")[0]
    assert error.startswith(f"{len(expected)} problems in the config:")
    assert _problems(error) == expected
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


def test_read_only_workdir_prints_the_result_then_says_it_was_not_saved(monkeypatch):
    """`reformer.evaluate` on a workdir it cannot write used to die writing the record,
    after scoring, without showing it."""
    record = {"split": "test", "step": 7, "loss": 1.25}
    monkeypatch.setattr(evaluation, "score_checkpoint", lambda config, workdir: (record, None))

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(evaluation.storage, "write_text", refuse)
    events = []
    monkeypatch.setattr(evaluation, "log", lambda line: events.append(("log", line)))
    config = load_config("tiny")
    config.eval.split = "test"
    out = evaluation.evaluate_checkpoint(config, "/read-only/w", report=lambda r: events.append(r))
    assert out == record
    assert events[0] == record  # Reported before anything is written.
    assert events[1][0] == "log"
    assert "Could not write /read-only/w/eval_test.json (Permission denied)" in events[1][1]


def test_a_step_too_large_for_memory_is_refused_with_what_it_needs(monkeypatch):
    """Compiled, never run: XLA's memory analysis against the memory there is."""
    import jax
    import jax.numpy as jnp

    from reformer.training import memory_check

    compiled = (
        jax.jit(lambda x: jnp.tanh(x[:, None] * x[None, :]).sum())
        .lower(jax.ShapeDtypeStruct((4096,), jnp.float32))
        .compile()
    )
    need = memory_check.needed_bytes(compiled)
    assert need >= 4096 * 4  # At least its argument; XLA may fuse the 64 MiB product away.
    memory_check.check_fits(compiled)  # Fits this host.
    monkeypatch.setattr(memory_check, "host_memory_bytes", lambda: need - 1)
    with pytest.raises(
        ConfigError,
        match=r"the train step needs .* GiB .*but this host has .*"
        r"GiB: lower train\.batch_size",
    ):
        memory_check.check_fits(compiled)
