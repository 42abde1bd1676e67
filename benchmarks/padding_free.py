"""Training steps (and, for HSTU/ReaRec, ranking) with and without the padding-free batches, on real data.

RecBole pads every training row to ``max_len`` and the suite's own sequential models cut a batch to its
longest row; on the Amazon 2014 files a row holds five or six items and nearly every batch has one of 50, so
most of a step was spent on padding. Training now computes each batch on its length groups, each cut to its
longest row (``baselines.sequential.length_groups``; for RecBole ``baselines.recbole_models.padding_free_loss``).
This script times the same batches both ways, checks that they give the same loss (dropout off), and prints
ms per step and the ratio; ``--anomaly`` also times the full-width step under torch's anomaly detection, which
RecBole's ``sine.py`` used to switch on for the whole process (``bench.compat.import_recbole``). ``--bf16`` also
times both ways under bf16 autocast, as TIGER's ``small`` profile trains where the device has native bf16
(``bench.training.native_bf16``).

    python benchmarks/padding_free.py --method sasrec --dataset seq:../shared/data/amazon2014-s3rec/Beauty.txt
    python benchmarks/padding_free.py --method bert4rec --dataset seq:../shared/data/amazon2014-s3rec/Beauty.txt
    python benchmarks/padding_free.py --method rearec --anomaly --dataset seq:../shared/data/amazon2014-s3rec/Beauty.txt
    python benchmarks/padding_free.py --method tiger --dataset seq:../shared/data/amazon2014-s3rec/Beauty.txt
    python benchmarks/padding_free.py --method tiger --bf16 --dataset seq:../shared/data/amazon2014-s3rec/Beauty.txt

TIGER builds its semantic IDs first (a cached stage under ``$GRBENCH_CACHE``: point it at a run's cache to
reuse them).

On a machine shared with other jobs, run it under ``taskset`` with ``--threads 1`` for steadier timings.

``--device cuda`` times both ways on a GPU, where training runs whole batches instead
(``baselines.sequential.groups_pay_off``: each group is a forward and backward of its own, and a small model's
GPU step is bound by launching kernels): the ratio there says whether that choice holds.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from baselines import recbole_models, sequential, tiger  # noqa: E402
from baselines.recbole_models import RecBoleSequential  # noqa: E402
from baselines.tiger import Tiger, build_model, training_examples  # noqa: E402
from bench.compat import recbole_trainer  # noqa: E402
from bench.costs import synchronize  # noqa: E402
from bench.data import load_dataset  # noqa: E402
from bench.registry import RunContext, parse_method_spec  # noqa: E402
from bench.split import TrainData, leave_last_out  # noqa: E402
from bench.training import native_bf16  # noqa: E402

LOSSES_DRAWING_NEGATIVES = ("sampled", "bce-all")  # their two values differ by the draws alone


def mean_ms(step: Callable[[Any], None], batches: list[Any]) -> float:
    """Mean wall milliseconds of ``step`` over ``batches``, after one warm-up step (synchronised on a GPU)."""
    step(batches[0])
    synchronize()
    start = time.perf_counter()
    for batch in batches:
        step(batch)
    synchronize()
    return (time.perf_counter() - start) / len(batches) * 1000


@contextlib.contextmanager
def length_groups_on(grouped: bool) -> Iterator[None]:
    """Training and ranking split batches into length groups (or not) whatever the device, for timing both."""
    modules = (sequential, recbole_models, tiger)
    policies = [module.groups_pay_off for module in modules]
    for module in modules:
        module.groups_pay_off = lambda device: grouped
    try:
        yield
    finally:
        for module, policy in zip(modules, policies):
            module.groups_pay_off = policy


def recbole_losses(method: RecBoleSequential, data: TrainData, context: RunContext, steps: int,
                   folder: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[Any], dict[str, Callable]]:
    """The RecBole model, its optimizer, ``steps`` training batches from its own loader, and both losses."""
    from recbole.utils import get_model

    config, _, loader = method.load_recbole_data(data, context, folder / "grbench")
    method.model = get_model(method.recbole_model)(config, loader._dataset)
    optimizer = recbole_trainer(config, method.recbole_model, method.model).optimizer
    batches = [batch.to(config["device"]) for batch, _ in zip(loader, range(steps))]
    return method.model, optimizer, batches, {"full width": method.model_loss, "padding-free": method.training_loss}


def sequential_losses(method: sequential.SequentialRecommender, data: TrainData, steps: int, device: str
                      ) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[Any], dict[str, Callable]]:
    """The suite's own encoder, an Adam optimizer, ``steps`` random training batches, and both losses."""
    method.device = torch.device(device)
    method.encoder = method.build_encoder(data.n_items).to(method.device)
    _, inputs, targets = (torch.from_numpy(a) for a in
                          sequential.next_item_examples(data.train_sequences, method.settings["max_len"]))
    order = torch.randperm(len(inputs))
    size = method.settings["batch_size"]
    batches = [order[start:start + size] for start in range(0, min(len(order), steps * size), size)]

    def whole(rows: torch.Tensor) -> torch.Tensor:  # the batch cut to its longest row, as before
        width = int((targets[rows] != 0).sum(1).max())
        return method.loss(inputs[rows, :width].to(method.device), targets[rows, :width].to(method.device))

    losses = {"full width": whole, "padding-free": lambda rows: method.batch_loss(inputs[rows], targets[rows])}
    return method.encoder, torch.optim.Adam(method.encoder.parameters()), batches, losses


def tiger_losses(method: Tiger, data: TrainData, context: RunContext, steps: int
                 ) -> tuple[torch.nn.Module, torch.optim.Optimizer, list[Any], dict[str, Callable]]:
    """TIGER's T5 (SIDs from the cache or built now), AdamW, ``steps`` random batches of training prefixes, and
    both losses: the batch cut to its longest row (as before) and :meth:`Tiger.batch_loss`."""
    method.prepare(data, context)
    method.model = build_model(method.settings, method.vocab_size).to(method.device)
    users, windows, targets = training_examples(data, method.settings["max_items"])
    order = torch.randperm(len(targets)).numpy()
    size = method.settings["batch_size"]
    batches = [order[start:start + size] for start in range(0, min(len(order), steps * size), size)]

    losses = {name: lambda rows, loss=loss: loss(users[rows], windows[rows], targets[rows])
              for name, loss in (("full width", method.rows_loss), ("padding-free", method.batch_loss))}
    return method.model, torch.optim.AdamW(method.model.parameters()), batches, losses


def ranking_ms(method: sequential.SequentialRecommender, data: TrainData, users: int) -> dict[str, float]:
    """Milliseconds to rank ``users`` validation histories in one padded batch and in length groups."""
    histories = data.valid_histories()[:users]
    method.encoder.eval()
    timings = {}
    for name, grouped in (("one padded batch", False), ("length groups", True)):
        with length_groups_on(grouped), torch.no_grad():
            timings[name] = mean_ms(lambda _: method.scores(histories), [None])
    return timings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="sasrec",
                        help="a method spec: sasrec, bert4rec, gru4rec, hstu, rearec, tiger")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--steps", type=int, default=10, help="training batches timed per variant")
    parser.add_argument("--rank-users", type=int, default=2048, help="validation histories ranked (HSTU, ReaRec)")
    parser.add_argument("--anomaly", action="store_true", help="also time full width under anomaly detection")
    parser.add_argument("--bf16", action="store_true", help="also time both ways under bf16 autocast")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, or cuda to time both ways on a GPU")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = leave_last_out(load_dataset(args.dataset)).train_view()
    method_class, options = parse_method_spec(args.method)
    with tempfile.TemporaryDirectory() as scratch:
        context = RunContext(seed=0, profile=args.profile, device=args.device, cache_dir=Path(scratch))
        method = method_class(method_class.settings_for(args.profile, options), context)
        if isinstance(method, RecBoleSequential):
            model, optimizer, batches, losses = recbole_losses(method, data, context, args.steps, Path(scratch))
        elif isinstance(method, sequential.SequentialRecommender):
            model, optimizer, batches, losses = sequential_losses(method, data, args.steps, args.device)
        elif isinstance(method, Tiger):
            model, optimizer, batches, losses = tiger_losses(method, data, context, args.steps)
        else:
            parser.error(f"{args.method}: not a RecBole, sequential or TIGER model")

        model.eval()  # dropout off: both ways must give the same loss
        with torch.no_grad(), length_groups_on(True):
            values = {name: float(loss(batches[0])) for name, loss in losses.items()}
        model.train()

        device = torch.device(args.device)

        def step(loss_of: Callable[[Any], torch.Tensor], bf16: bool = False) -> Callable[[Any], None]:
            def one(batch: Any) -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = loss_of(batch)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            return one

        with length_groups_on(True):  # "padding-free": in length groups, also on a GPU
            timings = {name: mean_ms(step(loss), batches) for name, loss in losses.items()}
            if args.bf16:
                timings.update({f"{name}, bf16 autocast": mean_ms(step(loss, bf16=True), batches)
                                for name, loss in losses.items()})
        if args.anomaly:
            with torch.autograd.set_detect_anomaly(True):
                timings["full width, anomaly detection on"] = mean_ms(step(losses["full width"]), batches)
        native = f", native bf16: {'yes' if native_bf16(device) else 'no'}" if args.bf16 else ""
        print(f"{args.method} on {data.dataset} ({args.profile}), {len(batches)} training batches, "
              f"{torch.get_num_threads()} thread(s), device {args.device}{native}")
        full, free = values["full width"], values["padding-free"]
        verdict = "equal" if abs(full - free) <= 1e-4 * abs(full) + 1e-6 else "DIFFERENT"
        if method.settings.get("loss") in LOSSES_DRAWING_NEGATIVES:
            verdict += f"; loss={method.settings['loss']} draws its negatives anew in each call"
        print(f"loss of the first batch, dropout off: full width {full:.6f}, padding-free {free:.6f} ({verdict})")
        base = timings["padding-free"]
        for name, ms in timings.items():
            print(f"  {name:<36} {ms:9.1f} ms/step   {ms / base:5.2f}x the padding-free step")
        if isinstance(method, sequential.SequentialRecommender):
            ranking = ranking_ms(method, data, args.rank_users)
            print(f"ranking {min(args.rank_users, data.n_users)} validation histories: " + ", ".join(
                f"{name} {ms:.0f} ms" for name, ms in ranking.items()) +
                f" ({ranking['one padded batch'] / ranking['length groups']:.2f}x)")


if __name__ == "__main__":
    main()
