"""Progress on stderr for long work (export, quantization, synthesis); silenced by `--quiet`."""
from __future__ import annotations

import sys
import time


class Progress:
    """Named stages with elapsed time, and an optional counter bar for loops."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self._t0 = time.perf_counter()

    def stage(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self._t0:7.1f}s] {text}", file=self.stream, flush=True)

    def bar(self, label: str, done: int, total: int) -> None:
        if self.quiet or total <= 0:
            return
        if not self.stream.isatty():  # logs get one line per quarter, not a carriage-return stream
            quarters = {total * q // 4 for q in (1, 2, 3, 4)}
            if done in quarters:
                print(f"  {label} {done}/{total}", file=self.stream, flush=True)
            return
        width = 30
        fill = int(width * done / total)
        end = "\n" if done >= total else ""
        print(f"\r  {label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}", end=end,
              file=self.stream, flush=True)
