"""A HuggingFace Reformer checkpoint as a workdir of this project.

    python scripts/convert_hf_checkpoint.py --hf_dir DIR --out OUT [--seq_len N]

DIR is a `ReformerModelWithLMHead.save_pretrained` directory (`config.json` and
`model.safetensors` or `pytorch_model.bin`), for example a local copy of
`google/reformer-enwik8`. OUT receives:

- `config.py`: a config file (`get_config()`) with the model's settings; data, training and
  optimizer fields are `default_config()`'s, to be set on the command line;
- `config.json` and `checkpoints/0/`: the parameters (no optimizer state), which
  `reformer.evaluate` and `reformer.sample` read as they read a trained workdir.

Then, for example:

    python -m reformer.evaluate --config OUT/config.py --workdir OUT \\
        --config.data.path=enwik8.zip --config.eval.split=test
    python -m reformer.sample --config OUT/config.py --workdir OUT --prompt "The "
    python -m reformer.train --config OUT/config.py --workdir runs/finetune \\
        --config.train.init_from=OUT --config.data.path=...     # fine-tuning

Settings this project cannot express are refused with an error naming the HF field.
"""

from __future__ import annotations

import argparse
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf_dir", required=True, help="save_pretrained directory")
    parser.add_argument("--out", required=True, help="new workdir to write")
    parser.add_argument(
        "--seq_len", type=int, default=0, help="data.seq_len (default: the positions' length)"
    )
    args = parser.parse_args()
    from reformer.config import ConfigError
    from reformer.interop.hf_import import convert

    try:
        convert(args.hf_dir, args.out, args.seq_len or None)
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
