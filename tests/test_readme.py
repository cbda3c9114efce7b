"""The README's two set-up commands are the ones CI and newcomers run."""

import os
import re

from tests.conftest import REPO


def _read(*path):
    with open(os.path.join(REPO, *path)) as f:
        return f.read()


def _bash_blocks(text):
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_two_setup_commands_and_ci_runs_the_second():
    readme = _read("README.md")
    setup = readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(setup)
    assert len(blocks) == 2, blocks
    install_and_run, install_and_test = blocks
    assert "python -m reformer.train --config configs/duplication.py" in install_and_run
    assert "pytest" in install_and_test
    ci_lines = _read(".ci", "run").splitlines()
    assert install_and_test in ci_lines, "`.ci/run` must run the README's test command as is"


def test_readme_has_no_placeholders():
    readme = _read("README.md")
    assert not re.search(r"\b[A-Z]{3,}_[A-Z_]{3,}\b", readme), "unfilled placeholder"
