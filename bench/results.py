"""Stored results: ``<out>/results.jsonl`` (one run record a line) and ``<out>/rankings/``.

Writes are atomic: the whole file is rewritten to a temporary file in the same folder, flushed to
disk and renamed over the old one, under a lock file so that concurrent runs sharing ``--out``
neither lose nor duplicate a record. A ranking file is written (atomically) before the record that
points to it, so a record never refers to a missing ranking. A write that fails (a full disk, a
read-only folder) leaves the previous file as it was, removes its temporary file and raises a
:class:`GRBenchError` naming the file and the reason, so the CLI reports it on one line.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from bench.errors import DataError, GRBenchError, shown_path

RESULTS_FILE = "results.jsonl"
WITHDRAWN_FILE = "withdrawn.jsonl"  # records taken out of the leaderboards (a bug found later), with the reason
KEY_FIELDS = ("method", "dataset", "profile", "seed", "split_fingerprint")


@dataclass(frozen=True)
class ResultKey:
    """What identifies a result: a rerun with the same key is skipped unless forced."""

    method: str
    dataset: str
    profile: str
    seed: int
    split_fingerprint: str
    # "cpu" or "gpu": a run on a GPU machine is another result than the same run on a CPU (its costs differ, and
    # GPU kernels are not bit-identical to CPU ones), so the two are stored side by side, never replace each other
    device: str = "cpu"

    @classmethod
    def of(cls, record: dict) -> ResultKey:
        return cls(*(record[name] for name in KEY_FIELDS), device=record_device(record))

    @property
    def cache_folder(self) -> Path:
        """The cell's folder of stage caches and epoch checkpoints, relative to :func:`bench.paths.cache_dir`
        (one for both devices: each machine has its own cache)."""
        return Path(slug(self.dataset), self.split_fingerprint, slug(self.method), self.profile, f"seed{self.seed}")

    @property
    def id(self) -> str:
        """A short, filesystem-safe, human-readable id (``--gpu`` at the end of GPU runs')."""
        suffix = "" if self.device == "cpu" else f"--{self.device}"
        return slug(f"{self.dataset}--{self.method}--{self.profile}--seed{self.seed}--{self.split_fingerprint[:8]}"
                    f"{suffix}")


def record_device(record: dict) -> str:
    """``"gpu"`` when the record's run used a GPU, else ``"cpu"`` (records from before the field existed say it
    through their hardware)."""
    if "device" in record:
        return record["device"]
    return "gpu" if (record.get("hardware") or {}).get("gpus") else "cpu"


def slug(text: str) -> str:
    """Makes a label safe as a file name (``seq:Beauty`` -> ``seq-Beauty``)."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _write_error(path: Path, error: OSError) -> GRBenchError:
    return GRBenchError(f"cannot write {path}: {error.strerror or error}; the previous version of it, if any, "
                        "is unchanged")


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    An ``OSError`` (no space left, permission denied, ...) becomes a :class:`GRBenchError` naming ``path``;
    the temporary file is removed and ``path`` keeps its old content.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        with os.fdopen(handle, "wb") as stream:
            os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared like any written file
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_error(path, error) from None
        raise


WRITE_PROBE = b"GRBench write test\n" * 256  # 4.75 KiB: more than an empty file, which a full disk still takes


def check_writable(folder: Path, what: str = "results") -> None:
    """Fails early, with a clear message, when ``what`` could not be written to ``folder``.

    Writes, flushes and syncs a small probe file the way results are written (a full disk or an exhausted
    quota usually still allows an empty file, not data), then removes it.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(WRITE_PROBE)
                stream.flush()
                os.fsync(stream.fileno())
        finally:
            os.unlink(probe)
    except (OSError, ValueError) as error:  # ValueError: a path Python cannot pass to the OS (a NUL byte)
        raise GRBenchError(f"cannot write {what} to {shown_path(folder)}: "
                           f"{getattr(error, 'strerror', None) or error}") from None


class ResultStore:
    """The results of one ``--out`` folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RESULTS_FILE
        self._lock = FileLock(str(self.path) + ".lock")

    def load(self) -> list[dict]:
        """All records; a line that is not a complete JSON record is an error naming that line."""
        if not self.path.exists():
            return []
        records = []
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    ResultKey.of(record)
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise DataError(self.path, f"not a result record ({error})", line=number,
                                    expected=f"a JSON object with {', '.join(KEY_FIELDS)}") from None
                records.append(record)
        return records

    def finished(self) -> set[ResultKey]:
        return {ResultKey.of(record) for record in self.load()}

    def locked(self) -> FileLock:
        """The lock that :meth:`add` takes (reentrant): hold it to read the records and write what is made from
        them (the leaderboards) without another process adding a record in between."""
        return self._lock

    def add(self, record: dict) -> None:
        """Adds a record, replacing any earlier record with the same key (so a forced rerun never duplicates)."""
        key = ResultKey.of(record)
        with self._lock:
            kept = [r for r in self.load() if ResultKey.of(r) != key]
            kept.append(record)
            self.replace_all(kept)

    def replace_all(self, records: list[dict]) -> None:
        """Writes ``records`` as the whole store, atomically, under the store's lock (also for changes to many
        records at once: a withdrawal, a dataset's records moving to another name)."""
        with self._lock:
            # every write of results.jsonl happens here, under this lock: a temporary file of it that exists now
            # was left by a writer that was killed, and readers never look at it; remove it
            for stale in self.folder.glob(f".{RESULTS_FILE}.*.tmp"):
                stale.unlink(missing_ok=True)
            write_atomically(self.path, _lines(records))

    def withdraw(self, ids: Iterable[str], reason: str, when: str) -> list[dict]:
        """Takes the records with these ids out of results.jsonl (and so out of every leaderboard) and appends
        each, whole and with the reason, to withdrawn.jsonl: a number found wrong later (a bug in the code that
        made it) leaves the tables but is never lost. Their rankings files are removed. An unknown id is an
        error naming the stored ids that look like it; nothing is changed then."""
        wanted = list(dict.fromkeys(ids))
        with self._lock:
            records = self.load()
            by_id = {ResultKey.of(r).id: r for r in records}
            unknown = [i for i in wanted if i not in by_id]
            if unknown:
                close = sorted(i for i in by_id if any(part in i for u in unknown for part in u.split("--")[:2]))
                raise GRBenchError(f"{shown_path(self.path)} holds no record {', '.join(unknown)}"
                                   + (f"; stored ids like it: {', '.join(close[:10])}" if close else ""))
            withdrawn = [{**by_id[i], "withdrawn": {"reason": reason, "at": when}} for i in wanted]
            log = self.folder / WITHDRAWN_FILE
            earlier = log.read_bytes() if log.exists() else b""
            write_atomically(log, earlier + _lines(withdrawn))  # first: a kill between the writes loses no record
            self.replace_all([r for r in records if ResultKey.of(r).id not in set(wanted)])
            for record in withdrawn:
                if record.get("rankings"):
                    (self.folder / record["rankings"]).unlink(missing_ok=True)
        return withdrawn

    def merge_from(self, source: Path) -> int:
        """Adds every record of the results folder ``source`` (another machine's, a cluster job's) with its rankings,
        copied to where this store keeps them; a record with the same key is replaced, never duplicated. Returns
        how many records were merged; a missing rankings file is an error that names it, and that record is not
        merged."""
        records = ResultStore(source).load()
        if not records:
            raise GRBenchError(f"no results at {shown_path(source / RESULTS_FILE)}")
        for record in records:
            key = ResultKey.of(record)
            if record.get("rankings"):
                rankings = source / record["rankings"]
                if not rankings.is_file():
                    raise GRBenchError(f"{shown_path(source / RESULTS_FILE)}: record {record.get('id')} names "
                                       f"rankings {shown_path(rankings)}, which does not exist; nothing of this "
                                       "record was merged")
                record = {**record, "rankings": self.copy_rankings(rankings, key), "id": key.id, "device": key.device}
            self.add(record)
        return len(records)

    def copy_rankings(self, source: Path, key: ResultKey) -> str:
        """Copies the rankings file ``source`` to where this store keeps ``key``'s (a GPU run's beside the CPU run's,
        never over it); returns that path as records name it (relative to the store)."""
        target = self.rankings_path(key)
        write_atomically(target, source.read_bytes())
        return str(target.relative_to(self.folder))

    def rankings_path(self, key: ResultKey) -> Path:
        device = "" if key.device == "cpu" else f"-{key.device}"
        name = f"{slug(key.method)}-{slug(key.profile)}-seed{key.seed}{device}.jsonl.gz"
        return self.folder / "rankings" / slug(key.dataset) / name

    def write_rankings(self, key: ResultKey, rows: Iterable[dict]) -> Path:
        """Writes one ``{"user", "target", "topk"}`` line per test user, gzip-compressed and reproducible."""
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as stream:
            for row in rows:
                stream.write((json.dumps(row) + "\n").encode("utf-8"))
        path = self.rankings_path(key)
        write_atomically(path, buffer.getvalue())
        return path


def _lines(records: Iterable[dict]) -> bytes:
    """Records as results.jsonl holds them: one JSON object a line, keys sorted (so that files diff well)."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")


def read_rankings(path: Path) -> list[dict]:
    """Reads a rankings file back (for audits and recomputation). An empty file is an error: gzip would read
    it as zero rows, and an atomic write never makes one (a ranking of no users still has a gzip header)."""
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(path, "empty rankings file (not written by GRBench; delete it and rerun the cell)")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            return [json.loads(line) for line in stream]
    except (OSError, EOFError, json.JSONDecodeError) as error:
        raise DataError(path, f"unreadable rankings file ({error})") from None
