"""`log`: the project's progress and status lines on stdout, timestamped."""

from __future__ import annotations

import time


def log(line: str) -> None:
    """A timestamped line on stdout (library INFO logs stay quiet at absl's default level)."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
