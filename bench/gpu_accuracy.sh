#!/usr/bin/env bash
# Accuracy on a GPU in one device call: converts the full-size stand-in, then trains the default recipe
# for several seeds of the default arch and one of the dilated arch (python -m bench.seeds), and
# writes the seed reports (mean and spread) to $OUT (or bench/results), named after the device.
# Needs only torch and numpy (the gpu loader); ~1 minute per 30-epoch run on an H100.
#
#   SEEDS="0 1 2" bash bench/gpu_accuracy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
SEEDS=${SEEDS:-0 1 2}
mkdir -p "$OUT"

archive=data/cifar10-jpeg.tar.gz
[ -f "$archive" ] || archive=../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz
[ -f data/cifar10/meta.json ] || $PY -m pipeline.convert --source "$archive" --out data/cifar10

# shellcheck disable=SC2086
$PY -m bench.seeds --seeds $SEEDS --arch c1c2c3c4 --data-dir data/cifar10 --runs-dir runs/seeds --out "$OUT" \
    2>&1 | tr '\r' '\n' | grep -v "batch/s" | tee "$OUT/seeds-c1c2c3c4.log" || true
$PY -m bench.seeds --seeds 0 --arch dilated --data-dir data/cifar10 --runs-dir runs/seeds --out "$OUT" \
    2>&1 | tr '\r' '\n' | grep -v "batch/s" | tee "$OUT/seeds-dilated.log" || true
# each run's metrics, and its checkpoint (to release with python -m model.release)
for d in runs/seeds/*/; do
    cp "$d/metrics.json" "$OUT/metrics-$(basename "$d").json" 2>/dev/null || true
    cp "$d/checkpoint.pt" "$OUT/checkpoint-$(basename "$d").pt" 2>/dev/null || true
done
ls -la "$OUT"
