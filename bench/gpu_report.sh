#!/usr/bin/env bash
# The whole GPU report in one device call (see DEVELOPERS.md and bench/prepare_gpu_wheels.sh):
# installs the carried wheels into a private folder, converts the data, runs the parity checks and the
# CUDA tests on the GPU, then the full benchmark with profiler traces; results go to $OUT (or
# bench/results), named after the device.
#
#   bash bench/gpu_report.sh            (on the GPU machine; also runs on a CPU machine, with --quick)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
DEPS=${DEPS:-/tmp/cifarflow-deps}
mkdir -p "$OUT" "$DEPS"
# shellcheck source=bench/gpu_common.sh
source bench/gpu_common.sh

step() { echo; echo "=== $* ==="; }

step "packages"
install_wheels "$DEPS"
$PY - <<'PYEOF'
import torch, importlib.util
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("albumentations", "nvidia.dali", "ffcv", "scipy", "matplotlib"):
    print(m, "ok" if importlib.util.find_spec(m) else "missing")
PYEOF

step "data"
convert_data data/cifar10
mini=../shared/data/cifar10-mini/cifar-10-batches-py
if [ -d "$mini" ]; then
    convert_data data/mini "$mini"
    PARITY_DATA=data/mini
else
    PARITY_DATA=data/cifar10
fi

DEVICE=cpu; QUICK=--quick
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then DEVICE=cuda; QUICK=; fi

step "parity on $DEVICE"
for engine in gpu dali ffcv; do
    $PY -m pipeline.parity --loader "$engine" --device "$DEVICE" --data-dir "$PARITY_DATA" --out "$OUT" \
        2>&1 | tee "$OUT/parity-$engine-$DEVICE.txt" || true
done

step "CUDA tests"
CIFARFLOW_SHARED=${CIFARFLOW_SHARED:-../shared} $PY -m pytest -q -rs tests/test_gpu_engine.py tests/test_dali_engine.py tests/test_graph_step.py \
    -k "cuda" 2>&1 | tee "$OUT/pytest-cuda.txt" || true

step "benchmark"
$PY -m bench --loaders all --data-dir data/cifar10 --out "$OUT" --profile $QUICK
ls -la "$OUT"
