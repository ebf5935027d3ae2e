# Shared by bench/gpu_report.sh, bench/gpu_accuracy.sh and bench/gpu_graph.sh (sourced, not run): installing the carried wheels
# and converting the carried data archive, the two steps every device call starts with.
#
#   install_wheels DEPS     pip-installs (offline, no dependency resolution) wheels/{small,ffcv,llvmlite}/*.whl
#                           and the DALI wheel joined from wheels/dali/*.part-* and checked against
#                           wheels/dali/SHA256
#                           (bench/prepare_gpu_wheels.sh makes both; WHEELS=DIR for another folder) into the
#                           folder DEPS, and puts DEPS and the project on PYTHONPATH
#   use_carried_mini        points the tests at data/shared (CIFARFLOW_SHARED) where a copy of cifar10-mini was
#                           carried there, so the tests that need real pictures run on them
#   convert_data OUT [SRC]  converts SRC (default: data/cifar10-jpeg.tar.gz, carried, or ../shared's copy) into
#                           OUT, unless OUT already holds converted data (a rerun on a warm machine)
# Both use $PY (python3 unless PYTHON is set).
PY=${PY:-${PYTHON:-python3}}

install_wheels() {
    local deps=$1 wheels=${WHEELS:-wheels}
    mkdir -p "$deps"
    if ls "$wheels"/dali/*.part-* >/dev/null 2>&1; then
        local part whl
        part=$(ls "$wheels"/dali/*.part-* | head -n1)
        whl="/tmp/$(basename "${part%.part-*}")"
        cat "$wheels"/dali/*.part-* > "$whl"
        local sums; sums="$(cd "$wheels/dali" && pwd)/SHA256"
        if [ -f "$sums" ] && ! (cd /tmp && sha256sum --quiet -c "$sums"); then
            echo "error: the DALI wheel joined from $wheels/dali/*.part-* is not the one prepared (a part is" \
                 "missing or was cut short): carry every part, then run again"
            return 1
        fi
        $PY -m pip install --quiet --no-index --no-deps --no-compile --target "$deps" "$whl" || return 1
    fi
    local group
    for group in small ffcv llvmlite; do
        if ls "$wheels/$group"/*.whl >/dev/null 2>&1; then
            $PY -m pip install --quiet --no-index --no-deps --no-compile --target "$deps" "$wheels/$group"/*.whl \
                || return 1
        fi
    done
    export PYTHONPATH="$deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
}

use_carried_mini() {
    if [ -d data/shared/data/cifar10-mini ]; then export CIFARFLOW_SHARED=$PWD/data/shared; fi
}

convert_data() {
    local out=$1 archive=${2:-data/cifar10-jpeg.tar.gz}
    [ -e "$archive" ] || [ -n "${2:-}" ] || archive=../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz
    if [ ! -f "$out/meta.json" ]; then
        $PY -m pipeline.convert --source "$archive" --out "$out" 2>&1 | tr '\r' '\n' | grep -v "it/s" | tail -n 3 || true
    fi
    [ -f "$out/meta.json" ] && return 0
    echo "error: no converted data in $out (from $archive; carry data/cifar10-jpeg.tar.gz)"
    return 2
}
