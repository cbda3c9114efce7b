"""Corpus BLEU with sacreBLEU, cased and uncased, as the paper's Table 4 reports it.

sacreBLEU scores detokenized text with its own tokenization (`13a`), so numbers compare across
papers; its signature names every setting and is reported with each score.
"""

from __future__ import annotations

from collections.abc import Sequence


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """`bleu_cased`, `bleu_uncased` (0..100) and their sacreBLEU signatures, one reference per
    hypothesis."""
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    out = {}
    for name, metric in (("cased", BLEU()), ("uncased", BLEU(lowercase=True))):
        score = metric.corpus_score(list(hypotheses), [list(references)])
        out[f"bleu_{name}"] = float(score.score)
        out[f"signature_{name}"] = str(metric.get_signature())
    return out
