#!/usr/bin/env bash
# Run ON the GPU machine of the `device` tool, from the repository root (see scripts/device/README.md). What one
# call leaves in /tmp survives while the machine stays warm (30 s after each call), so the steps are calls in a row:
#   bash scripts/device/run.sh setup   (carry .device/wheels .device/gguf/part00 .device/cache .device/meta; prepare.sh
#       prints each call's carry list)
#       install the carried wheels, keep the first GGUF part, check the imports, and a smoke run (tiny models,
#       seconds each) of the methods no earlier GPU run has run (SMOKE, default below; SMOKE= skips it), so that
#       a CUDA-only bug shows before the long runs start
#   bash scripts/device/run.sh part    (carry .device/gguf/part01; then part02 ... but the last)  keep a GGUF part
#   bash scripts/device/run.sh start   (carry the last GGUF part, .device/meta .device/data)
#       (WITHOUT_GGUF=1 for streams that need no LLM, the tiger-* ones: then `WITHOUT_GGUF=1 setup && start` is one
#       call, carrying .device/wheels-tiger .device/cache .device/meta .device/data and no GGUF part)
#       join and check the GGUF, measure the GPU's bf16 rate alone, start the STREAMS_ON streams below in their own
#       sessions (they outlive the call) and wait WAIT seconds (default 480); BENCH_FIRST=1 runs the benchmarks
#       (as `bench`) before the streams
#   bash scripts/device/run.sh relaunch  (carry .whl2, wheels found missing after start, if any)  after start:
#       install .whl2, take the tree sent with this call and start the streams again
#   bash scripts/device/run.sh wait    wait up to WAIT seconds more, or until every stream has finished
#   bash scripts/device/run.sh bench   with the device time the streams leave: the training-step benchmark
#       (train_step.txt), short SFT runs for their MFU under torch.profiler (mfu.txt, profileN/) and, with
#       DECODE_BENCH=1, the decoder benchmark (decode.txt), each alone on the GPU
#   bash scripts/device/run.sh stop    interrupt what still runs (training resumes from its last epoch next time)
#   FIRST=N bash scripts/device/run.sh resume-out   after start, wait or stop: parts N to N+3 of the epoch
#       checkpoints of cells this session did not finish (scripts/device/resume.py), for the next session
# The streams run from a copy of the tree in /tmp/grbench/repo (each call replaces the tree it was sent).
# start, wait and stop end by copying what the run added so far to $OUT (results.tgz: records, rankings, row
# stages, logs; logs.txt).
#
# The streams share the one GPU (the models are small: one alone leaves most of an H100 idle). Every record
# states the most processes seen computing on the GPU during its run (hardware.gpu_processes_max), so the
# leaderboards mark times measured on a shared GPU as upper bounds. The benchmarks run alone, after them.
# GPU run 2 (H200, five streams) showed that sharing starves RecBole's many small kernels: an ml-100k SASRec epoch
# took about 2 minutes beside the LLM trainers (about as long as on 2 CPU cores), a Sports one 4. So the LLM
# streams alone by default, and the Amazon RecBole cells, which a CPU can run, after TIGER, which it barely can.
set -uo pipefail
STATE=${STATE:-/tmp/grbench}
GGUF=$STATE/SmolLM2-135M-Instruct.Q4_1.gguf
REPO=$STATE/repo  # the streams run from a copy: each call replaces the tree it was sent
RESULTS=$REPO/results  # the tree's own results/: cells an earlier GPU run finished are skipped
mkdir -p "$STATE/logs" "${OUT:=$STATE/out}"
# GRBENCH_DATA: the data directory `start` carries (.device/data/amazon2014-s3rec, prepare.sh), in the streams' tree
export PYTHONPATH=$STATE/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRBENCH_CACHE=$STATE/cache \
    GRBENCH_DATA=$REPO/.device/data GRBENCH_SMOLLM2_GGUF=$GGUF OMP_NUM_THREADS=2 COLUMNS=160 \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
[ -f "$STATE/commit" ] && export GRBENCH_GIT_COMMIT="$(cat "$STATE/commit")"  # no .git travels
# the GPU's bf16 matrix rate (the MFU denominator), measured once alone by start: runs sharing the GPU would each
# measure a share of it
[ -f "$STATE/bf16-tflops" ] && export GRBENCH_BF16_MATMUL_TFLOPS="$(cat "$STATE/bf16-tflops")"

ml="ml-100k"
# the Amazon study datasets under their own names (their S3-Rec files, titles and categories included, from
# GRBENCH_DATA); BEAUTY=, SPORTS= and TOYS= stand other dataset specs in for them in a rehearsal on a CPU
# (tests/test_device_streams.py)
beauty=${BEAUTY:-beauty} sports=${SPORTS:-sports} toys=${TOYS:-toys}
ids="sasrec sasrec:loss=bce-all,rows=users rearec hstu:loss=ce gru4rec bert4rec hgn hstu tiger pop random"
cells() {  # dataset seed methods...: one cell per method; analyze:METHODS is the study's analyses of their trained
    # models (`bench analyze`, into results/analysis), after the cell that trains them
    local dataset=$1 seed=$2; shift 2
    for m in "$@"; do printf '%s|%s|%s ' "$m" "$dataset" "$seed"; done
}
# stream name -> "methods|datasets|seeds" cells, one `bench run` (or `bench analyze`) each (a failing cell does not
# stop the stream); in the order they matter: cells already in results/ (GPU runs of earlier sessions, in the tree)
# are skipped
declare -A STREAMS=(
    # the study's comparison, one stream a seed (`sft` seeds 0-2 are in results/ from GPU runs 1, 2 and 4, `pauserec`
    # seed 0 from run 5, and the pause stages of seeds 0-2 in results/stages/ from run 4): each trains its seed's SFT
    # stage (about 60 s), then the implicit SFT (295 steps, about 4 minutes beside the others), then ranks (run 5:
    # 5.5 minutes of training a seed, three side by side). Three streams at once: GPU run 4 ran six and ran out of
    # the H200's memory (pause pretraining held 33-36 GB a process). Each stream then goes on with what reuses its
    # seed's stages: seed 0's analyses and `sft` on each user's last 10 training items (does more SFT data lift the
    # collapse? 2,950 steps, about 10 minutes; `pauserec:sft_targets=10` would add 2,950 implicit-SFT steps, about
    # 37 minutes, more than a session), seed 1's PauseRec ablation without pause pretraining; seed 2's stream goes on
    # with TIGER `small` on ml-100k before its 10 targets: TIGER's epoch checkpoint comes back when the session ends
    # first (resume-out), an unfinished SFT stage (a whole model) does not
    [pause0]="$(cells $ml 0 pauserec analyze:pauserec sft:sft_targets=10)"
    [pause1]="$(cells $ml 1 pauserec pauserec:pause_init=default)"
    [pause2]="$(cells $ml 2 pauserec) $(cells $ml 0 tiger) $(cells $ml 2 sft:sft_targets=10)"
    [sft]="$(cells $ml 0 sft) $(cells $ml 1 sft) $(cells $ml 2 sft)"
    # OneRec-Think (run 5: SFT 56 s and CoT SFT about 20 s beside two pause streams, then GRPO at about 6 s a step of
    # 64 completions of up to 160 tokens, 117 steps; its completions now end at their SID, grpo_valid_sids) and its
    # analyses: the longest stream, up to 13 minutes
    [think0]="$(cells $ml 0 onerec_think analyze:onerec_think)"
    [ids-ml100k]="$(cells $ml 0 sasrec gru4rec bert4rec hgn rearec hstu pop random tiger)"
    [amazon]="$(cells $beauty 0 tiger) $(cells $sports 0 tiger sasrec rearec rearec:reasoning_steps=0 sasrec:loss=bce-all,rows=users bert4rec) \
        $(for m in $ids; do cells $beauty 0 $m; cells $sports 0 $m; done)"
    # TIGER `small` alone (issue 4), one stream a dataset or SID source, side by side (a TIGER model is small: four
    # leave most of an H100 idle). Each climbs a ladder of epoch limits: every rung continues the epoch checkpoint
    # of the one below (bench.training.shorter_run_state; even limits, since it validates every 2 epochs) and
    # stores a record, so a session that ends mid-ladder keeps its last finished rung; the top rung is the
    # profile's own schedule (200 epochs, patience 20). None of them needs the GGUF: WITHOUT_GGUF=1 start
    # (The rungs skip the limits of the CPU rows in results/: ml-100k 2, 6, 8 and 12, Beauty 4, Sports 2.)
    [tiger-ml100k]="$(cells $ml 0 tiger:epochs=4 tiger:epochs=10 tiger:epochs=20 tiger)"
    [tiger-collab]="$(cells $ml 0 tiger:epochs=4,sid_source=collaborative tiger:epochs=10,sid_source=collaborative \
        tiger:epochs=20,sid_source=collaborative tiger:sid_source=collaborative)"
    # On the Amazon datasets these are text SIDs (the default where items have titles; prepare.sh builds them), not
    # the attributes+collaborative ones of the CPU rows renamed from the seq: files (another cell, never skipped).
    [tiger-beauty]="$(cells $beauty 0 tiger:epochs=6 tiger:epochs=12 tiger:epochs=24 tiger)"
    [tiger-sports]="$(cells $sports 0 tiger:epochs=4 tiger:epochs=8 tiger:epochs=16 tiger)"
    [tiger-toys]="$(cells $toys 0 tiger:epochs=6 tiger:epochs=12 tiger:epochs=24 tiger)"
    # The study's LLM rows (issue 44): `sft`, `pauserec` and `onerec_think` `small`, seed 0, every test user, and
    # the analyses, on Beauty, then in another session on Toys: three streams side by side, which share their
    # stages through the stage locks (methods.llm.stages.stage_lock): the `sft` stream trains CPT and SFT, the
    # `pause` stream waits for CPT, trains pause pretraining beside SFT, then the implicit SFT; the `think` stream
    # waits for SFT, then trains CoT SFT and GRPO. The recipe's steps on these datasets take far longer than a
    # session: scripts/device/README.md, "The study's rows on Beauty and Toys", has the estimate.
    [beauty-sft]="$(cells $beauty 0 sft)"
    [beauty-pause]="$(cells $beauty 0 pauserec analyze:pauserec)"
    [beauty-think]="$(cells $beauty 0 onerec_think analyze:onerec_think)"
    [toys-sft]="$(cells $toys 0 sft)"
    [toys-pause]="$(cells $toys 0 pauserec analyze:pauserec)"
    [toys-think]="$(cells $toys 0 onerec_think analyze:onerec_think)"
)
# the streams a launch starts (STREAMS_ON="pause0 ids-ml100k" picks others): by default the two PauseRec seeds
# not yet in results/ and OneRec-Think, the LLM cells alone, since RecBole's small kernels starve beside the LLM
# trainers (GPU run 2) and a CPU runs them; TIGER's Amazon epochs outlast a session's device time, so `amazon` is
# for sessions after #5's cells, its checkpoint coming back and going out again in parts (resume-out, resume.py)
STREAMS_ON=${STREAMS_ON:-pause1 pause2 think0}
# STREAM_PROFILE=smoke runs the streams' cells on the tiny model, and STREAM_MAX_USERS=N ranks N test users: a
# rehearsal of the streams on a CPU, from a copy of the tree (tests/test_device_streams.py), e.g.
#   STATE=/tmp/check STREAM_PROFILE=smoke WITHOUT_GGUF=1 WAIT=900 OUT=/tmp/check/out bash scripts/device/run.sh start

run_cell() {  # methods datasets seeds: `bench run` of one cell, or `bench analyze` of analyze:METHODS
    local profile=${STREAM_PROFILE:-small}
    if [ "${1%%:*}" = analyze ]; then
        python3 -m bench analyze --methods "${1#analyze:}" --datasets "$2" --seed "$3" --profile "$profile" \
            --out "$RESULTS/analysis"
    else
        python3 -m bench run --profile "$profile" --methods "$1" --datasets "$2" --seeds "$3" --out "$RESULTS" \
            ${STREAM_MAX_USERS:+--max-test-users "$STREAM_MAX_USERS"}
    fi
}

stream() {  # name: runs its cells one after the other, then once more those that failed, then marks itself done
    local name=$1 cell methods datasets seeds failed=""
    echo $$ > "$STATE/logs/$name.pid"  # its process group too (setsid): `running` and `stop` go by it
    for cell in ${STREAMS[$name]} RETRY; do
        if [ "$cell" = RETRY ]; then
            [ -n "$failed" ] || break
            echo "=== retrying:$failed"
            for cell in $failed; do
                IFS='|' read -r methods datasets seeds <<< "$cell"
                run_cell "$methods" "$datasets" "$seeds" || echo "=== FAILED again: $methods on $datasets, seed $seeds"
            done
            break
        fi
        IFS='|' read -r methods datasets seeds <<< "$cell"
        echo "=== $(date +%T) $methods on $datasets, seed $seeds"
        run_cell "$methods" "$datasets" "$seeds" \
            || { echo "=== FAILED: $methods on $datasets, seed $seeds"; failed="$failed $cell"; }
    done
    touch "$STATE/logs/$name.done"
}

# The streams of this machine's last launch, by the process ids they wrote (each leads its own process group): never
# by a name, which matched a call's own `bash -c` line once (GPU run 4: `pkill -f "python3 -m bench"` in
# `stop; python3 -m bench ...` killed that call) and would match another checkout's streams on a shared machine
stream_pids() { cat "$STATE"/logs/*.pid 2>/dev/null; }
running() {
    local pid
    for pid in $(stream_pids); do kill -0 "$pid" 2>/dev/null && return 0; done
    return 1
}
stop_streams() {  # the streams start no further cell; their cells are interrupted (training keeps its last epoch)
    local pid
    for pid in $(stream_pids); do kill -TERM "$pid" 2>/dev/null; done
    for pid in $(stream_pids); do kill -INT -- "-$pid" 2>/dev/null; done
    return 0
}

finished_row_stages() {  # the finished stage folders that hold trained rows only (CPT, pause: a few MB, no
    # model), relative to the cache: they come back with the results, and the next GPU run reuses them
    (cd "$GRBENCH_CACHE" 2>/dev/null && find . -path "*/llm-stages/*" -name DONE -printf "%h\n" |
        while read -r stage; do
            [ -f "$stage/rows.safetensors" ] && [ ! -f "$stage/model.safetensors" ] && echo "$stage"
        done)
}

collect() {  # the leaderboards are regenerated after `bench merge` here (on the device it took over a minute)
    rm -rf "$STATE/back" && mkdir -p "$STATE/back/stages" "$STATE/back/results"
    finished_row_stages | while read -r stage; do  # those the tree holds (results/stages) need not come back
        [ -d "$REPO/results/stages/$stage" ] && continue
        mkdir -p "$STATE/back/stages/$stage" && cp -r "$GRBENCH_CACHE/$stage/." "$STATE/back/stages/$stage/"
    done
    # what this GPU run added to results/ and nothing else: the records not in the tree it was sent, and the
    # rankings files the tree lacks (the whole folder, over 20 MB, is more than a returned file may hold, 16 MiB)
    [ -f "$RESULTS/results.jsonl" ] && { grep -vxFf "$STATE/tree-results.jsonl" "$RESULTS/results.jsonl" \
        > "$STATE/back/results/results.jsonl" || true; }
    (cd "$REPO" && find results/rankings -type f 2>/dev/null | sort) > "$STATE/rankings-now.txt"
    comm -13 "$STATE/tree-rankings.txt" "$STATE/rankings-now.txt" | while read -r file; do
        mkdir -p "$STATE/back/$(dirname "$file")" && cp "$REPO/$file" "$STATE/back/$file"
    done
    [ -d "$RESULTS/analysis" ] && cp -r "$RESULTS/analysis" "$STATE/back/results/"
    # the streams' whole logs too, and the stages above
    tar czf "$OUT/results.tgz" -C "$STATE/back" results stages -C "$STATE" logs
    ls -la "$OUT"
    for log in "$STATE"/logs/*.log; do
        [ -f "$log" ] || continue
        echo "##### $(basename "$log") $([ -f "${log%.log}.done" ] && echo done)"
        grep -v "^\s*$" "$log" | grep -E "===|Error|error|Traceback|NDCG|ndcg|stage|epoch|FAILED|WARNING" | tail -25
    done > "$OUT/logs.txt"
    cat "$OUT/logs.txt"
    echo "records: $(wc -l < "$RESULTS/results.jsonl" 2>/dev/null || echo 0)"
    # the epoch checkpoints of cells this session advanced and did not finish, in parts for `resume-out`
    python3 scripts/device/resume.py pack "$GRBENCH_CACHE" "$RESULTS/results.jsonl" "$STATE/started" "$STATE/resume"
    parts=$(find "$STATE/resume" -name "resume-[0-9][0-9]" 2>/dev/null | wc -l)
    [ "$parts" = 0 ] || echo "return them: $(for ((n = 0; n < parts; n += 4)); do
        printf '`FIRST=%d bash scripts/device/run.sh resume-out`; ' "$n"; done)then resume.py join here"
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null || true
}

keep_resume_parts() {  # the parts of unfinished checkpoints `prepare.sh` split for carrying (any call may carry some)
    [ -d .device/resume ] && mkdir -p "$STATE/resume-in" && cp .device/resume/* "$STATE/resume-in/"
    return 0
}

install_tree() {  # the tree sent with this call becomes $REPO, the streams' copy; the results they stored on this
    # machine (a superset of the tree's) and the Amazon files (carried by start alone) survive the replacement.
    # What the tree holds of results/ is written down, so that collect returns only what the run added
    cp results/results.jsonl "$STATE/tree-results.jsonl" 2>/dev/null || : > "$STATE/tree-results.jsonl"
    (find results/rankings -type f 2>/dev/null | sort) > "$STATE/tree-rankings.txt"
    rm -rf "$STATE/keep" && mkdir -p "$STATE/keep" || return 1
    [ -d "$REPO/results" ] && cp -r "$REPO/results" "$STATE/keep/"
    [ -d "$REPO/.device/data" ] && cp -r "$REPO/.device/data" "$STATE/keep/"
    rm -rf "$REPO" && mkdir -p "$REPO/.device" && cp -r . "$REPO/" || return 1
    if [ -d "$STATE/keep/results" ]; then rm -rf "$REPO/results" && cp -r "$STATE/keep/results" "$REPO/" || return 1; fi
    if [ ! -d .device/data ] && [ -d "$STATE/keep/data" ]; then cp -r "$STATE/keep/data" "$REPO/.device/" || return 1; fi
}

launch() {  # starts the STREAMS_ON streams in their own sessions (they outlive the call), waits WAIT seconds, collects
    local name
    for name in $STREAMS_ON; do
        [ -n "${STREAMS[$name]+set}" ] || { echo "unknown stream $name (known: ${!STREAMS[*]})"; return 1; }
    done
    # the redirections are the whole subshell's: no process of a stream holds this call's output open (GPU run 3
    # lost 100 s of device time when `start | tail` waited for a subshell that did), and exec makes the subshell
    # itself the new session's leader
    for name in $STREAMS_ON; do
        (cd "$REPO" && exec setsid nohup bash scripts/device/run.sh stream "$name") > "$STATE/logs/$name.log" 2>&1 \
            < /dev/null &
    done
    sleep 5
    wait_streams "${WAIT:-480}"
    collect
}

wait_streams() {  # seconds
    local until=$((SECONDS + $1))
    while running && [ $SECONDS -lt $until ]; do sleep 10; done
}

benchmarks() {  # the decoder, training-step and MFU benchmarks, one after the other and each alone on the GPU;
    # what they print goes to $OUT: decode.txt, train_step.txt, padding_free.txt, mfu.txt and, for MFU variant N,
    # profileN/*.txt
    running && echo "warning: streams still run; the benchmarks share the GPU with them (stop first for clean numbers)"
    # DECODE_BENCH=1 runs it (about 60 s on an H200): off by default since run 3 measured it on this kind of GPU
    # (docs/logs/gpu-run-3-decode-h200.txt)
    # (--decoder all: also the static cache with CUDA graphs, issue 44.3)
    [ "${DECODE_BENCH:-0}" = 0 ] || python3 benchmarks/decode.py --model smollm2 --users 256 --batch 16,64,256 \
        --beams 10 --k 10 --decoder all 2>&1 | tee "$OUT/decode.txt"
    # TRAIN_BENCH=0 skips it: what bounds a SmolLM2 training step (benchmarks/train_step.py: the recipe's kernels,
    # bf16 weights and Liger at batch 16 and 64, torch.compile at 64 alone since each shape compiles anew), about
    # 2 minutes
    if [ "${TRAIN_BENCH:-1}" != 0 ]; then
        for run in "recipe,bf16,liger --batch 16,64" "compile --batch 64"; do
            # shellcheck disable=SC2086  # the options are words on purpose
            timeout 150 python3 benchmarks/train_step.py --model smollm2 --variants $run --length 400 --steps 10 \
                --train all 2>&1 | grep -vE "Converting|Loading weights" | tee -a "$OUT/train_step.txt"
        done
    fi
    # PADDING_BENCH=1 runs it (under a minute): the ID models' training steps in length groups against whole batches
    # on the GPU (benchmarks/padding_free.py --device cuda), which says whether training them whole there holds
    # (baselines.sequential.groups_pay_off)
    if [ "${PADDING_BENCH:-0}" != 0 ]; then
        for method in sasrec hstu:loss=ce; do
            timeout 120 python3 benchmarks/padding_free.py --method "$method" --dataset "$ml" --profile small \
                --steps 20 --rank-users 943 --device cuda 2>&1 | tail -6 | tee -a "$OUT/padding_free.txt"
        done
    fi
    # MFU_BENCH=0 skips it: SFT's two stages with a few steps each, for their tokens/s and MFU (issue 7's training
    # target; the streams' own numbers are measured on a shared GPU) and, under torch.profiler
    # (methods/llm/profiling.py), where five of each stage's steps spend their time. Once per MFU_VARIANTS entry:
    # by default the recipe's kernels and batches; the same compiled with CUDA graphs (compile=reduce-overhead:
    # eager steps are bound by issuing operators, docs/llm-on-gpu.md); then Liger's fused kernels with 64-example
    # batches (hardware efficiency at a larger batch; not the recipe). About 60 s each, compiling longer.
    # MFU_PROFILE=smoke runs it on the tiny model: with TRAIN_BENCH=0, a check of this function on a CPU
    if [ "${MFU_BENCH:-1}" != 0 ]; then
        steps="cpt_max_steps=${MFU_CPT_STEPS:-30},sft_max_steps=${MFU_SFT_STEPS:-40}"
        big="liger=true,micro_batch_size=64,cpt_batch_size=64,sft_batch_size=64"
        variants=(recipe ",compile=reduce-overhead" ",$big")
        [ -n "${MFU_VARIANTS+set}" ] && read -ra variants <<< "$MFU_VARIANTS"
        for variant in "${!variants[@]}"; do
            options=${variants[$variant]}
            [ "$options" = recipe ] && options=""
            # a cache of its own (with the SIDs): its stages always train, and never come back as reusable stages
            mfu=$STATE/mfu$variant
            rm -rf "$mfu" && mkdir -p "$mfu/cache"
            [ -d "$GRBENCH_CACHE/sids" ] && cp -r "$GRBENCH_CACHE/sids" "$mfu/cache/"
            echo "== sft:$steps$options" | tee -a "$OUT/mfu.txt"
            # profiled but for compiled variants (the profiler and CUDA graphs can get in each other's way)
            profile=$OUT/profile$variant
            [[ "$options" == *compile=* ]] && profile=""
            GRBENCH_CACHE=$mfu/cache GRBENCH_TORCH_PROFILE=$profile timeout 240 \
            python3 -m bench run --profile "${MFU_PROFILE:-small}" --methods "sft:$steps$options" --datasets "$ml" \
                --max-test-users 32 --out "$mfu/results" > "$STATE/logs/mfu-bench-$variant.txt" 2>&1 \
                && python3 -m bench leaderboard --out "$mfu/results" --leaderboards "$mfu/leaderboards" > /dev/null \
                && grep -E "^\| (Dataset|ml-100k)" "$mfu/leaderboards/costs.md" | tee -a "$OUT/mfu.txt" \
                || tail -20 "$STATE/logs/mfu-bench-$variant.txt" | tee -a "$OUT/mfu.txt"
            grep -hE "^(# |wall ms|operators|GPU kernels)" "$OUT/profile$variant"/*.txt 2>/dev/null | tee -a "$OUT/mfu.txt"
        done
    fi
}

case "${1:-}" in
  setup)
    wheels=.device/wheels  # or, for the tiger-* streams, the subset prepare.sh leaves in .device/wheels-tiger
    [ -d "$wheels" ] || wheels=.device/wheels-tiger
    if compgen -G "$wheels/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STATE/site" \
            "$wheels"/*.whl || exit 1
    else  # (a rehearsal on a CPU, whose Python has them): the import check below says what is missing
        echo "no wheels carried"
    fi
    # the first GGUF part, when carried (WITHOUT_GGUF runs carry none)
    rm -f "$STATE"/part* && { cp .device/gguf/part* "$STATE/" 2>/dev/null || echo "no GGUF part carried"; }
    mkdir -p "$GRBENCH_CACHE" && cp -rn .device/cache/. "$GRBENCH_CACHE/" || exit 1
    cp .device/meta/commit "$STATE/commit"
    keep_resume_parts
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    llm=", trl, gguf, peft"  # what the LLM methods need beyond TIGER's
    [ "${WITHOUT_GGUF:-0}" = 0 ] || llm=""
    python3 -c "import torch, transformers, recbole, vector_quantize_pytorch$llm; print(torch.__version__, transformers.__version__, torch.cuda.is_available())" || exit 1
    # does this GPU's attention backward fail on left-padded rows (pytorch#196678), and does the stages' guard
    # avoid it? (a few seconds; the tree's benchmarks/, before `start` installs the tree for the streams)
    timeout 60 python3 benchmarks/sdpa_backward.py 2>&1 | tee "$OUT/sdpa_backward.txt"
    # GPU run 1 ran sft, hstu, rearec, pop and random on the GPU, run 2 sasrec, bert4rec (epochs) and pauserec
    # (up to its implicit SFT); SMOKE= (empty) skips it, to leave the device time to the real runs (a failing cell
    # shows in their logs too)
    smoke="${SMOKE-onerec_think,tiger}"
    [ -z "$smoke" ] || timeout 150 python3 -m bench run --profile smoke --methods "$smoke" \
        --datasets synthetic --out "$STATE/smoke" 2>&1 | grep -vE "^\s*$" | tail -40 ;;
  start)
    rm -f "$STATE"/logs/*  # a fresh machine has none; an earlier start's are stale
    # the GGUF's parts: those of setup and part, and the last, carried by this call (the checksum tells a missing one)
    # WITHOUT_GGUF=1: streams that need no LLM (the tiger-* ones) start at once after setup, in the same call
    if [ "${WITHOUT_GGUF:-0}" = 0 ]; then
        cp .device/gguf/part* "$STATE/" && cat "$STATE"/part* > "$GGUF.tmp" || { echo "run setup and part first"; exit 1; }
    fi
    # CPT and pause stages earlier GPU runs trained (their rows, committed in results/stages: README step 3)
    [ -d results/stages ] && mkdir -p "$GRBENCH_CACHE" && cp -rn results/stages/. "$GRBENCH_CACHE/"
    # epoch checkpoints of cells an earlier session did not finish (scripts/device/resume.py): they resume
    keep_resume_parts
    [ -d "$STATE/resume-in" ] && { python3 scripts/device/resume.py unpack "$GRBENCH_CACHE" "$STATE"/resume-in/* \
        || echo "resume: the carried checkpoints are unusable (above); their cells start over"; }
    touch "$STATE/started"  # checkpoints written after this are the session's own
    if [ "${WITHOUT_GGUF:-0}" = 0 ]; then
        echo "$(cat .device/meta/sha256)  $GGUF.tmp" | sha256sum -c - && mv "$GGUF.tmp" "$GGUF" || exit 1
    fi
    install_tree || exit 1
    python3 -c "import torch; from bench.costs import bf16_matmul_tflops as r; print(f'{r():.1f}')" \
        > "$STATE/bf16-tflops" && export GRBENCH_BF16_MATMUL_TFLOPS="$(cat "$STATE/bf16-tflops")" \
        && echo "bf16 matmul rate alone: $GRBENCH_BF16_MATMUL_TFLOPS TFLOP/s" | tee "$OUT/mfu.txt" \
        || rm -f "$STATE/bf16-tflops"
    # BENCH_FIRST=1: the benchmarks first, alone on the GPU (else `bench` runs them once the streams are done)
    [ "${BENCH_FIRST:-0}" = 0 ] || benchmarks
    launch ;;
  relaunch)  # after start, with a mended tree (and wheels in .whl2, if carried): the streams again, no benchmark
    [ -d .whl2 ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$STATE/site" .whl2/*.whl
    install_tree || exit 1
    rm -f "$STATE"/logs/*  # the last call collected them
    launch ;;
  bench)  # after start: the benchmarks alone, once the streams are done (`wait` first; `stop` ends them early)
    benchmarks ;;
  part)
    keep_resume_parts
    cp .device/gguf/part* "$STATE/" 2>/dev/null; ls -la "$STATE" ;;
  resume-out)  # after start, wait or stop: four parts of the unfinished checkpoints from FIRST (default 0) to $OUT
    first=${FIRST:-0}
    for ((n = first; n < first + 4; n++)); do
        part=$(printf "%s/resume/resume-%02d" "$STATE" "$n")
        [ -f "$part" ] && cp "$part" "$OUT/"
    done
    cp "$STATE/resume/resume-sha256" "$OUT/" && ls -la "$OUT" ;;
  stream)
    stream "$2" ;;
  cells)  # NAME...: the cells of these streams, one a line (what `start` would run; nothing runs)
    for name in "${@:2}"; do
        [ -n "${STREAMS[$name]+set}" ] || { echo "unknown stream $name (known: ${!STREAMS[*]})"; exit 2; }
        printf '%s\n' ${STREAMS[$name]}
    done ;;
  wait)
    wait_streams "${WAIT:-540}"
    collect ;;
  stop)
    stop_streams; sleep 20
    collect ;;
  *)
    echo "usage: bash scripts/device/run.sh setup|part|start|wait|bench|stop|relaunch|resume-out|cells"; exit 2 ;;
esac
