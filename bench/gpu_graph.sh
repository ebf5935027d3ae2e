#!/usr/bin/env bash
# train.py --cuda-graph on a GPU in one short device call: its CUDA tests (on cifar10-mini's real pictures where a
# copy is carried), then end-to-end training of the default recipe with and without the option, each run alone
# on the card, EPOCHS epochs from the same seed, at batch 128 and then at batch 64 (where launches weigh twice as
# much); a markdown summary (time per epoch of each, the speed-up, the test accuracy reached) goes to $OUT, and
# every run's metrics.json and log and the test output into $OUT/gpu-graph.tgz. Epoch 1 holds the warm-up and
# the capture, so the time per epoch is the median of the later epochs.
#
#   bash bench/gpu_graph.sh        carry data/cifar10-jpeg.tar.gz and data/shared, a copy of the mini set:
#       mkdir -p data/shared/data && cp -r ../shared/data/cifar10-mini data/shared/data/
#   BUDGET=240 ...                 skips a pair of runs that would start after 240 s (0: no limit)
#   PYTHON=.venv/bin/python EPOCHS=1 DATA=data/mini bash bench/gpu_graph.sh      on a CPU: the CUDA tests skip
#       and train.py refuses --cuda-graph with its sentence, which the summary shows
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu-graph}
EPOCHS=${EPOCHS:-3}
DATA=${DATA:-data/cifar10}
BUDGET=${BUDGET:-0}
WORK=${WORK:-runs/gpu-graph-work}
mkdir -p "$OUT" "$WORK"
# shellcheck source=bench/gpu_common.sh
source bench/gpu_common.sh
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
step() { echo; echo "=== $* ($(( SECONDS - start )) s) ==="; }

step "device"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"
use_carried_mini

step "data"
convert_data "$DATA" || exit 2

step "CUDA tests of --cuda-graph"
timeout 200 $PY -m pytest -q -rs -p no:cacheprovider tests/test_graph_step.py 2>&1 | tee "$OUT/pytest-graph-step.txt" \
    | tail -n 5

summary=$OUT/graph-timing.md
{
    echo "# train.py with and without --cuda-graph, end to end"
    echo
    echo "$(date -u +%FT%TZ) · $(head -n1 "$OUT/device.txt") · $DATA · $EPOCHS epochs each, seed 0, each run alone"
    echo
    echo "| batch | step | time per epoch (median of epochs 2-$EPOCHS) | img/s | test accuracy after $EPOCHS | note |"
    echo "| --- | --- | --- | --- | --- | --- |"
} > "$summary"
for bs in 128 64; do
    if [ "$BUDGET" -gt 0 ] && [ $(( SECONDS - start )) -gt "$BUDGET" ]; then
        echo "| $bs | both | – | – | – | skipped: past the budget of $BUDGET s |" >> "$summary"; continue
    fi
    lr=$($PY -c "print(0.1 * $bs / 128)")
    for graph in no-cuda-graph cuda-graph; do
        step "batch $bs, --$graph"
        run=$WORK/bs$bs-$graph
        rm -rf "$run"
        timeout 300 $PY train.py --data-dir "$DATA" --epochs "$EPOCHS" --batch-size "$bs" --lr "$lr" --seed 0 \
            "--$graph" --out "$run" > "$WORK/bs$bs-$graph.log" 2>&1
        rc=$?
        tr '\r' '\n' < "$WORK/bs$bs-$graph.log" | grep -a -E "train loss|error|parameters" | tail -n 4
        [ -f "$run/metrics.json" ] && cp "$run/metrics.json" "$OUT/metrics-bs$bs-$graph.json"
        $PY - "$run/metrics.json" "$bs" "$graph" "$rc" "$WORK/bs$bs-$graph.log" >> "$summary" <<'PYEOF'
import json, pathlib, statistics, sys
path, bs, graph, rc, log = sys.argv[1:]
p = pathlib.Path(path)
if not p.is_file():
    tail = [l for l in pathlib.Path(log).read_text(errors="replace").splitlines() if l.strip()][-1:] or ["no output"]
    print(f"| {bs} | --{graph} | – | – | – | failed (exit {rc}): {tail[0][:160]} |")
    sys.exit()
m = json.loads(p.read_text())
later = [e["epoch_time_s"] for e in m[1:]] or [m[0]["epoch_time_s"]]
t = statistics.median(later)
print(f"| {bs} | --{graph} | {t:.2f} s | {statistics.median(e['img_per_s'] for e in (m[1:] or m)):,.0f} | "
      f"{m[-1]['test_acc']:.2%} | epoch 1: {m[0]['epoch_time_s']:.1f} s |")
PYEOF
    done
done
$PY - "$OUT" >> "$summary" <<'PYEOF'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
lines = []
for bs in (128, 64):
    f = {g: out / f"metrics-bs{bs}-{g}.json" for g in ("no-cuda-graph", "cuda-graph")}
    if all(p.is_file() for p in f.values()):
        t = {g: statistics.median(e["epoch_time_s"] for e in (json.loads(p.read_text())[1:] or json.loads(p.read_text())))
             for g, p in f.items()}
        lines.append(f"- batch {bs}: --cuda-graph takes {t['cuda-graph'] / t['no-cuda-graph']:.2f} of the eager "
                     f"epoch time ({t['no-cuda-graph'] / t['cuda-graph']:.2f}x the speed)")
print("\n" + "\n".join(lines or ["- no pair finished: no speed-up to report"]))
PYEOF
cat "$summary"
# a device call returns at most 8 files: the summary apart, everything else in one archive
cp "$WORK"/*.log "$OUT"/ 2>/dev/null
(cd "$OUT" && tar czf gpu-graph.tgz --exclude=gpu-graph.tgz --exclude=graph-timing.md ./* \
    && find . -maxdepth 1 -type f ! -name gpu-graph.tgz ! -name graph-timing.md -delete)
ls "$OUT"
exit 0
