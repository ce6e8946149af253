"""Where a batch run's scores and rejects go: local files staged beside their targets and renamed into place,
objects staged beside theirs and copied into place, tables staged in the run's transaction; published whole or
not at all."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from steward_predictor.defaults import IfExists
from steward_predictor.locations import (
    READ_BUFFER,
    DatasetError,
    Location,
    PublishingError,
    csv_header,
    exists,
    file_errors,
    one_line,
    opened,
)

# A file is staged under this suffix beside its target until it is published by a rename.
PARTIAL_SUFFIX = ".partial"
# Objects are staged under <parent>/.steward-tmp-<run>/ beside their target until they are copied into place.
STAGING_PREFIX = ".steward-tmp-"
# A prefix's part files are this large, or a little larger: a new part begins after a chunk takes one past it.
PART_BYTES = 256 << 20
# Written last into a prefix that was published, as Spark and Hadoop do: readers may wait for it.
SUCCESS = "_SUCCESS"
WRITE_BUFFER = 1 << 20
# A Parquet column gets a dictionary when its distinct values are at most this share of the first chunk's rows.
DICTIONARY_SHARE = 0.1


class Writer(Protocol):
    """Rows written in chunks to a staging place, published whole or not at all."""

    def write(self, table: pa.Table) -> None:
        """Append one chunk; the first chunk fixes the columns and their types."""

    def publish(self) -> None:
        """Make everything written visible at the target (for a database: at the transaction's commit)."""

    def discard(self) -> None:
        """Throw away everything written; the target stays as it was."""


class _StagedFileWriter:
    """Chunks written as CSV or Parquet to a staged file, each in a background thread while the caller scores
    the next one (Arrow writes outside the GIL); at most one chunk is in flight, so memory stays bounded.
    Subclasses say where the file is staged and how it is published."""

    def __init__(self, location: Location, if_exists: IfExists) -> None:
        self._location = location
        self._if_exists = if_exists
        self._format_writer: pa_csv.CSVWriter | pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._dictionary: list[str] | bool = True
        self._sink: pa.NativeFile | None = None
        self._pending: Future[None] | None = None
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steward-write")

    def write(self, table: pa.Table) -> None:
        self._wait()
        self._pending = self._background.submit(self._write, table)

    def _open_sink(self) -> pa.NativeFile:
        """A new staged file to write to."""
        raise NotImplementedError

    def _appending(self) -> bool:
        """Whether the staged file starts as a copy of the target, to append to it."""
        return False

    def _read_target(self) -> contextlib.AbstractContextManager[str | IO[bytes]]:
        """The target, to copy it before appending."""
        return opened(self._location)

    def _written(self) -> None:
        """A chunk was written to the staged file."""

    def _finish(self) -> None:
        """Wait for the chunk in flight and close the staged file."""
        self._wait()
        self._background.shutdown()
        if self._schema is None:
            raise DatasetError(f"nothing was written to {self._location.display}")
        with file_errors(self._location, writing=True):
            self._close_file()

    def _close_file(self) -> None:
        if self._format_writer is not None:
            self._format_writer.close()
            self._format_writer = None
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def _abandon_writing(self) -> None:
        """Stop writing, whatever state the chunk in flight left the staged file in."""
        with contextlib.suppress(Exception):
            self._wait()
        self._background.shutdown()
        with contextlib.suppress(Exception):
            if self._format_writer is not None:
                self._format_writer.close()

    def _wait(self) -> None:
        """Wait for the chunk in flight; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, table: pa.Table) -> None:
        with file_errors(self._location, writing=True):
            writer = self._format_writer
            if writer is None:
                writer = self._format_writer = self._open(table)
            if self._schema is not None:
                table = _conform(table, self._schema, self._location)
            if self._location.format == "csv":
                table = timestamps_as_text(table)
            writer.write_table(table)
            self._written()

    def _open(self, first: pa.Table) -> pa_csv.CSVWriter | pq.ParquetWriter:
        """A writer on a new staged file; the first one fixes the columns, their types and the dictionaries."""
        if self._schema is None:
            self._schema = first.schema
            if self._location.format == "parquet":
                self._dictionary = _repetitive(first)
        schema = self._schema
        existing = self._appending()
        self._sink = sink = self._open_sink()
        if self._location.format == "csv":
            if existing:
                self._copy_existing_csv(sink, schema)
            options = pa_csv.WriteOptions(include_header=not existing)
            return pa_csv.CSVWriter(sink, timestamps_as_text(schema.empty_table()).schema, write_options=options)
        if not existing:
            return pq.ParquetWriter(sink, schema, use_dictionary=self._dictionary)
        with (
            self._read_target() as source,
            pq.ParquetFile(source, pre_buffer=False, buffer_size=READ_BUFFER) as previous,
        ):
            if previous.schema_arrow.names != schema.names:
                raise DatasetError(
                    f"cannot append to {self._location.display}: it has the columns {previous.schema_arrow.names}, "
                    f"the scores have {schema.names}"
                )
            # Parquet cannot grow in place: the new file starts as a copy of the old one.
            self._schema = previous.schema_arrow
            writer = pq.ParquetWriter(sink, previous.schema_arrow)
            for batch in previous.iter_batches():
                writer.write_batch(batch)
        return writer

    def _copy_existing_csv(self, sink: pa.NativeFile, schema: pa.Schema) -> None:
        """Start the staged file as a copy of the existing one, to append to it and still publish atomically."""
        with self._read_target() as source:
            header = csv_header(source)
        if header != schema.names:
            raise DatasetError(
                f"cannot append to {self._location.display}: it has the columns {header}, the scores have "
                f"{schema.names}"
            )
        last = b"\n"
        with self._read_target() as source, pa.input_stream(source, compression=None) as stream:
            for block in iter(lambda: stream.read(WRITE_BUFFER), b""):
                sink.write(block)
                last = block
        if last[-1:] != b"\n":
            sink.write(b"\n")


class FileWriter(_StagedFileWriter):
    """A local CSV or Parquet file staged as a hidden file beside its target and renamed into place, so readers
    see the old file or the whole new one, never a part. A killed run leaves at most the hidden file."""

    def __init__(self, location: Location, if_exists: IfExists) -> None:
        super().__init__(location, if_exists)
        self._target = location.path
        with file_errors(location, writing=True):
            self._target.parent.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(
                prefix=f".{self._target.name}.", suffix=PARTIAL_SUFFIX, dir=self._target.parent
            )
            # mkstemp makes the file private; published output gets the usual permissions.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(descriptor, 0o666 & ~umask)
            os.close(descriptor)
            self._staging: Path | None = Path(name)

    def publish(self) -> None:
        if self._staging is None:
            return
        self._finish()
        with file_errors(self._location, writing=True):
            _sync(self._staging)
            if self._if_exists == "fail":
                self._publish_without_replacing()
            else:
                self._staging.replace(self._target)
            self._staging = None
            _sync(self._target.parent)

    def _publish_without_replacing(self) -> None:
        """Output that appeared while scoring is left alone: a hard link never replaces."""
        if self._staging is None:
            return
        appeared = DatasetError(f"{self._location.display} appeared while scoring; it was left as it is")
        try:
            os.link(self._staging, self._target)
        except FileExistsError:
            raise appeared from None
        except OSError:
            # A filesystem without hard links: check, then rename, and accept the moment in between.
            if self._target.exists():
                raise appeared from None
            self._staging.replace(self._target)
        else:
            self._staging.unlink()

    def discard(self) -> None:
        if self._staging is None:
            return
        self._abandon_writing()
        with contextlib.suppress(Exception):
            if self._sink is not None:
                self._sink.close()
        self._staging.unlink(missing_ok=True)
        self._staging = None

    def _open_sink(self) -> pa.NativeFile:
        return pa.OSFile(str(self._staging), mode="w")

    def _appending(self) -> bool:
        return self._if_exists == "append" and self._target.exists()

    def _read_target(self) -> contextlib.AbstractContextManager[str | IO[bytes]]:
        return contextlib.nullcontext(str(self._target))


class ObjectWriter(_StagedFileWriter):
    """A CSV or Parquet object, or a prefix of part files, on object storage (s3://, or any fsspec filesystem).
    Object stores cannot rename: the output is staged under <parent>/.steward-tmp-<run>/ beside its target and
    copied into place once the run succeeded, then the staged keys are deleted; a failed run deletes them
    unpublished, a killed one leaves them there.

    An object is replaced by one copy, so readers see the old object or the whole new one. A prefix's parts are
    copied one by one (a copy that fails removes those copied before it), then, for --if-exists replace, the
    keys of the old output are deleted, and _SUCCESS is written last: a reader listing the prefix before then
    may see some of the new parts, and some of the old ones."""

    def __init__(self, location: Location, if_exists: IfExists, run_id: str | None = None) -> None:
        super().__init__(location, if_exists)
        self._run = _key_safe(run_id) if run_id else secrets.token_hex(8)
        self._file: Any = None
        self._parts: list[str] = []
        self._done = False
        with file_errors(location, writing=True):
            self._filesystem, self._target = location.filesystem()
            parent, _, name = self._target.rpartition("/")
            self._staging = f"{parent}/{STAGING_PREFIX}{self._run}/{name}"
            # The first staged key is made at once: a write the store refuses is known before a row is scored.
            self._filesystem.pipe_file(self._part(0), b"")

    def publish(self) -> None:
        if self._done:
            return
        self._finish()
        with file_errors(self._location, writing=True):
            self._filesystem.invalidate_cache()
            if self._location.prefix:
                self._publish_parts()
            else:
                self._publish_object()
        self._done = True
        self._remove_staging()

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        self._abandon_writing()
        if self._file is not None:
            _abort(self._file)
        with contextlib.suppress(Exception):
            if self._sink is not None:
                self._sink.close()
        self._remove_staging()

    def _publish_object(self) -> None:
        if self._if_exists == "fail" and self._filesystem.exists(self._target):
            raise DatasetError(f"{self._location.display} appeared while scoring; it was left as it is")
        # One server-side copy: the old object until it completes, the whole new one after.
        self._filesystem.copy(self._parts[0], self._target)

    def _publish_parts(self) -> None:
        filesystem, target = self._filesystem, self._target
        # Only keys under the prefix: an object named like it, without the slash, is not part of it.
        before = {key for key in filesystem.find(target) if key.startswith(f"{target}/")}
        if self._if_exists == "fail" and before:
            raise DatasetError(f"{self._location.display} appeared while scoring; it was left as it is")
        published = {part: f"{target}/{part.rpartition('/')[2]}" for part in self._parts}
        clashes = sorted(before & set(published.values()))
        if clashes:
            raise DatasetError(
                f"{self._location.display} already holds {filesystem.unstrip_protocol(clashes[0])}, written by a "
                "run with the same --run-id; it was left as it is"
            )
        success = f"{target}/{SUCCESS}"
        # Readers that wait for _SUCCESS wait again until the new parts are all there.
        if success in before:
            filesystem.rm_file(success)
        copied: list[str] = []
        try:
            for part, key in published.items():
                filesystem.copy(part, key)
                copied.append(key)
        except BaseException:
            # The prefix is put back as it was: without the parts copied so far.
            with contextlib.suppress(Exception):
                if copied:
                    filesystem.rm(copied)
            with contextlib.suppress(Exception):
                if success in before:
                    filesystem.pipe_file(success, b"")
            raise
        try:
            if self._if_exists == "replace":
                stale = sorted(before - set(published.values()) - {success})
                if stale:
                    filesystem.rm(stale)
            filesystem.pipe_file(success, b"")
        except BaseException as error:
            # Past the point of return: the new parts are in, and the old ones cannot be brought back.
            reason = one_line(error) or type(error).__name__
            raise PublishingError(
                f"{self._location.display} holds the new parts (part-*-{self._run}.*), but its old keys were not all "
                f"deleted or {SUCCESS} was not written ({reason}); delete the other keys under it"
            ) from error

    def _part(self, index: int) -> str:
        """The staged key of the object, or of a prefix's index-th part."""
        if not self._location.prefix:
            return self._staging
        return f"{self._staging}/part-{index:05d}-{self._run}.{self._location.format}"

    def _open_sink(self) -> pa.NativeFile:
        key = self._part(len(self._parts))
        self._file = self._filesystem.open(key, "wb")
        self._parts.append(key)
        return pa.PythonFile(self._file, mode="w")

    def _close_file(self) -> None:
        super()._close_file()
        if self._file is not None:
            # Closing the file completes its upload.
            self._file.close()
            self._file = None

    def _written(self) -> None:
        if self._location.prefix and self._file is not None and self._file.tell() >= PART_BYTES:
            self._close_file()

    def _appending(self) -> bool:
        # A prefix grows by new parts; an object, like a file, starts as a copy of the old one.
        return self._if_exists == "append" and not self._location.prefix and exists(self._location)

    def _remove_staging(self) -> None:
        """Delete this output's staged keys; a run whose output is published still succeeds if that fails."""
        filesystem = self._filesystem
        try:
            filesystem.invalidate_cache()
            if self._location.prefix:
                # Keys under this output's own staging prefix: not those of an output named like it.
                staged = [key for key in filesystem.find(self._staging) if key.startswith(f"{self._staging}/")]
            else:
                staged = [self._staging] if filesystem.exists(self._staging) else []
            if staged:
                filesystem.rm(staged)
        except Exception as error:  # whatever the store says, the run's outcome stands
            where = self._filesystem.unstrip_protocol(self._staging)
            print(f"steward-predict: could not delete the temporary keys at {where}: {error}", file=sys.stderr)


def _abort(file: Any) -> None:
    """An upload given up: a multipart upload is aborted, and the file is marked closed so that it is not
    completed when it is collected."""
    with contextlib.suppress(Exception):
        file.discard()
    with contextlib.suppress(AttributeError):
        file.closed = True


def _key_safe(run_id: str) -> str:
    """A run id as it can go into a key: characters other than letters, digits, . _ - replaced."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:64]


def _repetitive(table: pa.Table) -> list[str] | bool:
    """Columns worth a Parquet dictionary, judged by the first chunk: few distinct values (the model version,
    the prediction of a classifier). Trying one on unique values (request ids, probabilities) costs time for
    nothing."""
    if table.num_rows == 0:
        return True
    limit = DICTIONARY_SHARE * table.num_rows
    # A column with more distinct values than that in its first rows has at least as many in all of them: the
    # few rows settle it for unique columns without hashing the whole chunk.
    head = table.slice(0, int(limit) + 1)
    return [
        name
        for name, column, first in zip(table.column_names, table.columns, head.columns, strict=True)
        if pc.count_distinct(first).as_py() <= limit and pc.count_distinct(column).as_py() <= limit
    ]


def timestamps_as_text(table: pa.Table) -> pa.Table:
    """Timestamps formatted once per distinct value: Arrow's CSV writer formats every one anew, slowly, and
    a scored chunk carries one timestamp on every row."""
    for index, column in enumerate(table.columns):
        if pa.types.is_timestamp(column.type):
            chunks = [
                pa.DictionaryArray.from_arrays(part.indices, part.dictionary.cast(pa.string())).dictionary_decode()
                for part in column.dictionary_encode().chunks
            ]
            table = table.set_column(index, table.field(index).name, pa.chunked_array(chunks, type=pa.string()))
    return table


def _conform(table: pa.Table, schema: pa.Schema, location: Location) -> pa.Table:
    """A chunk with the types of the first one (a CSV chunk whose ids all happen to be missing, say)."""
    if table.schema.equals(schema):
        return table
    if table.schema.names != schema.names:
        raise DatasetError(f"{location.display}: columns {table.schema.names} where {schema.names} were written")
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise DatasetError(f"{location.display}: a chunk's values do not fit the columns' types ({error})") from error


# Arrow types and the SQL column types they are stored as; anything else is stored as text.
def _sync(path: Path) -> None:
    """Flush a file, or a directory's entries (a rename), to disk: published output survives a crash of the
    machine, not just of the process."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
