"""The output of ``kdiqa predict``: rows written as they are scored, resumable, complete when it has its name.

Scoring a photo library takes hours, so the file is built so that a user can trust it at every moment:

- **The final name means complete.** Rows are appended to ``<out>.partial`` (a CSV with the final
  header), which gets its final name only when every image has a row: by an atomic rename for a
  ``.csv`` output, by writing the ``.json`` atomically from it for a JSON output. There is no marker
  to check: ``scores.csv`` exists only whole, ``scores.csv.partial`` only unfinished.
- **An interruption loses at most the batch in flight.** The file is flushed after every batch, so
  Ctrl-C, a killed job or a full disk leave every row scored so far on disk (and fsynced before the
  rename; only a power cut can also lose the last rows the OS had not written).
- **``--resume`` continues it without rescoring.** It keeps every row already written, drops a torn
  last line (a write cut short: no newline at its end) and scores only the images without a row, in
  the same order, so the result equals an uninterrupted run's. Images that failed have their row too
  (an empty score and the error) and are not retried.
- **A partial file cannot be mixed or lost.** ``<out>.partial.json`` records what wrote it (the
  model, the inputs, ``--size``, draft decoding); resuming with others is refused, since the finished
  file would look like one model's scores. Without ``--resume`` an existing partial file is refused
  rather than overwritten: it may hold hours of work.
- **Memory stays flat**: rows go to disk; a resumed run keeps only the paths already done.

Without ``--output`` the rows go to stdout, also as they come (nothing to resume there).
"""
from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from kdiqa.errors import DataError, KdiqaError
from kdiqa.io import atomic_path, read_json, write_error, write_json

FIELDS = ("path", "score", "error")
WHAT = "the predictions"
_TAIL_BLOCK = 65536  # bytes read at a time, from the end, to find the last complete line


def partial_path(out: str | os.PathLike) -> Path:
    """``scores.csv`` → ``scores.csv.partial``: the rows of an unfinished run."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def record_path(out: str | os.PathLike) -> Path:
    """``scores.csv`` → ``scores.csv.partial.json``: what the unfinished run was started with."""
    out = Path(out)
    return out.with_name(out.name + ".partial.json")


def format_row(row: dict[str, Any]) -> list[str]:
    score = row["score"]
    return [str(row["path"]), "" if score is None else f"{score:.6f}", row["error"]]


class PredictionsFile:
    """Append rows to ``out`` (a ``.json``, else CSV; stdout when None) as the module docstring describes.

    Use as a context manager: ``done`` counts the rows a resumed file already has per path; :meth:`write`
    appends rows; leaving the block normally finishes the file (final name), leaving it by an
    exception keeps the partial file for ``--resume``.
    """

    def __init__(self, out: str | os.PathLike | None, record: dict[str, Any], resume: bool = False) -> None:
        if out is None and resume:
            raise KdiqaError("predict --resume: needs --output (rows printed to stdout cannot be resumed)")
        self.out = None if out is None else Path(out)
        self.record = record
        self.resume = resume
        self.done: Counter[str] = Counter()  # rows already there per path (a path listed twice has two)
        self.scored = 0  # rows with a score, resumed ones included
        self.rows = 0
        self.complete_already = False  # --resume found the final file and nothing unfinished
        self._file: TextIO | None = None
        self._writer: Any = None

    # ------------------------------------------------------------------------------- opening
    def __enter__(self) -> PredictionsFile:
        if self.out is None:
            self._file = sys.stdout
            self._start()
            return self
        partial = partial_path(self.out)
        if partial.exists() and not self.resume:
            raise KdiqaError(f"{partial}: an unfinished predict left this file; pass --resume to continue it, "
                             "or delete it to start over")
        if self.resume and partial.exists():
            self._check_record(partial)
            self._read_done(partial)
            self._file = self._open(partial, "a")
            self._writer = csv.writer(self._file, lineterminator="\n")
            if self.rows == 0 and self._file.tell() == 0:
                self._header()
        elif self.resume and self.out.exists():
            self.complete_already = True
            for row in read_rows(self.out):
                self.rows += 1
                self.scored += row["score"] is not None
        else:
            write_json(record_path(self.out), self.record, what=WHAT)
            self._file = self._open(partial, "w")
            self._start()
        return self

    def _open(self, path: Path, mode: str) -> TextIO:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, mode, newline="", encoding="utf-8")
        except OSError as exc:
            raise write_error(path, WHAT, exc) from None

    def _start(self) -> None:
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._header()

    def _header(self) -> None:
        self._writer.writerow(FIELDS)
        self._flush()

    def _check_record(self, partial: Path) -> None:
        record = record_path(self.out)
        if not record.is_file():
            raise KdiqaError(f"{partial}: cannot resume, {record.name} (what the run was started with) is missing; "
                             "delete the partial file to start over")
        was = read_json(record)
        changed = [k for k in sorted(set(was) | set(self.record)) if was.get(k) != self.record.get(k)]
        if changed:
            key = changed[0]
            raise KdiqaError(f"{partial}: was started with {key} {was.get(key)!r}, not {self.record.get(key)!r}; resume with "
                             "the same model, inputs and options, or delete it to start over")

    def _read_done(self, partial: Path) -> None:
        """Drop a torn last line, then collect the rows already there."""
        size = partial.stat().st_size
        whole = complete_length(partial)
        if whole < size:
            try:
                os.truncate(partial, whole)
            except OSError as exc:
                raise write_error(partial, WHAT, exc) from None
            print(f"kdiqa: {partial}: dropped a torn last line ({size - whole} bytes)", file=sys.stderr)
        for row in read_rows(partial):
            self.done[row["path"]] += 1
            self.rows += 1
            self.scored += row["score"] is not None

    # ------------------------------------------------------------------------------- writing
    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows (``path``, ``score`` or None, ``error``) and flush them to the OS."""
        for row in rows:
            self._writer.writerow(format_row(row))
            self.rows += 1
            self.scored += row["score"] is not None
        self._flush()

    def _flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            raise write_error(self._where, WHAT, exc) from None

    @property
    def _where(self) -> Path | str:
        return "stdout" if self.out is None else partial_path(self.out)

    # ------------------------------------------------------------------------------- closing
    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._file is None or self._file is sys.stdout:
            return
        if kind is not None:  # interrupted: keep the partial file for --resume
            try:
                self._file.close()
            except OSError:
                pass  # the original exception says what went wrong
            if self.rows:
                print(f"kdiqa: {self.rows} rows kept in {partial_path(self.out)}: the same command with --resume "
                      "continues it", file=sys.stderr)
            else:  # nothing worth resuming (e.g. the model failed on the first batch): leave nothing to refuse
                for leftover in (partial_path(self.out), record_path(self.out)):
                    leftover.unlink(missing_ok=True)
            return
        try:
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            raise write_error(partial_path(self.out), WHAT, exc) from None
        self._finish()

    def _finish(self) -> None:
        partial = partial_path(self.out)
        with atomic_path(self.out, WHAT) as tmp:
            if self.out.suffix.lower() == ".json":
                with open(tmp, "w", encoding="utf-8") as f:
                    _write_json_rows(read_rows(partial), f)
            else:
                os.replace(partial, tmp)
        for leftover in (partial, record_path(self.out)):
            leftover.unlink(missing_ok=True)


def complete_length(path: Path) -> int:
    """Bytes of ``path`` up to and including its last newline (0 if it has none)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - _TAIL_BLOCK)
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a predictions CSV (or JSON), streamed; a malformed row is a one-line error naming it."""
    if path.suffix.lower() == ".json":
        try:
            yield from json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not a kdiqa predictions file ({exc.msg} at line {exc.lineno})") from None
        return
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                return
            if tuple(header) != FIELDS:
                raise DataError(f"{path}: not a kdiqa predictions file (header {','.join(header)!r}, expected {','.join(FIELDS)!r})")
            for values in reader:
                if len(values) != len(FIELDS):
                    raise DataError(f"{path}: row {reader.line_num}: expected {len(FIELDS)} columns, got {len(values)}")
                path_, score, error = values
                try:
                    yield {"path": path_, "score": float(score) if score else None, "error": error}
                except ValueError:
                    raise DataError(f"{path}: row {reader.line_num}: score {score!r} is not a number") from None
        except csv.Error as exc:
            raise DataError(f"{path}: row {reader.line_num}: {exc}") from None


def _write_json_rows(rows: Iterable[dict[str, Any]], f: TextIO) -> None:
    """A JSON list of the rows, one per line, written as read (flat memory however many there are)."""
    f.write("[")
    for i, row in enumerate(rows):
        f.write(("," if i else "") + "\n  " + json.dumps(row, sort_keys=True))
    f.write("\n]\n")
