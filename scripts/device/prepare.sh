#!/usr/bin/env bash
# Run HERE (a machine with PyPI), before spending GPU time: fills .device/ (git-ignored) with what the GPU
# machine of the `device` tool lacks and cannot download (see /work/.library/device/README.md):
#   .device/wheels/  Python 3.12 wheels of the packages its image lacks or has too old (about 20 MB)
#   .device/gguf/    the packaged SmolLM2-135M GGUF in two halves (a call carries at most 64 MiB) + its sha256
#   .device/cache/   the ml-100k semantic IDs of the `small` LLM methods, built here, so that the 88 MB
#                    sentence encoder need not travel (SIDs are cached by a fingerprint of split, encoder,
#                    quantiser and seed; the GPU run finds them and builds nothing)
#   .device/data/    the shared Amazon sequence files (never committed)
# Then follow scripts/device/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
grep -qxF "/.device/" "$exclude" 2>/dev/null || echo "/.device/" >> "$exclude"
rm -rf .device && mkdir -p .device/wheels .device/gguf .device/cache .device/data

# What the image lacks (recbole, trl and its datasets, gguf, the RQ-VAE library) or has older than we need
# (transformers 5.17 < 5.23); versions as installed here.
packages=(recbole colorlog texttable trl datasets dill multiprocess gguf vector-quantize-pytorch einx
          frozendict loguru torch-einops-utils transformers platformdirs)
pinned=()
for name in "${packages[@]}"; do
    pinned+=("$name==$(python3 -c "from importlib.metadata import version; print(version('$name'))")")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/wheels "${pinned[@]}"

gguf=$(python3 -c "from bench.compat import smollm2_gguf; print(smollm2_gguf())")
split -n 2 -d "$gguf" .device/gguf/part
sha256sum "$gguf" | cut -d' ' -f1 > .device/gguf/sha256

cp ../shared/data/amazon2014-s3rec/*.txt ../shared/data/amazon2014-s3rec/*_item2attributes.json .device/data/ 2>/dev/null \
    || echo "no ../shared/data: the Amazon rows of the GPU run will be skipped"
GRBENCH_CACHE=$PWD/.device/cache python3 -m bench sids --dataset ml-100k --quantizer rqvae --epochs 200 --seed 0 \
    --examples 0
du -sh .device/*
