"""The reproduction scripts stop (non-zero exit, resumable) when a training run is stopped.

The trainer returns normally after SIGTERM or Ctrl-C with its checkpoint saved; a script that
went on to evaluate the half-trained model and to train the next one would report numbers of
an unfinished run. Training is replaced by a no-op and the checkpoint by one at step 1.
"""

from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
DATA = os.path.join(REPO, "..", "shared", "data", "enwik8_prefix_4154399")

import reproduce_duplication  # noqa: E402
import reproduce_enwik8_ablations  # noqa: E402
import reproduce_enwik8_prefix  # noqa: E402

SCRIPTS = {
    "duplication": (reproduce_duplication.main, ["--scale=toy", "--rows=full,lsh2"], "full"),
    "enwik8_prefix": (
        reproduce_enwik8_prefix.main,
        [f"--data={DATA}", "--variant=cpu"],
        reproduce_enwik8_prefix.MODELS[0],
    ),
    "ablations": (
        reproduce_enwik8_ablations.main,
        [f"--data={DATA}", "--scale=toy", "--models=lsh2,lsh4"],
        "lsh2",
    ),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_stopped_training_stops_the_script(script, tmp_path, monkeypatch):
    from reformer import evaluate
    from reformer.training import loop as trainer

    main, args, first = SCRIPTS[script]
    trained = []
    monkeypatch.setattr(trainer, "train_and_evaluate", lambda c, w: trained.append(w))
    monkeypatch.setattr(evaluate, "load_params", lambda c, w, m: ({}, 1))
    evaluated = []
    monkeypatch.setattr(evaluate, "evaluate_params", lambda *a, **k: evaluated.append(a))
    with pytest.raises(SystemExit) as stop:
        main([*args, f"--workdir={tmp_path}"])
    assert f"Stopped in {first} at step 1" in str(stop.value.code)
    assert trained == [os.path.join(str(tmp_path), first)]  # the next model is not trained
    assert not evaluated
    assert not os.path.exists(os.path.join(str(tmp_path), "enwik8_ablations.json"))
