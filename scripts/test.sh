#!/usr/bin/env bash
# Builds MedVision and runs the whole test suite (CTest + GoogleTest). GPU tests (label "gpu") skip
# themselves when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
JOBS="${JOBS:-$(nproc)}"
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j "$JOBS" --timeout 900
