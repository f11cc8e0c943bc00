"""Training patches: the paper's rule (threshold, counts per plane), coordinates, files and resampling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from petiq.cli import main
from petiq.core.errors import PetiqInputError
from petiq.learning.patches import (
    PLANES,
    TABLE_COLUMNS,
    extract_patches,
    extract_patches_file,
    locate_patch,
    read_patches,
    resample_to_voxel_size,
)

ARGS = dict(size=12, candidates=300, per_plane=20, seed=11)


def plane_of(volume: np.ndarray, plane: str, s: int) -> np.ndarray:
    """The plane convention, written out independently of petiq.learning.patches."""
    if plane == "transverse":
        return volume[:, :, s]
    if plane == "coronal":
        return volume[:, s, :]
    assert plane == "sagittal"
    return volume[s, :, :]


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """An ellipsoid 'head' with texture in a larger empty field, non-cubic so that the planes differ."""
    rng = np.random.default_rng(0)
    i, j, k = np.ogrid[:40, :36, :30]
    head = ((i - 20) / 14.0) ** 2 + ((j - 17) / 12.0) ** 2 + ((k - 15) / 10.0) ** 2 < 1
    return (head * (0.5 + rng.random((40, 36, 30)))).astype(np.float32)


def test_coordinates_find_each_patch_again(volume):
    patches, table = extract_patches(volume, **ARGS)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert patches.shape == (60, 12, 12) and patches.dtype == np.float32
    for row in table.itertuples():
        expected = plane_of(volume, row.plane, row.slice)[row.row : row.row + 12, row.column : row.column + 12]
        assert expected.shape == (12, 12)
        np.testing.assert_array_equal(patches[row.patch_index], expected)
        np.testing.assert_array_equal(locate_patch(volume, table.loc[row.patch_index]), expected)
        assert row.mean == pytest.approx(float(expected.mean(dtype=np.float64)), abs=1e-9)


def test_counts_per_plane_order_and_seed(volume):
    patches, table = extract_patches(volume, **ARGS)
    assert list(table["plane"]) == [p for p in PLANES for _ in range(20)]
    assert (table["patch_index"] == np.arange(60)).all()
    assert (table["seed"] == 11).all() and (table["size"] == 12).all()
    for plane in PLANES:  # distinct candidates within a plane (drawn without replacement)
        part = table[table["plane"] == plane]
        assert len(part.drop_duplicates(["slice", "row", "column"])) >= 19
    assert table["slice"].between(0, 39).all() and table["row"].ge(0).all() and table["column"].ge(0).all()


def test_threshold_rejects_background(volume):
    _, table = extract_patches(volume, **ARGS)
    assert table["mean"].min() >= volume.mean() / 8
    _, loose = extract_patches(volume, **{**ARGS, "candidates": 900}, threshold_fraction=0.0)
    assert (loose["mean"] == 0).any()  # the same draw without a threshold keeps empty background
    _, strict = extract_patches(volume, **ARGS, threshold_fraction=1.2)
    assert strict["mean"].min() >= 1.2 * volume.mean()


def test_too_few_patches_says_how_many_and_what_to_change(volume, tmp_path):
    with pytest.raises(PetiqInputError) as err:
        extract_patches(volume, **ARGS, threshold_fraction=4.0, source="img.nii.gz")
    text = str(err.value)
    assert "img.nii.gz" in text and "transverse" in text and "of 100" in text
    assert "patches.threshold" in text and "patches.candidates" in text and "patches.per_plane" in text
    img = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), img)
    with pytest.raises(PetiqInputError):
        extract_patches_file(img, tmp_path / "p.npy", tmp_path / "p.tsv", **ARGS, threshold_fraction=4.0)
    assert not (tmp_path / "p.npy").exists() and not (tmp_path / "p.tsv").exists()


def test_planes_smaller_than_the_patch_are_centred_with_zeros():
    rng = np.random.default_rng(1)
    vol = (1 + rng.random((20, 20, 7))).astype(np.float32)  # coronal and sagittal planes are 20 x 7
    patches, table = extract_patches(vol, size=10, candidates=60, per_plane=5, seed=3)
    for row in table.itertuples():
        plane = plane_of(vol, row.plane, row.slice)
        if row.plane == "transverse":
            assert row.column >= 0
            continue
        assert row.column == -1  # (10 - 7) // 2 = 1 zero column before, 2 after
        padded = np.pad(plane, ((0, 0), (1, 2)))
        expected = padded[row.row : row.row + 10, :]
        np.testing.assert_array_equal(patches[row.patch_index], expected)
        np.testing.assert_array_equal(locate_patch(vol, table.loc[row.patch_index]), expected)
        assert row.mean == pytest.approx(float(expected.mean(dtype=np.float64)))


def test_deterministic_for_a_seed_and_float16(volume):
    a, ta = extract_patches(volume, **ARGS)
    b, tb = extract_patches(volume, **ARGS)
    np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(ta, tb)
    _, tc = extract_patches(volume, **{**ARGS, "seed": 12})
    assert not ta[["slice", "row", "column"]].equals(tc[["slice", "row", "column"]])
    h, th = extract_patches(volume, **ARGS, dtype="float16")
    assert h.dtype == np.float16
    pd.testing.assert_frame_equal(ta, th)
    np.testing.assert_array_equal(h, a.astype(np.float16))


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(volume=np.zeros((4, 4))), "dimensions"),
        (dict(volume=np.zeros((8, 8, 8))), "mean"),
        (dict(candidates=50), "3 × per_plane"),
        (dict(size=0), "patch size"),
        (dict(dtype="int8"), "float32"),
        (dict(threshold_fraction=-1.0), "threshold_fraction"),
    ],
)
def test_bad_arguments_are_refused_before_work(volume, change, words):
    args = {"volume": volume, **ARGS, **change}
    with pytest.raises(PetiqInputError, match=words):
        extract_patches(args.pop("volume"), **args)


def test_files_round_trip_and_mismatches(volume, tmp_path):
    img = tmp_path / "sub-01_rec-dose010p0_desc-norm01_pet.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), img)
    npy, tsv = tmp_path / "out" / "p.npy", tmp_path / "out" / "p.tsv"
    summary = extract_patches_file(img, npy, tsv, **ARGS, dtype="float16")
    assert summary["n_patches"] == 60 and summary["shape"] == [40, 36, 30]
    array, table = read_patches(npy, tsv)
    direct, direct_table = extract_patches(volume, **ARGS, dtype="float16")
    np.testing.assert_array_equal(array, direct)
    pd.testing.assert_frame_equal(table, direct_table, check_exact=False, rtol=1e-12)
    for i in (0, 37, 59):  # the TSV alone finds a patch in the image again
        np.testing.assert_array_equal(locate_patch(volume, table.loc[i]).astype(np.float16), array[i])

    table.iloc[:-1].to_csv(tsv, sep="\t", index=False)
    with pytest.raises(PetiqInputError, match="59 rows for 60 patches"):
        read_patches(npy, tsv)
    np.save(npy, np.zeros((60, 12), np.float32))
    with pytest.raises(PetiqInputError, match="N × size × size"):
        read_patches(npy, tsv)
    with pytest.raises(PetiqInputError, match="does not exist"):
        read_patches(tmp_path / "none.npy", tsv)
    with pytest.raises(PetiqInputError, match="does not exist"):
        extract_patches_file(tmp_path / "none.nii.gz", npy, tsv, **ARGS)


def test_cli(volume, tmp_path, capsys):
    img = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), img)
    npy, tsv = tmp_path / "p.npy", tmp_path / "p.tsv"
    argv = [
        "patches",
        str(img),
        "--npy",
        str(npy),
        "--tsv",
        str(tsv),
        "--size",
        "12",
        "--candidates",
        "300",
        "--per-plane",
        "20",
        "--seed",
        "11",
    ]
    assert main(argv) == 0
    array, table = read_patches(npy, tsv)
    assert array.dtype == np.float16 and len(table) == 60
    assert main(argv + ["--threshold", "4"]) == 2
    assert "too few candidate patches" in capsys.readouterr().err


def test_resample_to_voxel_size_is_linear_and_centred():
    n = (40, 24, 10)
    ramp = np.broadcast_to(np.arange(40, dtype=np.float32)[:, None, None], n)  # value = i (2 mm voxels)
    img = nib.Nifti1Image(np.ascontiguousarray(ramp), np.diag([2.0, 2.0, 2.0, 1.0]))
    out = resample_to_voxel_size(img, 4.0)
    assert out.shape == (20, 12, 5) and out.dtype == np.float32
    expected = (np.arange(20) - 9.5) * 2 + 19.5  # output centre -> input centre, two input voxels per step
    np.testing.assert_allclose(out[1:-1, 6, 2], expected[1:-1], atol=1e-4)
    np.testing.assert_array_equal(resample_to_voxel_size(img, 2.0), ramp)
    assert resample_to_voxel_size(img, (1.0, 2.0, 4.0)).shape == (80, 24, 5)


def test_resample_reorients_to_ras():
    data = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    flipped = nib.Nifti1Image(data, np.diag([-2.0, 2.0, 2.0, 1.0]))  # first axis runs right -> left
    np.testing.assert_array_equal(resample_to_voxel_size(flipped, 2.0), data[::-1])
    np.testing.assert_array_equal(resample_to_voxel_size(flipped, 2.0, canonical=False), data)
