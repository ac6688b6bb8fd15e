#!/usr/bin/env bash
# Writes the random checkpoints of the model parity fixtures (tests/fixtures/model/<name>/) with the
# medvision binary, for tools/reference/make_fixtures.py to load with transformers.
# Usage: tools/reference/make_fixture_checkpoints.sh MEDVISION_BINARY OUT_DIR
# Only the first checkpoint keeps its tokenizer.json (11 MB); make_fixtures.py copies it to the others,
# so the folder stays small enough to carry to the GPU machine.
set -euo pipefail
bin=${1:?medvision binary}
out=${2:?output folder}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
first=""
for fx in "$root"/tests/fixtures/model/*/fixture.json; do
  dir=$(dirname "$fx")
  name=$(basename "$dir")
  read -r seed dtype std < <(python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); print(f["seed"], f["dtype"], f.get("init_std", 0.02))' "$fx")
  "$bin" -q debug random-checkpoint --config "$dir/config.json" --out "$out/$name" --seed "$seed" --dtype "$dtype" --init-std "$std"
  if [ -z "$first" ]; then first=$name; else rm -f "$out/$name/tokenizer.json"; fi
done
echo "tokenizer.json kept in $out/$first"
