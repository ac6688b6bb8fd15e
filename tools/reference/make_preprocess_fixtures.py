#!/usr/bin/env python3
"""Parity fixtures for medvision's Qwen2.5-VL image preprocessing (src/vision/preprocess.cpp).

Run once on the GPU machine (transformers 5.17, torch 2.11, torchvision 0.26, Pillow 12.3):

    python3 tools/reference/make_preprocess_fixtures.py --out $OUT

It writes to --out:
  preprocess_fixtures.tar   the fixture tree "preprocess/..." to unpack into tests/fixtures/
  report.json               versions, checks and per-case diagnostics (also inside the tar as index.json)
  sources.txt               the reference's source of the functions whose arithmetic we reproduce

What it does:
  (a) synthesises test images deterministically (smooth gradients, text-like strokes, a noise patch),
      in several modes and sizes, PNG and JPEG (one with EXIF orientation 6);
  (b) runs transformers' Qwen2VLImageProcessor (the TorchvisionBackend class: torchvision resize on uint8,
      bicubic, antialias=True, i.e. torch's CPU uint8 antialiased bicubic) on each image after
      PIL open + ImageOps.exif_transpose, with explicit min_pixels/max_pixels, and stores grid_thw and
      pixel_values: in full for small outputs, otherwise the resized uint8 image recovered from
      pixel_values (asserted to reproduce them) as a PNG, plus the first 64 rows exactly and SHA-256
      digests of the full pixel_values and of the resized image;
  (c) records the PIL backend's (Qwen2VLImageProcessorPil) result for information;
  (d) checks that torch's AVX and generic (ATEN_CPU_CAPABILITY=default) uint8 paths agree;
  (e) records a smart_resize table from transformers' own function.

Layout of the tar (all little-endian):
  preprocess/index.json
  preprocess/images/<image>.{png,jpg}       inputs as files (what load_image reads)
  preprocess/images/<image>.rgb.png         the RGB pixels PIL produced (exif_transpose + convert("RGB")),
                                            only where the input is not already an RGB PNG
  preprocess/expected/<case>.f32            full pixel_values, float32 [N, 1176] (small cases)
  preprocess/expected/<case>.head.f32       first rows of pixel_values (large cases)
  preprocess/expected/<case>.resized.png    resized uint8 RGB image (large cases)
"""

import argparse
import hashlib
import inspect
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageOps

RELEASED_MIN = 3136  # preprocessor_config.json of Qwen2.5-VL (all sizes)
RELEASED_MAX = 12845056
CLASS_MAX = 28 * 28 * 1280  # transformers' class default when no preprocessor_config.json: 1003520
FULL_ROWS_LIMIT = 64  # store pixel_values in full up to this many rows
HEAD_ROWS = 32  # 8 merge blocks; keeps the committed fixtures under ~8 MB


def size_dict(s):
    """The processor's size (a dict or a SizeDict) as {shortest_edge, longest_edge}."""
    keys = ("shortest_edge", "longest_edge")
    if isinstance(s, dict):
        return {k: s.get(k) for k in keys}
    return {k: getattr(s, k, None) for k in keys}


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# ----------------------------------------------------------------------------------------------
# (a) image synthesis


def synth_rgb(w, h, seed):
    """Smooth gradients + a noise patch + dark text-like strokes. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u = xx / max(w - 1, 1)
    v = yy / max(h - 1, 1)
    ph = rng.uniform(0, 2 * np.pi, 3)
    r = 150 + 90 * np.sin(2 * np.pi * (0.8 * u + 0.3 * v) + ph[0])
    g = 140 + 80 * np.cos(2 * np.pi * (0.5 * u - 0.9 * v) + ph[1])
    b = 120 + 100 * u * v + 20 * np.sin(6 * np.pi * v + ph[2])
    arr = np.stack([r, g, b], -1)
    nh, nw = max(1, h // 6), max(1, w // 6)
    y0 = int(rng.integers(0, h - nh + 1))
    x0 = int(rng.integers(0, w - nw + 1))
    arr[y0 : y0 + nh, x0 : x0 + nw] += rng.normal(0, 25, (nh, nw, 3))
    arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)
    lh = max(3, h // 30)
    y = min(lh, max(0, h - 2))
    while y < h - 1:
        x = int(rng.integers(0, max(1, w // 10)))
        while x < w - 1:
            wl = int(rng.integers(max(2, lh), max(3, 4 * lh)))
            col = tuple(int(c) for c in rng.integers(0, 70, 3))
            for k in range(0, wl, max(2, lh // 2)):
                xs = x + k
                d.line([(xs, y), (xs + int(rng.integers(-1, 3)), y + lh)], fill=col, width=max(1, lh // 6))
            d.line([(x, y + lh), (x + wl, y + lh)], fill=col, width=1)
            x += wl + int(rng.integers(lh, 2 * lh + 1))
        y += max(2, int(2.2 * lh))
    return img


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def make_images():
    """Returns [(file_name, bytes)]."""
    out = []
    png = lambda name, img: out.append((name, encode(img, "PNG", optimize=True)))
    png("tiny_10x12.png", synth_rgb(10, 12, 1))
    png("small_30x40.png", synth_rgb(30, 40, 2))
    png("banker_70x42.png", synth_rgb(70, 42, 3))  # H=42, W=70 -> 56x56 only with round-half-even
    png("square_56x56.png", synth_rgb(56, 56, 4))  # already a multiple of 28: resize is a no-op
    png("odd_333x517.png", synth_rgb(333, 517, 5))
    png("wide_1400x90.png", synth_rgb(1400, 90, 6))  # width stays 1400: vertical pass only
    png("tall_60x1300.png", synth_rgb(60, 1300, 7))
    png("large_2400x1800.png", synth_rgb(2400, 1800, 8))
    png("upscale_120x90.png", synth_rgb(120, 90, 9))
    png("extreme_400x2.png", synth_rgb(400, 2, 10))  # aspect ratio exactly 200 (allowed)
    png("gray_200x150.png", synth_rgb(200, 150, 11).convert("L"))
    rgba = np.array(synth_rgb(180, 240, 12))
    yy, xx = np.mgrid[0:240, 0:180]
    alpha = ((xx * 255) // 179).astype(np.uint8)
    alpha[(yy // 20) % 3 == 0] = 0  # fully transparent bands whose RGB must survive convert("RGB")
    png("rgba_180x240.png", Image.fromarray(np.dstack([rgba, alpha])))
    png("palette_256x192.png", synth_rgb(256, 192, 13).quantize(colors=64))
    out.append(("photo_640x480.jpg", encode(synth_rgb(640, 480, 14), "JPEG", quality=90)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    out.append(("exif6_480x360.jpg", encode(synth_rgb(480, 360, 15), "JPEG", quality=90, exif=exif.tobytes())))
    return out


# (image, min_pixels, max_pixels) -> one case each
CASES = [
    ("tiny_10x12.png", RELEASED_MIN, RELEASED_MAX),
    ("small_30x40.png", RELEASED_MIN, RELEASED_MAX),
    ("banker_70x42.png", RELEASED_MIN, RELEASED_MAX),
    ("square_56x56.png", RELEASED_MIN, RELEASED_MAX),
    ("odd_333x517.png", RELEASED_MIN, RELEASED_MAX),
    ("odd_333x517.png", RELEASED_MIN, 64 * 28 * 28),  # downscale branch (h*w > max_pixels)
    ("wide_1400x90.png", RELEASED_MIN, RELEASED_MAX),
    ("tall_60x1300.png", RELEASED_MIN, RELEASED_MAX),
    ("large_2400x1800.png", RELEASED_MIN, RELEASED_MAX),
    ("large_2400x1800.png", RELEASED_MIN, CLASS_MAX),  # downscale branch, class-default budget
    ("upscale_120x90.png", 256 * 28 * 28, RELEASED_MAX),  # upscale branch (h*w < min_pixels)
    ("extreme_400x2.png", RELEASED_MIN, RELEASED_MAX),
    ("gray_200x150.png", RELEASED_MIN, RELEASED_MAX),
    ("rgba_180x240.png", RELEASED_MIN, RELEASED_MAX),
    ("palette_256x192.png", RELEASED_MIN, RELEASED_MAX),
    ("photo_640x480.jpg", RELEASED_MIN, RELEASED_MAX),
    ("exif6_480x360.jpg", RELEASED_MIN, RELEASED_MAX),
]


def case_name(image, mn, mx):
    stem = image.rsplit(".", 1)[0]
    return f"{stem}__min{mn}_max{mx}"


# ----------------------------------------------------------------------------------------------
# helpers over the reference


def open_rgb(data):
    """What the processor receives: PIL open + exif_transpose; returns (pil_image, rgb uint8 HWC)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    img = ImageOps.exif_transpose(img)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return img, rgb


def unpatchify(pv, gh, gw, patch=14, merge=2, temporal=2):
    """pixel_values [gh*gw, 3*T*p*p] -> channels-first float32 [3, gh*p, gw*p] (frame 0)."""
    x = pv.reshape(gh // merge, gw // merge, merge, merge, 3, temporal, patch, patch)
    assert np.array_equal(x[..., 0, :, :], x[..., 1, :, :]), "temporal copies differ"
    x = x[..., 0, :, :]  # (bh, bw, mh, mw, c, y, x)
    x = x.transpose(4, 0, 2, 5, 1, 3, 6)  # (c, bh, mh, y, bw, mw, x)
    return x.reshape(3, gh * patch, gw * patch)


def run_capability_probe(images, sizes, capability):
    """Resize every image with torchvision under ATEN_CPU_CAPABILITY=capability in a child process;
    returns {case: sha256 of the resized uint8 CHW tensor} and the capability torch reports."""
    code = r"""
import io, json, sys, hashlib
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as tvF
job = json.load(sys.stdin)
res = {"capability": torch.backends.cpu.get_cpu_capability(), "sha": {}}
for name, path, h, w in job:
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    t = tvF.pil_to_tensor(img)[None]
    r = tvF.resize(t, [h, w], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    res["sha"][name] = hashlib.sha256(r.contiguous().numpy().tobytes()).hexdigest()
print(json.dumps(res))
"""
    env = dict(os.environ)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    job = [[n, p, h, w] for n, (p, h, w) in sizes.items()]
    r = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(job), capture_output=True, text=True, env=env, timeout=240
    )
    if r.returncode != 0:
        return {"error": r.stderr[-2000:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()

    import PIL
    import torch
    import torchvision
    import transformers
    from torchvision.transforms.v2 import functional as tvF
    from transformers.models.qwen2_vl import image_processing_qwen2_vl as tv_mod
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except Exception:  # noqa: BLE001
        Qwen2VLImageProcessorPil = None

    report = {
        "versions": {
            "python": sys.version.split()[0],
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(),
        },
        "checks": {},
    }
    checks = report["checks"]

    # --- the size arguments: class defaults (checked first: __init__ mutates the class dict) and json
    default_proc = Qwen2VLImageProcessor()
    checks["class_default_size"] = size_dict(default_proc.size)
    checks["class_default_mean_std"] = [list(default_proc.image_mean), list(default_proc.image_std)]
    checks["class_default_rescale_factor"] = default_proc.rescale_factor
    checks["class_default_resample"] = repr(default_proc.resample)
    import tempfile

    released_json = {
        "min_pixels": RELEASED_MIN,
        "max_pixels": RELEASED_MAX,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    }
    json_variants = {
        "released_json_size": released_json,
        "size_dict_plus_max_pixels_json_size": {
            "size": {"shortest_edge": 1234, "longest_edge": 567890},
            "max_pixels": 765432,
        },
        "size_dict_only_json_size": {"size": {"shortest_edge": 4321, "longest_edge": 98765}},
    }
    for key, content in json_variants.items():
        try:
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
                    json.dump(content, f)
                checks[key] = size_dict(Qwen2VLImageProcessor.from_pretrained(d).size)
        except Exception as e:  # noqa: BLE001
            checks[key] = {"error": repr(e)}
    print("size checks:", json.dumps(checks), flush=True)
    checks["class_default_is_1003520"] = checks["class_default_size"] == {
        "shortest_edge": 3136, "longest_edge": CLASS_MAX}

    mean = np.array(default_proc.image_mean, dtype=np.float32)
    std = np.array(default_proc.image_std, dtype=np.float32)
    # The two candidate float32 formulas for rescale+normalize.
    rf = default_proc.rescale_factor
    m255 = (torch.tensor(list(default_proc.image_mean)) * (1.0 / rf)).numpy()
    s255 = (torch.tensor(list(default_proc.image_std)) * (1.0 / rf)).numpy()
    vals = np.arange(256, dtype=np.float32)[None, :]
    lut_fused = (vals - m255[:, None]) / s255[:, None]
    lut_unfused = (vals * np.float32(rf) - mean[:, None]) / std[:, None]
    report["normalize"] = {"mean255": m255.tolist(), "std255": s255.tolist()}

    # --- images
    images = dict(make_images())
    work = os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    for name, data in images.items():
        with open(os.path.join(work, name), "wb") as f:
            f.write(data)

    files = {}  # tar member -> bytes
    for name, data in images.items():
        files[f"preprocess/images/{name}"] = data
    rgb_of = {}
    image_meta = {}
    for name, data in images.items():
        img, rgb = open_rgb(data)
        rgb_of[name] = rgb
        raw_mode = Image.open(io.BytesIO(data)).mode
        is_rgb_png = name.endswith(".png") and raw_mode == "RGB"
        rgb_file = f"images/{name}" if is_rgb_png else "images/" + name.rsplit(".", 1)[0] + ".rgb.png"
        if not is_rgb_png:
            files[f"preprocess/{rgb_file}"] = encode(Image.fromarray(rgb), "PNG", optimize=True)
        image_meta[name] = {
            "mode": raw_mode,
            "rgb": rgb_file,
            "height": int(rgb.shape[0]),
            "width": int(rgb.shape[1]),
            "rgb_sha256": sha256(rgb.tobytes()),
        }
        # a stored RGB PNG must read back to the same pixels
        back = np.asarray(Image.open(io.BytesIO(files[f"preprocess/{rgb_file}"])).convert("RGB"))
        assert np.array_equal(back, rgb), name

    cases = []
    fused_exact = unfused_exact = total_vals = 0
    cap_sizes = {}
    ref_chw_sha = {}
    for image, mn, mx in CASES:
        cname = case_name(image, mn, mx)
        data = images[image]
        pil_img, rgb = open_rgb(data)
        proc = Qwen2VLImageProcessor(min_pixels=mn, max_pixels=mx)
        size_ok = size_dict(proc.size) == {"shortest_edge": mn, "longest_edge": mx}
        out = proc(images=pil_img, min_pixels=mn, max_pixels=mx, return_tensors="pt")
        pv = out["pixel_values"].numpy().astype(np.float32)
        grid = [int(v) for v in out["image_grid_thw"][0].tolist()]
        assert grid[0] == 1
        gh, gw = grid[1], grid[2]
        rh, rw = gh * 14, gw * 14
        sr = tv_mod.smart_resize(rgb.shape[0], rgb.shape[1], factor=28, min_pixels=mn, max_pixels=mx)
        assert (rh, rw) == tuple(sr), (cname, sr, rh, rw)
        assert pv.shape == (gh * gw, 1176), pv.shape

        chw = unpatchify(pv, gh, gw)
        u8f = np.rint(chw * s255[:, None, None] + m255[:, None, None])
        assert u8f.min() >= 0 and u8f.max() <= 255
        u8 = u8f.astype(np.uint8)  # [3, H, W]
        # the recovered image reproduces pixel_values
        fused = lut_fused[np.arange(3)[:, None, None], u8]
        unfused = lut_unfused[np.arange(3)[:, None, None], u8]
        err_fused = float(np.abs(fused - chw).max())
        assert err_fused <= 1e-5, (cname, err_fused)
        fused_exact += int((fused == chw).sum())
        unfused_exact += int((unfused == chw).sum())
        total_vals += chw.size
        # and equals torchvision's resize of the uint8 tensor directly
        direct = tvF.resize(
            tvF.pil_to_tensor(pil_img.convert("RGB"))[None],
            [rh, rw],
            interpolation=tvF.InterpolationMode.BICUBIC,
            antialias=True,
        )[0].numpy()
        assert np.array_equal(direct, u8), cname
        resized_hwc = np.ascontiguousarray(u8.transpose(1, 2, 0))
        cap_sizes[cname] = (os.path.join(work, image), rh, rw)
        ref_chw_sha[cname] = sha256(np.ascontiguousarray(u8).tobytes())

        case = {
            "name": cname,
            "image": f"images/{image}",
            "rgb": image_meta[image]["rgb"],
            "mode": image_meta[image]["mode"],
            "height": int(rgb.shape[0]),
            "width": int(rgb.shape[1]),
            "rgb_sha256": image_meta[image]["rgb_sha256"],
            "min_pixels": mn,
            "max_pixels": mx,
            "grid_thw": grid,
            "resized": [rh, rw],
            "shape": list(pv.shape),
            "pixel_values_sha256": sha256(np.ascontiguousarray(pv, dtype="<f4").tobytes()),
            "resized_sha256": sha256(resized_hwc.tobytes()),
            "max_abs_recovered_vs_reference": err_fused,
            "processor_size_ok": size_ok,
        }
        if pv.shape[0] <= FULL_ROWS_LIMIT:
            case["full"] = f"expected/{cname}.f32"
            files[f"preprocess/{case['full']}"] = np.ascontiguousarray(pv, dtype="<f4").tobytes()
        else:
            case["head"] = f"expected/{cname}.head.f32"
            case["head_rows"] = HEAD_ROWS
            files[f"preprocess/{case['head']}"] = np.ascontiguousarray(pv[:HEAD_ROWS], dtype="<f4").tobytes()
            case["resized_png"] = f"expected/{cname}.resized.png"
            png = encode(Image.fromarray(resized_hwc), "PNG", optimize=True)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), resized_hwc)
            files[f"preprocess/{case['resized_png']}"] = png

        # (c) PIL backend, for information only
        if Qwen2VLImageProcessorPil is not None:
            try:
                pp = Qwen2VLImageProcessorPil(min_pixels=mn, max_pixels=mx)
                o2 = pp(images=pil_img, min_pixels=mn, max_pixels=mx, return_tensors="np")
                pv2 = np.asarray(o2["pixel_values"], dtype=np.float32)
                g2 = [int(v) for v in np.asarray(o2["image_grid_thw"])[0].tolist()]
                info = {"grid_thw": g2, "sha256": sha256(np.ascontiguousarray(pv2, dtype="<f4").tobytes())}
                if pv2.shape == pv.shape:
                    diff = np.abs(pv2 - pv)
                    info["max_abs_diff_vs_torchvision"] = float(diff.max())
                    info["frac_values_differing"] = float((diff > 0).mean())
                case["pil_backend"] = info
            except Exception as e:  # noqa: BLE001
                case["pil_backend"] = {"error": repr(e)}
        cases.append(case)
        print(f"{cname}: {rgb.shape[1]}x{rgb.shape[0]} -> {rw}x{rh} grid {grid} "
              f"recovered err {err_fused:.2e} pil {case.get('pil_backend')}", flush=True)

    report["normalize"]["fused_exact_fraction"] = fused_exact / total_vals
    report["normalize"]["unfused_exact_fraction"] = unfused_exact / total_vals

    # (d) AVX vs generic uint8 path: every capability must give the reference's resized image
    probes = {}
    for cap in ["", "default", "avx2"]:
        res = run_capability_probe(images, cap_sizes, cap)
        if "sha" in res:
            probes[cap or "native"] = {
                "capability": res["capability"],
                "equal_to_reference": all(res["sha"].get(n) == s for n, s in ref_chw_sha.items()),
            }
        else:
            probes[cap or "native"] = res
    checks["capability_probes"] = probes
    checks["capability_paths_agree"] = all(p.get("equal_to_reference") is True for p in probes.values())
    print("capability probes:", json.dumps(probes), flush=True)

    # aspect-ratio errors
    aspect = []
    for h, w in [(2, 400), (2, 401), (2, 402), (1, 201), (3, 600), (600, 3), (5, 1001)]:
        try:
            tv_mod.smart_resize(h, w, 28, RELEASED_MIN, RELEASED_MAX)
            aspect.append([h, w, False])
        except ValueError:
            aspect.append([h, w, True])

    # (e) smart_resize table (transformers' own function)
    rng = np.random.default_rng(1234)
    budgets = [(RELEASED_MIN, RELEASED_MAX), (RELEASED_MIN, CLASS_MAX), (256 * 28 * 28, CLASS_MAX),
               (RELEASED_MIN, 64 * 28 * 28), (8 * 28 * 28, 4096 * 28 * 28)]
    table = []
    fixed = [(480, 640), (1080, 1920), (4000, 3000), (224, 224), (42, 70), (20, 20), (14, 14), (13, 13),
             (42, 42), (70, 70), (98, 98), (126, 126), (2, 400), (400, 2), (1, 1), (1, 200), (27, 28),
             (8192, 8192), (10000, 50)]
    for h, w in fixed:
        for mn, mx in budgets:
            hh, ww = tv_mod.smart_resize(h, w, 28, mn, mx)
            table.append([h, w, mn, mx, int(hh), int(ww)])
    while len(table) < 600:
        h = int(np.exp(rng.uniform(0, np.log(6000))))
        w = int(np.exp(rng.uniform(0, np.log(6000))))
        if max(h, w) / min(h, w) > 200:
            continue
        mn, mx = budgets[int(rng.integers(0, len(budgets)))]
        hh, ww = tv_mod.smart_resize(h, w, 28, mn, mx)
        table.append([h, w, mn, mx, int(hh), int(ww)])

    index = {
        "generator": "tools/reference/make_preprocess_fixtures.py",
        "reference": "transformers.Qwen2VLImageProcessor (TorchvisionBackend) after PIL open + exif_transpose",
        "versions": report["versions"],
        "image_mean": mean.tolist(),
        "image_std": std.tolist(),
        "normalize": report["normalize"],
        "checks": checks,
        "cases": cases,
        "aspect_errors": aspect,
        "smart_resize_table_columns": ["height", "width", "min_pixels", "max_pixels", "out_height", "out_width"],
        "smart_resize_table": table,
    }
    files["preprocess/index.json"] = json.dumps(index, indent=1).encode()

    with tarfile.open(os.path.join(args.out, "preprocess_fixtures.tar"), "w") as tar:
        for member in sorted(files):
            data = files[member]
            ti = tarfile.TarInfo(member)
            ti.size = len(data)
            ti.mtime = 0
            tar.addfile(ti, io.BytesIO(data))
    report["index"] = index
    report["fixture_bytes"] = sum(len(v) for v in files.values())
    report["seconds"] = time.time() - t0
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)

    # The reference functions whose arithmetic the C++ reproduces, for the record.
    srcs = []
    from transformers import image_processing_backends as backends

    for obj in [
        tv_mod.smart_resize,
        Qwen2VLImageProcessor.resize,
        Qwen2VLImageProcessor.patchify,
        Qwen2VLImageProcessor._preprocess,
        getattr(backends.TorchvisionBackend, "rescale_and_normalize", None),
        getattr(backends.TorchvisionBackend, "_rescale_and_normalize", None),
        getattr(backends.TorchvisionBackend, "_fuse_mean_std_and_rescale_factor", None),
        backends.TorchvisionBackend.process_image,
        backends.TorchvisionBackend.resize,
        tvF.normalize_image if hasattr(tvF, "normalize_image") else tvF.normalize,
        tvF.pil_to_tensor,
    ]:
        if obj is None:
            continue
        try:
            fn = getattr(obj, "__wrapped__", obj)
            fn = getattr(fn, "__func__", fn)
            srcs.append(f"# ---- {getattr(fn, '__qualname__', fn)} ({inspect.getsourcefile(fn)})\n"
                        + inspect.getsource(fn))
        except Exception as e:  # noqa: BLE001
            srcs.append(f"# ---- {obj}: {e!r}\n")
    with open(os.path.join(args.out, "sources.txt"), "w") as f:
        f.write("\n".join(srcs))

    import shutil

    shutil.rmtree(work)
    print(f"normalize exact: fused {report['normalize']['fused_exact_fraction']:.6f} "
          f"unfused {report['normalize']['unfused_exact_fraction']:.6f}")
    print(f"fixture bytes {report['fixture_bytes']} in {report['seconds']:.1f}s")


if __name__ == "__main__":
    main()
