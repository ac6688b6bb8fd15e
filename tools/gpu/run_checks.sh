#!/usr/bin/env bash
# On the GPU machine (from the repository root): unpacks the carried build, runs the CUDA tests, and with
# the argument "bench" the 7B side-by-side benchmark; with "nf4" (NF4 only, no test_gpu run): quantizes the
# 7B random checkpoint on the GPU (timed), benches the NF4 model and compares its logits with bf16; with
# "decode": the decode tests (batched, graphs, greedy on the device, decode attention and its timing) and
# the 7B decode benchmark at concurrency 1, 8 and 32 (MV_CONCURRENCY overrides), plus concurrency 1
# without CUDA graphs; with "attn":
# the prefill/vision attention tests (both kernels), the model parity tests with MV_ATTN=wmma, the kernel
# timings and the vision/TTFT benchmark with each attention kernel; with "lora" (no test_gpu run):
# tools/reference/lora_reference.py (medvision --adapter against transformers + peft, CUDA against CPU);
# with "profile": Nsight Compute kernel durations of one 7B generate (vision, prefill, MV_NEW_TOKENS decode
# steps without CUDA graphs), written to $OUT/ncu.csv, and tools/gpu/kernel_profile.py's summary; with
# "serve" (no test_gpu run): the serving benchmark: `medvision serve --device cuda --max-batch 32` with the
# 7B random checkpoint on a loopback port, medvision-chat-load at concurrency 1, 8 and 32 (MV_CONCURRENCY
# overrides; 2 x C requests, at least 4, of MV_NEW_TOKENS = 256 tokens each, after C warm-up requests) into
# $OUT/serve_c{C}.json, then SIGTERM and a check that the server exits 0 (bundle medvision-chat-load too);
# with "nf4gemm" (no full test_gpu run): the fused NF4 GEMM tests and timings, then the NF4 7B decode
# benchmark at concurrency 32 (MV_CONCURRENCY overrides) with the fused GEMM and with MV_NF4_GEMM=0.
# With "setup": only the unpacking, the fixture path and the tokenizer (for commands run after it).
# Logs go to $OUT.
set -o pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
# The tests read fixtures from the source path compiled into them.
if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$PWD" /work/main; fi
mkdir -p ~/.cache/medvision && xz -dc .carry/cuda/tokenizer.json.xz > ~/.cache/medvision/tokenizer.json
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
if [ "${1:-}" != bench-only ] && [ "${1:-}" != logits ] && [ "${1:-}" != nf4 ] && [ "${1:-}" != decode ] &&
  [ "${1:-}" != lora ] && [ "${1:-}" != profile ] && [ "${1:-}" != serve ] &&
  [ "${1:-}" != attn ] && [ "${1:-}" != nf4gemm ] && [ "${1:-}" != setup ]; then
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
if [ "${1:-}" = nf4 ]; then
  M=/tmp/qwen25vl-7b-random Q=/tmp/qwen25vl-7b-nf4
  [ -f "$M/config.json" ] || medvision -q debug random-checkpoint --config 7b --out "$M" --json > "$OUT/random_checkpoint.json"
  cat "$M"/*.safetensors > /dev/null  # warm the page cache: the timing below is the quantization, not the disk
  rm -rf "$Q"
  t0=$(date +%s.%N)
  medvision -q quantize --model "$M" --out "$Q" --device cuda > "$OUT/quantize_nf4_cuda.json"
  t1=$(date +%s.%N)
  python3 -c "print(f'quantize --device cuda: {$t1 - $t0:.1f} s wall')" | tee "$OUT/quantize_time.txt"
  cat "$OUT/quantize_nf4_cuda.json"
  python3 -c "from PIL import Image; Image.open('docs/images/synth_discharge_summary_fax.png').convert('RGB').resize((1008, 1316), Image.BICUBIC).save('/tmp/page.png')"
  medvision bench --model "$Q" --image /tmp/page.png --max-new-tokens "${MV_NEW_TOKENS:-256}" --ignore-eos \
    --runs "${MV_RUNS:-3}" --device cuda --json "$OUT/quantized_int4.json" 2>&1 | tee "$OUT/bench_nf4.log"
  MV_NF4_7B="$M" MV_NF4_7B_Q="$Q" MV_NF4_JSON="$OUT/nf4_vs_bf16_7b.json" \
    test_gpu --gtest_filter='Nf4At7B.*:Nf4Cuda.*:Nf4ModelParity.*:CudaDense.*' 2>&1 | tee "$OUT/test_nf4.log"
fi
if [ "${1:-}" = decode ]; then
  test_gpu --gtest_filter='CudaOps.*:*CudaParity.*:CudaBatchScheduler.*:CudaDecodeAttention.*' 2>&1 |
    tee "$OUT/test_decode.log"
  MV_GPU_TIMINGS=1 test_gpu --gtest_filter='CudaTimings.DecodeAttention*' 2>&1 | tee -a "$OUT/test_decode.log"
  # The scalar decode-attention kernel too (the tensor-core one is the default where it applies).
  MV_DECODE_ATTN=scalar MV_GPU_TIMINGS=1 test_gpu --gtest_filter='CudaDecodeAttention.*:CudaTimings.DecodeAttention*' \
    2>&1 | tee "$OUT/test_decode_scalar.log"
  M=/tmp/qwen25vl-7b-random
  [ -f "$M/config.json" ] || medvision -q debug random-checkpoint --config 7b --out "$M" --json > "$OUT/random_checkpoint.json"
  python3 -c "from PIL import Image; Image.open('docs/images/synth_discharge_summary_fax.png').convert('RGB').resize((1008, 1316), Image.BICUBIC).save('/tmp/page.png')"
  for C in ${MV_CONCURRENCY:-1 8 32}; do
    medvision bench --model "$M" --image /tmp/page.png --max-new-tokens "${MV_NEW_TOKENS:-256}" --ignore-eos \
      --runs "${MV_RUNS:-2}" --warmup 1 --device cuda --concurrency "$C" --json "$OUT/bench_decode_c$C.json" \
      2>&1 | grep '^bench' | tee -a "$OUT/bench_decode.log"
  done
  MV_CUDA_GRAPHS=0 medvision bench --model "$M" --image /tmp/page.png --max-new-tokens "${MV_NEW_TOKENS:-256}" \
    --ignore-eos --runs "${MV_RUNS:-2}" --warmup 1 --device cuda --json "$OUT/bench_decode_c1_nographs.json" \
    2>&1 | grep '^bench' | tee -a "$OUT/bench_decode.log"
fi
if [ "${1:-}" = attn ]; then
  test_gpu --gtest_filter='CudaAttention.*:CudaOps.Attention*:*CudaParity.VisionFeatures*:*CudaParity.TeacherForced*' \
    2>&1 | tee "$OUT/test_attn.log"
  MV_ATTN=wmma test_gpu --gtest_filter='*CudaParity.VisionFeatures*:*CudaParity.TeacherForced*' 2>&1 |
    tee -a "$OUT/test_attn.log"
  MV_GPU_TIMINGS=1 test_gpu --gtest_filter='CudaTimings.*' 2>&1 | tee -a "$OUT/test_attn.log"
  M=/tmp/qwen25vl-7b-random
  [ -f "$M/config.json" ] || medvision -q debug random-checkpoint --config 7b --out "$M" --json > "$OUT/random_checkpoint.json"
  python3 -c "from PIL import Image; Image.open('docs/images/synth_discharge_summary_fax.png').convert('RGB').resize((1008, 1316), Image.BICUBIC).save('/tmp/page.png')"
  for K in mma wmma; do
    MV_ATTN=$K medvision bench --model "$M" --image /tmp/page.png --max-new-tokens 16 --ignore-eos \
      --runs "${MV_RUNS:-3}" --warmup 1 --device cuda --json "$OUT/bench_attn_$K.json" 2>&1 | grep '^bench' |
      tee -a "$OUT/bench_attn.log"
  done
fi
if [ "${1:-}" = lora ]; then
  PYTHONUNBUFFERED=1 python3 tools/reference/lora_reference.py --medvision medvision --cuda \
    --out "$OUT/lora_reference.json" 2>&1 | tee "$OUT/lora.log"
fi
if [ "${1:-}" = profile ]; then
  M=/tmp/qwen25vl-7b-random
  [ -f "$M/config.json" ] || medvision -q debug random-checkpoint --config 7b --out "$M" --json > "$OUT/random_checkpoint.json"
  python3 -c "from PIL import Image; Image.open('docs/images/synth_discharge_summary_fax.png').convert('RGB').resize((1008, 1316), Image.BICUBIC).save('/tmp/page.png')"
  MV_CUDA_GRAPHS=0 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file "$OUT/ncu.csv" \
    medvision -q generate --model "$M" --image /tmp/page.png --prompt "Extract the document." --device cuda \
    --max-new-tokens "${MV_NEW_TOKENS:-3}" --ignore-eos --greedy > /dev/null 2> "$OUT/ncu_stderr.txt"
  python3 tools/gpu/kernel_profile.py "$OUT/ncu.csv" 2>&1 | tee "$OUT/profile.txt"
fi
if [ "${1:-}" = serve ]; then
  M=/tmp/qwen25vl-7b-random
  [ -f "$M/config.json" ] || medvision -q debug random-checkpoint --config 7b --out "$M" --json > "$OUT/random_checkpoint.json"
  python3 -c "from PIL import Image; Image.open('docs/images/synth_discharge_summary_fax.png').convert('RGB').resize((1008, 1316), Image.BICUBIC).save('/tmp/page.png')"
  PORT=${MV_SERVE_PORT:-18080} URL=http://127.0.0.1:${MV_SERVE_PORT:-18080}
  mkdir -p /tmp/mv-serve-benchmarks
  medvision --log-level info serve --model "$M" --device cuda --max-batch 32 --max-queue 64 --host 127.0.0.1 \
    --port "$PORT" --benchmarks /tmp/mv-serve-benchmarks > "$OUT/serve_server.log" 2>&1 &
  SERVER=$!
  up=0
  for _ in $(seq 1 "${MV_SERVE_START_TIMEOUT:-300}"); do
    if python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$URL" 2>/dev/null; then
      up=1; break
    fi
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 1
  done
  echo "server up: $up ($(date -u))" | tee "$OUT/serve.log"
  if [ "$up" = 1 ]; then
    for C in ${MV_CONCURRENCY:-1 8 32}; do
      R=$((2 * C < 4 ? 4 : 2 * C))
      medvision-chat-load --url "$URL" --image /tmp/page.png --concurrency "$C" --requests "$R" \
        --max-tokens "${MV_NEW_TOKENS:-256}" --warmup "$C" --warmup-tokens 16 --json "$OUT/serve_c$C.json" 2>&1 |
        tee -a "$OUT/serve.log"
    done
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tee -a "$OUT/serve.log"
  fi
  kill -TERM "$SERVER"
  for _ in $(seq 1 60); do kill -0 "$SERVER" 2>/dev/null || break; sleep 1; done
  if kill -0 "$SERVER" 2>/dev/null; then
    echo "server still running 60 s after SIGTERM: killed" | tee -a "$OUT/serve.log"
    kill -KILL "$SERVER"
  fi
  wait "$SERVER"
  echo "server exit status after SIGTERM: $?" | tee -a "$OUT/serve.log"
  tail -5 "$OUT/serve_server.log"
fi
if [ "${1:-}" = nf4gemm ]; then
  test_gpu --gtest_filter='*Nf4Gemm*' 2>&1 | tee "$OUT/test_nf4gemm.log"
  MV_GPU_TIMINGS=1 test_gpu --gtest_filter='*Nf4Gemm*Timing*' 2>&1 | tee -a "$OUT/test_nf4gemm.log"
  M=/tmp/qwen25vl-7b-random Q=/tmp/qwen25vl-7b-nf4
  [ -f "$M/config.json" ] || medvision -q debug random-checkpoint --config 7b --out "$M" --json > "$OUT/random_checkpoint.json"
  [ -f "$Q/config.json" ] || medvision -q quantize --model "$M" --out "$Q" --device cuda > "$OUT/quantize_nf4_cuda.json"
  python3 -c "from PIL import Image; Image.open('docs/images/synth_discharge_summary_fax.png').convert('RGB').resize((1008, 1316), Image.BICUBIC).save('/tmp/page.png')"
  for C in ${MV_CONCURRENCY:-32}; do
    for G in 1 0; do
      MV_NF4_GEMM=$G medvision bench --model "$Q" --image /tmp/page.png --max-new-tokens "${MV_NEW_TOKENS:-256}" \
        --ignore-eos --runs "${MV_RUNS:-2}" --warmup 1 --device cuda --concurrency "$C" \
        --json "$OUT/bench_nf4_c${C}_gemm$G.json" 2>&1 | grep '^bench' | sed "s/^/MV_NF4_GEMM=$G /" |
        tee -a "$OUT/bench_nf4gemm.log"
    done
  done
fi
