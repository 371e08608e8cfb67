"""Trace files: rotated JSON-lines segments with a disk budget (``pandas.read_json(path, lines=True)`` reads one).

A trace is a folder of segments ``trace-000000.jsonl``, ``trace-000001.jsonl``, ... The segment being written is
``trace-NNNNNN.jsonl.part`` (appended and flushed line by line); when it reaches ``segment_bytes`` it is fsynced
and renamed to ``.jsonl`` (atomic), and the oldest finished segments are deleted while the folder exceeds
``max_bytes``. A crash can lose at most the torn last line of the ``.part`` segment, which ``read_trace`` skips.
Every line is one flat JSON object with a ``kind`` ("frame", "topic", "hardware", "runtime", "stats", ...).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeAlias

TraceRecord: TypeAlias = dict[str, Any]
"""One trace line: a flat JSON object with a ``kind`` and its fields (JSON scalars)."""

SEGMENT_RE = re.compile(r"^trace-(\d{6,})\.jsonl(\.part)?$")


class TraceFileError(OSError):
    """A trace path that cannot be written or read."""


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TraceWriter:
    """Appends records to rotated segments in ``folder`` keeping the folder under ``max_bytes``."""

    def __init__(
        self, folder: str | os.PathLike, max_bytes: int = 64 * 2**20, segment_bytes: int = 4 * 2**20
    ) -> None:
        if segment_bytes < 1024 or max_bytes < 2 * segment_bytes:
            raise TraceFileError(
                f"need segment_bytes >= 1024 and max_bytes >= 2*segment_bytes, got {segment_bytes}, {max_bytes}"
            )
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.segment_bytes = int(segment_bytes)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TraceFileError(f"cannot create trace folder {self.folder}: {err}") from err
        existing = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := SEGMENT_RE.match(p.name))]
        for index, p in existing:  # a previous run's open segment: finish it so the budget covers it
            if p.suffix == ".part":
                os.replace(p, self._segment_path(index, part=False))
        self._index = max((i for i, _ in existing), default=-1) + 1
        self._handle: IO[str] | None = None
        self._bytes = 0
        self.records_written = 0
        self.segments_deleted = 0
        self._open_segment()

    def _segment_path(self, index: int, part: bool) -> Path:
        return self.folder / f"trace-{index:06d}.jsonl{'.part' if part else ''}"

    def _open_segment(self) -> None:
        path = self._segment_path(self._index, part=True)
        try:
            self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open across writes
        except OSError as err:
            raise TraceFileError(f"cannot open trace segment {path}: {err}") from err
        self._bytes = 0

    def _finish_segment(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        part = self._segment_path(self._index, part=True)
        if self._bytes == 0:
            part.unlink(missing_ok=True)
        else:
            os.replace(part, self._segment_path(self._index, part=False))
            self._index += 1
        self._bytes = 0

    def _enforce_budget(self) -> None:
        finished = sorted(p for p in self.folder.glob("trace-*.jsonl") if SEGMENT_RE.match(p.name))
        sizes = {p: p.stat().st_size for p in finished}
        used = sum(sizes.values()) + self._bytes
        for path in finished:
            if used <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            used -= sizes[path]
            self.segments_deleted += 1

    def write(self, record: TraceRecord) -> None:
        """Append one record (a flat dict of JSON scalars); rotates and trims as needed."""
        if self._handle is None:
            raise TraceFileError(f"trace writer for {self.folder} is closed")
        line = json.dumps({k: _clean(v) for k, v in record.items()}, separators=(",", ":")) + "\n"
        self._handle.write(line)
        self._bytes += len(line)
        self.records_written += 1
        if self._bytes >= self.segment_bytes:
            self._finish_segment()
            self._enforce_budget()
            self._open_segment()

    def write_many(self, records: Iterable[TraceRecord]) -> None:
        for record in records:
            self.write(record)

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.flush()

    def close(self) -> None:
        """Finish the open segment (rename it to ``.jsonl``) and apply the disk budget."""
        self._finish_segment()
        self._enforce_budget()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def trace_segments(path: str | os.PathLike) -> list[Path]:
    """The segment files of a trace folder in order (or ``[path]`` for a single JSON-lines file)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TraceFileError(f"trace not found: {path}")
    found = [(int(m.group(1)), p) for p in path.iterdir() if (m := SEGMENT_RE.match(p.name))]
    if not found:
        raise TraceFileError(f"no trace-NNNNNN.jsonl segments in {path}")
    return [p for _, p in sorted(found)]


def iter_trace(path: str | os.PathLike, kinds: Iterable[str] | None = None) -> Iterator[TraceRecord]:
    """Records of a trace (folder or file) in write order; a torn last line of a segment is skipped."""
    wanted = None if kinds is None else set(kinds)
    for seg in trace_segments(path):
        with open(seg, encoding="utf-8") as handle:
            lines = handle.readlines()
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                if i == len(lines) - 1:
                    continue  # torn by a crash mid-write
                raise TraceFileError(f"{seg}:{i + 1}: not a JSON line: {err}") from err
            if wanted is None or rec.get("kind") in wanted:
                yield rec


def read_trace(path: str | os.PathLike, kinds: Iterable[str] | None = None) -> list[TraceRecord]:
    """All records of a trace (see ``iter_trace``)."""
    return list(iter_trace(path, kinds))
