"""Build the demo input folder: real DICOM that packages ship + generated phantoms + broken files.

    python -m tools.demo_data data/demo [--size small|medium]

Everything here is either public test data (pydicom, nibabel) or synthetic (tools.phantom);
the folder looks like a hospital export: random file names, several studies and series,
compressed and multi-frame objects, a zip, NIfTI and NRRD, and a few files that must be
refused (truncated, not DICOM, a header bomb). Deterministic: same arguments, same bytes.

It also writes a labelled cohort for fine-tuning: small CT phantoms in ``<out>/labelled/``
(DICOM series and NIfTI), their label maps in ``<out>-labels/`` and the label table
``<out>-labels.yaml`` beside ``<out>`` (docs/labels.md). The masks sit outside ``<out>`` so
that ingesting ``<out>`` alone never takes a mask for an image:

    medssl ingest data/demo --out STORE --labels data/demo-labels.yaml
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from tools.phantom import (
    LESION_KINDS,
    ORGAN_LABELS,
    Phantom,
    make_ct_phantom,
    make_mr_phantom,
    write_ct_series,
    write_enhanced_multiframe,
    write_mosaic,
    write_mr_series,
    write_nifti,
    write_nrrd,
    write_radiograph,
)

SIZES = {"small": ((96, 96, 48), (3.5, 3.5, 5.0)), "medium": ((192, 192, 96), (1.8, 1.8, 2.5))}
LABELLED_SHAPE, LABELLED_SPACING = (64, 64, 40), (3.0, 3.0, 4.0)
LABELLED_CASES = 16
# lesions per case, cycling: cases 1, 5, 9 and 13 have none (diagnosis needs normal cases), the
# others 3 or 4, so the detector sees 30 lesions of all 5 kinds in training and 10 in validation
LESIONS_PER_CASE = (0, 3, 4, 3)
# cases 2, 5, 8 and 11 validate (`split: val`): lesions of every kind, and a case without
# lesions; fixed, so no project key moves the demo's split
VALIDATION_CASES = (2, 5, 8, 11)
# one value per lesion kind across the cohort, so every case shares one structure vocabulary
LESION_VALUES = {kind: 101 + n for n, kind in enumerate(LESION_KINDS)}
NO_LESION = "no lesion"


def build(out: Path, size: str = "small") -> list[Path]:
    """Write the demo folder; returns the top-level entries written."""
    shape, spacing = SIZES[size]
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    dicom, volumes, broken = out / "dicom", out / "volumes", out / "broken"
    for d in (dicom, volumes, broken):
        d.mkdir(parents=True)
    _packaged_dicom(dicom / "packaged")

    ct = make_ct_phantom(shape, spacing, seed=1)
    mr = make_mr_phantom(shape, spacing, seed=2)
    ct2 = make_ct_phantom(shape, spacing, seed=3)
    write_ct_series(ct, dicom / "export-a", patient_id="DEMO001", series_number=1, seed=1)
    write_ct_series(ct, dicom / "export-a", patient_id="DEMO001", series_number=2, orientation="coronal", seed=2)
    write_ct_series(ct2, dicom / "export-b", patient_id="DEMO002", series_number=1, transfer_syntax="JPEG2000Lossless", seed=3)
    write_ct_series(ct2, dicom / "export-b", patient_id="DEMO002", series_number=3, gantry_tilt_deg=12.0, seed=4)
    write_ct_series(ct2, dicom / "export-b", patient_id="DEMO002", series_number=4, missing_slices=(20,), transfer_syntax="RLELossless", seed=5)
    oblique = [0.9659258, 0.258819, 0.0, -0.0449435, 0.1677312, -0.9848078]  # 15 deg in-plane, 10 deg tilt
    write_mr_series(mr, dicom / "export-c", patient_id="DEMO003", series_number=1, orientation=oblique, seed=6)
    write_enhanced_multiframe(mr, dicom / "export-c" / "enhanced.dcm", patient_id="DEMO003", series_number=2, seed=7)
    write_mosaic(mr, dicom / "export-c" / "bold.dcm", patient_id="DEMO003", series_number=3, seed=8)
    _reviewed(write_radiograph(dicom / "export-d" / "chest.dcm", phantom=ct, patient_id="DEMO001", seed=9))

    zipped = out / "tmp-zip"
    write_mr_series(make_mr_phantom(shape, spacing, seed=4), zipped, patient_id="DEMO004", seed=10, transfer_syntax="JPEGLSLossless")
    with zipfile.ZipFile(out / "archive.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(zipped.iterdir()):
            zf.write(path, f"DICOM/{path.name}")
    shutil.rmtree(zipped)

    write_nifti(make_ct_phantom(shape, spacing, seed=5), volumes / "ct-phantom.nii.gz")
    write_nrrd(make_mr_phantom(shape, spacing, seed=6), volumes / "mr-phantom.nrrd")
    from nibabel.testing import data_path

    shutil.copy(Path(data_path) / "example4d.nii.gz", volumes / "nibabel-example4d.nii.gz")
    _broken(broken)
    _labelled(out)
    return sorted(out.iterdir())


def _labelled(out: Path) -> Path:
    """Labelled CT phantoms in ``out/labelled`` + masks and table beside ``out``; returns the table."""
    masks = out.parent / f"{out.name}-labels"
    table = out.parent / f"{out.name}-labels.yaml"
    if masks.exists():
        shutil.rmtree(masks)
    masks.mkdir(parents=True)
    kinds = list(LESION_KINDS)
    cases = []
    for n in range(LABELLED_CASES):
        chosen = [kinds[(n + m) % len(kinds)] for m in range(LESIONS_PER_CASE[n % len(LESIONS_PER_CASE)])]
        ph = make_ct_phantom(LABELLED_SHAPE, LABELLED_SPACING, seed=100 + n, n_lesions=len(chosen), lesion_kinds=chosen or None)
        name = f"case{n + 1:02d}"
        if n % 2 == 0:
            write_ct_series(ph, out / "labelled" / name, patient_id=f"DEMOL{n + 1:02d}", seed=100 + n)
            image = f"{out.name}/labelled/{name}"
        else:
            write_nifti(ph, out / "labelled" / f"{name}.nii.gz")
            image = f"{out.name}/labelled/{name}.nii.gz"
        _save_mask(_cohort_labels(ph), ph.affine, masks / f"{name}_seg.nii.gz")
        case = {"image": image, "mask": f"{masks.name}/{name}_seg.nii.gz", "classes": sorted({k.replace("_", " ") for k in chosen}) or [NO_LESION],
                "modality": "CT"}  # the NIfTI cases carry none: without it they are normalised as "OT", not by the CT window
        if ph.lesions and n % 4 != 3:  # boxes for most cases, not all: a table may mix
            case["boxes"] = [_lesion_box(ph, les) for les in ph.lesions]
        if n + 1 in VALIDATION_CASES:
            case["split"] = "val"
        cases.append(case)
    structures = {v: name for v, name in ORGAN_LABELS.items() if v} | {v: kind for kind, v in LESION_VALUES.items()}
    doc = {"structures": structures, "classes": [NO_LESION, *(k.replace("_", " ") for k in kinds)], "cases": cases}
    table.write_text("# generated by tools/demo_data.py: labelled CT phantoms (docs/labels.md)\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100))
    return table


def _cohort_labels(ph: Phantom) -> np.ndarray:
    """The phantom's label map with each lesion valued by its kind (LESION_VALUES)."""
    labels = ph.labels.copy()
    for les in ph.lesions:
        labels[ph.labels == les.label] = LESION_VALUES[les.kind]
    return labels


def _lesion_box(ph: Phantom, les) -> dict:
    """World box (RAS mm) around a lesion's voxels: its half-open voxel box, out to voxel edges."""
    lo = ph.voxel_to_world(np.array(les.bbox[:3], dtype=float) - 0.5)
    hi = ph.voxel_to_world(np.array(les.bbox[3:], dtype=float) - 0.5)
    return {"label": les.kind, "min": [round(float(v), 3) for v in np.minimum(lo, hi)], "max": [round(float(v), 3) for v in np.maximum(lo, hi)]}


def _save_mask(labels: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(labels.astype(np.uint8), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, path)


def _reviewed(path: Path) -> None:
    """Mark a radiograph as reviewed for burned-in text, as a site would before ingest."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.BurnedInAnnotation = "NO"
    ds.save_as(path)


def _packaged_dicom(folder: Path) -> None:
    """Real files pydicom ships: single CT/MR slices and its DICOMDIR test tree."""
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm"):
        shutil.copy(get_testdata_file(name), folder / name.replace(".dcm", ""))
    shutil.copytree(Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests", folder / "dicomdir-tree")


def _broken(folder: Path) -> None:
    """Inputs ingest must refuse, each for its own reason, without stopping the run."""
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (folder / "notes.dcm").write_bytes(b"this is not a DICOM file\n" * 20)
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((32767, 32767, 32767))  # 140 TB of float32 claimed by 400 bytes
    (folder / "bomb.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 128)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    args = parser.parse_args(argv)
    entries = build(args.out, args.size)
    n_files = sum(1 for _ in args.out.rglob("*") if _.is_file())
    print(f"demo data: {n_files} files in {args.out} ({', '.join(e.name for e in entries)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
