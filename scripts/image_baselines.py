"""Lossless compressors on the pixels an image model is scored on: bits per dimension
(sub-pixel) of PNG and of `xz -9e`, over exactly the decoded images of a split.

    python scripts/image_baselines.py --config configs/cifar10.py:cpu --split test \\
        --out docs/results/cifar10_baselines_cpu.json

- `png`: every image saved by Pillow with `optimize=True`, its file's bits over its
  sub-pixels, summed over the split; `png_no_header` counts only the compressed image data
  (the IDAT chunks' payload), leaving out the signature, the chunk framing and the header and
  end chunks that every file repeats.
- `xz`: `xz -9e` (LZMA2 preset 9 | extreme) over the split's raw sub-pixel bytes, the images
  one after another in the model's order (rows, columns, then channels): the baseline that
  the enwik8 results use.

One JSON record per compressor ({"baseline", "bits_per_dim", "split", "images",
"sub_pixels", "config", "device"}); a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct

import numpy as np

from reformer.experiments.results import xz_bpc


def idat_bytes(png: bytes) -> int:
    """The bytes of a PNG file's compressed image data: the payload of its IDAT chunks."""
    total, at = 0, 8  # After the 8-byte signature, chunks: length, type, data, CRC.
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        if png[at + 4 : at + 8] == b"IDAT":
            total += length
        at += 12 + length
    return total


def png_bits(images: np.ndarray) -> tuple[int, int]:
    """(file bits, image-data bits) of `images` (`[N, H, W, C]` uint8) as optimized PNGs."""
    from PIL import Image

    file_bits = data_bits = 0
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
            buffer, format="PNG", optimize=True
        )
        png = buffer.getvalue()
        file_bits += 8 * len(png)
        data_bits += 8 * idat_bytes(png)
    return file_bits, data_bits


def split_images(config, split: str) -> np.ndarray:
    """Every image of `split` as the model sees it (`[N, H, W, C]` uint8), in order."""
    from reformer.data import make_eval_batches

    config = config.copy_and_resolve_references()
    config.eval.split = split
    rows = []
    for batch in make_eval_batches(config, whole_split=True):
        real = batch["weights"].any(axis=1)
        rows.append(batch["tokens"][real])
    return np.concatenate(rows).astype(np.uint8).reshape(-1, *config.data.image_shape)


def baselines(images: np.ndarray) -> dict[str, float]:
    """Bits per dimension of each compressor on `images`."""
    dims = images.size
    file_bits, data_bits = png_bits(images)
    return {
        "png": file_bits / dims,
        "png_no_header": data_bits / dims,
        "xz": xz_bpc(images.tobytes()),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/cifar10.py:cpu")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--limit", type=int, default=0, help="Only the first N images (0 = all).")
    p.add_argument("--out", default=None, help="JSON file of the records.")
    args = p.parse_args(argv)

    from reformer.config import load_config_file
    from reformer.training.sharding import device_name

    path, _, variant = args.config.partition(":")
    config = load_config_file(path, variant or None)
    images = split_images(config, args.split)
    if args.limit:
        images = images[: args.limit]
    common = {
        "split": args.split,
        "images": len(images),
        "sub_pixels": int(images.size),
        "config": args.config,
        "device": device_name(),
    }
    records = [
        {"baseline": name, "bits_per_dim": value, **common}
        for name, value in baselines(images).items()
    ]
    print("| compressor | bits/dim |\n|---|---|")
    for r in records:
        print(f"| {r['baseline']} | {r['bits_per_dim']:.4f} |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(records, f, indent=1)
        print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
