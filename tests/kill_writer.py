"""A result writer for tests/test_kill.py to SIGKILL: ``python -m tests.kill_writer OUT FIRST_ROUND [ROUNDS]``.

Round ``n`` stores seed ``n % SEEDS`` the way ``bench run`` stores a cell: its rankings first, then its record
(which names them), each record longer than the last. It prints ``ready`` once imported, then writes until
killed (or for ROUNDS rounds). Every record and rankings file says how long it is, so a reader can tell a
complete one from a torn one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.results import ResultKey, ResultStore

SEEDS = 5


def payload_size(round_: int) -> int:
    return 2_000 + 500 * (round_ % 400)  # grows with the round (wraps after 400 rounds: ~200 KB at most)


def rankings_size(round_: int) -> int:
    return 50 + round_ % 200


def record_of(round_: int) -> dict:
    return {"method": "writer", "dataset": "d", "profile": "smoke", "seed": round_ % SEEDS,
            "split_fingerprint": "f" * 16, "round": round_, "payload": "x" * payload_size(round_)}


def main(argv: list[str]) -> None:
    folder = Path(argv[0])
    first = int(argv[1])
    rounds = int(argv[2]) if len(argv) > 2 else None
    store = ResultStore(folder)
    print("ready", flush=True)
    round_ = first
    while rounds is None or round_ < first + rounds:
        record = record_of(round_)
        size = rankings_size(round_)
        rows = [{"user": str(user), "target": "t", "topk": [str(round_)] * 10, "round": round_, "of": size}
                for user in range(size)]
        record["rankings"] = str(store.write_rankings(ResultKey.of(record), rows).relative_to(folder))
        record["complete"] = True  # the last field: a record cut short lacks it
        store.add(record)
        round_ += 1


if __name__ == "__main__":
    main(sys.argv[1:])
