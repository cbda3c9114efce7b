"""Results of the reproduction scripts: the `xz -9e` reference, a run's metrics read back, and
the JSON records, Markdown table and PNG plot each script writes."""

from __future__ import annotations

import json
import lzma
import os
from collections.abc import Callable, Sequence


def xz_bpc(data: bytes) -> float:
    """Bits per byte of `xz -9e` (LZMA2 preset 9 | extreme, .xz container) on `data`."""
    compressed = lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    return 8 * len(compressed) / len(data)


def read_metrics(workdir: str) -> list[dict]:
    """WORKDIR/metrics.jsonl; a line cut short (a process killed while writing it, or one
    still writing) is left out."""
    records = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def listed(items: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def write_results(
    records: list[dict],
    out: str,
    markdown_path: str,
    table: str,
    plot: Callable[[str], None] | None = None,
    note: str = "",
) -> list[str]:
    """Writes `records` to `out` (JSON), `table` to `markdown_path` and, with `plot`, a PNG
    beside `out` (`plot(png_path)`); prints the table and the files written (then `note`).
    Returns the paths written."""
    for path in (out, markdown_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(records, f, indent=1)
    with open(markdown_path, "w") as f:
        f.write(table)
    paths = [out, markdown_path]
    if plot is not None:
        paths.append(os.path.splitext(out)[0] + ".png")
        plot(paths[-1])
    print(table)
    print(f"Wrote {listed(paths)}{note}")
    return paths
