"""Carries unfinished epoch checkpoints from one GPU session to the next (scripts/device/README.md, "Cells longer
than a session").

A GPU session of the `device` tool lasts 15 minutes and its machine starts bare, so a cell that trains longer
(TIGER `small` on Beauty: up to 200 epochs) starts over each time unless its epoch checkpoint
(``training-state.pt``, :class:`bench.checkpoint.EpochCheckpoint`) travels back here and out again. A call
returns at most 8 files of 16 MiB (64 MiB together) and carries 64 MiB with the tree, so the checkpoints travel
as a tar in parts. Hand-written because the tool's limits are this workplace's own; tar, hashing and the
checkpoint's own key (which a resume checks) do the rest.

On the GPU machine:
  python3 scripts/device/resume.py pack CACHE RESULTS_JSONL SINCE_FILE DEST
      tar of the checkpoints under CACHE changed after SINCE_FILE whose cell has no GPU record in RESULTS_JSONL,
      in parts DEST/resume-NN (PART_BYTES each) with DEST/resume-sha256
  python3 scripts/device/resume.py unpack CACHE PART...
      joins carried parts (from `prepare` here), checks their hash and puts the checkpoints into CACHE
Here:
  python3 scripts/device/resume.py join KEEP RESULTS_JSONL FOLDER...
      joins the parts a run returned (in FOLDERs, each call's files_at), checks the hash, puts the checkpoints
      under KEEP (newer over older) and drops those whose cell now has a GPU record
  python3 scripts/device/resume.py prepare KEEP RESULTS_JSONL DEST ROOM
      drops what `join` would, then a tar of KEEP in parts DEST/partNN of at most ROOM bytes (what a call can
      carry beside the tree), with DEST/resume-sha256
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.results import ResultKey  # noqa: E402

CHECKPOINT = "training-state.pt"
PART_BYTES = 16_000_000  # under the 16 MiB a returned file may hold
HASH_FILE = "resume-sha256"


def finished_cells(results: Path) -> set[tuple[str, ...]]:
    """The cache folders (:attr:`bench.results.ResultKey.cache_folder`, as parts) of cells with a GPU record."""
    if not results.is_file():
        return set()
    keys = (ResultKey.of(json.loads(line)) for line in results.read_text().splitlines() if line.strip())
    return {key.cache_folder.parts for key in keys if key.device == "gpu"}


def unfinished_checkpoints(cache: Path, results: Path, since: float = 0.0) -> list[Path]:
    """Checkpoints under ``cache`` written after ``since`` (a timestamp) whose cell has no GPU record."""
    done = finished_cells(results)
    return sorted(path for path in cache.glob(f"*/*/*/*/*/{CHECKPOINT}")
                  if path.stat().st_mtime > since and tuple(path.relative_to(cache).parts[:-1]) not in done)


def tar_bytes(root: Path, files: Iterable[Path]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in files:
            tar.add(path, arcname=str(path.relative_to(root)))
    return buffer.getvalue()


def write_parts(data: bytes, dest: Path, prefix: str, size: int) -> list[Path]:
    """``data`` in files ``dest/<prefix>NN`` of at most ``size`` bytes, with its sha256 in ``dest/resume-sha256``."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{prefix}[0-9][0-9]"):
        old.unlink()
    parts = []
    for number, start in enumerate(range(0, len(data), size)):
        part = dest / f"{prefix}{number:02d}"
        part.write_bytes(data[start:start + size])
        parts.append(part)
    (dest / HASH_FILE).write_text(hashlib.sha256(data).hexdigest() + "\n")
    return parts


def joined(parts: Iterable[Path], expected_hash: str) -> bytes:
    """The parts, joined in name order; a missing or damaged part stops with the parts' names."""
    parts = sorted(parts, key=lambda path: path.name)
    data = b"".join(path.read_bytes() for path in parts)
    if hashlib.sha256(data).hexdigest() != expected_hash.strip():
        raise SystemExit(f"resume: the {len(parts)} parts ({', '.join(p.name for p in parts)}) do not join into "
                         "the tar their resume-sha256 names: a part is missing or damaged")
    return data


def extract(data: bytes, into: Path) -> list[str]:
    """Puts the tar's checkpoints under ``into`` (only files named like a checkpoint, four folders down)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name == CHECKPOINT
                   and len(Path(m.name).parts) == 6 and ".." not in Path(m.name).parts]
        tar.extractall(into, members=members, filter="data")
        names = [m.name for m in members]
    return names


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    command, args = argv[0], argv[1:]
    if command == "pack":
        cache, results, since_file, dest = map(Path, args)
        since = since_file.stat().st_mtime if since_file.exists() else 0.0
        files = unfinished_checkpoints(cache, results, since)
        for old in dest.glob("resume-*"):
            old.unlink()
        if files:
            parts = write_parts(tar_bytes(cache, files), dest, "resume-", PART_BYTES)
            print(f"resume: {len(files)} unfinished checkpoints in {len(parts)} parts:",
                  *(f"{path.relative_to(cache)} ({path.stat().st_size / 1e6:.1f} MB)" for path in files), sep="\n  ")
        else:
            print("resume: no unfinished checkpoint")
    elif command == "unpack":
        cache, parts = Path(args[0]), [Path(arg) for arg in args[1:]]
        hash_file = next((p for p in parts if p.name == HASH_FILE), None)
        if hash_file is None:
            raise SystemExit(f"resume: {HASH_FILE} is not among the carried files")
        names = extract(joined([p for p in parts if p != hash_file], hash_file.read_text()), cache)
        print(f"resume: {len(names)} checkpoints into the cache:", *names, sep="\n  ")
    elif command == "join":
        keep, results, folders = Path(args[0]), Path(args[1]), [Path(arg) for arg in args[2:]]
        parts = [p for folder in folders for p in folder.glob("resume-[0-9][0-9]")]
        hashes = {p.read_text().strip() for folder in folders for p in folder.glob(HASH_FILE)}
        if len(hashes) != 1:
            raise SystemExit(f"resume: expected one {HASH_FILE} among {', '.join(map(str, folders))}, "
                             f"found {len(hashes)}")
        names = extract(joined(parts, hashes.pop()), keep)
        print(f"resume: kept {len(names)} checkpoints under {keep}:", *names, sep="\n  ")
        prune(keep, results)
    elif command == "prepare":
        keep, results, dest, room = Path(args[0]), Path(args[1]), Path(args[2]), int(args[3])
        prune(keep, results)
        files = sorted(keep.glob(f"*/*/*/*/*/{CHECKPOINT}"))
        if not files:
            print("resume: nothing to carry")
            return 0
        parts = write_parts(tar_bytes(keep, files), dest, "part", room)
        print(f"resume: {len(files)} checkpoints to carry in {len(parts)} parts")
    else:
        print(__doc__)
        return 2
    return 0


def prune(keep: Path, results: Path) -> None:
    """Drops the kept checkpoints whose cell now has a GPU record (merged into ``results``)."""
    done = finished_cells(results)
    for path in keep.glob(f"*/*/*/*/*/{CHECKPOINT}"):
        if tuple(path.relative_to(keep).parts[:-1]) in done:
            path.unlink()
            print(f"resume: dropped {path.relative_to(keep)}: its cell has a GPU record now")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
