#!/usr/bin/env bash
# The GPU report in one device call (at most 8 minutes): DALI on the GPU first (pixel parity by replay and native
# statistical parity on the GPU's own operators, the CUDA tests of the dali and gpu engines, of --cuda-graph, of
# --model and of a user's composed policies on every GPU engine), then one benchmark of the gpu, dali, kornia (and
# ffcv, where carried) engines beside the albumentations DataLoader, at train.py's batch of 128: loader-only at 128
# and 512 (the gpu engine's chunks and DALI's own batch beside their per-batch paths), end-to-end eager and with
# --cuda-graph against the model-only bound and its CUDA graph, peak device memory, profiler top operators. One
# report (markdown, JSON, charts) named after the device.
#
# The device calls, one right after the other (the machine keeps what a call carried only while it stays warm,
# 30 s after a call ends; every call also carries the working tree, about 6 MB). bench/prepare_gpu_wheels.sh makes
# what they carry:
#   1. carry wheels/small wheels/ffcv data/cifar10-jpeg.tar.gz (53 MB)                 command: true
#   2. carry wheels/llvmlite (60 MB)                                                   command: true
#   3. carry wheels/dali/nvidia_dali_cuda130-2.4.0-py3-none-manylinux_2_28_x86_64.whl.part-aa (50 MB)   true
#   4. the same with .part-ab                                                          command: true
#   5. the same with .part-ac                                                          command: true
#   6. carry .part-ad (40 MB) and wheels/dali/SHA256                  command: bash bench/gpu_report.sh
# If the machine went cold between calls, the joined wheel fails its checksum and the script says so before
# anything runs: carry the parts again. Without wheels/dali (or wheels/ffcv and wheels/llvmlite) the script
# still runs, without those rows; an engine that cannot import there is a row saying why.
#
# Checked on this project's CPU (2 cores, no GPU, Python 3.11): the wheels prepared for it
# (PY_VERSION=3.11 PYTHON_BIN=python3.11 WHEELS=/tmp/wheels-311 bash bench/prepare_gpu_wheels.sh), then
#   PYTHON=.venv/bin/python WHEELS=/tmp/wheels-311 OUT=/tmp/gpu-report bash bench/gpu_report.sh
# installs them and converts the data (15 s), falls back to DALI's CPU operators and bench --quick, and wrote its
# report in 7.5 minutes (parity 25 s, tests 5 s, benchmark 6.7 minutes with ffcv: this CPU runs the albumentations
# reference and the model far slower than a GPU machine's 16 cores and GPU). Checked again with the policy as a
# list of transforms, on .venv's own packages (WHEELS pointing at no folder): 8.4 minutes (converting cifar10-mini
# 31 s, parity 28 s, collecting the CUDA tests 6 s, benchmark 7.3 minutes), every parity check passed. On a GPU the
# CUDA tests add the composed policies' parity on gpu, dali and ffcv (14 cases; the gpu engine's take 8 to 12 s
# each on this CPU).
#
#   OUT=DIR      where the report goes (default bench/results)
#   PARITY_DATA  converted data for the parity checks (default: cifar10-mini when ../shared is there, else the
#                full-size data converted from the carried archive)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
DEPS=${DEPS:-/tmp/cifarflow-deps}
mkdir -p "$OUT" "$DEPS"
# shellcheck source=bench/gpu_common.sh
source bench/gpu_common.sh
start=$SECONDS
step() { echo; echo "=== $* ($(( SECONDS - start )) s) ==="; }

step "packages"
install_wheels "$DEPS" || exit 2
$PY - <<'PYEOF'
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("albumentations", "nvidia.dali", "kornia", "ffcv", "scipy", "matplotlib"):
    print(m, "ok" if importlib.util.find_spec(m) else "missing")
PYEOF

step "data"
convert_data data/cifar10 || exit 2
if [ -z "${PARITY_DATA:-}" ]; then
    mini=../shared/data/cifar10-mini/cifar-10-batches-py
    if [ -d "$mini" ]; then convert_data data/mini "$mini" && PARITY_DATA=data/mini; else PARITY_DATA=data/cifar10; fi
fi
use_carried_mini

DEVICE=cpu; QUICK=--quick
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then DEVICE=cuda; QUICK=; fi
HAVE_DALI=0
$PY -c "import nvidia.dali" 2>/dev/null && HAVE_DALI=1

step "parity on $DEVICE ($PARITY_DATA)"
for engine in dali gpu; do
    [ "$engine" = dali ] && [ "$HAVE_DALI" = 0 ] && { echo "dali: not installed (carry wheels/dali)"; continue; }
    $PY -m pipeline.parity --loader "$engine" --device "$DEVICE" --data-dir "$PARITY_DATA" --out "$OUT" \
        --against-cpu 2>&1 | tee "$OUT/parity-$engine-$DEVICE.txt" || true
done

step "CUDA tests"
$PY -m pytest -q -rs -m "slow or not slow" tests/test_dali_engine.py tests/test_gpu_engine.py tests/test_graph_step.py \
    tests/test_custom_model.py tests/test_policy_parity.py \
    -k "cuda" 2>&1 | tee "$OUT/pytest-cuda-$DEVICE.txt" || true

step "benchmark"
loaders=gpu,kornia
[ "$HAVE_DALI" = 1 ] && loaders=$loaders,dali
$PY -c "import ffcv" 2>/dev/null && loaders=$loaders,ffcv
$PY -m bench --loaders "$loaders" --data-dir data/cifar10 --batch-size 128 --scaling 128,512 --repeats 2 \
    --profile --out "$OUT" $QUICK
step "done"
ls -la "$OUT"
