#!/usr/bin/env bash
# Source at the start of every device call: `source benchmarks/device_env.sh` (carry: [".whl"]).
# Installs the carried wheels into /tmp/site (kept while the machine stays warm), builds the C
# kernels in place, puts both on PYTHONPATH, and prints what the run relies on.
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
if [ ! -f /tmp/site/.installed ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && touch /tmp/site/.installed || echo "device_env: wheel install failed"
fi
python3 setup.py build_ext --inplace -q >/dev/null 2>&1 || echo "device_env: C extension build failed"
export PYTHONPATH="/tmp/site:$PWD"
export RFPIPE_CACHE="${RFPIPE_CACHE:-/tmp/rfpipe-cache}"
python3 - <<'PY'
import importlib, torch
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA",
      "| torch", torch.__version__, "| cuda", torch.version.cuda)
for name in ("triton", "torchvision", "cv2", "PIL", "rfdetr", "supervision", "fastapi", "onnxruntime", "inference_models"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
    except Exception as error:
        print(f"  {name}: MISSING ({type(error).__name__})")
PY
nproc; nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader 2>/dev/null
