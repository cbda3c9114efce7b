"""The documented commands work as written. Every `python -m reformer.*` command of README.md
and of the config docstrings (configs/*.py) runs with tiny overrides appended (a smaller
model, two steps, small data where the documented data is not on this machine), in document
order, so a training command leaves the workdir the commands after it use (slow tests, one
per config file of each source). Every documented command, those of docs/*.md and the
`python scripts/...` ones included, is checked to parse: its flags exist and its config file
loads with its overrides (fast).

A command that cannot run here says why in PARSE_ONLY. Run as `python -m
tests.test_documented_commands PROGRAM`, this module is the parse check of one program: argv
lists as JSON on stdin, one error line ("" when it parsed) each on stdout."""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests.conftest import REPO, run_module, run_script
from tests.test_text_data import PREFIX

# Commands that need what this machine does not have; they are only parsed.
PARSE_ONLY = {
    "--coordinator_address=node0:1234": "a second host (node0)",
    "configs/wmt14_ende.py": "WMT14 from TFDS, a download (no network here)",
    "configs/X.py": "a usage pattern (any config file), parsed with configs/tiny.py",
}
USAGE_PATTERNS = {"configs/X.py": "configs/tiny.py"}
SHELL_VARIABLES = {"$BUCKET": "gs://bucket", "$HOME": "/home/user", "$r": "full"}
# Values the documents leave to the reader.
READER_VALUES = {"--num_processes=N": "--num_processes=2", "--process_id=i": "--process_id=0"}

STEPS = [
    "--config.train.num_steps=2",
    "--config.train.log_every=1",
    "--config.train.eval_every=2",
    "--config.train.checkpoint_every=2",
    "--config.optimizer.warmup_steps=1",
    "--config.eval.num_batches=1",
]
SMALL = ["--config.model.d_ff=32", "--config.model.n_heads=2", "--config.model.d_head=8"]
SHORT_TASK = [
    "--config.model.d_model=16",
    "--config.data.word_len=7",
    "--config.data.seq_len=16",
    "--config.model.max_len=16",
    "--config.model.lsh_chunk_len=4",
    "--config.model.local_chunk_len=4",
    "--config.train.batch_size=2",
    "--config.eval.batch_size=2",
]
IMAGES = [
    "--config.model.d_model=16",
    "--config.model.n_layers=1",
    "--config.train.batch_size=2",
    "--config.eval.batch_size=2",
    "--config.data.image_validation=2",
    "--config.data.image_cache={tmp}/image_cache",
]
ENWIK8_SHORT = [
    "--config.data.seq_len=64",
    "--config.model.max_len=64",
    "--config.model.axial_shape=(8,8)",
    "--config.model.lsh_chunk_len=8",
    "--config.model.local_chunk_len=8",
    "--config.model.n_buckets=8",
]
# Tiny overrides of each config file (and `file:variant`), appended to each of its commands;
# {tmp} is the test's directory, {data} the directory of its small data files.
TINY = {
    "configs/duplication.py": SHORT_TASK,
    "configs/encoder.py": SHORT_TASK,
    "configs/reverse.py": [
        "--config.model.d_model=32",
        "--config.model.d_ff=64",
        "--config.model.d_head=16",
        "--config.train.batch_size=4",
        "--config.eval.batch_size=4",
    ],
    "configs/multi30k.py": [
        "--config.model.d_model=32",
        "--config.model.vocab_size=600",
        "--config.model.n_layers=1",
        "--config.model.n_encoder_layers=1",
        "--config.data.seq_len=32",
        "--config.data.source_len=32",
        "--config.model.max_len=32",
        "--config.data.batch_tokens=512",
        "--config.data.train_files={data}/train.{{lang}}",
        "--config.data.validation_files={data}/val.{{lang}}",
        "--config.eval.batch_size=8",
    ],
    "configs/enwik8.py": [
        "--config.model.d_model=16",
        "--config.model.n_layers=4",
        "--config.model.axial_dims=(8,8)",
        "--config.train.batch_size=2",
        "--config.eval.batch_size=16",
        f"--config.data.path={PREFIX}",
        "--config.data.tfds_dir={tmp}/tfds",
    ],
    "configs/enwik8.py:": ENWIK8_SHORT,  # The authors' model, on shorter sequences.
    "configs/enwik8.py:1m": ENWIK8_SHORT,
    "configs/cifar10.py": [
        *IMAGES,
        "--config.model.axial_dims=(4,4,8)",
        "--config.data.image_train={data}/cifar_train",
        "--config.data.image_test={data}/cifar_test.tar",
    ],
    "configs/imagenet64.py": [*IMAGES, "--config.model.axial_dims=(4,4,8)"],
    "runs/hf_enwik8/config.py": [
        "--config.train.batch_size=2",
        "--config.eval.batch_size=64",
        "--config.data.tfds_dir={tmp}/tfds",
    ],
}
# Documented placeholders for files, and the test's files that stand for them.
PLACEHOLDERS = {
    "--config.data.path=enwik8.zip": f"--config.data.path={PREFIX}",
    "DIR/Imagenet64_train_part*.npz": "{data}/Imagenet64_train_part*.npz",
    "DIR/Imagenet64_val_data.npz": "{data}/Imagenet64_val_data.npz",
    "reformer-enwik8": "{data}/reformer-enwik8",
}


# ---- The commands of the documents ----


def _one_command(text: str) -> str | None:
    """The command that starts at the first `python` of `text`: shell variables substituted,
    up to a comment, a pipe, a redirection, `&&` or a trailing `&`."""
    found = re.search(r"python3? (-m reformer\.\w+|scripts/\S+\.py)", text)
    if not found:
        return None
    command = text[found.start() :]
    for stop in (" #", " | ", " > ", "&&", "; "):
        command = command.split(stop)[0]
    for name, value in {**SHELL_VARIABLES, **READER_VALUES}.items():
        command = command.replace(name, value)
    command = " ".join(command.removesuffix("&").split())
    if command.count('"') % 2:  # The end of a quoted `--command="..."` of another tool.
        command = command.removesuffix('"')
    return command


def markdown_commands(text: str) -> list[str]:
    """The commands of fenced blocks (continued lines joined) and of inline code spans, in
    document order."""
    found = []
    for block, span in re.findall(r"```[^\n]*\n(.*?)```|`([^`\n]+(?:\n[^`\n]+)?)`", text, re.S):
        lines = block.replace("\\\n", " ").splitlines() if block else [span.replace("\n", " ")]
        found += [_one_command(line) for line in lines]
    return list(dict.fromkeys(c for c in found if c))


def docstring_commands(path: str) -> list[str]:
    """The commands of a config file's docstring: `[optional flags]` kept, a trailing `...`
    (the flags of the command above) filled in."""
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    commands = []
    for line in doc.replace("\\\n", " ").splitlines():
        command = _one_command(line.strip()) if line.startswith("python") else None
        if not command:
            continue
        command = command.replace("[", "").replace("]", "")
        if command.endswith(" ...") and commands:
            after = commands[-1].split(" --workdir W", 1)[1]
            command = command.removesuffix(" ...") + after
        commands.append(command)
    return commands


def documented() -> dict[str, list[str]]:
    """Every documented command (with flags: a bare `python -m reformer.train` is a name),
    by source file."""
    out = {}
    for path in ["README.md", *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]:
        with open(os.path.join(REPO, path)) as f:
            out[os.path.relpath(os.path.join(REPO, path), REPO)] = markdown_commands(f.read())
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        out[os.path.relpath(path, REPO)] = docstring_commands(path)
    return {
        source: [c for c in commands if " --" in c or c.endswith("reformer.config")]
        for source, commands in out.items()
    }


def _config_file(command: str) -> str:
    found = re.search(r"--config[ =](\S+)", command)
    return found[1] if found else ""


def groups() -> dict[str, list[str]]:
    """The `python -m reformer.*` commands of README.md and the config docstrings that run,
    by `source:config file`, in document order."""
    out: dict[str, list[str]] = {}
    for source, commands in documented().items():
        if source.startswith("docs"):
            continue
        for command in commands:
            if "-m reformer." not in command or any(k in command for k in PARSE_ONLY):
                continue
            key = f"{source}:{_config_file(command).split(':')[0] or 'none'}"
            out.setdefault(key, []).append(command)
    return out


# ---- Parse checks (fast) ----


def _program(command: str) -> str:
    found = re.search(r"-m reformer\.(\w+)|scripts/(\w+)\.py", command)
    return found[1] or f"scripts/{found[2]}"


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    return [words[2] if words[1] == "-m" else words[1], *words[(3 if words[1] == "-m" else 2) :]]


def parse_errors(argvs: list[list[str]], program: str) -> list[str]:
    """The error line of each argv of `program` ("" when it parses), in this process."""
    import contextlib
    import io

    if program.startswith("scripts/"):
        return [_script_error(program, argv) for argv in argvs]
    import importlib

    from absl import flags

    from reformer import cli

    module = importlib.import_module(f"reformer.{program}")
    if hasattr(module, "_define_flags"):
        module._define_flags()
    errors = []
    for argv in argvs:
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)  # The overrides the last command registered.
        flags.FLAGS.unparse_flags()
        sys.argv, stderr = list(argv), io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                cli.flags_parser(program)(argv)
            errors.append("")
        except SystemExit:
            errors.append(stderr.getvalue().splitlines()[0])
    return errors


class _Parsed(Exception):
    pass


def _script_error(program: str, argv: list[str]) -> str:
    """A script's main() run up to its argument parser: "" when the arguments parse."""
    import argparse
    import contextlib
    import io

    from tests.conftest import load_script

    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed

    module = load_script(program.removeprefix("scripts/"))
    sys.argv, stderr = list(argv), io.StringIO()
    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        with contextlib.redirect_stderr(stderr):
            module.main()
    except _Parsed:
        return ""
    except SystemExit:
        return stderr.getvalue().strip().splitlines()[-1]
    finally:
        argparse.ArgumentParser.parse_args = parse
    return "main() returned without parsing its arguments"


def _with_usage_values(command: str) -> str:
    for pattern, value in USAGE_PATTERNS.items():
        command = command.replace(pattern, value)
    return command


def test_the_documents_have_the_commands_this_test_knows():
    commands = documented()
    readme = commands["README.md"]
    assert (
        "python -m reformer.sample --config configs/reverse.py --workdir runs/reverse "
        "--source_ids 5,9,3,12 --beam_size 4"
    ) in readme
    assert "python -m reformer.config" in readme
    assert sum(len(c) for c in commands.values()) > 60
    example = "python -m reformer.sample --config configs/reverse.py --workdir W --source_ids 5,6,7"
    assert example in commands["configs/reverse.py"]
    every = [c for cs in commands.values() for c in cs]
    for needle in PARSE_ONLY:  # Each reason still stands for a documented command.
        assert any(needle in c for c in every), needle
    assert len(groups()) >= 15


def test_every_documented_command_parses():
    """One process per program (its flags), all at once."""
    by_program: dict[str, list[tuple[str, str]]] = {}
    for source, commands in documented().items():
        for command in commands:
            # A config file a documented command makes (runs/...) is run by the slow test.
            made = _config_file(command).startswith("runs/")
            if not command.endswith("reformer.config") and not made:
                by_program.setdefault(_program(command), []).append((source, command))
    scripts = [c for p, cs in by_program.items() if p.startswith("scripts/") for c in cs]
    jobs = {p: cs for p, cs in by_program.items() if not p.startswith("scripts/")}
    jobs["scripts"] = scripts
    procs = {}
    for program, commands in jobs.items():
        procs[program] = subprocess.Popen(
            [sys.executable, "-m", "tests.test_documented_commands", program],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        payload = [[_program(c), _argv(_with_usage_values(c))] for _, c in commands]
        procs[program].stdin.write(json.dumps(payload))
        procs[program].stdin.close()
    failures = []
    for program, proc in procs.items():
        out, err = proc.stdout.read(), proc.stderr.read()
        assert proc.wait(timeout=300) == 0, err[-3000:]
        for (source, command), error in zip(jobs[program], json.loads(out), strict=True):
            if error:
                failures.append(f"{source}: {command}\n    {error}")
    assert not failures, "\n".join(failures)


def test_python_m_reformer_config_runs_as_written():
    result = run_module(["reformer.config"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(REPO, "docs", "config.md")) as f:
        assert result.stdout.strip() == f.read().strip()


# ---- Runs with tiny overrides (slow) ----


def _images(directory: str, n: int, shape=(32, 32, 3), seed: int = 0) -> None:
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(directory, f"{i:03d}.png"))


def _imagenet_npz(path: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3 * 64 * 64), dtype=np.uint8)
    np.savez(path, data=data, labels=np.arange(1, n + 1))


def _hf_checkpoint(directory: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tests.test_convert_hf import HF_SETTINGS

    torch.manual_seed(0)
    config = transformers.ReformerConfig(**HF_SETTINGS)
    transformers.ReformerModelWithLMHead(config).save_pretrained(directory)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    """The small files that stand for the documented data, in one directory."""
    from tests.test_translation import slice_files

    data = str(tmp_path_factory.mktemp("data"))
    slice_files(data, n_train=400, n_val=8)
    _images(os.path.join(data, "cifar_train"), 6)
    _images(os.path.join(data, "cifar_test"), 3, seed=1)
    with tarfile.open(os.path.join(data, "cifar_test.tar"), "w") as tar:
        tar.add(os.path.join(data, "cifar_test"), arcname="test")
    _imagenet_npz(os.path.join(data, "Imagenet64_train_part1.npz"), 5, seed=2)
    _imagenet_npz(os.path.join(data, "Imagenet64_val_data.npz"), 2, seed=3)
    return data


class _Workdirs:
    """The test's directory for each documented one (`--workdir`, a converted checkpoint's
    `--out`). A training command with another config than the one that trained a directory
    gets a new one: the documents' W is a fresh directory per experiment."""

    def __init__(self, tmp: str):
        self.tmp, self.here, self.by_config = tmp, {}, {}

    def _new(self) -> str:
        return os.path.join(self.tmp, f"w{len(self.here) + len(self.by_config)}")

    def of(self, command: str) -> dict[str, str]:
        workdir = re.search(r"--workdir[ =](\S+)", command)
        if workdir:
            key = (workdir[1], _config_file(command))
            if key not in self.by_config and (
                "reformer.train" in command or workdir[1] not in self.here
            ):
                self.by_config[key] = self._new()
            self.here[workdir[1]] = self.by_config.get(key, self.here.get(workdir[1]))
        for out in re.findall(r"--out (\S+)", command):
            if "." not in os.path.basename(out):  # A directory, not a file.
                self.here.setdefault(out, self._new())
        return self.here


def _as_run_here(command: str, workdirs: dict, data: str, tmp: str, tiny: list) -> list[str]:
    """`command`'s argv with the documented paths replaced by the test's, tiny overrides
    appended to the `reformer.*` commands."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value.format(data=data))
    argv = []
    for word in _argv(command):
        name, eq, value = word.rpartition("=") if word.startswith("--") else ("", "", word)
        for documented_dir, here in workdirs.items():
            if value == documented_dir or value.startswith(documented_dir + "/"):
                value = here + value[len(documented_dir) :]
        argv.append(f"{name}{eq}{value}")
    return [*argv, *(t.format(data=data, tmp=tmp) for t in tiny)]


def _tiny(command: str) -> list[str]:
    """The tiny overrides of the command's config file and variant ("" without one)."""
    config = _config_file(command)
    if not config:
        return []
    file, _, variant = config.partition(":")
    small = [] if file.startswith("runs/") else SMALL  # A converted checkpoint: its own.
    return [*STEPS, *small, *TINY.get(file, []), *TINY.get(f"{file}:{variant}", [])]


RUNS = {k: v for k, v in groups().items() if not k.endswith(":none")}  # reformer.config: fast.


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(RUNS))
def test_documented_commands_run_as_written(key, small_data, tmp_path):
    commands = RUNS[key]
    if key.startswith("README.md:runs/hf_enwik8"):  # Converted by the README's own command.
        _hf_checkpoint(os.path.join(small_data, "reformer-enwik8"))
        convert = [c for c in documented()["README.md"] if "convert_hf_checkpoint" in c]
        commands = convert + commands
    workdirs = _Workdirs(str(tmp_path))
    for command in commands:
        argv = _as_run_here(
            command, workdirs.of(command), small_data, str(tmp_path), _tiny(command)
        )
        if _program(command).startswith("scripts/"):
            result = run_script(argv[0].removeprefix("scripts/"), argv[1:], timeout=900)
        else:
            result = run_module(argv, timeout=900)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (
            f"{command}\n{' '.join(argv)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )


if __name__ == "__main__":
    payload = json.loads(sys.stdin.read())
    by_program: dict[str, list] = {}
    for program, argv in payload:
        by_program.setdefault(program, []).append(argv)
    results = {p: iter(parse_errors(argvs, p)) for p, argvs in by_program.items()}
    print(json.dumps([next(results[p]) for p, _ in payload]))
