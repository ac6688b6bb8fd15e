#!/usr/bin/env python3
"""Independent check of an NF4 checkpoint in bitsandbytes' serialized layout (numpy only).

Reads every *.safetensors file of --quantized with its own parser, and for each weight that carries
`<name>.quant_state.bitsandbytes__nf4`:
  * checks the tensors, dtypes and shapes of the layout (packed U8 [ceil(n/2), 1], absmax U8 [nb],
    quant_map F32 [16], nested_absmax F32 [ceil(nb/256)], nested_quant_map F32 [256]) and the JSON;
  * rebuilds the NF4 table and the signed dynamic 8-bit map from their published construction (normal
    quantiles with offset 0.9677083; decades of linspace midpoints) and compares them with the stored ones;
  * dequantizes with the published formula: a' = nested_quant_map[absmax] * nested_absmax[i // 256] + offset,
    w' = quant_map[code] * a'[e // 64], codes two per byte with the even element in the high nibble;
  * with --original: re-encodes the original weights (absmax per 64, x * (1/absmax), count of midpoints
    exceeded; offset = mean(absmax), blocks of 256, nearest map entry) and requires the same codes, checks
    |w - w'| against the rounding bound, and that every other tensor was copied unchanged;
  * checks quantization_config in config.json.
Prints a JSON summary; exits 1 when a check fails.
"""
import argparse
import json
import os
import statistics
import struct
import sys

import numpy as np

F32 = np.float32


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[a:b])
    return out


def to_array(dtype, shape, raw):
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").reshape(shape)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(F32).reshape(shape)
    if dtype == "BF16":
        u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return u.view(F32).reshape(shape)
    if dtype == "U8":
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    raise ValueError("unsupported dtype " + dtype)


def load_dir(d):
    tensors = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            tensors.update(read_safetensors(os.path.join(d, fn)))
    return tensors


def published_nf4():
    """NF4 levels: normal quantiles at evenly spaced probabilities (offset 0.9677083), normalized."""
    nd = statistics.NormalDist()
    off = 0.9677083
    pos = [nd.inv_cdf(off - k * (off - 0.5) / 8) for k in range(8)]
    neg = [-nd.inv_cdf(off - k * (off - 0.5) / 7) for k in range(7)]
    v = np.array(sorted(pos + neg + [0.0]), dtype=np.float64)
    return v / v.max()


def published_dynamic_map():
    """Signed dynamic map: for i in 0..6, the 2^i midpoints of [0.1, 1] times ±10^(i-6); then 0 and 1."""
    data = []
    for i in range(7):
        b = np.linspace(0.1, 1.0, 2 ** i + 1)
        m = (b[:-1] + b[1:]) / 2.0
        data += list(10.0 ** (i - 6) * m) + list(-(10.0 ** (i - 6)) * m)
    data += [0.0, 1.0]
    return np.array(sorted(data), dtype=np.float64)


def unpack_codes(packed, n):
    p = packed.reshape(-1)
    codes = np.empty(p.size * 2, dtype=np.uint8)
    codes[0::2] = p >> 4
    codes[1::2] = p & 0x0F
    return codes[:n]


def check_weight(name, t, original, errors, stats):
    key_order = ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"]
    state_raw = t[name + ".quant_state.bitsandbytes__nf4"]
    if state_raw[0] != "U8":
        errors.append(f"{name}: quant_state dtype {state_raw[0]}")
    text = bytes(state_raw[2]).decode("utf-8")
    qs = json.loads(text)
    if list(qs.keys()) != key_order:
        errors.append(f"{name}: quant_state keys {list(qs.keys())}")
    if json.dumps(qs) != text:
        errors.append(f"{name}: quant_state is not in json.dumps form: {text}")
    if qs["quant_type"] != "nf4" or qs["blocksize"] != 64 or qs["nested_blocksize"] != 256:
        errors.append(f"{name}: unexpected quant_state {qs}")
    shape = qs["shape"]
    n = int(np.prod(shape))
    bs, nbs = qs["blocksize"], qs["nested_blocksize"]
    nb = (n + bs - 1) // bs
    nb2 = (nb + nbs - 1) // nbs
    expect = {
        "": ("U8", [(n + 1) // 2, 1]),
        ".absmax": ("U8", [nb]),
        ".quant_map": ("F32", [16]),
        ".nested_absmax": ("F32", [nb2]),
        ".nested_quant_map": ("F32", [256]),
    }
    arr = {}
    for suffix, (dt, shp) in expect.items():
        k = name + suffix
        if k not in t:
            errors.append(f"{k}: missing")
            return None
        if t[k][0] != dt or list(t[k][1]) != shp:
            errors.append(f"{k}: {t[k][0]} {t[k][1]}, expected {dt} {shp}")
            return None
        arr[suffix] = to_array(*t[k])

    qmap = arr[".quant_map"].astype(np.float64)
    dmap = arr[".nested_quant_map"]
    stats["max_nf4_table_diff"] = max(stats.get("max_nf4_table_diff", 0.0),
                                      float(np.abs(qmap - published_nf4()).max()))
    stats["max_dynamic_map_diff"] = max(stats.get("max_dynamic_map_diff", 0.0),
                                        float(np.abs(dmap.astype(np.float64) - published_dynamic_map()).max()))

    # Published dequantization formula (float32 arithmetic).
    offset = F32(qs["nested_offset"])
    nested_absmax = arr[".nested_absmax"]
    q = arr[".absmax"]
    scale = (dmap[q] * np.repeat(nested_absmax, nbs)[:nb]).astype(F32) + offset
    codes = unpack_codes(arr[""], n)
    w_deq = (arr[".quant_map"][codes] * np.repeat(scale, bs)[:n]).astype(F32)
    if (n % 2) and (arr[""].reshape(-1)[-1] & 0x0F) != 7:
        errors.append(f"{name}: odd element count but the pad nibble is not code 7")

    if original is None:
        return w_deq
    okey = name
    if okey not in original:
        errors.append(f"{name}: not in the original checkpoint")
        return w_deq
    odt, oshape, oraw = original[okey]
    if list(oshape) != list(shape):
        errors.append(f"{name}: original shape {oshape}, quant_state says {shape}")
        return w_deq
    torch_names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    if qs["dtype"] != torch_names[odt]:
        errors.append(f"{name}: quant_state dtype {qs['dtype']}, original {odt}")
    w = to_array(odt, oshape, oraw).reshape(-1).astype(F32)

    # Re-encode: 4-bit codes.
    pad = (-n) % bs
    wb = np.concatenate([w, np.zeros(pad, F32)]).reshape(-1, bs)
    valid = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)]).reshape(-1, bs)
    absmax = np.where(valid, np.abs(wb), F32(0)).max(axis=1).astype(F32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (F32(1.0) / absmax).astype(F32)
        xhat = (wb * inv[:, None]).astype(F32).reshape(-1)[:n]
    table = arr[".quant_map"]
    thresholds = ((table[:-1].astype(np.float64) + table[1:]) / 2.0).astype(F32)
    my_codes = (xhat[:, None] > thresholds[None, :]).sum(axis=1).astype(np.uint8)
    near_threshold = np.abs(xhat[:, None] - thresholds[None, :]).min(axis=1) <= 1e-6
    bad = (my_codes != codes) & ~near_threshold
    if bad.any():
        i = int(np.argmax(bad))
        errors.append(f"{name}: {int(bad.sum())} codes differ from the re-encoding (first at {i}: "
                      f"file {codes[i]}, expected {my_codes[i]}, x̂ {xhat[i]!r})")
    stats["codes_checked"] = stats.get("codes_checked", 0) + n
    stats["codes_near_threshold"] = stats.get("codes_near_threshold", 0) + int(near_threshold.sum())

    # Re-encode: double quantization of absmax.
    mean = F32(np.mean(absmax.astype(np.float64)))
    if abs(float(mean) - float(offset)) > 2e-7 * max(abs(float(mean)), 1e-30) + 1e-12:
        errors.append(f"{name}: nested_offset {offset!r} differs from mean(absmax) {mean!r}")
    r = (absmax - offset).astype(F32)
    padr = (-nb) % nbs
    rb = np.concatenate([r, np.zeros(padr, F32)]).reshape(-1, nbs)
    validr = np.concatenate([np.ones(nb, bool), np.zeros(padr, bool)]).reshape(-1, nbs)
    s = np.where(validr, np.abs(rb), F32(0)).max(axis=1).astype(F32)
    if not np.array_equal(s, nested_absmax):
        errors.append(f"{name}: nested_absmax differs from max|absmax - offset| per 256 blocks")
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (rb * (F32(1.0) / s)[:, None]).astype(F32).reshape(-1)[:nb]
    dist = np.abs(x[:, None].astype(np.float64) - dmap[None, :].astype(np.float64))
    best = dist.min(axis=1)
    chosen = dist[np.arange(nb), q]
    far = chosen > best + 1e-7 * np.maximum(np.abs(x), 1e-30)
    if far.any():
        i = int(np.argmax(far))
        errors.append(f"{name}: {int(far.sum())} absmax codes are not the nearest map entry (first at {i})")

    # Error bound: half the widest NF4 gap times the block's absmax, plus the absmax's own error.
    a_true = np.repeat(absmax, bs)[:n]
    a_deq = np.repeat(scale, bs)[:n]
    bound = F32(0.15191) * a_true + np.abs(a_true - a_deq) + F32(1e-6)
    over = np.abs(w - w_deq) > bound
    if over.any():
        errors.append(f"{name}: {int(over.sum())} elements exceed the rounding bound")
    stats["err2"] = stats.get("err2", 0.0) + float(np.sum((w.astype(np.float64) - w_deq) ** 2))
    stats["ref2"] = stats.get("ref2", 0.0) + float(np.sum(w.astype(np.float64) ** 2))
    return w_deq


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quantized", required=True, help="NF4 checkpoint folder")
    ap.add_argument("--original", help="the 16/32-bit checkpoint it was made from")
    ap.add_argument("--expect-skip", default=None,
                    help="comma-separated llm_int8_skip_modules expected in config.json ('' = null)")
    args = ap.parse_args()

    t = load_dir(args.quantized)
    original = load_dir(args.original) if args.original else None
    errors, stats = [], {}
    weights = sorted(k[: -len(".quant_state.bitsandbytes__nf4")] for k in t
                     if k.endswith(".quant_state.bitsandbytes__nf4"))
    for name in weights:
        check_weight(name, t, original, errors, stats)

    aux = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4")
    kept = [k for k in t if k not in weights and not any(k == w + s for w in weights for s in aux)]
    if original is not None:
        for k in kept:
            if k not in original or original[k] != t[k]:
                errors.append(f"{k}: not copied unchanged from the original")
        for k in original:
            if k not in t:
                errors.append(f"{k}: in the original but missing")
    for k in kept:
        if k.endswith("lm_head.weight") or "embed_tokens" in k:
            if t[k][0] == "U8":
                errors.append(f"{k}: must stay 16-bit")

    with open(os.path.join(args.quantized, "config.json")) as f:
        config = json.load(f)
    qc = config.get("quantization_config")
    if not qc:
        errors.append("config.json: no quantization_config")
    else:
        want = {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
                "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_quant_storage": "uint8", "_load_in_4bit": True, "_load_in_8bit": False}
        for k, v in want.items():
            if qc.get(k) != v:
                errors.append(f"quantization_config.{k} = {qc.get(k)!r}, expected {v!r}")
        if args.expect_skip is not None:
            exp = [s for s in args.expect_skip.split(",") if s] or None
            if qc.get("llm_int8_skip_modules") != exp:
                errors.append(f"llm_int8_skip_modules = {qc.get('llm_int8_skip_modules')!r}, expected {exp!r}")

    summary = {
        "quantized_weights": len(weights),
        "kept_tensors": len(kept),
        "max_nf4_table_diff": stats.get("max_nf4_table_diff"),
        "max_dynamic_map_diff": stats.get("max_dynamic_map_diff"),
        "codes_checked": stats.get("codes_checked", 0),
        "codes_near_threshold": stats.get("codes_near_threshold", 0),
        "relative_rms_error": (stats["err2"] / stats["ref2"]) ** 0.5 if stats.get("ref2") else None,
        "errors": errors[:20],
        "ok": not errors,
    }
    if stats.get("max_nf4_table_diff") is not None and stats["max_nf4_table_diff"] > 1e-6:
        errors.append(f"quant_map differs from the published NF4 levels by {stats['max_nf4_table_diff']}")
        summary["ok"] = False
    if stats.get("max_dynamic_map_diff") is not None and stats["max_dynamic_map_diff"] > 1e-6:
        errors.append(f"nested_quant_map differs from the published map by {stats['max_dynamic_map_diff']}")
        summary["ok"] = False
    if not weights:
        errors.append("no NF4 weights found")
        summary["ok"] = False
    summary["errors"] = errors[:20]
    print(json.dumps(summary, indent=1))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
