#!/bin/bash
# The refine stage's mesh rasterizer on a lent GPU (issue 30, point 1), in about 6 min on an H100 / H200:
# build nvdiffrast from its source, run the `gpu` twin tests of the mesh rasterizer (nvdiffrast against the
# PyTorch twin), and time a 512 px refine-style render + backward of a 100k-face mesh on both paths (time and
# peak memory). Everything prints to $OUT/log.txt; each step has its own timeout, the most valuable first.
#
# Prepare on a machine with a package index, from the project's root (.whl and .nvdiffrast are git-ignored):
#   bash ../shared/device/fetch_wheels.sh          # trimesh and the other wheels the GPU image lacks -> .whl/
#   git clone --depth 1 https://github.com/NVlabs/nvdiffrast .nvdiffrast   # ~0.5 MB of source once docs/ and
#   rm -rf .nvdiffrast/docs .nvdiffrast/samples .nvdiffrast/.git            # samples/ are gone (64 MiB limit)
# nvdiffrast is not on PyPI and its licence (NVIDIA Source Code License) allows non-commercial use only: it is
# built here for the check, never made a dependency. Then on the GPU machine (the run tool: carry .whl and
# .nvdiffrast), from the project's root:  bash benchmarks/gpu_refine_check.sh
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-14}
OUT=${OUT:-/tmp/gpuout}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
stamp() { echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin; do [ -d $d ] && export PATH=$PATH:$d; done

stamp "install the wheels the image lacks"
SITE=/tmp/site; mkdir -p $SITE
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl \
    || echo "wheel install FAILED rc=$?"
fi
export PYTHONPATH=$SITE:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

stamp "1. build nvdiffrast (CUDA extension _nvdiffrast_c, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if [ ! -f .nvdiffrast/setup.py ]; then
  echo "no .nvdiffrast/ source: see the preparation at the top of this script"; exit 3
fi
/usr/bin/time -f "nvdiffrast build wall %e s" timeout 420 python3 -m pip install -q --no-index --no-deps \
  --no-build-isolation --no-cache-dir --target $SITE ./.nvdiffrast || {
  echo "pip build FAILED rc=$?; trying setup.py build_ext --inplace"
  ( cd .nvdiffrast && timeout 420 python3 setup.py -q build_ext --inplace ) || { echo "nvdiffrast build FAILED"; exit 4; }
  cp -r .nvdiffrast/nvdiffrast .nvdiffrast/_nvdiffrast_c*.so $SITE/
  mkdir -p $SITE/nvdiffrast-0.4.0.dist-info  # nvdiffrast/__init__.py reads its version from the metadata
  printf 'Metadata-Version: 2.1\nName: nvdiffrast\nVersion: 0.4.0\n' > $SITE/nvdiffrast-0.4.0.dist-info/METADATA
}
python3 -c "import nvdiffrast, nvdiffrast.torch as dr, torch; dr.RasterizeCudaContext(torch.device('cuda')); print('nvdiffrast', nvdiffrast.__version__, 'context ok')" \
  || { echo "nvdiffrast does not import"; exit 5; }

stamp "2. the mesh rasterizer's gpu twin tests (a missing oracle fails: DREAMFUSION_REQUIRE_ORACLES=1)"
DREAMFUSION_REQUIRE_ORACLES=1 timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider -rs \
  tests/test_mesh_raster_nvdiffrast.py 2>&1 | tail -40 || echo "pytest FAILED"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_mesh_raster_nvdiffrast.py 2>&1 | tail -3

stamp "3. refine-style render + backward, 512 px, 100k faces, one view then four: nvdiffrast and the PyTorch twin"
timeout 150 python3 benchmarks/mesh_raster.py --device cuda --rasterizers nvdiffrast torch --sizes 512 --views 1 \
  --faces 100000 --tet-resolution 128 --skip-volume --warmup 2 --iters 5 || echo "benchmark FAILED rc=$?"
timeout 120 python3 benchmarks/mesh_raster.py --device cuda --rasterizers nvdiffrast torch --sizes 512 --views 4 \
  --faces 100000 --tet-resolution 128 --n-samples 64 --warmup 1 --iters 3 || echo "benchmark FAILED rc=$?"
stamp done
