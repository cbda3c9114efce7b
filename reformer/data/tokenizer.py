"""A subword vocabulary for translation: SentencePiece (in place of the authors' Tensor2Tensor
subword encoder), one vocabulary shared by both languages, trained on their training text.

Ids follow the project's convention: 0 padding (also the decoder's start input), 1 end, 2
unknown, and no begin-of-sentence id (SentencePiece's defaults, unknown 0 and begin 1, would
clash with it). Byte fallback is on, so any text round-trips: a character the training text
never had is spelled as its UTF-8 bytes instead of becoming the unknown id. The model file
(`*.model`, SentencePiece's serialized proto) may be local or on `gs://`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import numpy as np

from reformer import storage
from reformer.tokens import END_ID, PAD_ID, UNK_ID

# Sentences the trainer reads at most (a random sample beyond; plenty for a 32K vocabulary).
MAX_TRAINING_SENTENCES = 2_000_000


class Tokenizer:
    """Encodes text to ids (without the end id) and decodes ids back to text."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError:
            raise ValueError(
                f"not a SentencePiece model ({len(model_proto):,} bytes that do not parse: "
                "damaged or cut short)"
            ) from None
        ids = (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id(), self._sp.bos_id())
        if ids != (PAD_ID, END_ID, UNK_ID, -1):
            raise ValueError(
                f"a SentencePiece model with (pad, end, unknown, begin) ids {ids}, not "
                f"({PAD_ID}, {END_ID}, {UNK_ID}, -1): train it with `reformer.data.tokenizer.train`"
            )

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        if not storage.isfile(path):
            raise FileNotFoundError(f"no SentencePiece model at {path}")
        return cls(storage.read_bytes(path))

    def save(self, path: str) -> None:
        storage.write_bytes(path, self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` up to the first end id; padding is skipped."""
        out = []
        for i in np.asarray(list(ids), np.int64).tolist():
            if i == END_ID:
                break
            if i != PAD_ID:
                out.append(i)
        return self._sp.decode(out)


def train(
    texts: Iterable[str],
    vocab_size: int,
    *,
    model_type: str = "unigram",
    seed_sentences: int = MAX_TRAINING_SENTENCES,
) -> Tokenizer:
    """A SentencePiece vocabulary of `vocab_size` pieces trained on `texts` (one sentence
    each; empty ones are skipped), with the project's ids. ValueError, in one line, when there
    is no text or SentencePiece cannot make the vocabulary (e.g. too few distinct pieces)."""
    import sentencepiece as spm

    sentences = [t for t in texts if t.strip()]
    if not sentences:
        raise ValueError("no text to make a vocabulary from (every sentence is empty)")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=PAD_ID,
            eos_id=END_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            character_coverage=1.0,
            byte_fallback=True,
            input_sentence_size=seed_sentences,
            shuffle_input_sentence=True,
            minloglevel=2,  # Warnings and errors only.
        )
    except RuntimeError as e:  # SentencePiece's checks: "INTERNAL: file(line) [cond] why".
        why = str(e).strip().splitlines()[0].split("] ", 1)[-1].strip() or str(e)[:200]
        raise ValueError(
            f"SentencePiece could not make a {vocab_size:,}-piece vocabulary from "
            f"{len(sentences):,} sentences: {why}"
        ) from None
    return Tokenizer(model.getvalue())
