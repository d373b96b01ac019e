#!/usr/bin/env bash
# Collect, on a machine with pip access, the wheels that benchmarks/gpu_suite.sh needs on a GPU node that
# has torch and torchvision but no package index: the default pure-Python Detectron2 and its
# dependencies, at the versions of requirements/lock.txt.
#
#   bash benchmarks/gpu_wheels.sh DIR [PYTHON_VERSION]      # PYTHON_VERSION of the GPU node, default 3.12
#
# Compiled packages are downloaded for that Python on manylinux x86-64; the sdist-only ones (fvcore,
# antlr4) are built here into pure-Python wheels. Needs `make setup` first (its Detectron2 wheel cache).
set -euo pipefail
DIR=$(realpath -m "${1:?usage: bash benchmarks/gpu_wheels.sh DIR [PYTHON_VERSION]}")
PYVER=${2:-3.12}
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOCK=requirements/lock.txt
# What Detectron2 0.6, fvcore and iopath import beyond what a CUDA PyTorch image usually has (numpy,
# Pillow, PyYAML, tqdm, tabulate, portalocker, cloudpickle, matplotlib, pytest).
BINARY=(pycocotools iopath yacs omegaconf hydra-core termcolor)
SOURCE_ONLY=(fvcore antlr4-python3-runtime)

# This machine's pip config may name index folders that do not exist; drop that warning only.
quiet_pip() { "$PY" -m pip "$@" 2> >(grep -v '^WARNING: Location ' >&2); }
pinned() { grep -i "^$1==" "$LOCK" || { echo "gpu_wheels: $1 is not pinned in $LOCK" >&2; exit 2; }; }

mkdir -p "$DIR"
rm -f "$DIR"/*.whl
"$PY" tools/install_detectron2.py --wheel-dir "$DIR"
specs=(); for name in "${BINARY[@]}"; do specs+=("$(pinned "$name")"); done
platforms=(); for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$p"); done
quiet_pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${platforms[@]}" -d "$DIR" "${specs[@]}"
specs=(); for name in "${SOURCE_ONLY[@]}"; do specs+=("$(pinned "$name")"); done
quiet_pip wheel -q --no-deps -w "$DIR" "${specs[@]}"
echo "gpu_wheels: $(ls "$DIR" | wc -l) wheels in $DIR ($(du -sh "$DIR" | cut -f1)):"
ls "$DIR"
