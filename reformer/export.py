"""Exports the latest checkpoint of a workdir as a HuggingFace Reformer directory.

    python -m reformer.export --config configs/X.py --workdir W --out DIR [--hash_seed N]

DIR receives `config.json`, `model.safetensors` and a model card `README.md` (the config,
the step, the workdir's evaluation numbers); `transformers.ReformerModelWithLMHead`
(`model.kind = "lm"`) or `ReformerForMaskedLM` (`"masked_lm"`) loads it with
`from_pretrained(DIR)`. What HuggingFace's Reformer cannot hold (`model.residual =
standard`, the encoder-decoder, the classifier's head, axial positions over more than two
axes, full and chunked layers of one kind together) is refused in one line. The work is done
by `reformer/interop/hf_export.py`.
"""

from __future__ import annotations

import ml_collections
from absl import flags

from reformer.interop.hf_export import export

_OUT = flags.DEFINE_string("out", None, "The directory to write (local or gs://).")
_HASH_SEED = flags.DEFINE_integer(
    "hash_seed",
    None,
    "HF's seed of its LSH rotations (config.json `hash_seed`); unset: fresh rotations at "
    "every call.",
)
flags.mark_flag_as_required("out")


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
    export(config, workdir, _OUT.value, hash_seed=_HASH_SEED.value)


if __name__ == "__main__":
    from reformer import cli

    cli.run("export", main, distributed=False)
