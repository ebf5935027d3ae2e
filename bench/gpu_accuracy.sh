#!/usr/bin/env bash
# The accuracy study on a GPU in one device call: converts the full-size stand-in, then trains, side by side
# (one run of this small net does not fill the card), every seed of every recipe in RECIPES (python -m
# bench.seeds --jobs, one report per recipe); while they train it runs the CUDA tests and the parity check of
# the gpu engine; if time is left once they finish, the loader benchmark of the gpu and torch engines.
# Everything goes into archives in $OUT (a device call returns at most 8 files): gpu-accuracy.tgz (seed
# reports, metrics, configs, plots, logs, test and parity output, benchmark) and checkpoints-<recipe>.tgz
# (each run's checkpoint, for python -m model.release).
#
#   BUDGET=560 bash bench/gpu_accuracy.sh      stop the runs after 560 s and pack what finished (0: no limit)
#   RECIPES='ls0|c1c2c3c4|0 1 2|label_smoothing = 0' bash bench/gpu_accuracy.sh     other recipes: one per
#       line, name|arch|seeds|recipe keys (TOML lines, separated by ';', laid over recipes/default.toml), written
#       to WORK/recipes/<name>.toml, whose name the runs and the report carry. On an H200, 8 runs side by side
#       took 14-19 s per epoch each (30 epochs in 7-10 minutes); resumed runs carry on where they stopped.
#   PYTHON=.venv/bin/python EPOCHS=1 DATA=data/mini RECIPES='default|c1c2c3c4|0 1|' bash bench/gpu_accuracy.sh
#       (a check on a CPU; python3 from PATH is the device machine's, which has torch)
#   RESUME='gpu/gpu-accuracy.tgz gpu/checkpoints-default-c1c2c3c4-e30.tgz' BUDGET=560 bash bench/gpu_accuracy.sh
#       goes on with the runs a budget stopped in an earlier call, even one made earlier (a fresh
#       machine): save that call's archives here in a git-ignored folder (gpu/ above), carry it, give the same
#       RECIPES (and WORK); unpacked first, the runs resume from their last epoch's checkpoint
#   CHECKS=0 ...   no CUDA tests or parity check beside the runs (the gpu engine's tests and parity run only where
#       albumentations was carried; the --cuda-graph tests on any GPU)
#   MPS=1 RECIPES_NO_MPS='...' ...   runs the training under CUDA MPS (one shared context, so the kernels of the
#       side-by-side runs overlap instead of taking turns: 8 runs took 14.1 s per epoch each without it on an
#       H200, 8.3-10.7 s under it on an H100). If the MPS daemon cannot start or a CUDA job under it fails, it
#       is stopped and the study goes on without it, with RECIPES_NO_MPS in place of RECIPES if set
#
# The gpu loader and train.py need only what the GPU machine has (torch, numpy, tqdm, matplotlib,
# tensorboard); the tests, the parity check and the torch engine need albumentations: carry wheels/small
# from bench/prepare_gpu_wheels.sh, and data/cifar10-jpeg.tar.gz (and data/shared, a copy of cifar10-mini,
# for the --cuda-graph test's learning check: mkdir -p data/shared/data && cp -r ../shared/data/cifar10-mini
# data/shared/data/).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/results}
EPOCHS=${EPOCHS:-30}
RECIPES=${RECIPES:-"default|c1c2c3c4|0 1 2 3|
ema|c1c2c3c4|0 1 2|ema = 0.999
dilated|dilated|0|"}
DATA=${DATA:-data/cifar10}
BUDGET=${BUDGET:-0}
RESUME=${RESUME:-}
CHECKS=${CHECKS:-1}
MPS=${MPS:-0}
RECIPES_NO_MPS=${RECIPES_NO_MPS:-}
DEPS=${DEPS:-/tmp/cifarflow-deps}
WORK=${WORK:-runs/gpu-study}          # everything that goes into the archive
RESERVE=25                            # seconds kept for packing
mkdir -p "$OUT" "$DEPS" "$WORK"
# shellcheck source=bench/gpu_common.sh
source bench/gpu_common.sh
start=$SECONDS
left() { if [ "$BUDGET" -gt 0 ]; then echo $(( BUDGET - RESERVE - (SECONDS - start) )); else echo 999999; fi; }
step() { echo; echo "=== $* ($(( SECONDS - start )) s) ==="; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1

step "packages and device"
install_wheels "$DEPS"
$PY - <<'PYEOF' | tee "$WORK/device.txt"
import importlib.util, platform, torch, cv2, numpy
print("python", platform.python_version(), "torch", torch.__version__, "numpy", numpy.__version__,
      "cv2", cv2.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for m in ("albumentations", "tqdm", "matplotlib", "tensorboard"):
    print(m, "ok" if importlib.util.find_spec(m) else "missing")
PYEOF
HAVE_ALBU=0
$PY -c "import albumentations" 2>/dev/null && HAVE_ALBU=1
DEVICE=cpu
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && DEVICE=cuda

[ "$DEVICE" = cuda ] || MPS=0
if [ "$MPS" = 1 ]; then
    step "CUDA MPS"
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps CUDA_MPS_LOG_DIRECTORY=/tmp/nvidia-mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    MPSCTL=$(command -v nvidia-cuda-mps-control || ls /usr/local/nvidia/bin/nvidia-cuda-mps-control 2>/dev/null)
    if [ -n "$MPSCTL" ] && "$MPSCTL" -d && timeout 60 $PY -c "import torch; x = torch.ones(1 << 20, device='cuda'); \
            assert float(x.sum()) == 1 << 20; print('a CUDA job under MPS ran')"; then
        echo "mps: on" | tee -a "$WORK/device.txt"
    else
        [ -n "$MPSCTL" ] && echo quit | "$MPSCTL" 2>/dev/null; MPS=0
        echo "mps: could not start, the runs take turns on the card" | tee -a "$WORK/device.txt"
        [ -n "$RECIPES_NO_MPS" ] && RECIPES=$RECIPES_NO_MPS && echo "recipes without MPS: $RECIPES"
    fi
fi

step "data"
convert_data "$DATA" || exit 2

if [ -n "$RESUME" ]; then
    step "the runs of an earlier call: $RESUME"
    for a in $RESUME; do     # their members are $WORK/... relative to the project root, as packed below
        tar xzf "$a" || { echo "error: could not unpack $a (carry the archives an earlier call returned)"; exit 2; }
    done
    ls -d "$WORK"/runs/*/ 2>/dev/null | while read -r r; do
        echo "$(basename "$r"): $([ -f "$r/checkpoint.pt" ] && echo checkpoint || echo "no checkpoint")"
    done
fi

step "training, side by side"
# shellcheck disable=SC2086
group() {   # name, arch, seeds, recipe keys ('key = value; key = value')
    local name=$1 arch=$2 seeds=$3 keys=$4
    local n; n=$(echo $seeds | wc -w)
    mkdir -p "$WORK/recipes"
    echo "$keys" | tr ';' '\n' | sed 's/^ *//' > "$WORK/recipes/$name.toml"
    # a process group of its own (setsid), so that the budget stops this group's train.py and no other
    setsid $PY -m bench.seeds --seeds $seeds --jobs "$n" --arch "$arch" --epochs "$EPOCHS" --data-dir "$DATA" \
        --runs-dir "$WORK/runs" --out "$WORK/reports" --config "$WORK/recipes/$name.toml" \
        > "$WORK/seeds-$name.log" 2>&1 &
    echo "$name: pid $! seeds $seeds $keys"
}
pids=(); names=()
while IFS='|' read -r name arch seeds opts; do
    [ -n "$name" ] || continue
    # shellcheck disable=SC2086
    group "$name" "$arch" "$seeds" "$opts"; pids+=($!); names+=("$name")
done <<< "$RECIPES"
train_start=$SECONDS

projected() {   # seconds the slowest running run still needs: its epochs left times its last epoch's time
    $PY - "$WORK" <<'PYEOF'
import pathlib, re, sys, time
need = 0.0
work = pathlib.Path(sys.argv[1])     # a run's log: runs/<run>.log, or seeds-<recipe>.log for a one-seed recipe
for log in [*work.glob("runs/*.log"), *work.glob("seeds-*.log")]:
    if time.time() - log.stat().st_mtime > 30:      # a stopped or finished run (a running one's bar moves)
        continue
    lines = [l for l in log.read_text(errors="replace").replace("\r", "\n").splitlines() if "train loss" in l]
    m = re.search(r"epoch\s+(\d+)/(\d+)\s.*?([\d.]+)s\s+[\d,]+ img/s", lines[-1]) if lines else None
    if m:
        need = max(need, (int(m[2]) - int(m[1])) * float(m[3]))
print(int(need))
PYEOF
}

if [ "$CHECKS" = 1 ] && [ "$DEVICE" = cuda ]; then
    step "CUDA tests of train.py --cuda-graph (beside the training; they need no albumentations)"
    use_carried_mini        # its learning check needs real pictures
    timeout 150 $PY -m pytest -q -rs -p no:cacheprovider tests/test_graph_step.py -k cuda 2>&1 \
        | tee "$WORK/pytest-graph-step.txt" | tail -n 5
fi
if [ "$HAVE_ALBU" = 1 ] && [ "$CHECKS" = 1 ]; then
    step "tests and parity of the gpu engine on $DEVICE (beside the training)"
    timeout 150 $PY -m pytest -q -rs -p no:cacheprovider tests/test_gpu_engine.py -k "$DEVICE" 2>&1 \
        | tee "$WORK/pytest-$DEVICE.txt" | tail -n 5
    timeout 120 $PY -m pipeline.parity --loader gpu --device "$DEVICE" --data-dir "$DATA" --out "$WORK/parity" \
        > "$WORK/parity-gpu-$DEVICE.txt" 2>&1; tail -n 8 "$WORK/parity-gpu-$DEVICE.txt"
fi

step "waiting for the runs"
# RECIPES are in order of priority: while the slowest run's projected finish lies past the budget, the last
# recipe still training is stopped (its runs keep their checkpoints), so that the others finish sooner; after
# a stop the next check waits 120 s, for epochs timed without the stopped runs
checked=$SECONDS; wait_s=45
while :; do
    running=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
    [ "$running" = 0 ] && break
    if [ "$BUDGET" -gt 0 ] && [ $(( SECONDS - train_start )) -ge 60 ] && [ $(( SECONDS - checked )) -ge "$wait_s" ]; then
        checked=$SECONDS; wait_s=45
        alive=(); for i in "${!pids[@]}"; do kill -0 "${pids[$i]}" 2>/dev/null && alive+=("$i"); done
        need=$(projected)
        if [ "${#alive[@]}" -gt 1 ] && [ "${need:-0}" -gt "$(left)" ]; then
            last=${alive[-1]}
            echo "projected: $need s more for the slowest run, $(left) s left: stopping recipe ${names[$last]}"
            kill -TERM -- "-${pids[$last]}" 2>/dev/null; wait_s=120
        fi
    fi
    if [ "$(left)" -le 0 ]; then
        echo "budget spent: stopping the runs (each keeps its last epoch's checkpoint)"
        for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null; done
        sleep 3
        break
    fi
    sleep 5
done
for f in "$WORK"/runs/*.log "$WORK"/seeds-*.log; do   # each log's last epoch line
    [ -f "$f" ] && echo "$(basename "$f" .log): $(tr '\r' '\n' < "$f" | grep -a "train loss" | tail -n 1)"
done
ls "$WORK"/reports/*.md 2>/dev/null | while read -r f; do echo "== $f"; cat "$f"; done
[ "$MPS" = 1 ] && { echo quit | "$MPSCTL"; echo "mps: stopped"; }

if [ "$(left)" -gt 120 ]; then
    step "loader benchmark (gpu, torch) in the time left"
    loaders=gpu; [ "$HAVE_ALBU" = 1 ] && [ "$(left)" -gt 300 ] && loaders=gpu,torch   # torch: CPU workers, slower
    timeout "$(left)" $PY -m bench --loaders "$loaders" --data-dir "$DATA" --out "$WORK/bench" --profile \
        > "$WORK/bench.log" 2>&1; echo "bench exit $?"; tail -n 30 "$WORK/bench.log"
fi

step "packing"
tar czf "$OUT/gpu-accuracy.tgz" --exclude="*.pt" --exclude="tb" "$WORK"
for g in $(ls -d "$WORK"/runs/*/ 2>/dev/null | sed 's|-seed[0-9]*/$||' | sort -u); do   # one archive per recipe
    tar czf "$OUT/checkpoints-$(basename "$g").tgz" "$g"-seed*/checkpoint.pt
done
ls -la "$OUT"
