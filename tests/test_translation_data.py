"""Translation data: the shared subword vocabulary, sacreBLEU wiring, reading aligned files and
the token-budget batches (on a slice of Multi30k from ../shared/data)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from reformer.data import tokenizer as tok
from reformer.data import translation as tr
from reformer.data.text import DataError
from reformer.evaluation.bleu import corpus_bleu
from tests.conftest import REPO

MULTI30K = os.path.join(REPO, "..", "shared", "data", "multi30k")
N_PAIRS = 3000


@pytest.fixture(scope="module")
def text():
    full = tr.read_parallel(f"{MULTI30K}/train.en", f"{MULTI30K}/train.de")
    assert len(full.sources) == 29_000 and full.skipped_empty == 0
    return tr.ParallelText(full.sources[:N_PAIRS], full.targets[:N_PAIRS], 0)


@pytest.fixture(scope="module")
def tokenizer(text):
    return tok.train(text.sources + text.targets, 1000)


def test_vocabulary_ids_and_round_trip(tokenizer, tmp_path):
    assert tokenizer.vocab_size == 1000
    sentence = "Zwei Männer überqueren die Straße; Ça coûte 5 € — “naïve” 日本"
    ids = tokenizer.encode(sentence)
    assert tok.PAD_ID not in ids and tok.END_ID not in ids and tok.UNK_ID not in ids
    assert tokenizer.decode(ids) == sentence
    assert tokenizer.decode([*ids, tok.END_ID, 7, 8]) == sentence  # Stops at the end id.
    assert tokenizer.decode([*ids, tok.PAD_ID, tok.PAD_ID]) == sentence
    path = str(tmp_path / "vocab.model")
    tokenizer.save(path)
    assert tok.Tokenizer.load(path).encode(sentence) == ids


def test_sacrebleu_wiring():
    refs = ["The cat is on the mat.", "A man rides a horse."]
    same = corpus_bleu(refs, refs)
    assert same["bleu_cased"] == same["bleu_uncased"] == pytest.approx(100.0)
    # One pair by hand: 13a tokens "The cat sat on the mat ." vs "The cat is on the mat .":
    # n-gram precisions 6/7, 4/6, 2/5, 1/4, equal lengths (no brevity penalty).
    score = corpus_bleu(["The cat sat on the mat."], ["The cat is on the mat."])
    by_hand = 100 * math.exp(np.mean(np.log([6 / 7, 4 / 6, 2 / 5, 1 / 4])))
    assert score["bleu_cased"] == pytest.approx(by_hand, abs=1e-9)
    assert corpus_bleu(["the cat"], ["The cat"])["bleu_cased"] < 100
    case = corpus_bleu(["the cat sat on the mat"], ["The cat sat on the mat"])
    assert case["bleu_uncased"] == pytest.approx(100.0) and case["bleu_cased"] < 100
    assert "case:mixed" in score["signature_cased"] and "case:lc" in score["signature_uncased"]


def test_misaligned_files_name_both_files_and_counts(tmp_path):
    src, tgt = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("one\ntwo\nthree\n")
    tgt.write_text("eins\nzwei\n")
    with pytest.raises(DataError, match=rf"{src} has 3 lines but {tgt} has 2"):
        tr.read_parallel(str(src), str(tgt))


def test_empty_pairs_are_skipped_and_counted(tmp_path):
    src, tgt = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("one\n\nthree\nfour\n")
    tgt.write_text("eins\nzwei\n  \nvier\n")
    text = tr.read_parallel(str(src), str(tgt))
    assert (text.sources, text.targets, text.skipped_empty) == (
        ["one", "four"],
        ["eins", "vier"],
        2,
    )


@pytest.fixture(scope="module")
def pairs(text, tokenizer):
    return tr.encode_pairs(tokenizer, text, 48, 40)


def test_length_filter_counts_what_it_drops(text, tokenizer, pairs):
    lengths = [
        (len(tokenizer.encode(s)) + 1, len(tokenizer.encode(t)) + 1)
        for s, t in zip(text.sources, text.targets, strict=True)
    ]
    over = sum(s > 48 or t > 40 for s, t in lengths)
    assert pairs.too_long == over > 0
    assert len(pairs.sources) == N_PAIRS - over
    assert all(s[-1] == tok.END_ID and len(s) <= 48 for s in pairs.sources)
    assert all(t[-1] == tok.END_ID and len(t) <= 40 for t in pairs.targets)


def test_batches_keep_the_budget_and_every_pair_once_per_epoch(pairs):
    budget, multiple = 512, 4
    stream = tr.TokenBudgetStream(
        pairs, max_len=48, token_budget=budget, seed=3, row_multiple=multiple
    )
    assert stream.lengths == (8, 16, 32, 48)
    n_batches = len(stream._batches)
    seen, shapes = [], set()
    for _ in range(n_batches):
        batch = next(stream)
        rows, length = batch["tokens"].shape
        shapes.add((rows, length))
        assert rows % multiple == 0 and rows * length <= max(budget, multiple * length)
        assert batch["inputs"].shape == (rows, length)
        for row in range(rows):
            if batch["weights"][row].sum():
                seen.append((tuple(batch["inputs"][row]), tuple(batch["tokens"][row])))
    assert len(shapes) <= len(stream.lengths)  # One compiled step per bucket at most.
    expected = []
    for s, t in zip(pairs.sources, pairs.targets, strict=True):
        length = next(n for n in stream.lengths if n >= max(len(s), len(t)))
        expected.append(
            (
                tuple(np.pad(s, (0, length - len(s)))),
                tuple(np.pad(t, (0, length - len(t)))),
            )
        )
    assert sorted(seen) == sorted(expected)  # Each kept pair exactly once.
    assert stream.epoch == 0
    next(stream)
    assert (stream.epoch, stream.index) == (1, 1)


def test_resume_continues_the_stream_and_hosts_split_rows(pairs):
    def stream(**kw):
        return tr.TokenBudgetStream(pairs, max_len=48, token_budget=256, seed=5, **kw)

    straight = stream()
    expected = [next(straight) for _ in range(len(straight._batches) + 3)]  # Into epoch 2.
    first = stream()
    for _ in range(7):
        next(first)
    resumed = stream()
    resumed.set_state(first.get_state())
    for want in expected[7:]:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    # Two hosts, each its half of the rows, together the global batch.
    halves = [
        stream(row_multiple=2, rows_fn=lambda n, h=h: slice(h * n // 2, (h + 1) * n // 2))
        for h in (0, 1)
    ]
    whole = stream(row_multiple=2)
    for _ in range(5):
        parts, want = [next(h) for h in halves], next(whole)
        np.testing.assert_array_equal(np.concatenate([p["tokens"] for p in parts]), want["tokens"])
    with pytest.raises(ValueError, match="does not belong"):
        stream().set_state({"name": "translation", "seed": 6, "epoch": 0, "index": 0})


# ---- TFDS translation datasets (data.tfds_name), on TFDS's mock data: no network ----


def tfds_config(tmp_path):
    from tests.conftest import load_config

    c = load_config("wmt14_ende", "base")
    c.data.tfds_dir = str(tmp_path / "tfds")
    c.data.vocab_path = str(tmp_path / "vocab.model")
    c.data.seq_len = c.data.source_len = 64
    c.model.vocab_size = 600
    c.data.batch_tokens = 1024
    return c


def mock_wmt14(text, n_train: int = 500, n_val: int = 40):
    """TFDS mocked so that wmt14_translate/de-en holds the first Multi30k pairs (train) and
    the next ones (validation), with one empty German side in each split."""
    import tensorflow_datasets as tfds

    pairs = list(zip(text.sources, text.targets, strict=True))
    rows = {"train": pairs[:n_train], "validation": pairs[n_train : n_train + n_val]}
    for split in rows:
        rows[split][3] = (rows[split][3][0], "")

    def as_data_source(self, split, **kwargs):
        assert self.name == "wmt14_translate" and self.builder_config.name == "de-en"
        # TFDS hands Text features back as bytes from array_record; str from its mock.
        return [{"en": en.encode(), "de": de} for en, de in rows[split]]

    return tfds.testing.mock_data(as_data_source_fn=as_data_source), rows


def test_tfds_dataset_reads_splits_trains_the_vocabulary_and_batches(text, tmp_path):
    from reformer.config import validate

    config = tfds_config(tmp_path)
    validate(config, num_devices=1)
    mock, rows = mock_wmt14(text)
    with mock:
        val = tr.read_split(config, "validation")
        assert val.skipped_empty == 1 and len(val.sources) == len(rows["validation"]) - 1
        assert val.sources[:3] == [en for en, _ in rows["validation"][:3]]
        assert val.targets[3] == rows["validation"][4][1]
        stream = tr.train_stream(config, None, row_multiple=1, rows_fn=lambda n: slice(0, n))
        assert os.path.isfile(config.data.vocab_path)  # Trained from the TFDS training pairs.
        vocab = tr.vocabulary(config, None)
        _, pairs = tr.load_split(config, "train", vocab)
        assert len(pairs.sources) + pairs.too_long == len(rows["train"]) - 1
        first = next(stream)
        assert first["tokens"].size <= config.data.batch_tokens
        target = rows["train"][pairs.kept[0]][1]  # kept indexes the non-empty pairs.
        np.testing.assert_array_equal(pairs.targets[0], [*vocab.encode(target), tok.END_ID])


def test_tfds_errors_name_the_field(text, tmp_path, monkeypatch):
    from reformer.config import ConfigError, validate

    config = tfds_config(tmp_path)
    config.data.target_lang = "fr"
    mock, _ = mock_wmt14(text)
    with mock, pytest.raises(DataError, match=r"data.target_lang: .*\['de', 'en'\], not 'fr'"):
        tr.read_split(config, "validation")
    config = tfds_config(tmp_path)
    config.data.tfds_name = "no_such_translate/de-en"
    with pytest.raises(DataError, match="data.tfds_name: TFDS has no dataset 'no_such"):
        tr.read_split(config, "validation")
    config.data.train_files = "x.{lang}"
    with pytest.raises(ConfigError, match="data.tfds_name: .* both name the pairs"):
        validate(config, num_devices=1)

    import tensorflow_datasets as tfds

    def offline(self, *args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    config = tfds_config(tmp_path)
    with pytest.raises(DataError, match="not prepared in .*tfds.*no network.*data.tfds_dir"):
        tr.read_split(config, "validation")
