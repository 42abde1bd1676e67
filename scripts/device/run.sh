#!/usr/bin/env bash
# Run ON the GPU machine of the `device` tool, from the repository root (see scripts/device/README.md).
#   bash scripts/device/run.sh part0   keep the first half of the SmolLM2 GGUF on the machine   (carry .device/gguf/part00)
#   bash scripts/device/run.sh part1   keep the second half                                      (carry .device/gguf/part01)
#   bash scripts/device/run.sh decode  the decoder benchmark with SmolLM2 (after run: needs the wheels and the GGUF)
#   bash scripts/device/run.sh run     install the carried wheels, join the GGUF, run the GPU matrix for at most
#                                      $BUDGET seconds (default 540), copy results and leaderboards to $OUT
#                                      (carry .device/wheels .device/cache .device/data)
# `run` can be repeated while the machine stays warm: finished cells are skipped, training resumes from its last
# epoch checkpoint, so a matrix longer than one call's 10 minutes is finished by several calls.
set -uo pipefail
STATE=/tmp/grbench
GGUF=$STATE/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$STATE" "${OUT:=$STATE/out}"

case "${1:-}" in
  part0|part1)
    cp ".device/gguf/part0${1#part}" "$STATE/" && ls -la "$STATE" ;;
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STATE/site" \
        .device/wheels/*.whl || exit 1
    export PYTHONPATH=$STATE/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    if [ ! -f "$GGUF" ]; then
        cat "$STATE/part00" "$STATE/part01" > "$GGUF.tmp" || { echo "carry the two GGUF halves first"; exit 1; }
        echo "$(cat .device/gguf/sha256)  $GGUF.tmp" | sha256sum -c - && mv "$GGUF.tmp" "$GGUF" || exit 1
    fi
    export GRBENCH_SMOLLM2_GGUF=$GGUF GRBENCH_CACHE=$STATE/cache
    mkdir -p "$GRBENCH_CACHE" && cp -rn .device/cache/. "$GRBENCH_CACHE/"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    deadline=$((SECONDS + ${BUDGET:-540}))
    # every method on ml-100k with the full recipes (SmolLM2-135M), then every ID- or SID-based method on the
    # shared Amazon files
    amazon=""
    for file in .device/data/Beauty.txt .device/data/Sports_and_Outdoors.txt; do
        [ -f "$file" ] && amazon="$amazon,seq:$file"
    done
    runs=("--methods all --datasets ml-100k")
    [ -n "$amazon" ] && runs+=("--methods sasrec,sasrec:loss=bce,gru4rec,bert4rec,hgn,hstu,hstu:loss=ce,tiger,rearec,pop,random --datasets ${amazon#,}")
    for spec in "${runs[@]}"; do
        left=$((deadline - SECONDS))
        [ "$left" -gt 30 ] || break
        # shellcheck disable=SC2086
        timeout --signal=INT "$left" python3 -m bench run --profile small $spec --out "$STATE/results"
    done
    python3 -m bench leaderboard --out "$STATE/results" --leaderboards "$STATE/results/leaderboards" > /dev/null
    tar czf "$OUT/results.tgz" -C "$STATE" results && ls -la "$OUT" ;;
  decode)
    # the decoder benchmark of issue 7 on the GPU: ours vs generate + prefix_allowed_tokens_fn, one run
    export PYTHONPATH=$STATE/site GRBENCH_SMOLLM2_GGUF=$GGUF PYTHONUNBUFFERED=1
    python3 benchmarks/decode.py --model smollm2 --users 256 --beams 10 --k 10 2>&1 | tee "$OUT/decode.txt" ;;
  *)
    echo "usage: bash scripts/device/run.sh part0|part1|run|decode"; exit 2 ;;
esac
