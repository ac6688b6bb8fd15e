#!/usr/bin/env bash
# On the GPU machine (from the repository root): unpacks the carried build, runs the CUDA tests, and with
# the argument "bench" the 7B side-by-side benchmark. Logs go to $OUT.
set -o pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
# The tests read fixtures from the source path compiled into them.
if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$PWD" /work/main; fi
mkdir -p ~/.cache/medvision && xz -dc .carry/cuda/tokenizer.json.xz > ~/.cache/medvision/tokenizer.json
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
if [ "${1:-}" != bench-only ] && [ "${1:-}" != logits ]; then
  MV_GPU_TIMINGS=1 test_gpu 2>&1 | tee "$OUT/test_gpu.log"
fi
if [ "${1:-}" = logits ]; then
  python3 -c "from PIL import Image; Image.open('docs/images/synth_discharge_summary_fax.png').convert('RGB').resize((1008, 1316), Image.BICUBIC).save('/tmp/page.png')"
  PYTHONUNBUFFERED=1 python3 tools/reference/bench_side_by_side.py --medvision medvision --page /tmp/page.png --logits-only --out "$OUT/logits_7b.json" 2>&1 | grep -v "Loading weights" | tee "$OUT/logits.log"
fi
if [ "${1:-}" = bench ] || [ "${1:-}" = bench-only ]; then
  python3 -c "from PIL import Image; Image.open('docs/images/synth_discharge_summary_fax.png').convert('RGB').resize((1008, 1316), Image.BICUBIC).save('/tmp/page.png')"
  PYTHONUNBUFFERED=1 python3 tools/reference/bench_side_by_side.py --medvision medvision --page /tmp/page.png \
    --max-new-tokens "${MV_NEW_TOKENS:-256}" --runs "${MV_RUNS:-3}" --out "$OUT/side_by_side.json" 2>&1 | tee "$OUT/bench.log"
fi
