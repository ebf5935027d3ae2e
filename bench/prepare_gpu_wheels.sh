#!/usr/bin/env bash
# Run HERE (a machine with the package registries) before the device calls: downloads the wheels the
# GPU machine lacks into wheels/ (git-ignored), and splits the DALI wheel into parts of under 60 MB so
# that each device call can carry one. The GPU machine has torch, torchvision, triton, numpy, opencv,
# pytest; it has no network.
#
#   bash bench/prepare_gpu_wheels.sh        then, per DEVELOPERS.md, device calls carrying
#   wheels/small (1 call), wheels/dali/part-aa, -ab, ... (one each, in quick succession),
#   and data/cifar10-jpeg.tar.gz; the last call runs bench/gpu_report.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/python -m pip}
rm -rf wheels && mkdir -p wheels/small wheels/dali
# the GPU machine's python is 3.12 and already has scipy, matplotlib, tqdm, tensorboard, pyyaml, pillow, opencv
# (/work/.library/device/KINDS.md): only albumentations and its own dependencies travel
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d wheels/small \
    albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 \
    annotated-types==0.8.0 simsimd==6.5.16 stringzilla==5.3.2
$PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d wheels/dali nvidia-dali-cuda120==2.4.0
whl=$(ls wheels/dali/*.whl)
split -b 60M "$whl" "wheels/dali/$(basename "$whl").part-"
rm "$whl"
mkdir -p data && cp ../shared/data/cifar10-jpeg/cifar10-jpeg.tar.gz data/ 2>/dev/null || true
du -sh wheels/small wheels/dali/* data/cifar10-jpeg.tar.gz 2>/dev/null
