#!/usr/bin/env bash
# Packs executables built on this machine with the shared libraries they need (except the C library,
# the dynamic loader and the CUDA driver) into .carry/cuda/bundle.tar.xz, for a GPU machine that lacks
# those libraries. cuBLAS/cuBLASLt are left out on purpose: the GPU machine has its own (found at run
# time by tools/gpu/env.sh). Usage: tools/gpu/bundle.sh BIN [BIN...]
# For every mode of run_checks.sh (serve needs the load generator):
#   bash tools/gpu/bundle.sh build/medvision build/tests/test_gpu build/medvision-chat-load
set -euo pipefail
cd "$(dirname "$0")/../.."
stage=$(mktemp -d)
mkdir -p "$stage/bundle/bin" "$stage/bundle/lib" .carry/cuda
for b in "$@"; do cp -L "$b" "$stage/bundle/bin/"; done
skip='^(libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|ld-linux|libcuda\.so|libcublas|libcublasLt|libcudart|linux-vdso)'
for b in "$@"; do
  ldd "$b" | awk '$3 ~ /^\// {print $1, $3}' | while read -r name path; do
    if [[ ! "$name" =~ $skip ]]; then cp -Ln "$path" "$stage/bundle/lib/$name" 2>/dev/null || true; fi
  done
done
for f in "${MV_BUNDLE_EXTRA[@]:-}"; do [ -n "$f" ] && cp -r "$f" "$stage/bundle/"; done
# Tesseract's English model, for programs that start the OCR extractor (the server) on a machine without it.
for d in /usr/share/tesseract-ocr/5/tessdata /usr/share/tesseract-ocr/4.00/tessdata; do
  if [ -f "$d/eng.traineddata" ]; then cp -r "$d" "$stage/bundle/tessdata"; break; fi
done
XZ_OPT="-2 -T2" tar -C "$stage" -cJf .carry/cuda/bundle.tar.xz bundle
rm -rf "$stage"
ls -la .carry/cuda/bundle.tar.xz
