#!/usr/bin/env bash
# Checks, here, that the wheels bench/prepare_gpu_wheels.sh made are all DALI and FFCV need on the GPU machine: a
# fresh Python PY_VERSION environment with numpy and OpenCV only (what the GPU machine has of their needs), the
# wheels installed as the device scripts install them (bench/gpu_common.sh: parts joined, checksum, pip
# --no-deps --target), then `import nvidia.dali` and a pipeline of the operators cifarflow's dali engine uses on
# DALI's CPU backend; FFCV's compiled library loaded with the libraries bundled into its wheel, and numba compiling
# a function. (torch is not installed here: the rest of FFCV and DALI's PyTorch plugin are the code the project's
# own environment runs.)
#
#   PY_VERSION=3.12 PYTHON_BIN=python3.12 bash bench/check_gpu_wheels.sh   (after bench/prepare_gpu_wheels.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
ENV=${ENV:-/tmp/cifarflow-wheels-check-$PY_VERSION}
PYTHON_BIN=${PYTHON_BIN:-$(command -v "python$PY_VERSION" || true)}
# (pyenv: PYTHON_BIN=$(pyenv root)/versions/3.12.1/bin/python3.12)
rm -rf "$ENV" && "$PYTHON_BIN" -m venv "$ENV"
"$ENV/bin/python" -m pip install --quiet numpy opencv-python-headless
PY="$ENV/bin/python"
# shellcheck source=bench/gpu_common.sh
source bench/gpu_common.sh
install_wheels "$ENV/deps"
"$PY" - <<'PYEOF'
import numpy as np
import nvidia.dali as dali
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)

@pipeline_def(batch_size=64, num_threads=2, device_id=None, seed=1, exec_dynamic=True)
def pipe():
    x = fn.external_source(source=lambda: images, batch=True, layout="HWC", dtype=types.UINT8)
    x = fn.flip(x, horizontal=fn.random.coin_flip(probability=0.5, dtype=types.INT32), vertical=0)
    xf = fn.crop_mirror_normalize(x, mean=[125.0] * 3, std=[1.0] * 3, dtype=types.FLOAT, output_layout="HWC")
    m = fn.stack(fn.stack(1.0, 0.0, fn.random.uniform(range=(-3, 3))), fn.stack(0.0, 1.0, 0.0))
    xf = fn.warp_affine(xf, matrix=m, fill_value=0.0, interp_type=types.INTERP_LINEAR, inverse_map=True)
    x = fn.cast(xf, dtype=types.UINT8)
    return fn.erase(x, anchor=[8.0, 8.0], shape=[16.0, 16.0], axis_names="HW", fill_value=[125.0] * 3)

p = pipe()
p.build()
(out,) = p.run()
print(f"nvidia.dali {dali.__version__} imports and runs cifarflow's operators on the CPU backend: "
      f"{len(out)} images of {np.array(out[0]).shape}")
PYEOF
if ls "${WHEELS:-wheels}"/ffcv/ffcv-*.whl >/dev/null 2>&1; then
    "$PY" - "$ENV/deps" <<'PYEOF'
import ctypes, glob, sys
import numba
(lib,) = glob.glob(f"{sys.argv[1]}/ffcv/_libffcv*.so")
ctypes.CDLL(lib)            # its bundled libturbojpeg and OpenCV resolve
square = numba.njit(lambda v: v * v)
assert square(3) == 9
print(f"ffcv's library loads with its bundled libraries; numba {numba.__version__} compiles")
PYEOF
fi
