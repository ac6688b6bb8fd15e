#!/usr/bin/env bash
# First look at a GPU machine: OS, loader, GPU, where cuBLAS lives, and whether a bundled binary runs.
cd "$(dirname "$0")/../.."
{
cat /etc/os-release | head -3; ldd --version | head -1; nvidia-smi; nproc; free -g
ls /usr/local/cuda/lib64 | grep -E 'cublas|cudart' ; find / -xdev -name 'libcublasLt.so*' 2>/dev/null
which nvcc cmake ninja xz zstd; nvcc --version | tail -2
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())'
source tools/gpu/env.sh; echo "LD=$LD_LIBRARY_PATH"
ldd /tmp/mv/bundle/bin/medvision | grep -E 'not found|cublas|cudart'
medvision doctor
} 2>&1 | tee $OUT/probe.log
