"""scripts/device/resume.py: unfinished epoch checkpoints travel from one GPU session to the next, in parts."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "device" / "resume.py"
spec = importlib.util.spec_from_file_location("device_resume", SCRIPT)
resume = importlib.util.module_from_spec(spec)
spec.loader.exec_module(resume)

CELL = ("seq-Beauty", "28d6cbcf9524017d", "tiger", "small", "seed0")
DONE = ("seq-Beauty", "28d6cbcf9524017d", "hstu", "small", "seed0")


def checkpoint(cache: Path, cell: tuple[str, ...], size: int) -> Path:
    path = cache.joinpath(*cell, resume.CHECKPOINT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def gpu_record(method: str) -> str:
    return json.dumps({"method": method, "dataset": "seq:Beauty", "profile": "small", "seed": 0,
                       "split_fingerprint": "28d6cbcf9524017d", "device": "gpu"})


def test_a_checkpoint_goes_to_the_next_session_in_parts_and_comes_back_whole(tmp_path, monkeypatch):
    device_cache, results = tmp_path / "device" / "cache", tmp_path / "device" / "results.jsonl"
    unfinished = checkpoint(device_cache, CELL, 40_000)
    checkpoint(device_cache, DONE, 1_000)  # its cell finished: not shipped
    checkpoint(device_cache, CELL[:2] + ("tiger", "small", "seed1"), 1_000)  # written before this session began
    os.utime(device_cache.joinpath(*CELL[:2], "tiger", "small", "seed1", resume.CHECKPOINT), (1, 1))
    results.write_text(gpu_record("hstu") + "\n" + json.dumps({**json.loads(gpu_record("tiger")), "device": "cpu"}))
    started = tmp_path / "started"
    started.touch()
    os.utime(started, (2, 2))
    monkeypatch.setattr(resume, "PART_BYTES", 15_000)

    assert resume.main(["pack", str(device_cache), str(results), str(started), str(tmp_path / "back")]) == 0
    parts = sorted((tmp_path / "back").glob("resume-[0-9][0-9]"))
    assert len(parts) > 2 and all(p.stat().st_size <= 15_000 for p in parts)

    # returned by two calls (two folders), joined here
    call1, call2 = tmp_path / "call1", tmp_path / "call2"
    for folder, chosen in ((call1, parts[:1]), (call2, parts[1:])):
        folder.mkdir()
        for part in chosen:
            (folder / part.name).write_bytes(part.read_bytes())
    (call2 / resume.HASH_FILE).write_text((tmp_path / "back" / resume.HASH_FILE).read_text())
    keep = tmp_path / "keep"
    assert resume.main(["join", str(keep), str(tmp_path / "no-results.jsonl"), str(call1), str(call2)]) == 0
    kept = keep.joinpath(*CELL, resume.CHECKPOINT)
    assert kept.read_bytes() == unfinished.read_bytes()
    # only the unfinished checkpoint of this session travelled (a tiger CPU record is not a GPU one)
    assert [p.relative_to(keep) for p in keep.rglob("*") if p.is_file()] == [kept.relative_to(keep)]

    # carried out again in parts that fit a call, and unpacked into the next machine's cache
    assert resume.main(["prepare", str(keep), str(results), str(tmp_path / "carry"), "25000"]) == 0
    carried = sorted((tmp_path / "carry").iterdir())
    assert [p.name for p in carried][-1] == resume.HASH_FILE and len(carried) > 2
    assert all(p.stat().st_size <= 25_000 for p in carried)
    fresh_cache = tmp_path / "fresh" / "cache"
    assert resume.main(["unpack", str(fresh_cache), *map(str, carried)]) == 0
    assert fresh_cache.joinpath(*CELL, resume.CHECKPOINT).read_bytes() == unfinished.read_bytes()


def test_a_missing_part_stops_the_unpack_and_names_the_parts(tmp_path):
    keep = tmp_path / "keep"
    checkpoint(keep, CELL, 30_000)
    resume.main(["prepare", str(keep), str(tmp_path / "none.jsonl"), str(tmp_path / "carry"), "10000"])
    (tmp_path / "carry" / "part01").unlink()
    with pytest.raises(SystemExit, match=r"parts \(part00, part02, .*\) do not join"):
        resume.main(["unpack", str(tmp_path / "cache"), *map(str, sorted((tmp_path / "carry").iterdir()))])
    assert not (tmp_path / "cache").exists()


def test_a_kept_checkpoint_is_dropped_once_its_cell_has_a_gpu_record(tmp_path):
    keep = tmp_path / "keep"
    checkpoint(keep, CELL, 100)
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({**json.loads(gpu_record("tiger")), "device": "cpu"}) + "\n")
    resume.prune(keep, results)
    assert keep.joinpath(*CELL, resume.CHECKPOINT).exists()  # a CPU record of the cell is another result
    results.write_text(gpu_record("tiger") + "\n")
    resume.prune(keep, results)
    assert not keep.joinpath(*CELL, resume.CHECKPOINT).exists()
