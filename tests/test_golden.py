"""The same numbers before and after a change meant to keep behaviour: short trainings'
metrics and the peers model's compiled train step against tests/data/golden.json
(recorded by `python -m tests.golden --write`; its docstring says when they may change)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tests import golden

WHEN = (
    "The golden values change only with a change meant to change what is trained or "
    "compiled (a new default, a fix to the math, a faster kernel, a new JAX); then record "
    "them again with `python -m tests.golden --write` and say why in the commit message."
)


@pytest.fixture(scope="module")
def recorded() -> dict:
    with open(golden.GOLDEN) as f:
        return json.load(f)


@pytest.mark.parametrize("name", golden.RUNS)
def test_training_metrics_match(recorded, name):
    want = recorded["runs"][name]
    got = golden.train_records(name)
    assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w), f"{name} step {w['step']}: fields differ. {WHEN}"
        for key, value in w.items():
            if isinstance(value, float):
                np.testing.assert_allclose(
                    g[key], value, rtol=1e-5, err_msg=f"{name} step {w['step']} {key}. {WHEN}"
                )
            else:
                assert g[key] == value, f"{name} step {w['step']} {key}. {WHEN}"


def test_compiled_train_step_matches(recorded):
    want = recorded["compiled"]
    if jax.__version__ != want["jax_version"]:
        pytest.skip(
            f"XLA figures were recorded with jax {want['jax_version']}, this is "
            f"{jax.__version__}: compared only on the recorded version"
        )
    got = golden.compiled_figures()
    assert got == want, WHEN
