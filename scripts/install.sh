#!/usr/bin/env bash
# Installs GRBench into the current Python environment.
#   bash scripts/install.sh        CPU: pins torch==2.13.0 (requirements/cpu-constraints.txt)
#   bash scripts/install.sh gpu    GPU: keeps the torch you installed for your CUDA version
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=()
if [ "${1:-cpu}" = "cpu" ]; then constraints=(-c requirements/cpu-constraints.txt); fi
python -m pip install "${constraints[@]}" -e ".[test]"
python -m pip install --no-deps -r requirements/nodeps.txt
