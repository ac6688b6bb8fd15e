#!/usr/bin/env bash
# Copies a built binary and the shared libraries it links into a self-contained folder (DEST/bin, DEST/lib)
# for a runtime image of the same distribution. glibc and the CUDA libraries are left out: the runtime base
# image provides them (and the CUDA driver library must come from the host).
#   bash scripts/bundle-runtime.sh build/medvision /opt/medvision
set -euo pipefail
BIN="$1"
DEST="$2"
mkdir -p "$DEST/bin" "$DEST/lib"
cp "$BIN" "$DEST/bin/"
ldd "$BIN" | awk '/=> \// { print $3 }' | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*|libresolv.so.*) continue ;;
    libcuda.so*|libcudart.so*|libcublas.so*|libcublasLt.so*|libnvidia-*) continue ;;
  esac
  cp -L "$lib" "$DEST/lib/"
done
# Every library the binary needs must now resolve from the bundle or the system's glibc/CUDA.
if LD_LIBRARY_PATH="$DEST/lib" ldd "$DEST/bin/$(basename "$BIN")" | grep -q "not found"; then
  LD_LIBRARY_PATH="$DEST/lib" ldd "$DEST/bin/$(basename "$BIN")" | grep "not found" >&2
  exit 1
fi
echo "bundle-runtime: $(ls "$DEST/lib" | wc -l) libraries in $DEST/lib"
