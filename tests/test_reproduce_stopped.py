"""The reproduction scripts stop (non-zero exit, resumable) when a training run is stopped.

The trainer returns normally after SIGTERM or Ctrl-C with its checkpoint saved; a script that
went on to evaluate the half-trained model and to train the next one would report numbers of
an unfinished run. Training is replaced by a no-op and the checkpoint by one at step 1.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import REPO, load_script

DATA = os.path.join(REPO, "..", "shared", "data", "enwik8_prefix_4154399")

reproduce_duplication = load_script("reproduce_duplication")
reproduce_enwik8_ablations = load_script("reproduce_enwik8_ablations")
reproduce_enwik8_prefix = load_script("reproduce_enwik8_prefix")

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
    from reformer import train
    from reformer.evaluation import checkpoint
    from reformer.training import state

    main, args, first = SCRIPTS[script]
    trained = []
    monkeypatch.setattr(train, "train_and_evaluate", lambda c, w: trained.append(w))
    monkeypatch.setattr(state, "load_params", lambda c, w, model, mesh: ({}, 1))
    evaluated = []
    monkeypatch.setattr(checkpoint, "evaluate_params", lambda *a, **k: evaluated.append(a))
    with pytest.raises(SystemExit) as stop:
        main([*args, f"--workdir={tmp_path}"])
    assert f"Stopped in {first} at step 1" in str(stop.value.code)
    assert trained == [os.path.join(str(tmp_path), first)]  # the next model is not trained
    assert not evaluated
    assert not os.path.exists(os.path.join(str(tmp_path), "enwik8_ablations.json"))
