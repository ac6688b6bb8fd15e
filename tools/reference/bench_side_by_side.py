#!/usr/bin/env python3
"""medvision vs transformers on one page, on the GPU machine.

Makes (or reuses) a random checkpoint with the real Qwen2.5-VL-7B shapes (`medvision debug
random-checkpoint --config 7b`), runs `medvision bench` and transformers (bf16, sdpa, `generate` with
min_new_tokens = max_new_tokens) on the same page and prompt, compares the last-position logits of both
(relative L2), and prints one table of both engines and their ratio. Writes everything as JSON.

  python3 tools/reference/bench_side_by_side.py --medvision BIN --page PNG --out OUT.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

PROMPT = "Extract every medication with its dose, route and frequency from this document."


def sh(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def med(v):
    return statistics.median(v)


def run_transformers(ckpt, page, prompt, max_new_tokens, runs, warmup):
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        ckpt, dtype=torch.bfloat16, attn_implementation="sdpa", device_map="cuda"
    ).eval()
    processor = AutoProcessor.from_pretrained(ckpt)
    torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.open(page).convert("RGB")
    inputs = processor(text=[text], images=[image], return_tensors="pt").to("cuda")
    grid = inputs["image_grid_thw"].tolist()
    out = {"load_time_s": load_s, "prompt_tokens": int(inputs["input_ids"].shape[1]), "image_grid_thw": grid}

    # Last-position logits of the prompt (one forward pass).
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float().cpu().numpy()

    ttft, e2e, tps = [], [], []
    for r in range(warmup + runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        with torch.no_grad():
            g = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        n = int(g.shape[1] - inputs["input_ids"].shape[1])
        if r >= warmup:
            ttft.append((t1 - t0) * 1000)
            e2e.append(t2 - t1)
            tps.append((n - 1) / max(1e-9, (t2 - t1) - (t1 - t0)))
        print(f"transformers run {r}: ttft {(t1 - t0) * 1000:.1f} ms, {n} tokens in {t2 - t1:.2f} s", flush=True)
    out.update(
        ttft_ms=med(ttft),
        e2e_seconds_per_page=med(e2e),
        tokens_per_second=med(tps),
        ttft_ms_all=ttft,
        e2e_all=e2e,
        vram_peak_gb=torch.cuda.max_memory_allocated() / 2**30,
        vram_reserved_gb=torch.cuda.max_memory_reserved() / 2**30,
    )
    del model
    torch.cuda.empty_cache()
    return out, logits


def hf_last_logits(ckpt, page, prompt, dtype):
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        ckpt, dtype=dtype, attn_implementation="sdpa", device_map="cuda"
    ).eval()
    processor = AutoProcessor.from_pretrained(ckpt)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.open(page).convert("RGB")], return_tensors="pt").to("cuda")
    with torch.no_grad():
        out = model(**inputs).logits[0, -1].float().cpu().numpy()
    del model
    torch.cuda.empty_cache()
    return out


def logits_only(a):
    """Last-position logits: medvision (cuda), transformers bf16 and fp32; distances between them."""
    if not os.path.exists(os.path.join(a.model, "config.json")):
        sh([a.medvision, "debug", "random-checkpoint", "--config", "7b", "--out", a.model])
    path = a.out + ".medvision_logits.f32"
    sh([a.medvision, "-q", "generate", "--model", a.model, "--image", a.page, "--prompt", a.prompt, "--max-new-tokens",
        "1", "--device", "cuda", "--logits-out", path, "--json"], stdout=subprocess.DEVNULL)
    mv = np.fromfile(path, dtype=np.float32)
    bf = hf_last_logits(a.model, a.page, a.prompt, torch.bfloat16)
    fp = hf_last_logits(a.model, a.page, a.prompt, torch.float32)
    rel = lambda x, y: float(np.linalg.norm(x - y) / np.linalg.norm(y))
    r = {"medvision_vs_transformers_bf16": rel(mv, bf), "medvision_vs_transformers_fp32": rel(mv, fp),
         "transformers_bf16_vs_fp32": rel(bf, fp), "argmax": [int(mv.argmax()), int(bf.argmax()), int(fp.argmax())],
         "gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(r, indent=2))
    json.dump(r, open(a.out, "w"), indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--medvision", default="medvision")
    ap.add_argument("--model", default="/tmp/qwen25vl-7b-random")
    ap.add_argument("--page", required=True)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--logits-only", action="store_true",
                    help="no timing: last-position logits of medvision, transformers bf16 and transformers fp32")
    a = ap.parse_args()

    if not os.path.exists(os.path.join(a.model, "config.json")):
        t0 = time.perf_counter()
        sh([a.medvision, "debug", "random-checkpoint", "--config", "7b", "--out", a.model])
        print(f"random checkpoint written in {time.perf_counter() - t0:.1f} s", flush=True)

    if a.logits_only:
        return logits_only(a)

    # medvision: bench, then the last-position logits of the same prompt.
    mv_json = a.out + ".medvision.json"
    sh([a.medvision, "-q", "bench", "--model", a.model, "--image", a.page, "--prompt", a.prompt, "--max-new-tokens",
        str(a.max_new_tokens), "--ignore-eos", "--runs", str(a.runs), "--warmup", str(a.warmup), "--device", "cuda",
        "--json", mv_json], stdout=subprocess.DEVNULL)
    mv = json.load(open(mv_json))
    logits_path = a.out + ".medvision_logits.f32"
    sh([a.medvision, "-q", "generate", "--model", a.model, "--image", a.page, "--prompt", a.prompt, "--max-new-tokens",
        "1", "--device", "cuda", "--logits-out", logits_path, "--json"], stdout=subprocess.DEVNULL)
    mv_logits = np.fromfile(logits_path, dtype=np.float32)

    result = {"medvision": mv, "gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not a.skip_transformers:
        import transformers

        hf, hf_logits = run_transformers(a.model, a.page, a.prompt, a.max_new_tokens, a.runs, a.warmup)
        hf["version"] = transformers.__version__
        result["transformers"] = hf
        rel = float(np.linalg.norm(mv_logits - hf_logits) / np.linalg.norm(hf_logits))
        result["last_logits_rel_l2"] = rel
        result["argmax_equal"] = int(mv_logits.argmax()) == int(hf_logits.argmax())

    rows = [
        ("load (s)", mv["load_time_s"], result.get("transformers", {}).get("load_time_s")),
        ("vision (ms)", mv["vision_ms"]["median"], None),
        ("prefill (ms)", mv["prefill_ms"]["median"], None),
        ("TTFT (ms)", mv["ttft_ms"]["median"], result.get("transformers", {}).get("ttft_ms")),
        ("decode (tok/s)", mv["tokens_per_second"]["median"], result.get("transformers", {}).get("tokens_per_second")),
        ("end to end (s/page)", mv["e2e_seconds_per_page"]["median"], result.get("transformers", {}).get("e2e_seconds_per_page")),
        ("VRAM peak (GiB)", mv.get("vram_peak_gb"), result.get("transformers", {}).get("vram_peak_gb")),
    ]
    print(f"\n{'metric':<22}{'medvision':>12}{'transformers':>14}{'ratio':>10}")
    for name, m, h in rows:
        ratio = ""
        if m and h:
            ratio = f"{(h / m if 'tok/s' not in name else m / h):.2f}x"
        print(f"{name:<22}{(f'{m:.3f}' if m is not None else '-'):>12}{(f'{h:.3f}' if h is not None else '-'):>14}{ratio:>10}")
    if "last_logits_rel_l2" in result:
        print(f"last-position logits rel L2 (medvision vs transformers bf16): {result['last_logits_rel_l2']:.3e}, "
              f"argmax equal: {result['argmax_equal']}")
    json.dump(result, open(a.out, "w"), indent=2)


if __name__ == "__main__":
    sys.exit(main())
