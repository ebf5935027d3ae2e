#!/usr/bin/env bash
# The accuracy study on a GPU in one device call: converts the full-size stand-in, then trains, side by side
# (one run of this small net is bound by kernel launches and leaves the card mostly idle), several seeds of
# the default recipe, several with --ema 0.999, and the dilated arch (python -m bench.seeds --jobs); while
# they train it runs the CUDA tests and the parity check of the gpu engine; if time is left once they finish,
# the loader benchmark of the gpu and torch engines. Everything goes into two archives in $OUT (a device call
# returns at most 8 files): gpu-accuracy.tgz (seed reports, metrics, configs, plots, logs, test and parity
# output, benchmark) and checkpoints-<recipe>.tgz (each run's checkpoint, for python -m model.release).
#
#   BUDGET=480 bash bench/gpu_accuracy.sh      stop the runs after 480 s and pack what finished (0: no limit)
#   EPOCHS=1 DATA=data/mini SEEDS="0 1" EMA_SEEDS=0 DILATED_SEEDS=0 bash bench/gpu_accuracy.sh   (a quick check)
#
# The gpu loader and train.py need only what the GPU machine has (torch, numpy, tqdm, matplotlib,
# tensorboard); the tests, the parity check and the torch engine need albumentations: carry wheels/small
# from bench/prepare_gpu_wheels.sh, and data/cifar10-jpeg.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
EPOCHS=${EPOCHS:-30}
SEEDS=${SEEDS:-0 1 2 3 4}
EMA_SEEDS=${EMA_SEEDS:-0 1 2}
DILATED_SEEDS=${DILATED_SEEDS:-0}
DATA=${DATA:-data/cifar10}
BUDGET=${BUDGET:-0}
DEPS=${DEPS:-/tmp/cifarflow-deps}
WORK=${WORK:-runs/gpu-study}          # everything that goes into the archive
RESERVE=25                            # seconds kept for packing
mkdir -p "$OUT" "$DEPS" "$WORK"
start=$SECONDS
left() { if [ "$BUDGET" -gt 0 ]; then echo $(( BUDGET - RESERVE - (SECONDS - start) )); else echo 999999; fi; }
step() { echo; echo "=== $* ($(( SECONDS - start )) s) ==="; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1

step "packages and device"
if ls wheels/small/*.whl >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-index --no-deps --no-compile --target "$DEPS" wheels/small/*.whl
fi
export PYTHONPATH="$DEPS:$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY - <<'PYEOF' | tee "$WORK/device.txt"
import importlib.util, platform, torch, cv2, numpy
print("python", platform.python_version(), "torch", torch.__version__, "numpy", numpy.__version__, "cv2", cv2.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("albumentations", "tqdm", "matplotlib", "tensorboard"):
    print(m, "ok" if importlib.util.find_spec(m) else "missing")
PYEOF
HAVE_ALBU=0
$PY -c "import albumentations" 2>/dev/null && HAVE_ALBU=1

step "data"
archive=data/cifar10-jpeg.tar.gz
[ -f "$archive" ] || archive=../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz
if [ ! -f "$DATA/meta.json" ]; then
    $PY -m pipeline.convert --source "$archive" --out "$DATA" 2>&1 | tr '\r' '\n' | grep -v "it/s" | tail -n 3
fi
[ -f "$DATA/meta.json" ] || { echo "error: no converted data in $DATA"; exit 2; }

step "training, side by side"
# shellcheck disable=SC2086
group() {   # name, arch, seeds, train.py options...
    local name=$1 arch=$2 seeds=$3; shift 3
    local n; n=$(echo $seeds | wc -w)
    $PY -m bench.seeds --seeds $seeds --jobs "$n" --arch "$arch" --epochs "$EPOCHS" --data-dir "$DATA" \
        --runs-dir "$WORK/runs" --out "$WORK/reports" ${1:+-- "$@"} > "$WORK/seeds-$name.log" 2>&1 &
    echo "$name: pid $! seeds $seeds $*"
}
pids=()
group default c1c2c3c4 "$SEEDS"; pids+=($!)
[ -n "$EMA_SEEDS" ] && { group ema c1c2c3c4 "$EMA_SEEDS" --ema 0.999; pids+=($!); }
[ -n "$DILATED_SEEDS" ] && { group dilated dilated "$DILATED_SEEDS"; pids+=($!); }

if [ "$HAVE_ALBU" = 1 ]; then
    step "CUDA tests and parity of the gpu engine (beside the training)"
    timeout 150 $PY -m pytest -q -rs -p no:cacheprovider tests/test_gpu_engine.py -k cuda 2>&1 | tee "$WORK/pytest-cuda.txt" | tail -n 5
    timeout 120 $PY -m pipeline.parity --loader gpu --device cuda --data-dir "$DATA" --out "$WORK/parity" \
        > "$WORK/parity-gpu-cuda.txt" 2>&1; tail -n 8 "$WORK/parity-gpu-cuda.txt"
fi

step "waiting for the runs"
while :; do
    running=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
    [ "$running" = 0 ] && break
    if [ "$(left)" -le 0 ]; then
        echo "budget spent: stopping the runs (each keeps its last epoch's checkpoint)"
        pkill -TERM -f "bench.seeds" ; pkill -TERM -f "train.py"; sleep 3
        break
    fi
    sleep 5
done
for f in "$WORK"/runs/*.log "$WORK"/seeds-*.log; do   # each log's last epoch line
    [ -f "$f" ] && echo "$(basename "$f" .log): $(tr '\r' '\n' < "$f" | grep -a "train loss" | tail -n 1)"
done
ls "$WORK"/reports/*.md 2>/dev/null | while read -r f; do echo "== $f"; cat "$f"; done

if [ "$(left)" -gt 120 ]; then
    step "loader benchmark (gpu, torch) in the time left"
    loaders=gpu; [ "$HAVE_ALBU" = 1 ] && loaders=gpu,torch
    timeout "$(left)" $PY -m bench --loaders "$loaders" --data-dir "$DATA" --out "$WORK/bench" --profile \
        > "$WORK/bench.log" 2>&1; echo "bench exit $?"; tail -n 30 "$WORK/bench.log"
fi

step "packing"
tar czf "$OUT/gpu-accuracy.tgz" --exclude="*.pt" --exclude="tb" "$WORK"
for g in $(ls -d "$WORK"/runs/*/ 2>/dev/null | sed 's|-seed[0-9]*/$||' | sort -u); do   # one archive per recipe
    tar czf "$OUT/checkpoints-$(basename "$g").tgz" "$g"-seed*/checkpoint.pt
done
ls -la "$OUT"
