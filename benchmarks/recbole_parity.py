"""Parity check: GRBench's RecBole adapter vs RecBole's own pipeline, on ml-100k.

Both train the same RecBole model with the same config and seed. RecBole's pipeline uses its own
leave-one-out split (``LS``, time-ordered) and its own evaluator; the adapter uses the GRBench split and
evaluator. For sequential models RecBole's full-ranking evaluator does not mask a user's history items
(``FullSortEvalDataLoader.collate_fn`` passes no history index when ``MODEL_TYPE`` is sequential), and neither
do our leaderboards, so "adapter, as in leaderboards" is the row to compare with RecBole's; "adapter, history
masked" shows how much masking would add (on ml-100k, where nobody rates an item twice, a lot).

    python benchmarks/recbole_parity.py --model SASRec --epochs 20
    python benchmarks/recbole_parity.py --users 200 --epochs 2 --tiny   # the fast version the tests run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from baselines.recbole_models import PROFILES, RECBOLE_MODELS  # noqa: E402
from bench.compat import import_recbole, recbole_config, recbole_trainer  # noqa: E402
from bench.data.base import Dataset, make_catalog, make_interactions  # noqa: E402
from bench.data.movielens import ml100k_dir, read_atomic_file  # noqa: E402
from bench.evaluate import per_user_metrics  # noqa: E402
from bench.registry import RunContext, methods, seed_everything  # noqa: E402
from bench.split import leave_last_out  # noqa: E402

METRIC_NAMES = ("hit@5", "hit@10", "ndcg@5", "ndcg@10")


def ml100k_slice(folder: Path, max_users: int | None) -> tuple[str, Dataset]:
    """Writes ml-100k (or its first ``max_users`` users) as a RecBole atomic file; returns its name and our Dataset."""
    rows = read_atomic_file(ml100k_dir() / "ml-100k.inter", ["user_id", "item_id", "timestamp"], "utf-8")
    if max_users is not None:
        kept = sorted({row["user_id"] for row in rows}, key=int)[:max_users]
        rows = [row for row in rows if row["user_id"] in set(kept)]
    name = "ml-100k-parity"
    (folder / name).mkdir(parents=True, exist_ok=True)
    # RecBole keeps float fields as float32, which holds Unix seconds of 1997-98 only to 64 s: events a few seconds
    # apart would tie and fall back to file order, and 149 of 943 users would get another test item than our split
    # gives them. The rank of each distinct timestamp (49,282 of them, exact in float32) keeps the order and ties.
    ranks = {t: n for n, t in enumerate(sorted({float(r["timestamp"]) for r in rows}))}
    lines = ["user_id:token\titem_id:token\ttimestamp:float\n"]
    lines += [f"{r['user_id']}\t{r['item_id']}\t{ranks[float(r['timestamp'])]}\n" for r in rows]
    (folder / name / f"{name}.inter").write_text("".join(lines))
    interactions = make_interactions([r["user_id"] for r in rows], [r["item_id"] for r in rows],
                                     [float(r["timestamp"]) for r in rows])
    catalog = make_catalog([{"item": item} for item in dict.fromkeys(r["item_id"] for r in rows)])
    return name, Dataset(name, interactions, catalog, source="parity")


def recbole_test_rows(dataset: Any, test: Any) -> dict[str, list[str]]:
    """RecBole's test rows, ``{user: history items + test item}`` in the source's ids."""
    users, items = dataset.field2id_token["user_id"], dataset.field2id_token["item_id"]
    features = test._dataset.inter_feat
    return {str(users[u]): [str(items[i]) for i in history[:length]] + [str(items[target])]
            for u, history, length, target in zip(features["user_id"].numpy(), features["item_id_list"].numpy(),
                                                  features["item_length"].numpy(), features["item_id"].numpy())}


def same_test_rows(dataset: Dataset, recbole_rows: dict[str, list[str]], max_len: int) -> tuple[int, int]:
    """How many users (of how many) have the same test item and the same (last ``max_len``) history in
    RecBole's split as in ours: all of them, or the two pipelines do not score the same task."""
    split = leave_last_out(dataset)
    same = 0
    for user, sequence in zip(split.user_ids, split.sequences):
        ours = [str(i) for i in split.original_items(sequence)]
        same += recbole_rows.get(str(user)) == ours[:-1][-max_len:] + ours[-1:]
    return same, len(split.user_ids)


def recbole_pipeline(model: str, dataset_name: str, data_root: Path, base_config: dict[str, Any],
                     dataset: Dataset) -> dict:
    """RecBole end to end: its split, its trainer with its early stopping, its evaluator."""
    import torch

    import_recbole()
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    config_dict = {
        # RecBole's own files have no item_id_list column: its augmentation builds one in the item_id space
        **{k: v for k, v in base_config.items() if k not in ("benchmark_filename", "load_col", "alias_of_item_id")},
        "data_path": str(data_root),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG"], "topk": [5, 10], "valid_metric": "NDCG@10",
        "stopping_step": base_config["stopping_step"],
    }
    config = recbole_config(model, dataset_name, config_dict)
    init_seed(config["seed"], True)
    ours, dataset = dataset, create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    same, users = same_test_rows(ours, recbole_test_rows(dataset, test), config["MAX_ITEM_LIST_LENGTH"])
    network = get_model(model)(config, train._dataset).to(config["device"])
    trainer = recbole_trainer(config, model, network)
    trainer.fit(train, valid, saved=True, show_progress=False, verbose=False)
    # RecBole's load_best_model calls torch.load without weights_only=False, which fails on torch >= 2.6.
    checkpoint = torch.load(trainer.saved_model_file, map_location=config["device"], weights_only=False)
    network.load_state_dict(checkpoint["state_dict"])
    result = trainer.evaluate(test, load_best_model=False, show_progress=False)
    return {**{name: float(result[name]) for name in METRIC_NAMES}, "same_test_rows": same, "users": users}


def adapter_pipeline(method_name: str, dataset: Dataset, settings: dict[str, Any], seed: int,
                     cache: Path) -> tuple[dict, dict]:
    """GRBench: our split, the adapter's training, our evaluator: (all items ranked, history items masked)."""
    import torch

    split = leave_last_out(dataset)
    seed_everything(seed)
    context = RunContext(seed=seed, profile="parity", device="cpu", cache_dir=cache)
    method = methods()[method_name](settings, context)
    method.fit(split.train_view(), context)
    histories = split.test_histories()
    users = np.arange(split.n_users)
    scores = method.scores(histories, users)
    top_all = torch.topk(scores, 10, dim=1).indices.cpu().numpy()
    for row, history in enumerate(histories):
        scores[row, torch.from_numpy(np.asarray(history))] = -torch.inf
    top_masked = torch.topk(scores, 10, dim=1).indices.cpu().numpy()
    targets = split.test_targets()
    summarize = lambda topk: {k: float(v.mean()) for k, v in per_user_metrics(targets, topk).items()}  # noqa: E731
    return summarize(top_all), summarize(top_masked)


def _timed(function: Any, *args: Any) -> tuple[Any, float]:
    """``function(*args)`` and its wall seconds, on one thread (each pipeline gets one core)."""
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def run_parity(model: str = "SASRec", users: int | None = None, epochs: int = 20, patience: int = 10,
               max_len: int = 50, seed: int = 0, tiny: bool = False, batch_size: int = 256,
               jobs: int = 1) -> dict[str, dict]:
    """Both pipelines, one after the other (``jobs=1``) or side by side in two processes (``jobs=2``)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    method_name = next(name for name, (recbole_name, _) in RECBOLE_MODELS.items() if recbole_name == model)
    settings = {**PROFILES["small"], "epochs": epochs, "patience": patience, "max_len": max_len, "tiny": tiny,
                "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        dataset_name, dataset = ml100k_slice(root / "data", users)
        probe = methods()[method_name](settings, RunContext(seed, "parity", "cpu", root / "cache"))
        base_config = {**probe.recbole_config(root / "unused", probe.context), "stopping_step": patience}
        calls = [(recbole_pipeline, model, dataset_name, root / "data", base_config, dataset),
                 (adapter_pipeline, method_name, dataset, settings, seed, root / "cache")]
        if jobs > 1:
            with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
                (theirs, their_s), ((ours, masked), our_s) = pool.map(_timed, *zip(*calls))
        else:
            (theirs, their_s), ((ours, masked), our_s) = (_timed(*call) for call in calls)
    return {"RecBole pipeline (its split and evaluator; all items are candidates)": {**theirs, "wall_s": their_s},
            "adapter, as in leaderboards (our split and evaluator; all items are candidates)": {**ours,
                                                                                               "wall_s": our_s},
            "adapter, history masked (not a protocol of either; for reference)": masked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="SASRec", choices=[m for m, _ in RECBOLE_MODELS.values()])
    parser.add_argument("--users", type=int, default=None, help="first N users only (default: all 943)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="tiny model sizes (as in the smoke profile)")
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2),
                        help="2: the two pipelines side by side, one core each (default 1: one after the other)")
    args = parser.parse_args()
    results = run_parity(args.model, args.users, args.epochs, args.patience, args.max_len, args.seed, args.tiny,
                         jobs=args.jobs)
    from tabulate import tabulate

    rows = [[name, *(f"{values[m]:.4f}" for m in METRIC_NAMES), f"{values.get('wall_s', float('nan')):.0f}"]
            for name, values in results.items()]
    print(f"{args.model} on ml-100k{'' if args.users is None else f' (first {args.users} users)'}, "
          f"{args.epochs} epochs max, patience {args.patience}, max length {args.max_len}, seed {args.seed}")
    print(tabulate(rows, headers=["pipeline", *METRIC_NAMES, "wall s"], tablefmt="github"))
    theirs = next(iter(results.values()))
    print(f"RecBole's split gives {theirs['same_test_rows']} of {theirs['users']} users the same test item and "
          "history as ours")


if __name__ == "__main__":
    main()
