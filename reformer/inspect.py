"""Shows what one layer's attention does on one input.

    python -m reformer.inspect --config configs/X.py --workdir W --layer N --out DIR \\
        [--text T | --ids 1,2,3 | --example K] [--head H] [--window a:b] [--key_window c:d] \\
        [--n_hashes R] [--seed S] [--query P] [--diagonal D]

For the latest checkpoint of W and one input (text for byte-level models, token ids, or the
K-th sequence of the evaluation data), writes to DIR `layer<N>.npz` (each head's bucket of
every position in every hash round, bucket sizes, and the attention weights each query of
the window gives the keys of the key window, per round and combined) and PNG pictures per
head: the buckets over positions per round, the attention map with the keys each round lets
a query see, and with `--query P` that query alone. The buckets are those of the model's own
forward pass when evaluated with hash seed S (0: as `reformer.evaluate` does). Full and local
layers have maps and no buckets. The work is done by `reformer/inspection/`.
"""

from __future__ import annotations

import ml_collections
from absl import flags

from reformer import cli
from reformer.errors import ConfigError
from reformer.inspection.command import Request, inspect_checkpoint

# The usage line of a bad flag (`cli.exit_with_error`) names this command's own flags.

_LAYER = flags.DEFINE_integer("layer", 0, "The layer to inspect (0 = the first).")
_OUT = flags.DEFINE_string("out", None, "Directory for the .npz and the PNG pictures.")
_TEXT = flags.DEFINE_string("text", None, "The input as text (byte-level models).")
_IDS = flags.DEFINE_string("ids", None, "The input as comma-separated token ids.")
_EXAMPLE = flags.DEFINE_integer("example", None, "The input: this sequence of the evaluation data.")
_HEAD = flags.DEFINE_integer("head", None, "The head to draw and expand; default all.")
_WINDOW = flags.DEFINE_string(
    "window", "", "Queries START:STOP to expand; default the first 512 positions."
)
_KEY_WINDOW = flags.DEFINE_string(
    "key_window", "", "Keys START:STOP of the maps; default up to 1024 around the window."
)
_N_HASHES = flags.DEFINE_integer(
    "n_hashes", 0, "LSH hash rounds; 0 = config.eval.n_hashes, else the model's."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the hash rotations (0: evaluation's).")
_QUERY = flags.DEFINE_integer("query", -1, "Also draw this query position alone; -1 = none.")
_DIAGONAL = flags.DEFINE_integer(
    "diagonal", 0, "Mark the keys this many positions before each query; 0 = none."
)


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
    if not _OUT.value:
        raise ConfigError("--out: give the directory to write the arrays and pictures to")
    request = Request(
        layer=_LAYER.value,
        out=_OUT.value,
        text=_TEXT.value,
        ids=_IDS.value,
        example=_EXAMPLE.value,
        head=_HEAD.value,
        window=_WINDOW.value,
        key_window=_KEY_WINDOW.value,
        n_hashes=_N_HASHES.value,
        seed=_SEED.value,
        query=_QUERY.value,
        diagonal=_DIAGONAL.value,
    )
    inspect_checkpoint(config, workdir, request)


if __name__ == "__main__":
    cli.run("inspect", main, distributed=False)
