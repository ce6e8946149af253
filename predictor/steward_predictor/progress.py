"""A batch run's progress on stderr: rows done and the rate, as a bar on a terminal and one line per chunk
otherwise (job logs, CI)."""

from __future__ import annotations

import time
from typing import Any, TextIO

from tqdm import tqdm


class Progress:
    """Rows done and the rate: a bar on a terminal, one line per chunk otherwise."""

    def __init__(self, stream: TextIO, total: int | None = None) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._bar: Any = None
        if stream.isatty():
            self._bar = tqdm(total=total, unit=" rows", unit_scale=True, file=stream, dynamic_ncols=True)

    def advance(self, rows: int, rows_read: int, rows_rejected: int) -> None:
        """One more chunk of `rows` done, of `rows_read` so far, `rows_rejected` of which were rejected."""
        if self._bar is not None:
            self._bar.update(rows)
            self._bar.set_postfix(rejected=rows_rejected, refresh=False)
            return
        seconds = time.monotonic() - self._started
        rate = rows_read / seconds if seconds > 0 else 0.0
        print(
            f"steward-predict: {rows_read:,} rows read, {rows_rejected:,} rejected, {rate:,.0f} rows/s",
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
