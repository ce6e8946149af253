"""Defaults, choices, exit codes and the usage error that the predictor's command-line tools share with the modules
that do the work, importable without loading any of them (numpy, pandas, pyarrow, scikit-learn): `--help` and a bad
flag answer at once."""

from __future__ import annotations

import re
from typing import Literal

# Where KServe's storage initializer puts the model; the default everywhere a bundle is read.
DEFAULT_URI = "/mnt/models"

Format = Literal["csv", "parquet", "sql"]
FORMATS: tuple[Format, ...] = ("csv", "parquet", "sql")
IfExists = Literal["fail", "replace", "append"]
IF_EXISTS: tuple[IfExists, ...] = ("fail", "replace", "append")

MAX_REQUEST_ID = 128
"""The longest request id passed on. The monitor stores ids of up to 256 characters, and a request of several rows
is reported as `<id>-<row>`: 128 leaves room for any row number."""
REQUEST_ID_CHARACTERS = "A-Z a-z 0-9 - _ . : ; = + / @ ~"
"""What request ids are made of: enough for uuids, W3C trace ids, Envoy's and KServe's ids, CloudEvent ids and
base64, and nothing a log line, a header or the monitor would trip over."""
REQUEST_ID = re.compile(rf"[A-Za-z0-9_.:;=+/@~-]{{1,{MAX_REQUEST_ID}}}")

DEFAULT_CHUNK_ROWS = 50_000
DEFAULT_MAX_REJECT_FRACTION = 0.05

# Exit codes of steward-predict and steward-bundle (which uses the first three).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_REFUSED = 4


class UsageError(Exception):
    """The flags do not make a runnable job (exit EXIT_USAGE); nothing was read or written."""
