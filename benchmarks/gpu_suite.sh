#!/usr/bin/env bash
# Every measurement of docs/gpu_measurements.md, in one call, in about 5 minutes on an H100.
#
#   bash benchmarks/gpu_suite.sh [--out DIR] [--wheels DIR] [--budget S] [--only STEP,...]   # on the GPU
#   bash benchmarks/gpu_suite.sh --device cpu --tiny --no-limits --out /tmp/suite   # a check of the script
#
# Tables (markdown, one file per step), env.txt, summary.md and suite.log (every step's output) go to
# --out (default: $OUT if set, else output/gpu_suite). --wheels DIR
# installs the wheels that benchmarks/gpu_wheels.sh collected (Detectron2 and its dependencies) into a
# private folder first, for a machine that has torch but no package index. Each step has its own time
# limit, cut to what is left of --budget (default 450 s; a step with under 20 s left is skipped), and
# the suite goes on past a failed one; summary.md lists each step's status and seconds. --no-limits
# runs every step to its end (the check in the tests, whose verdict must not depend on the machine's load).
#   1 det_step          bench_det_step.py: R101-FPN teacher -> R18-FPN student at 800 x 1067, 2 images,
#                       512 ROIs/image; teacher fp32/bf16 x student with/without Detectron2's AMP
#   2 losses            bench_losses.py: the four sizes, every method
#   3 cls_throughput    bench_cls_throughput.py: CIFAR-100 with its data pipeline, ImageNet step
#   4 losses_compiled   bench_losses.py --compile at the detection sizes
#   5 cuda_tests        pytest tests/test_cuda_paths.py
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=cuda TINY=0 WHEELS="" BUDGET=450 LIMITS=1 ONLY="" OUTDIR=${OUT:-$REPO/output/gpu_suite}
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUTDIR=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --no-limits) LIMITS=0; shift ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "gpu_suite.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
PY=${PY:-$(command -v python3)}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"

if [ -n "$WHEELS" ]; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl \
    || { echo "gpu_suite.sh: installing the wheels of $WHEELS failed" >&2; exit 1; }
  export PYTHONPATH="$PYTHONPATH:$site"
fi

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
  "$PY" -c 'import sys, torch, detectron2; print("python", sys.version.split()[0], "| torch", torch.__version__,
"| cuda", torch.version.cuda, "| detectron2", detectron2.__version__, "from", detectron2.__file__)'
} > "$OUTDIR/env.txt" 2>&1 || { cat "$OUTDIR/env.txt"; echo "gpu_suite.sh: torch or Detectron2 does not import" >&2; exit 1; }
cat "$OUTDIR/env.txt"

if [ "$TINY" = 1 ]; then
  DET=(--size 96 --width 128 --batch 1 --repeats 1 --warmup 1 --student-amp off)
  LOSSES=(--sizes 64x100 256x81 --repeats 2 --warmup 1)
  CLS=(--tiny --iters 3 --imagenet-iters 2)
  COMPILED=(--sizes 64x81 --repeats 2 --warmup 1)
else
  DET=(--size 800 --width 1067 --batch 2 --repeats 20 --warmup 3 --student-amp off on)
  LOSSES=(--repeats 50 --warmup 5)
  CLS=(--iters 100)
  COMPILED=(--sizes 1024x81 8192x81 --repeats 50 --warmup 5)
fi

printf '| step | status | seconds |\n|---|---|---:|\n' > "$OUTDIR/summary.md"
: > "$OUTDIR/suite.log"
step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS status left=$((BUDGET - SECONDS)) limited=()
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
  if [ "$LIMITS" = 1 ]; then
    if [ "$left" -lt 20 ]; then
      printf '| %s | skipped (budget) | 0 |\n' "$name" >> "$OUTDIR/summary.md"; return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    limited=(timeout -k 10 "$limit")
  fi
  echo "== $name${limited:+ (limit ${limit}s)}: $*"
  echo "== $name: $*" >> "$OUTDIR/suite.log"
  "${limited[@]}" "$@" 2>&1 | tee -a "$OUTDIR/suite.log"
  status=${PIPESTATUS[0]}
  case $status in 0) status=ok ;; 124|137) status="timed out" ;; *) status="failed ($status)" ;; esac
  printf '| %s | %s | %d |\n' "$name" "$status" $((SECONDS - start)) >> "$OUTDIR/summary.md"
}
step det_step 150 "$PY" benchmarks/bench_det_step.py --pair R101_R18 --families faster --device "$DEVICE" \
  --teacher-dtypes float32 bfloat16 "${DET[@]}" --out "$OUTDIR/det_step.md"
step losses 60 "$PY" benchmarks/bench_losses.py --device "$DEVICE" "${LOSSES[@]}" --out "$OUTDIR/losses.md"
step cls_throughput 150 "$PY" benchmarks/bench_cls_throughput.py --device "$DEVICE" "${CLS[@]}" \
  --out "$OUTDIR/cls_throughput.md"
step losses_compiled 150 "$PY" benchmarks/bench_losses.py --device "$DEVICE" --compile "${COMPILED[@]}" \
  --out "$OUTDIR/losses_compiled.md"
step cuda_tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_paths.py
cat "$OUTDIR/summary.md"
