#!/usr/bin/env python3
"""Reference encodings for the C++ tokenizer parity test (tests/text/test_tokenizer.cpp).

Loads tokenizer.json with the Hugging Face `tokenizers` library (Tokenizer.from_file) and writes
expected.json with:
  line_cases   one case per line of corpus.txt. The corpus is read as UTF-8 with newline='' and split on
               '\\n' only, so a CR byte stays part of its line (CRLF lines end with '\\r'); U+0085, U+2028,
               form feed, vertical tab... stay inside their line too. Every case's text is stored as a JSON
               string (ensure_ascii), so any character survives; the C++ test reads the texts from here.
  doc_cases    multi-line documents: each corpus section joined with '\\n', some joined with '\\r\\n', the
               clinical sections together, and the whole corpus file as one string.
               Each line/doc case also carries "decoded" (decode of its ids; NFC of the text) and, when it
               holds added tokens, "decoded_skip" (skip_special_tokens=True).
  decode_cases id lists and their decode(): hand-made byte sequences that are not valid UTF-8 (replacement
               rule), single byte tokens, special tokens with skip_special_tokens false/true, and
               {"line": i, "prefix": k} / {"line": i, "suffix": k}: decode of line_cases[i].ids[:k] / [k:]
               with skip_special_tokens=True, which cut multi-byte characters.
  chat_cases   messages rendered by transformers' apply_chat_template with the Qwen2.5-VL processor template
               (spec §6), and the ids of the rendered prompt.
All encodings use add_special_tokens=False (Qwen adds none anyway). A cross-check with transformers'
AutoTokenizer (loaded from a folder holding the same tokenizer.json) is recorded under "transformers_check".

Usage (on the GPU machine, no network needed):
  python3 tools/reference/make_tokenizer_fixtures.py --tokenizer .carry/tok/tokenizer.json \
      --corpus tests/fixtures/tokenizer/corpus.txt --out $OUT/expected.json
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile

from tokenizers import Tokenizer
import tokenizers

# The Qwen2-VL / Qwen2.5-VL processor chat template (chat_template.json), as published.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CHAT_CASES = [
    # The spec §6 example.
    ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this image?"}]}], True),
    ([{"role": "user", "content": "Extract the medications as JSON."}], False),
    ([{"role": "system", "content": "You are a clinical data abstractor. Answer in JSON only."},
      {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Page 1 of the discharge summary."},
                                   {"type": "image"}, {"type": "text", "text": "Page 2. List labs with units."}]}],
     True),
    ([{"role": "user", "content": "K+ 3.2 mmol/L (L)?"},
      {"role": "assistant", "content": "{\"name\": \"K\", \"value\": 3.2, \"unit\": \"mmol/L\", \"flag\": \"L\"}"},
      {"role": "user", "content": [{"type": "text", "text": "Now the vitals: T 38.2 °C, SpO₂ 94% on 2 L NC.\n"},
                                   {"type": "image"}]}],
     True),
    ([{"role": "assistant", "content": "Ready."}, {"role": "user", "content": "  leading and trailing  \n"}], True),
    ([{"role": "user", "content": [{"type": "text", "text": "Zürich café e\u0301 患者 🧑‍⚕️\r\nnext"}]}], False),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bytes_to_unicode():
    """The GPT-2 byte alphabet (printable bytes map to themselves, the others to U+0100...)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--debug-out", help="also write the pre-tokenizer pieces of every line here (for debugging)")
    args = ap.parse_args()

    tok = Tokenizer.from_file(args.tokenizer)
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731

    with open(args.corpus, encoding="utf-8", newline="") as f:
        corpus = f.read()
    lines = corpus.split("\n")
    if lines and lines[-1] == "":
        lines.pop()

    # --- line cases ---
    line_texts = lines + [""]  # the empty string too
    line_cases = [{"text": t, "ids": enc(t)} for t in line_texts]

    # --- documents ---
    sections, cur = [], None
    for l in lines:
        if l.startswith("## "):
            cur = [l]
            sections.append(cur)
        elif cur is not None:
            cur.append(l)
    docs = []
    for s in sections:
        docs.append("\n".join(s) + "\n")
    for s in sections[::3]:
        docs.append("\r\n".join(s))
    clinical = [s for s in sections if s[0].startswith("## clinical")]
    docs.append("\n\n".join("\n".join(s) for s in clinical))
    docs.append("  \n\t\n" + "\n   \n".join(lines[:40]) + "\n\n\n   ")  # blank lines and space runs
    docs.append(corpus)  # the whole file, exactly
    doc_cases = [{"text": d, "ids": enc(d)} for d in docs]

    # --- decode cases ---
    b2u = bytes_to_unicode()
    vocab = tok.get_vocab(with_added_tokens=True)
    byte_id = {b: vocab[b2u[b]] for b in range(256)}
    decode_cases = []

    def add_decode(ids, skip=False, kind=""):
        decode_cases.append({"ids": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip),
                             "kind": kind})

    for c in line_cases + doc_cases:
        c["decoded"] = tok.decode(c["ids"], skip_special_tokens=False)
        if any(i >= 151643 for i in c["ids"]):
            c["decoded_skip"] = tok.decode(c["ids"], skip_special_tokens=True)
    # Prefixes and suffixes cutting multi-byte characters, for lines with non-ASCII text.
    for i, c in enumerate(line_cases):
        if any(ord(ch) > 127 for ch in c["text"]) and len(c["ids"]) > 1:
            for k in range(1, len(c["ids"])):
                pre, suf = c["ids"][:k], c["ids"][k:]
                decode_cases.append({"line": i, "prefix": k, "text": tok.decode(pre, skip_special_tokens=True)})
                decode_cases.append({"line": i, "suffix": k, "text": tok.decode(suf, skip_special_tokens=True)})
    # Hand-made byte sequences (ill-formed UTF-8 and truncations).
    seqs = [
        [0xE2], [0xE2, 0x82], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98], [0xF0, 0x9F, 0x98, 0x80],
        [0xED, 0xA0, 0x80], [0xED, 0x9F, 0xBF], [0xC0, 0x80], [0xC1, 0xBF], [0xC2], [0xC2, 0x41],
        [0xE0, 0x80, 0x80], [0xE0, 0xA0], [0xE0, 0xA0, 0x41], [0xF0, 0x80, 0x80, 0x80], [0xF0, 0x90],
        [0xF4, 0x8F, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80],
        [0xFE], [0xFF], [0x80], [0x80, 0x80, 0x80], [0xBF], [0x41, 0xE2, 0x42], [0xE1, 0x80, 0x41],
        [0xF1, 0x80, 0x80], [0xF1, 0x80, 0x80, 0x80], [0xEF, 0xBF, 0xBD], [0xEF, 0xBB, 0xBF, 0x41],
        [0x00], [0x7F, 0xC3, 0xA9, 0xC3], [0xE2, 0x28, 0xA1], [0xF0, 0x28, 0x8C, 0xBC], [0xF0, 0x90, 0x28, 0xBC],
    ]
    python_agrees = True
    for seq in seqs:
        ids = [byte_id[b] for b in seq]
        add_decode(ids, False, "bytes")
        if decode_cases[-1]["text"] != bytes(seq).decode("utf-8", errors="replace"):
            python_agrees = False
    for b in range(256):
        add_decode([byte_id[b]], False, "single_byte")
    specials = [151643, 151644, 151645, 151652, 151655, 151653, 151657, 151658, 151665, 151667, 151668]
    mixed = [151644, 8948, 198] + [byte_id[0xE2], 151655, byte_id[0x82], byte_id[0xAC]] + specials + [13]
    add_decode(mixed, False, "mixed_special")
    add_decode(mixed, True, "mixed_special")
    add_decode(specials, False, "specials")
    add_decode(specials, True, "specials")
    add_decode([], False, "empty")

    # --- chat cases ---
    # Rendered by transformers' apply_chat_template (its sandboxed jinja environment); jinja2 directly with
    # the same settings (trim_blocks, lstrip_blocks) when transformers cannot render a case.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    jinja_tmpl = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        QWEN_VL_CHAT_TEMPLATE)
    ttok = None
    try:
        import transformers
        from transformers import PreTrainedTokenizerFast

        ttok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(args.tokenizer))
        ttok.chat_template = QWEN_VL_CHAT_TEMPLATE
        transformers_version = transformers.__version__
    except Exception as e:  # pragma: no cover
        print("transformers unavailable for chat rendering:", repr(e), file=sys.stderr)
    chat_cases = []
    for msgs, gen in CHAT_CASES:
        text, renderer = None, "jinja2"
        if ttok is not None:
            try:
                text = ttok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
                renderer = "transformers " + transformers_version
                if not isinstance(text, str):
                    text = None
            except Exception as e:
                print("apply_chat_template failed:", repr(e), file=sys.stderr)
                text = None
        jtext = jinja_tmpl.render(messages=msgs, add_generation_prompt=gen, add_vision_id=False)
        if text is None:
            text, renderer = jtext, "jinja2"
        chat_cases.append({"messages": msgs, "add_generation_prompt": gen, "text": text, "ids": enc(text),
                           "renderer": renderer, "jinja2_agrees": jtext == text})
    renderer = sorted(set(c["renderer"] for c in chat_cases))

    # --- cross-check with transformers AutoTokenizer ---
    check = {}
    try:
        import shutil

        from transformers import AutoTokenizer

        with tempfile.TemporaryDirectory() as d:
            shutil.copy(args.tokenizer, os.path.join(d, "tokenizer.json"))
            with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
                json.dump({"tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131072,
                           "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
                           "errors": "replace", "clean_up_tokenization_spaces": False,
                           "split_special_tokens": False, "add_prefix_space": False}, f)
            at = AutoTokenizer.from_pretrained(d)
            check["class"] = type(at).__name__
            mism = [c["text"][:80] for c in line_cases + doc_cases
                    if at(c["text"], add_special_tokens=False)["input_ids"] != c["ids"]]
            check["encode_cases"] = len(line_cases) + len(doc_cases)
            check["encode_mismatches"] = len(mism)
            check["encode_mismatch_examples"] = mism[:10]
            dm = [c["ids"][:20] for c in decode_cases
                  if "ids" in c and at.decode(c["ids"], skip_special_tokens=c["skip_special"]) != c["text"]]
            dm += [c["text"][:80] for c in line_cases + doc_cases if at.decode(c["ids"]) != c["decoded"]]
            check["decode_cases"] = len(decode_cases)
            check["decode_mismatches"] = len(dm)
            check["decode_mismatch_examples"] = dm[:10]
    except Exception as e:
        check["error"] = repr(e)

    out = {
        "generator": "tools/reference/make_tokenizer_fixtures.py",
        "tokenizers_version": tokenizers.__version__,
        "tokenizer_sha256": sha256_file(args.tokenizer),
        "corpus_sha256": sha256_file(args.corpus),
        "corpus_split": "corpus.txt read as UTF-8 with newline='' and split on '\\n' only (CR stays in its line)",
        "chat_renderer": renderer,
        "decode_matches_python_replace": python_agrees,
        "transformers_check": check,
        "line_cases": line_cases,
        "doc_cases": doc_cases,
        "decode_cases": decode_cases,
        "chat_cases": chat_cases,
    }
    if args.debug_out:
        try:
            with open(args.debug_out, "w", encoding="ascii") as f:
                for c in line_cases:
                    pieces = [p[0] for p in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(c["text"]))]
                    d = {"text": c["text"], "pieces": pieces, "tokens": [tok.id_to_token(i) for i in c["ids"]]}
                    f.write(json.dumps(d, ensure_ascii=True) + "\n")
        except Exception as e:
            print("debug output failed:", repr(e), file=sys.stderr)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="ascii") as f:
        # One case per line keeps the file diffable.
        f.write("{\n")
        keys = list(out)
        for i, k in enumerate(keys):
            v = out[k]
            sep = "," if i + 1 < len(keys) else ""
            if isinstance(v, list):
                f.write(json.dumps(k) + ": [\n")
                for j, c in enumerate(v):
                    f.write("  " + json.dumps(c, ensure_ascii=True) + ("," if j + 1 < len(v) else "") + "\n")
                f.write("]" + sep + "\n")
            else:
                f.write(json.dumps(k) + ": " + json.dumps(v, ensure_ascii=True) + sep + "\n")
        f.write("}\n")
    print(json.dumps({k: out[k] for k in ("tokenizers_version", "chat_renderer", "decode_matches_python_replace",
                                          "transformers_check")}, indent=1))
    print("cases:", len(line_cases), "lines,", len(doc_cases), "docs,", len(decode_cases), "decodes,",
          len(chat_cases), "chats")


if __name__ == "__main__":
    main()
