#!/usr/bin/env python3
"""Checks `medvision generate --adapter` against transformers + peft on a tiny fixture model.

Writes the fixture checkpoint (medvision debug random-checkpoint, as tests/fixtures/model/<name> does) and a
random adapter (medvision debug random-adapter), runs medvision (CPU engine, adapter merged at load) and
transformers with the adapter applied by peft, and prints the relative L2 distance of the last-position
logits for:
  peft_unmerged_fp32  peft's LoRA forward (fp32 model, y = W x + s B A x) vs medvision
  peft_merged         peft merge_and_unload in the checkpoint dtype, then run in fp32, vs medvision
  no_adapter          the base model vs medvision with the adapter (shows the adapter matters)
  cuda (--cuda)       medvision --device cuda vs --device cpu, both with the adapter

Needs torch, transformers and peft. One command, from the repository root:
  python3 tools/reference/lora_reference.py --medvision build/medvision [--cuda] [--out lora.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "model")


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def medvision_logits(mv, model, adapter, prompt, out, device="cpu"):
    cmd = [mv, "-q", "generate", "--model", model, "--prompt", prompt, "--max-new-tokens", "1", "--json",
           "--device", device, "--logits-out", out]
    if adapter:
        cmd += ["--adapter", adapter]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return res["prompt_ids"], np.fromfile(out, dtype="<f4")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--medvision", default="build/medvision")
    ap.add_argument("--fixture", default="tied_bf16_image", help="tests/fixtures/model/<name> (seed, dtype)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--layout", default="nested", choices=["nested", "legacy"])
    ap.add_argument("--rslora", action="store_true")
    ap.add_argument("--cuda", action="store_true", help="also compare medvision --device cuda with the CPU")
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args()

    fx = json.load(open(os.path.join(FIXTURES, a.fixture, "fixture.json")))
    tmp = tempfile.mkdtemp(prefix="mv-lora-ref-")
    ckpt, adapter = os.path.join(tmp, "ckpt"), os.path.join(tmp, "adapter")
    subprocess.run([a.medvision, "-q", "debug", "random-checkpoint", "--config",
                    os.path.join(FIXTURES, a.fixture, "config.json"), "--out", ckpt, "--seed", str(fx["seed"]),
                    "--dtype", fx["dtype"], "--init-std", str(fx.get("init_std", 0.02))], check=True)
    cmd = [a.medvision, "-q", "debug", "random-adapter", "--model", ckpt, "--out", adapter, "--rank", str(a.rank),
           "--alpha", str(a.alpha), "--layout", a.layout, "--seed", "1"]
    subprocess.run(cmd + (["--rslora"] if a.rslora else []), check=True)

    prompt = "Extract the medications with dose, route and frequency."
    ids, ours = medvision_logits(a.medvision, ckpt, adapter, prompt, os.path.join(tmp, "ours.f32"))
    _, base = medvision_logits(a.medvision, ckpt, None, prompt, os.path.join(tmp, "base.f32"))
    input_ids = torch.tensor([ids])
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[fx["dtype"]]

    def load(dt):
        try:
            return Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=dt, attn_implementation="eager")
        except TypeError:
            return Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, torch_dtype=dt,
                                                                      attn_implementation="eager")

    def last_logits(m):
        with torch.no_grad():
            return m(input_ids=input_ids).logits[0, -1].float().numpy()

    figures = {"fixture": a.fixture, "rank": a.rank, "alpha": a.alpha, "layout": a.layout, "rslora": a.rslora}
    figures["no_adapter"] = rel_l2(base, ours)
    if a.cuda:
        _, gpu = medvision_logits(a.medvision, ckpt, adapter, prompt, os.path.join(tmp, "gpu.f32"), "cuda")
        figures["cuda_vs_cpu"] = rel_l2(gpu, ours)
        print(json.dumps({"cuda_vs_cpu": figures["cuda_vs_cpu"]}), flush=True)
    from peft import PeftModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    peft_fp32 = PeftModel.from_pretrained(load(torch.float32), adapter).eval()
    figures["peft_unmerged_fp32"] = rel_l2(ours, last_logits(peft_fp32))
    merged = PeftModel.from_pretrained(load(dtype), adapter).merge_and_unload().float().eval()
    figures["peft_merged"] = rel_l2(ours, last_logits(merged))
    figures["medvision_base_vs_transformers_base"] = rel_l2(base, last_logits(load(torch.float32).eval()))
    print(json.dumps(figures, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(figures, f, indent=1)
    # Expected: peft_merged ~1e-6 (same merged weights), peft_unmerged_fp32 of the order of the dtype's rounding of
    # the merged weights (0 for f32 fixtures), no_adapter far larger.
    ok = figures["peft_merged"] < 1e-4 and figures["no_adapter"] > 10 * figures["peft_merged"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
