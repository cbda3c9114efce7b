"""Bad text and inputs longer than the model: each refused in one line naming the file, line
or flag, before any training step (empty or missing splits, text that is not UTF-8, a
vocabulary made from no text), data preparation never left half-written, and the lengths of
`reformer.translate` and `reformer.sample` checked against the model's."""

from __future__ import annotations

import os

import numpy as np
import pytest

from reformer import sample
from reformer.data import enwik8, make_eval_batches, translation
from reformer.data import tokenizer as tok
from reformer.data.text import DataError
from reformer.decoding import sampling as decode
from reformer.errors import ConfigError
from reformer.evaluation.translation import encode_sources
from reformer.tokens import END_ID
from reformer.train import train_and_evaluate
from reformer.training.state import make_model
from reformer.translate import read_sentences
from tests.conftest import checkpoint_steps, load_config, run_module
from tests.test_text_data import fake_enwik8
from tests.test_translation import MULTI30K, slice_files, tiny_config

# The tiny model of tests/test_translation.py, as flags of `reformer.translate`.
TRANSLATE_TINY = [
    "--config.model.vocab_size=600",
    "--config.model.d_model=32",
    "--config.model.d_ff=64",
    "--config.model.n_heads=2",
    "--config.model.d_head=16",
    "--config.model.n_layers=1",
    "--config.model.n_encoder_layers=1",
    "--config.model.max_len=32",
    "--config.data.seq_len=32",
    "--config.data.source_len=32",
    "--config.data.batch_tokens=512",
]


def one_line(error) -> str:
    message = str(error.value if hasattr(error, "value") else error)
    assert "\n" not in message, message
    return message


def write_pair(directory, split: str, en: bytes, de: bytes) -> None:
    os.makedirs(directory, exist_ok=True)
    for lang, data in (("en", en), ("de", de)):
        with open(os.path.join(directory, f"{split}.{lang}"), "wb") as f:
            f.write(data)


@pytest.fixture(scope="module")
def vocab_model(tmp_path_factory) -> bytes:
    """A 600-piece vocabulary of the test slice of Multi30k."""
    directory = slice_files(tmp_path_factory.mktemp("slice"), n_train=400, n_val=8)
    config = tiny_config(directory)
    return translation.vocabulary(config, str(tmp_path_factory.mktemp("vocab")), True).model_proto


def workdir_with_vocabulary(path, vocab_model: bytes) -> str:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, translation.VOCAB_FILE), "wb") as f:
        f.write(vocab_model)
    return str(path)


# ---- Item 3: bad parallel text ----


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["empty", "blank_lines"])
def test_training_files_without_text_are_refused_before_the_vocabulary(tmp_path, content):
    directory = slice_files(tmp_path / "data", n_train=4, n_val=4)
    write_pair(directory, "train", content, content)
    config = tiny_config(directory)
    with pytest.raises(DataError) as error:  # Was SentencePiece's RuntimeError.
        translation.vocabulary(config, str(tmp_path / "work"), create=True)
    assert one_line(error).startswith(
        f"config.data.train_files: no sentence pair to make the vocabulary from in {directory}"
    )
    assert not os.path.exists(tmp_path / "work" / translation.VOCAB_FILE)


def test_a_vocabulary_sentencepiece_cannot_make_names_the_field(tmp_path):
    directory = slice_files(tmp_path / "data", n_train=4, n_val=4)
    config = tiny_config(directory)
    with pytest.raises(DataError) as error:
        translation.vocabulary(config, str(tmp_path / "work"), create=True)
    message = one_line(error)
    assert message.startswith("config.model.vocab_size: SentencePiece could not make a 600-piece")
    assert "Vocabulary size" in message
    with pytest.raises(ValueError, match="no text to make a vocabulary from"):
        tok.train(["", "  "], 600)


def test_empty_validation_files_stop_training_before_step_one(tmp_path):
    directory = slice_files(tmp_path / "data", n_train=400, n_val=4)
    write_pair(directory, "val", b"", b"")
    config = tiny_config(directory)
    workdir = tmp_path / "work"
    with pytest.raises(DataError) as error:  # Was a TypeError at the first evaluation.
        train_and_evaluate(config, str(workdir))
    assert one_line(error).startswith(
        f"config.data.validation_files: no sentence pair to evaluate on in {directory}/val.en"
    )
    assert not os.path.exists(workdir / "metrics.jsonl")
    assert not os.path.isdir(workdir / "checkpoints") or checkpoint_steps(str(workdir)) == []


def test_a_split_of_only_over_long_pairs_says_so(tmp_path, vocab_model):
    directory = slice_files(tmp_path / "data", n_train=4, n_val=4)
    long = (" ".join(["Zwei Männer überqueren die Straße"] * 20) + "\n").encode()
    write_pair(directory, "val", long, long)
    config = tiny_config(directory)
    workdir = workdir_with_vocabulary(tmp_path / "work", vocab_model)
    with pytest.raises(DataError) as error:
        make_eval_batches(config, workdir=workdir)
    assert "0 with an empty side, 1 longer than data.source_len=32" in one_line(error)


def test_a_missing_test_split_is_named(tmp_path, vocab_model):
    config = tiny_config(slice_files(tmp_path / "data", n_train=4, n_val=4))
    config.eval.split = "test"
    workdir = workdir_with_vocabulary(tmp_path / "work", vocab_model)
    with pytest.raises(DataError, match="config.data.test_files: no files for the test split"):
        make_eval_batches(config, workdir=workdir)


def test_an_empty_byte_split_is_named(tmp_path):
    path = tmp_path / "short.txt"
    path.write_bytes(b"0123456789")  # 90/5/5: no validation byte.
    config = load_config("tiny")
    config.data.name, config.data.path, config.eval.split = "text", str(path), "validation"
    with pytest.raises(DataError, match="config.eval.split: the validation split of .* is empty"):
        make_eval_batches(config)


def test_text_that_is_not_utf8_names_the_file_line_and_byte(tmp_path):
    good = "A man.\nTwo dogs.\n"
    write_pair(tmp_path, "train", good.encode() + b"A caf\xe9 by the sea.\n", (good * 2).encode())
    with pytest.raises(DataError) as error:  # Was a UnicodeDecodeError naming no file.
        translation.read_parallel(
            str(tmp_path / "train.en"), str(tmp_path / "train.de"), "data.train_files"
        )
    assert one_line(error) == (
        f"config.data.train_files: {tmp_path}/train.en line 3: not UTF-8 (byte 0xe9 at byte 6 "
        "of the line); the text must be UTF-8"
    )
    with pytest.raises(DataError, match="tfds_name: wmt14 train example 7 .de. is not UTF-8"):
        translation._text(b"Ein Caf\xe9", "wmt14 train example 7 (de)")  # TFDS text.


def test_translate_input_must_be_utf8_with_a_line(tmp_path):
    bad, empty, fine = tmp_path / "bad.en", tmp_path / "empty.en", tmp_path / "fine.en"
    bad.write_bytes(b"Hello.\n\xff\xfe\n")
    empty.write_bytes(b"")
    fine.write_bytes(b"One.\r\n\nTwo.")
    with pytest.raises(ConfigError, match=f"^--input: {bad} line 2: not UTF-8 .byte 0xff at"):
        read_sentences(str(bad))
    with pytest.raises(ConfigError) as error:  # Was "range() arg 3 must not be zero".
        read_sentences(str(empty))
    assert one_line(error) == f"--input: {empty} is empty: no sentence to translate"
    assert read_sentences(str(fine)) == ["One.", "", "Two."]


def test_translate_names_bad_input_and_a_missing_checkpoint(tmp_path, vocab_model):
    workdir = workdir_with_vocabulary(tmp_path / "work", vocab_model)
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"Hello.\nA caf\xe9.\n")
    common = ["reformer.translate", "--config", "configs/multi30k.py:cpu", "--workdir", workdir]
    result = run_module([*common, *TRANSLATE_TINY, "--input", str(bad)], timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: --input: {bad} line 2: not UTF-8 (byte 0xe9")
    result = run_module([*common, *TRANSLATE_TINY, "--text", "Hello."], timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: {workdir}: no checkpoint to translate with.")


# ---- Interrupted data preparation ----


def test_an_interrupted_vocabulary_write_leaves_no_vocabulary(tmp_path, monkeypatch):
    config = tiny_config(slice_files(tmp_path / "data", n_train=400, n_val=4))
    workdir = tmp_path / "work"
    os.makedirs(workdir)

    def interrupted(src, dst):
        raise KeyboardInterrupt  # Ctrl-C (or a kill) between writing and renaming.

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        translation.vocabulary(config, str(workdir), create=True)
    monkeypatch.undo()
    assert translation.VOCAB_FILE not in os.listdir(workdir)
    made = translation.vocabulary(config, str(workdir), create=True)  # Made again, whole.
    assert made.vocab_size == 600
    path = workdir / translation.VOCAB_FILE
    path.write_bytes(path.read_bytes()[:1000])  # A file cut short by something else.
    with pytest.raises(DataError) as error:
        translation.vocabulary(config, str(workdir), create=True)
    assert one_line(error).startswith(
        f"config.data.vocab_path: {path} is not a SentencePiece model (1,000 bytes that do "
        "not parse: damaged or cut short); delete it"
    )


def test_an_interrupted_enwik8_prepare_is_prepared_again(tmp_path, monkeypatch):
    data = fake_enwik8(50_003)
    source = tmp_path / "enwik8_small"
    source.write_bytes(data)
    builder = enwik8._builder_class()
    generate = builder._generate_examples

    def interrupted(self, array):
        yield from list(generate(self, array))[:1]
        raise KeyboardInterrupt  # Stopped in the middle of writing the records.

    monkeypatch.setattr(builder, "_generate_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        enwik8.load_splits(str(source), str(tmp_path / "tfds"))
    monkeypatch.undo()
    splits = enwik8.load_splits(str(source), str(tmp_path / "tfds"))
    assert b"".join(splits[s].tobytes() for s in ("train", "validation", "test")) == data


# ---- Item 4: inputs longer than the model ----


def test_translate_cuts_long_sources_keeping_the_end_id(vocab_model):
    tokenizer = tok.Tokenizer(vocab_model)
    long = " ".join(["Zwei Männer überqueren die Straße"] * 40)
    assert len(tokenizer.encode(long)) >= 200
    sources, cut = encode_sources(tokenizer, [long, "A dog.", long], 64)
    assert cut == 2  # Was cut silently, the end id dropped.
    assert [len(s) for s in sources] == [64, len(tokenizer.encode("A dog.")) + 1, 64]
    assert all(s[-1] == END_ID and (s == END_ID).sum() == 1 for s in sources)
    np.testing.assert_array_equal(sources[0][:-1], tokenizer.encode(long)[:63])


def reverse_model():
    config = load_config("reverse")
    return config, make_model(config).cfg


def test_sample_refuses_sources_longer_than_the_model_takes():
    config, cfg = reverse_model()  # data.source_len 128, model.max_len 144.
    for n in (140, 200):  # 140 decoded nothing; 200 ended in a traceback.
        with pytest.raises(ConfigError) as error:
            sample.check_source(config, cfg, np.full(n, 5, np.int32))
        assert one_line(error) == (
            f"--source_ids: {n} ids; this model takes sources of at most 128 "
            "(data.source_len=128, model positions 144)"
        )
    sample.check_source(config, cfg, np.full(128, 5, np.int32))
    with pytest.raises(ValueError, match="the source has 200 tokens; the encoder has 144"):
        decode.check_source(cfg, np.full((1, 200), 5, np.int32), 1)


def test_the_default_length_fits_the_model():
    config, cfg = reverse_model()
    assert sample.decode_length(config, cfg, 0, 0) == 144  # Was 200: refused.
    assert sample.decode_length(config, cfg, 100, 0) == 44
    with pytest.raises(ConfigError, match="^--prompt / --length: a prompt of 4 tokens plus 150"):
        sample.decode_length(config, cfg, 4, 150)
    enwik8_config = load_config("enwik8", "cpu")
    enwik8_cfg = make_model(enwik8_config).cfg
    assert sample.decode_length(enwik8_config, enwik8_cfg, 10, 0) == sample.DEFAULT_LENGTH


def test_sample_source_checks_come_before_the_checkpoint(tmp_path):
    ids = ",".join(["5"] * 200)
    result = run_module(
        ["reformer.sample", "--config", "configs/reverse.py", "--workdir", str(tmp_path)]
        + ["--source_ids", ids, "--beam_size", "4"],
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("error: --source_ids: 200 ids; this model takes sources of")


# ---- The commands of the issue on trained workdirs (slow) ----

REVERSE_TINY = [
    "--config.model.d_model=32",
    "--config.model.d_ff=64",
    "--config.model.d_head=16",
    "--config.train.batch_size=4",
    "--config.train.num_steps=30",
    "--config.train.eval_every=30",
    "--config.train.checkpoint_every=30",
    "--config.eval.batch_size=4",
    "--config.eval.num_batches=1",
]


@pytest.fixture(scope="module")
def reverse_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reverse") / "W")
    common = ["--config", "configs/reverse.py", "--workdir", workdir, *REVERSE_TINY]
    result = run_module(["reformer.train", *common], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return common


@pytest.mark.slow
@pytest.mark.parametrize("n", [140, 200])
def test_sample_after_training_refuses_a_long_source(reverse_workdir, n):
    ids = ",".join(str(5 + i % 10) for i in range(n))
    result = run_module(["reformer.sample", *reverse_workdir, "--source_ids", ids], timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: --source_ids: {n} ids; this model takes sources")


@pytest.mark.slow
def test_sample_readme_command_after_training(reverse_workdir):
    flags = ["--source_ids", "5,9,3,12", "--beam_size", "4"]
    result = run_module(["reformer.sample", *reverse_workdir, *flags], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sample(s) of up to 144 tokens" in result.stdout and "--- sample 1 ---" in result.stdout


@pytest.fixture(scope="module")
def translation_workdir(tmp_path_factory):
    directory = slice_files(tmp_path_factory.mktemp("multi30k"), n_train=400, n_val=8)
    workdir = str(tmp_path_factory.mktemp("translation") / "W")
    flags = [
        f"--config.data.train_files={directory}/train.{{lang}}",
        f"--config.data.validation_files={directory}/val.{{lang}}",
        *TRANSLATE_TINY,
    ]
    common = ["--config", "configs/multi30k.py:cpu", "--workdir", workdir, *flags]
    steps = ["--config.train.num_steps=20", "--config.train.checkpoint_every=20"]
    result = run_module(["reformer.train", *common, *steps], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return common


@pytest.mark.slow
def test_translate_after_training_says_how_many_sentences_it_cut(translation_workdir, tmp_path):
    with open(os.path.join(MULTI30K, "val.en")) as f:
        long = " ".join(f.readline().strip() for _ in range(12))
    inputs = tmp_path / "in.en"
    inputs.write_text(f"{long}\nA dog runs.\n")
    output = tmp_path / "out.de"
    flags = ["--input", str(inputs), "--output", str(output)]
    result = run_module(["reformer.translate", *translation_workdir, *flags], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 of 2 sentence(s) longer than data.source_len=32 subwords" in result.stdout
    assert len(output.read_text().splitlines()) == 2
    cut = run_module(["reformer.translate", *translation_workdir, *flags, "--max_source_len", "33"])
    assert cut.returncode == 2 and "Traceback" not in cut.stderr
    assert cut.stderr.startswith("error: --max_source_len: must be 0 (data.source_len=32) or 2..32")
    empty = tmp_path / "empty.en"
    empty.write_bytes(b"")
    result = run_module(["reformer.translate", *translation_workdir, "--input", str(empty)])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: --input: {empty} is empty")


@pytest.mark.slow
def test_empty_validation_files_refused_by_the_training_command(tmp_path):
    directory = slice_files(tmp_path / "data", n_train=400, n_val=4)
    write_pair(directory, "val", b"", b"")
    workdir = tmp_path / "W"
    result = run_module(
        ["reformer.train", "--config", "configs/multi30k.py:cpu", "--workdir", str(workdir)]
        + [f"--config.data.train_files={directory}/train.{{lang}}"]
        + [f"--config.data.validation_files={directory}/val.{{lang}}", *TRANSLATE_TINY],
        timeout=600,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("error: config.data.validation_files: no sentence pair")
    assert "step " not in result.stdout  # Not one training step.


@pytest.mark.slow
def test_invalid_utf8_in_training_files_refused_by_the_training_command(tmp_path):
    directory = slice_files(tmp_path / "data", n_train=40, n_val=4)
    with open(os.path.join(directory, "train.de"), "ab") as f:
        f.write(b"Ein Caf\xe9.\n")
    with open(os.path.join(directory, "train.en"), "ab") as f:
        f.write(b"A cafe.\n")
    result = run_module(
        ["reformer.train", "--config", "configs/multi30k.py:cpu", "--workdir", str(tmp_path / "W")]
        + [f"--config.data.train_files={directory}/train.{{lang}}"]
        + [f"--config.data.validation_files={directory}/val.{{lang}}", *TRANSLATE_TINY],
        timeout=600,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith(
        f"error: config.data.train_files: {directory}/train.de line 41: not UTF-8 (byte 0xe9"
    )
