"""Builds, here, the semantic IDs that a GPU run's cells will ask for, into ``$GRBENCH_CACHE`` (prepare.sh points it
at ``.device/cache``), so that the run finds them cached and the 88 MB sentence encoder need not travel.

  python3 scripts/device/sids.py --profile small --methods sft,tiger --datasets ml-100k,beauty --seeds 0,1,2

Each configuration is the method's own (its ``sid_config`` of the settings the profile and the spec's options give),
so the fingerprints are those the run computes (the SID cache key covers split, source input, configuration and
seed): a hand-written copy of the settings would drift from the profile unseen, and the GPU run would then need the
encoder it lacks. Equal configurations are built once; methods without SIDs are skipped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.cli import split_specs  # noqa: E402
from bench.data import load_dataset  # noqa: E402
from bench.profiles import get_profile  # noqa: E402
from bench.runner import resolve_methods  # noqa: E402
from bench.sid import build_semantic_ids  # noqa: E402
from bench.split import leave_last_out  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--methods", required=True, help="comma-separated method specs, options included")
    parser.add_argument("--datasets", required=True, help="comma-separated dataset specs")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds (the SIDs are built per seed)")
    args = parser.parse_args(argv)
    runs = [run for run in resolve_methods(split_specs(args.methods), get_profile(args.profile))
            if hasattr(run.method, "sid_config")]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    for spec in split_specs(args.datasets):
        data = leave_last_out(load_dataset(spec)).train_view()
        configs = {repr(config): config for config in (run.method.sid_config(run.settings) for run in runs)}
        for config in configs.values():
            for seed in seeds:
                started = time.perf_counter()
                sids = build_semantic_ids(data, config, seed=seed)
                how = "cached" if sids.from_cache else f"built in {time.perf_counter() - started:.0f} s"
                print(f"{data.dataset} seed {seed} {sids.source} ({config.quantizer}, {config.epochs} epochs): "
                      f"{sids.fingerprint} {how}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
