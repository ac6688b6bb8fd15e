#!/usr/bin/env python3
"""Expected outputs of transformers' Qwen2.5-VL for the CPU-engine parity fixtures.

Runs where transformers is installed (the GPU machine; the reference itself runs on its CPU in float32,
so no TF32 or GPU kernels enter the numbers). Inputs:
  tests/fixtures/model/<name>/fixture.json  seed, dtype, init_std, messages (images relative to
                                            tests/fixtures/model)
  <checkpoints>/<name>/                     the folder `medvision debug random-checkpoint --config
                                            tests/fixtures/model/<name>/config.json --seed S --dtype D --init-std X`
                                            wrote (tokenizer.json may be left out: it is then copied from
                                            --tokenizer-from, to keep the carried files small)
Outputs, per fixture, into OUT_DIR: <name>.json (ids, grid, pixel digest, greedy tokens, per-step top
logits, sha256 of model.safetensors, M-RoPE positions) and <name>.f32 (float32 little-endian arrays:
last-prompt-position logits, pixel_values, image features; offsets in the json).

Usage:
  python3 tools/reference/make_fixtures.py --fixtures tests/fixtures/model --checkpoints .carry/gen \
      --out $OUT [--tokenizer-from .carry/gen/tokenizer] [--only NAME ...]
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import traceback

import numpy as np
import torch

TOP = 16  # logits kept per generated step


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hf_messages(messages):
    """fixture.json messages -> the structure apply_chat_template takes, plus the image paths in order."""
    out, images = [], []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        items = []
        for part in content:
            if part["type"] == "image":
                images.append(part["image"])
                items.append({"type": "image"})
            else:
                items.append({"type": "text", "text": part["text"]})
        out.append({"role": m["role"], "content": items})
    return out, images


def load_processor(ckpt):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(ckpt), "AutoProcessor"
    except Exception:
        print("AutoProcessor failed, building Qwen2_5_VLProcessor by hand:\n" + traceback.format_exc())
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor

    chat_template = json.load(open(os.path.join(ckpt, "chat_template.json")))["chat_template"]
    image_processor = AutoImageProcessor.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    try:
        from transformers import AutoVideoProcessor

        video_processor = AutoVideoProcessor.from_pretrained(ckpt)
    except Exception:
        video_processor = None
    proc = Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=chat_template
    )
    return proc, "Qwen2_5_VLProcessor(manual)"


def load_model(ckpt):
    from transformers import Qwen2_5_VLForConditionalGeneration

    kwargs = dict(attn_implementation="eager", output_loading_info=True)
    try:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32, **kwargs)
    except TypeError:
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, torch_dtype=torch.float32, **kwargs)
    return model.eval(), info


def check_weights(model, ckpt, tied):
    """Every tensor of the file must be in the model, unchanged (legacy names mapped to the v5 ones)."""
    from safetensors.torch import load_file

    sd = model.state_dict()
    files = [f for f in os.listdir(ckpt) if f.endswith(".safetensors")]
    checked = 0
    for f in files:
        for name, t in load_file(os.path.join(ckpt, f)).items():
            candidates = [name]
            if name.startswith("model."):
                candidates.insert(0, "model.language_model." + name[len("model."):])
            if name.startswith("visual."):
                candidates.insert(0, "model." + name)
            target = next((c for c in candidates if c in sd), None)
            if target is None:
                raise RuntimeError(f"{name}: not in the model's state dict")
            if tuple(sd[target].shape) != tuple(t.shape):
                raise RuntimeError(f"{name}: shape {tuple(t.shape)} vs model {tuple(sd[target].shape)}")
            if not torch.equal(sd[target], t.to(torch.float32)):
                raise RuntimeError(f"{name}: the loaded values differ from the file")
            checked += 1
    lm = sd["lm_head.weight"]
    emb = sd["model.language_model.embed_tokens.weight"]
    if tied and not torch.equal(lm, emb):
        raise RuntimeError("tied embeddings: lm_head differs from embed_tokens")
    if not tied and torch.equal(lm, emb):
        raise RuntimeError("untied embeddings: lm_head equals embed_tokens")
    return checked


def run_fixture(name, fixtures, checkpoints, tokenizer_from, out_dir):
    t0 = time.time()
    fx = json.load(open(os.path.join(fixtures, name, "fixture.json")))
    ckpt = os.path.join(checkpoints, name)
    if not os.path.exists(os.path.join(ckpt, "tokenizer.json")):
        shutil.copy(os.path.join(tokenizer_from, "tokenizer.json"), os.path.join(ckpt, "tokenizer.json"))
    config = json.load(open(os.path.join(ckpt, "config.json")))
    tied = bool(config.get("text_config", config).get("tie_word_embeddings", config.get("tie_word_embeddings")))
    weights = os.path.join(ckpt, "model.safetensors")
    sha = sha256_file(weights)

    processor, processor_kind = load_processor(ckpt)
    messages, image_paths = hf_messages(fx["messages"])
    try:
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:
        print("processor.apply_chat_template failed, using the tokenizer's:\n" + traceback.format_exc())
        text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    from PIL import Image

    images = [Image.open(os.path.join(fixtures, p)).convert("RGB") for p in image_paths]
    if images:
        inputs = processor(text=[text], images=images, return_tensors="pt")
    else:
        inputs = processor(text=[text], return_tensors="pt")
    input_ids = inputs["input_ids"]

    model, info = load_model(ckpt)
    loading = {k: [str(x) for x in v] for k, v in info.items() if v}
    missing = [k for k in info.get("missing_keys", []) if not (tied and k == "lm_head.weight")]
    if missing or info.get("mismatched_keys"):
        raise RuntimeError(f"loading reported {loading}")
    checked = check_weights(model, ckpt, tied)

    captured = {}

    def lm_hook(module, args, kwargs):
        if "inputs_embeds" in kwargs and kwargs["inputs_embeds"] is not None and "embeds" not in captured:
            captured["embeds"] = kwargs["inputs_embeds"].detach().clone()
        if kwargs.get("position_ids") is not None and "positions" not in captured:
            captured["positions"] = kwargs["position_ids"].detach().clone()

    handle = model.model.language_model.register_forward_pre_hook(lm_hook, with_kwargs=True)
    with torch.no_grad():
        out = model(**inputs)
    handle.remove()
    last = out.logits[0, -1].float().contiguous()
    rope_deltas = getattr(model.model, "rope_deltas", None)

    image_token_id = config.get("image_token_id", 151655)
    features = None
    if images and "embeds" in captured:
        mask = input_ids[0] == image_token_id
        features = captured["embeds"][0][mask].float().contiguous()

    n = int(fx.get("new_tokens", 24))
    with torch.no_grad():
        gen = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            repetition_penalty=1.0,
            temperature=None,
            top_p=None,
            top_k=None,
            return_dict_in_generate=True,
            output_logits=True,
        )
    prompt_len = input_ids.shape[1]
    generated = gen.sequences[0, prompt_len:].tolist()
    steps = []
    argmax_consistent = True
    for i, step_logits in enumerate(gen.logits):
        row = step_logits[0].float()
        vals, ids = torch.topk(row, TOP)
        if int(torch.argmax(row)) != generated[i]:
            argmax_consistent = False
        steps.append({"top_ids": ids.tolist(), "top_values": vals.tolist(),
                      "margin": float(vals[0] - vals[1])})
    step0_vs_forward = float((gen.logits[0][0].float() - last).norm() / last.norm())

    # Float64 run of the same weights: how far float32 itself is from exact (a floor for the C++ tolerance).
    try:
        model64 = model.double()
        inputs64 = {k: (v.double() if torch.is_floating_point(v) else v) for k, v in inputs.items()}
        with torch.no_grad():
            last64 = model64(**inputs64).logits[0, -1]
        fp32_rel_l2 = float((last.double() - last64).norm() / last64.norm())
    except Exception:
        print("float64 run failed:\n" + traceback.format_exc())
        fp32_rel_l2 = None

    blob = [last.numpy().astype("<f4")]
    layout = {"last_logits": {"offset": 0, "count": int(last.numel())}}
    offset = int(last.numel())
    pixel = None
    if images:
        pv = inputs["pixel_values"].float().contiguous()
        blob.append(pv.numpy().astype("<f4").ravel())
        layout["pixel_values"] = {"offset": offset, "count": int(pv.numel()), "shape": list(pv.shape)}
        offset += int(pv.numel())
        if features is not None:
            blob.append(features.numpy().astype("<f4").ravel())
            layout["image_features"] = {"offset": offset, "count": int(features.numel()),
                                        "shape": list(features.shape)}
            offset += int(features.numel())
        pixel = {
            "shape": list(pv.shape),
            "sum": float(pv.double().sum()),
            "abs_sum": float(pv.double().abs().sum()),
            "first_rows": pv[:4, :8].tolist(),
        }
    np.concatenate(blob).astype("<f4").tofile(os.path.join(out_dir, name + ".f32"))

    positions = None
    if "positions" in captured:
        p = captured["positions"]
        positions = {"shape": list(p.shape), "values": p[:, 0, :].tolist() if p.dim() == 3 else p.tolist()}

    import transformers

    expected = {
        "fixture": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "processor": processor_kind,
        "image_processor": type(processor.image_processor).__name__,
        "model_safetensors_sha256": sha,
        "weights_checked": checked,
        "loading_info": loading,
        "image_processor_size": {k: str(getattr(processor.image_processor, k, None))
                                 for k in ("min_pixels", "max_pixels", "size")},
        "prompt_text": text,
        "input_ids": input_ids[0].tolist(),
        "image_grid_thw": inputs["image_grid_thw"].tolist() if images else [],
        "pixel_values": pixel,
        "position_ids": positions,
        "rope_deltas": rope_deltas.reshape(-1).tolist() if rope_deltas is not None else None,
        "greedy_tokens": generated,
        "greedy_text": processor.batch_decode([generated], skip_special_tokens=True)[0],
        "argmax_consistent": argmax_consistent,
        "step0_vs_forward_rel_l2": step0_vs_forward,
        "fp32_vs_fp64_rel_l2": fp32_rel_l2,
        "steps": steps,
        "data_file": name + ".f32",
        "data": layout,
        "seconds": round(time.time() - t0, 2),
    }
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
    print(f"{name}: {len(expected['input_ids'])} prompt ids, grid {expected['image_grid_thw']}, "
          f"greedy {generated[:8]}..., argmax_consistent {argmax_consistent}, fp32 vs fp64 {fp32_rel_l2}, "
          f"step0 vs forward {step0_vs_forward:.2e}, min margin {min(s['margin'] for s in steps):.3e}, "
          f"{checked} tensors checked, {expected['seconds']} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="tests/fixtures/model")
    ap.add_argument("--checkpoints", required=True)
    ap.add_argument("--tokenizer-from", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    names = sorted(d for d in os.listdir(args.fixtures)
                   if os.path.exists(os.path.join(args.fixtures, d, "fixture.json")))
    if args.only:
        names = [n for n in names if n in args.only]
    tokenizer_from = args.tokenizer_from or os.path.join(args.checkpoints, names[0])
    failed = []
    for name in names:
        try:
            run_fixture(name, args.fixtures, args.checkpoints, tokenizer_from, args.out)
        except Exception:
            failed.append(name)
            print(f"{name}: FAILED\n" + traceback.format_exc())
    print(f"{len(names) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
