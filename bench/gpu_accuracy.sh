#!/usr/bin/env bash
# Accuracy on a GPU in one device call: converts the full-size stand-in, then trains the default recipe
# for several seeds of the default arch and one of the dilated arch (python -m bench.seeds), and
# writes the seed reports (mean and spread) to $OUT (or bench/results), named after the device.
# The gpu loader needs only torch and numpy; train.py also writes a progress bar, a PNG and TensorBoard
# scalars (tqdm, matplotlib, tensorboard): carry wheels/small from bench/prepare_gpu_wheels.sh.
#
#   SEEDS="0 1 2" bash bench/gpu_accuracy.sh       (EPOCHS=1 DATA=data/mini for a quick check of the script)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
SEEDS=${SEEDS:-0 1 2}
EPOCHS=${EPOCHS:-30}
DATA=${DATA:-data/cifar10}
DEPS=${DEPS:-/tmp/cifarflow-deps}
mkdir -p "$OUT" "$DEPS"

if ls wheels/small/*.whl >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-deps --target "$DEPS" wheels/small/*.whl
fi
export PYTHONPATH="$DEPS:$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY - <<'PYEOF'
import importlib.util, sys
missing = [m for m in ("tqdm", "matplotlib", "tensorboard") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"error: {', '.join(missing)} missing: run bench/prepare_gpu_wheels.sh here and carry wheels/small.")
PYEOF

archive=data/cifar10-jpeg.tar.gz
[ -f "$archive" ] || archive=../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz
[ -f "$DATA/meta.json" ] || $PY -m pipeline.convert --source "$archive" --out "$DATA"

# shellcheck disable=SC2086
$PY -m bench.seeds --seeds $SEEDS --arch c1c2c3c4 --epochs "$EPOCHS" --data-dir "$DATA" --runs-dir runs/seeds --out "$OUT" \
    2>&1 | tr '\r' '\n' | grep -v "batch/s" | tee "$OUT/seeds-c1c2c3c4.log" || true
$PY -m bench.seeds --seeds 0 --arch dilated --epochs "$EPOCHS" --data-dir "$DATA" --runs-dir runs/seeds --out "$OUT" \
    2>&1 | tr '\r' '\n' | grep -v "batch/s" | tee "$OUT/seeds-dilated.log" || true
# each run's metrics, and its checkpoint (to release with python -m model.release)
for d in runs/seeds/*/; do
    cp "$d/metrics.json" "$OUT/metrics-$(basename "$d").json" 2>/dev/null || true
    cp "$d/checkpoint.pt" "$OUT/checkpoint-$(basename "$d").pt" 2>/dev/null || true
done
ls -la "$OUT"
