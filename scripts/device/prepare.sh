#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before spending GPU time: fills .device/ (git-ignored) with what the GPU
# machine of the `device` tool lacks and cannot download (see /work/.library/device/README.md):
#   .device/wheels/  Python 3.12 wheels of the packages its image lacks or has too old (about 20 MB)
#   .device/gguf/    the packaged SmolLM2-135M GGUF in three parts (a call carries at most 64 MiB)
#   .device/meta/    its sha256 and the commit the run is of
#   .device/cache/   the semantic IDs of the `small` LLM methods and TIGER, built here (scripts/device/sids.py: each
#                    method's own configuration), so that the 88 MB sentence encoder need not travel (SIDs are cached
#                    by a fingerprint of split, encoder, quantiser and seed; the GPU run finds them and builds
#                    nothing): ml-100k's of seeds 0-2 and its collaborative ones, and the text SIDs of beauty,
#                    sports and toys (seed 0)
#   .device/data/    the shared Amazon files in the data directory's layout (amazon2014-s3rec/<Category>.txt,
#                    .items.jsonl with titles and categories, _item2attributes.json), which GRBENCH_DATA names on
#                    the device (never committed)
#   .device/resume/  the epoch checkpoints of cells earlier GPU sessions did not finish, kept in .device-resume/
#                    (scripts/device/resume.py join), in parts that each ride in a call of their own
# Then follow scripts/device/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
for ignored in /.device/ /.device-resume/; do
    grep -qxF "$ignored" "$exclude" 2>/dev/null || echo "$ignored" >> "$exclude"
done
rm -rf .device && mkdir -p .device/wheels .device/gguf .device/cache .device/data .device/meta

# What the image lacks (recbole, trl and its datasets, gguf, the RQ-VAE library) or has in a version we cannot
# use (transformers 5.17 < 5.23; pandas 3, which RecBole 1.2.1 fails on, and pytz and tzdata, which pandas 2 needs
# and the image lacks: GPU run 2 lost its first call to that ImportError); versions as installed here.
packages=(recbole colorlog texttable trl datasets dill multiprocess gguf vector-quantize-pytorch einx
          frozendict loguru torch-einops-utils platformdirs pandas pytz tzdata)
pinned=()
for name in "${packages[@]}"; do
    pinned+=("$name==$(python3 -c "from importlib.metadata import version; print(version('$name'))")")
done
# liger-kernel (the MFU benchmark's fused kernels, liger=true) is pure Python and GPU-only: not installed here.
# transformers at 5.23, not the version here: from 5.25 on it needs huggingface-hub 2, which needs httpx2 and a
# newer click than the image's huggingface-hub 1.33 (the first call of 2026-12-04 failed on that import)
pinned+=("liger-kernel==0.8.5" "transformers==5.23.0")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/wheels "${pinned[@]}"
# the subset the tiger-* streams need (no LLM libraries): with the tree and the Amazon files it fits one call
mkdir -p .device/wheels-tiger
for name in transformers pandas pytz tzdata recbole colorlog texttable vector_quantize_pytorch einx frozendict loguru \
        torch_einops_utils platformdirs; do
    ln .device/wheels/"$name"-[0-9]*.whl .device/wheels-tiger/
done

gguf=$(python3 -c "from bench.compat import smollm2_gguf; print(smollm2_gguf())")
mkdir -p .device/meta
sha256sum "$gguf" | cut -d' ' -f1 > .device/meta/sha256
git rev-parse HEAD > .device/meta/commit  # no .git travels; records name this commit
[ -z "$(git status --porcelain --untracked-files=no)" ] || echo "WARNING: uncommitted changes; commit first"

# the Amazon study datasets as the data directory holds them (bench/data/amazon.py): run.sh sets GRBENCH_DATA there
shared=../shared/data/amazon2014-s3rec
amazon=""
if [ -d "$shared" ]; then
    mkdir -p .device/data/amazon2014-s3rec
    for category in Beauty Sports_and_Outdoors Toys_and_Games; do
        cp "$shared/$category.txt" "$shared/$category.items.jsonl" "$shared/${category}_item2attributes.json" \
            .device/data/amazon2014-s3rec/
    done
    amazon=beauty,sports,toys
else
    echo "no $shared: the Amazon rows of the GPU run will fail"
fi
# The SIDs of the streams' cells, each method's own (the sentence encoder does not travel): ml-100k's of the LLM
# methods and TIGER for seeds 0-2 and TIGER's collaborative ones, and the Amazon datasets' (text: their items have
# titles) for seed 0, read from the copies above as the device reads them
sids() { GRBENCH_CACHE=$PWD/.device/cache GRBENCH_DATA=$PWD/.device/data python3 scripts/device/sids.py --profile small "$@"; }
sids --methods sft,tiger --datasets ml-100k --seeds 0,1,2
sids --methods tiger:sid_source=collaborative --datasets ml-100k
[ -z "$amazon" ] || sids --methods sft,tiger --datasets "$amazon"

# The GGUF in as many parts as the calls need: each call carries the tree (tracked and untracked files) and its
# paths, 64 MiB at most. The first part rides with the wheels, the last with the data, the others alone.
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 cat | wc -c)
limit=$(( 64 * 1048576 - tree - 1048576 ))  # a MiB of margin
size_of() { du -cb "$@" | tail -1 | cut -f1; }
first_room=$(( limit - $(size_of .device/wheels .device/cache .device/meta) ))
last_room=$(( limit - $(size_of .device/data .device/meta) ))
total=$(stat -c %s "$gguf")
[ "$first_room" -gt 0 ] && [ "$last_room" -gt 0 ] || { echo "ERROR: the tree and wheels leave no room for the GGUF"; exit 1; }
offset=0 part=0
while [ "$offset" -lt "$total" ]; do
    if [ "$part" = 0 ]; then room=$first_room; elif [ $(( total - offset )) -le "$last_room" ]; then room=$last_room
    else room=$(( limit < total - offset - last_room ? limit : total - offset - last_room )); fi
    name=$(printf ".device/gguf/part%02d" "$part")
    # (dd, not tail | head: under pipefail, tail's SIGPIPE when head has its part would end the script here)
    dd if="$gguf" of="$name" bs=64K iflag=skip_bytes,count_bytes skip="$offset" count="$room" status=none
    offset=$(( offset + $(stat -c %s "$name") )) part=$(( part + 1 ))
done
last=$(printf "part%02d" $(( part - 1 )))
# unfinished checkpoints (none until a session returns some): a call each, between the GGUF's and start
[ -d .device-resume ] && python3 scripts/device/resume.py prepare .device-resume results/results.jsonl \
    .device/resume "$limit"
du -sh .device/*
echo "tree: $((tree / 1048576)) MiB; the GGUF in $part parts. The calls of scripts/device/README.md, in order:"
echo "  setup: carry .device/wheels .device/gguf/part00 .device/cache .device/meta"
for ((n = 1; n < part - 1; n++)); do printf "  part:  carry .device/gguf/part%02d\n" "$n"; done
for resume_part in .device/resume/part*; do
    [ -f "$resume_part" ] && echo "  part:  carry $resume_part .device/resume/resume-sha256"
done
echo "  start: carry .device/gguf/$last .device/meta .device/data"
echo "TIGER alone (the tiger-* streams), one call: carry .device/wheels-tiger .device/cache .device/meta .device/data"
tiger=$(size_of .device/wheels-tiger .device/cache .device/meta .device/data)
[ "$tiger" -le "$limit" ] || echo "ERROR: the TIGER call's paths, $((tiger / 1048576)) MiB, leave the tree too little room"
