#!/usr/bin/env python3
"""Reference figure for `medvision bench-tokenizer`: Hugging Face `tokenizers` encoding the same text.

The text is the benchmark buffer written by the C++ side (`medvision bench-tokenizer --dump-text FILE`).
Encodes it as one string, single-threaded (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false), and prints
JSON with MB/s (wall and thread CPU time), the token count and the SHA-256 of the ids (little-endian int32),
so the C++ ids for the whole buffer can be compared with these.

Usage: python3 tools/reference/bench_hf_tokenizer.py --tokenizer tokenizer.json --text bench.txt [--out f.json]
"""

import argparse
import hashlib
import json
import os
import platform
import struct
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()

    tok = Tokenizer.from_file(args.tokenizer)
    with open(args.text, encoding="utf-8", newline="") as f:
        text = f.read()
    n_bytes = len(text.encode("utf-8"))
    runs, cpu_runs, ids = [], [], None
    for _ in range(args.repeats + 1):  # the first run is the cold one
        c0, t0 = time.thread_time(), time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        runs.append(time.perf_counter() - t0)
        cpu_runs.append(time.thread_time() - c0)
    digest = hashlib.sha256(struct.pack("<%di" % len(ids), *ids)).hexdigest()
    report = {
        "reference": "huggingface tokenizers " + tokenizers.__version__,
        "machine": {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()},
        "input_bytes": n_bytes,
        "tokens": len(ids),
        "ids_sha256": digest,
        "cold_s": runs[0],
        "runs_s": runs[1:],
        "cpu_runs_s": cpu_runs[1:],
        "mb_per_s": n_bytes / 1e6 / min(runs[1:]),
        "mb_per_cpu_s": n_bytes / 1e6 / min(cpu_runs[1:]),
        "tokens_per_s": len(ids) / min(runs[1:]),
    }
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
