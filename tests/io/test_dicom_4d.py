"""Spec: repeated acquisitions of one stack are one 4D volume; training sees each frame as 3D.

fMRI time points, diffusion directions, ASL pairs: every slice position holds the same
number of images. They become one volume ``[X, Y, Z, T]`` with per-frame parameters in the
manifest (``frames``: b-value, b-vector, time), and the pretraining cache takes each frame
as its own 3D volume. A series where only some positions repeat is refused, not guessed.
"""

from __future__ import annotations

import copy
import json

import nibabel as nib
import numpy as np
from pydicom.uid import generate_uid

from medssl.preprocess.volume_cache import build_cache, planned_volumes
from medssl.store.fingerprint import fingerprint
from medssl.store.plan import make_plan
from tests.store import dicom_factory as f
from tests.store import store_view as sv
from tests.store.ingest_run import run, single_volume

N_SLICES, N_FRAMES = 6, 3


def time_series(n_frames: int = N_FRAMES, drop: tuple[int, int] | None = None, b_values: list[float] | None = None):
    """``n_frames`` repetitions of one 6-slice series (same positions); frame t adds 1000 to its first 8 * (t + 1) rows."""
    base = f.make_series(N_SLICES, template=f.MR, step=4.0)
    out = []
    for t in range(n_frames):
        for k, ds in enumerate(base):
            if drop == (t, k):
                continue
            copy_ = copy.deepcopy(ds)
            copy_.SOPInstanceUID = generate_uid()
            copy_.file_meta.MediaStorageSOPInstanceUID = copy_.SOPInstanceUID
            copy_.InstanceNumber = t * N_SLICES + k + 1
            copy_.AcquisitionNumber = t + 1
            copy_.AcquisitionTime = f"1200{2 * t:02d}.5"
            if b_values is not None:
                copy_.DiffusionBValue = b_values[t]
                copy_.DiffusionGradientOrientation = [0.0, 0.0, 0.0] if b_values[t] == 0 else [1.0, 0.0, 0.0]
            pixels = copy_.pixel_array.copy()
            pixels[: 8 * (t + 1)] += 1000  # frames differ in content, not only by an offset
            copy_.PixelData = pixels.astype(copy_.pixel_array.dtype).tobytes()
            out.append(copy_)
    return out, base


def test_a_time_series_is_one_4d_volume_with_frame_times(tmp_path):
    datasets, _ = time_series()
    f.write(datasets[::-1], tmp_path / "in")  # file order says nothing
    summary = run(tmp_path / "in", tmp_path / "store")
    assert (summary.written, sum(summary.rejected.values())) == (1, 0)
    row = single_volume(tmp_path / "store")
    assert (row["ndim"], json.loads(row["shape"])[2:], row["n_images"]) == (4, [N_SLICES, N_FRAMES], N_SLICES * N_FRAMES)
    assert [fr["time_s"] for fr in json.loads(row["frames"])] == [0.0, 2.0, 4.0]
    data = np.asarray(nib.load(tmp_path / "store" / row["path"]).dataobj).astype(float)
    changed = [int(np.count_nonzero(data[..., t] - data[..., 0])) for t in range(N_FRAMES)]
    assert changed[0] == 0 < changed[1] < changed[2]  # frames in acquisition order


def test_each_frame_equals_the_3d_volume_of_that_acquisition_alone(tmp_path):
    datasets, _ = time_series()
    f.write(datasets, tmp_path / "all")
    f.write([d for d in datasets if d.AcquisitionNumber == 2], tmp_path / "one")
    run(tmp_path / "all", tmp_path / "s4")
    run(tmp_path / "one", tmp_path / "s3")
    four, three = single_volume(tmp_path / "s4"), single_volume(tmp_path / "s3")
    assert json.loads(four["affine"]) == json.loads(three["affine"])
    a4 = np.asarray(nib.load(tmp_path / "s4" / four["path"]).dataobj)
    a3 = np.asarray(nib.load(tmp_path / "s3" / three["path"]).dataobj)
    np.testing.assert_array_equal(a4[..., 1], a3)


def test_diffusion_frames_carry_b_values_and_vectors(tmp_path):
    datasets, _ = time_series(b_values=[0.0, 1000.0, 1000.0])
    f.write(datasets, tmp_path / "in")
    run(tmp_path / "in", tmp_path / "store")
    frames = json.loads(single_volume(tmp_path / "store")["frames"])
    assert [fr["b_value"] for fr in frames] == [0.0, 1000.0, 1000.0]
    assert frames[0]["b_vector"] is None and frames[1]["b_vector"] == [1.0, 0.0, 0.0]


def test_an_incomplete_time_series_keeps_its_complete_acquisitions(tmp_path):
    """One slice of the last frame is missing: the acquisitions (AcquisitionNumber) that are whole
    are stored as 3D volumes; the one with the gap is refused as it would be on its own."""
    datasets, _ = time_series(drop=(2, 3))
    f.write(datasets, tmp_path / "in")
    summary = run(tmp_path / "in", tmp_path / "store")
    assert (summary.written, dict(summary.rejected)) == (2, {"missing_slices": 1})
    assert {json.loads(r["shape"])[2] for r in sv.volumes(tmp_path / "store")} == {N_SLICES}


def test_repeats_at_some_positions_that_nothing_tells_apart_are_refused(tmp_path):
    datasets, _ = time_series(drop=(2, 3))
    for ds in datasets:
        ds.AcquisitionNumber = 1
    f.write(datasets, tmp_path / "in")
    summary = run(tmp_path / "in", tmp_path / "store")
    assert (summary.written, dict(summary.rejected)) == (0, {"duplicate_slices": 1})
    (row,) = sv.rejected(tmp_path / "store")
    assert "not a complete 4D series" in row["message"]


def test_the_pretraining_cache_takes_each_frame_as_a_3d_volume(tmp_path):
    datasets, _ = time_series()
    f.write(datasets, tmp_path / "in")
    store = tmp_path / "store"
    run(tmp_path / "in", store)
    row = single_volume(store)
    plan = make_plan(fingerprint(store, min_slices=4), crop_size=(16, 16, 4))
    units = planned_volumes(store, plan)
    assert [u.volume_id for u in units] == [f"{row['volume_id']}.t{t:04d}" for t in range(N_FRAMES)]
    index = build_cache(store, plan, progress=False)
    assert len(index.volumes) == N_FRAMES and not index.failed
    assert {v.patient for v in index.volumes} == {row["patient"]}  # splits keep a series' frames together
    first, last = (np.asarray(index.open(v), dtype=np.float32) for v in (index.volumes[0], index.volumes[-1]))
    assert first.ndim == 3 and first.shape == last.shape and not np.array_equal(first, last)
