"""Results files: JSON Lines, one whole record per line, appended and flushed; resumable after a kill.

A record is written with a single `write` of the full line followed by flush and fsync, so a killed run
leaves at most one partial line at the end; `--resume` drops that partial line and continues after the
last whole record. Every record carries the run's parameters, and resuming with other parameters is
refused rather than mixing two runs in one file. A run holds an OS advisory lock (flock) on its file for
its whole life: a second writer of the same file is refused before it reads, truncates or writes it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from smoothgen.errors import ResultsFileError


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy / torch scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a results file")


def _encode(record: dict[str, Any]) -> str:
    # Infinite radii (abstentions) are written as null: JSON has no Infinity.
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    return json.dumps(clean, default=_json_default, allow_nan=False)


class ResultsFile:
    """An append-only JSONL results file.

    Args:
        path: the file.
        run: the parameters every record of this run carries (σ, n, α, seed, model, data, ...).
        key: the record fields that identify one unit of work (e.g. ("idx",) or ("idx", "eps_in")).
        resume: continue an existing file; without it an existing non-empty file is an error.
        overwrite: replace an existing file.

    Raises:
        ResultsFileError: the file exists (without resume/overwrite), holds a corrupt record, or was
            written by a run with other parameters.
    """

    def __init__(self, path: str | Path, run: dict[str, Any], key: tuple[str, ...], resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.run = dict(run)
        self.key = key
        self.records: list[dict[str, Any]] = []
        self._handle = None
        self._created = False
        if self.path.is_dir():
            raise ResultsFileError(f"{self.path} is a directory, not a results file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise ResultsFileError(f"{self.path} exists: pass --resume to continue it or --overwrite to replace it")
        self._created = not self.path.exists()
        self._handle = self._open_locked()
        try:
            if exists and resume:
                self.records = self._read_and_repair()
            elif exists and overwrite:
                self._handle.truncate(0)  # under the lock: never under another run's feet
        except BaseException:
            self.close()
            raise

    def _open_locked(self):
        """The file opened for appending and locked for this run (refused if another run holds it)."""
        for parent in self.path.parents:
            if parent.exists() and not parent.is_dir():
                raise ResultsFileError(f"cannot write {self.path}: {parent} is a file, not a directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: a write that fails (disk full) must leave no bytes behind in a buffer that
            # closing the file would write after the cut back to whole records.
            handle = open(self.path, "ab", buffering=0)
        except OSError as exc:
            raise ResultsFileError(f"cannot open {self.path} for writing: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ResultsFileError(f"another smoothgen run is writing {self.path}; use another --out or wait for it") from exc
            raise ResultsFileError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        return handle

    def close(self) -> None:
        """Release the file (and its lock); the process's exit does the same. A file this run created and
        never wrote to is removed: a run that failed before its first record leaves nothing behind."""
        if self._handle is not None:
            if self._created and not self.records:
                with contextlib.suppress(OSError):
                    if os.fstat(self._handle.fileno()).st_size == 0:
                        self.path.unlink()
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def done(self) -> set[tuple]:
        """Keys of the units of work already recorded."""
        return {tuple(r[k] for k in self.key) for r in self.records}

    def append(self, record: dict[str, Any]) -> None:
        """Write one whole record (the run's parameters are added) and make it durable."""
        full = {**record, **self.run}
        line = _encode(full) + "\n"
        if self._handle is None:
            raise ResultsFileError(f"{self.path} was closed")
        data = line.encode("utf-8")
        size = os.fstat(self._handle.fileno()).st_size
        try:
            view = memoryview(data)
            while view:  # a raw write may write part of the data
                view = view[self._handle.write(view):]
            os.fsync(self._handle.fileno())
        except OSError as exc:
            # Disk full, quota, I/O error: cut back to the last whole record, so the file stays resumable.
            with contextlib.suppress(OSError):
                os.ftruncate(self._handle.fileno(), size)
            raise ResultsFileError(f"cannot write to {self.path}: {exc.strerror or exc}; whole records are kept, rerun with --resume") from exc
        self.records.append(json.loads(line))

    def _read_and_repair(self) -> list[dict[str, Any]]:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        # Everything before the last newline is whole; what follows it is a write cut short by a kill.
        whole, tail = lines[:-1], lines[-1]
        records = []
        seen: set[tuple] = set()
        for number, line in enumerate(whole, start=1):
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise ResultsFileError(f"{self.path}:{number}: not UTF-8 text; not resuming") from exc
            except json.JSONDecodeError as exc:
                raise ResultsFileError(f"{self.path}:{number}: corrupt record ({exc.msg}); not resuming") from exc
            if not isinstance(record, dict):
                raise ResultsFileError(f"{self.path}:{number}: a record must be a JSON object, got {type(record).__name__}; not resuming")
            self._check_same_run(record, number)
            unit = tuple(repr(record[k]) for k in self.key)
            if unit in seen:
                raise ResultsFileError(f"{self.path}:{number}: a second record of {dict(zip(self.key, unit))}; not resuming a file written twice")
            seen.add(unit)
            records.append(record)
        if tail:
            # Drop the partial last line so the resumed run appends after the last whole record.
            os.ftruncate(self._handle.fileno(), len(raw) - len(tail))
        return records

    def _check_same_run(self, record: dict[str, Any], number: int) -> None:
        for name, value in self.run.items():
            if record.get(name) != value:
                raise ResultsFileError(
                    f"{self.path}:{number} was written with {name}={record.get(name)!r}, this run has {value!r}; "
                    "use another --out or --overwrite"
                )
        missing = [k for k in self.key if k not in record]
        if missing:
            raise ResultsFileError(f"{self.path}:{number}: record lacks {missing}")


def write_atomically(path: str | Path, write: Callable[[str], Any]) -> None:
    """Create `path` whole or not at all: `write(tmp_name)` fills a temporary file beside it, which is
    fsync'd and renamed over `path`; an interrupted or failing write leaves no partial file behind.
    The file is readable by every user (0644), like one made by open()."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp_name)
        with open(tmp_name, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def write_cohen_tsv(records: Iterable[dict[str, Any]], path: str | Path) -> None:
    """Cohen et al.'s certify TSV (`idx label predict radius correct time`), written atomically.

    An input without a label has ``-`` as its label and as its correctness (not ``None`` and ``0``: nothing
    is known to be wrong)."""
    lines = ["idx\tlabel\tpredict\tradius\tcorrect\ttime\n"]
    for r in sorted(records, key=lambda r: r["idx"]):
        labelled = r.get("label") is not None
        label, correct = (r["label"], int(bool(r["correct"]))) if labelled else ("-", "-")
        lines.append(f"{r['idx']}\t{label}\t{r['predict']}\t{r['radius']:.3f}\t{correct}\t{r['time']:.4f}\n")
    write_atomically(path, lambda tmp: Path(tmp).write_text("".join(lines), encoding="utf-8"))
