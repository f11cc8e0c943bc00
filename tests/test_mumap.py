"""μ-maps as a site exports them (petiq.recon.mumap): expected values derived here, independently."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from petiq.errors import PetiqInputError
from petiq.frame import scanner_grid_affine, write_nifti
from petiq.recon import mumap as mm
from petiq.scanner import Scanner

WATER = 0.096


@pytest.fixture(scope="module")
def tiny():
    return Scanner.tiny()


def _ball(sc):
    nx, ny, nz = sc.image_shape
    vx, vy, vz = sc.voxel_size_mm
    x = (np.arange(nx) - (nx - 1) / 2) * vx
    y = (np.arange(ny) - (ny - 1) / 2) * vy
    z = (np.arange(nz) - (nz - 1) / 2) * vz
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    mu = np.where((X - 8) ** 2 + (Y + 4) ** 2 + (Z / 1.5) ** 2 < 30**2, WATER, 0.0).astype(np.float32)
    mu[20, 10, 5] = 0.15  # an asymmetric marker
    return mu


def test_nifti_flipped_or_permuted_resamples_to_the_ras_original(tiny, tmp_path):
    mu = _ball(tiny)
    aff = scanner_grid_affine(mu.shape, tiny.voxel_size_mm)
    ref = mm.to_scanner_frame(*mm.read_mumap(_nii(tmp_path / "ras.nii.gz", mu, aff))[:2], tiny)
    np.testing.assert_array_equal(ref, mu)
    # flip the first axis (the array index i -> n-1-i, the affine follows)
    n = mu.shape[0]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, n - 1
    got = mm.to_scanner_frame(*mm.read_mumap(_nii(tmp_path / "las.nii.gz", mu[::-1], aff @ flip))[:2], tiny)
    np.testing.assert_allclose(got, mu, atol=1e-6)
    # permute axes (z, x, y)
    perm = np.eye(4)[:, [2, 0, 1, 3]]
    got = mm.to_scanner_frame(*mm.read_mumap(_nii(tmp_path / "perm.nii.gz", np.transpose(mu, (2, 0, 1)),
                                                  aff @ perm))[:2], tiny)
    np.testing.assert_allclose(got, mu, atol=1e-6)


def _nii(path, mu, aff):
    write_nifti(path, np.ascontiguousarray(mu), aff)
    return path


def _interfile(tmp_path, name, shape_xyz, voxel_mm, voxels: dict, extra=""):
    """e7 Interfile written byte by byte: float32 little-endian, x fastest, then y, then z."""
    nx, ny, nz = shape_xyz
    raw = bytearray()
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                raw += struct.pack("<f", voxels.get((z, y, x), 0.0))
    (tmp_path / name).write_bytes(bytes(raw))
    hdr = tmp_path / (name + ".hdr")
    hdr.write_text(
        "!INTERFILE :=\n!imaging modality := nucmed\n!name of data file := " + name + "\n"
        "!type of data := PET\nnumber format := float\n!number of bytes per pixel := 4\n"
        "imagedata byte order := LITTLEENDIAN\nnumber of dimensions := 3\n"
        f"matrix size [1] := {nx}\nmatrix size [2] := {ny}\nmatrix size [3] := {nz}\n"
        f"scale factor (mm/pixel) [1] := {voxel_mm:.5f}\nscale factor (mm/pixel) [2] := {voxel_mm:.5f}\n"
        f"scale factor (mm/pixel) [3] := {voxel_mm:.5f}\n" + extra + "!END OF INTERFILE :=\n")
    return tmp_path / name, hdr


def test_e7_interfile_reads_known_values_at_known_positions(tiny, tmp_path):
    # e7 voxel (slice 3, row v 5, column u 20): column u along scanner +x, row v along -y
    v_path, hdr = _interfile(tmp_path, "mu.v", tiny.image_shape, 4.0, {(3, 5, 20): WATER, (7, 16, 16): 0.15})
    for path in (v_path, hdr):
        mu, aff, info = mm.read_mumap(path)
        assert info["format"] == "interfile"
        out = mm.to_scanner_frame(mu, aff, tiny, path)
        ny = tiny.image_shape[1]
        assert out[20, ny - 1 - 5, 3] == pytest.approx(WATER, abs=1e-6)
        assert out[16, ny - 1 - 16, 7] == pytest.approx(0.15, abs=1e-6)
        assert out.sum() == pytest.approx(WATER + 0.15, abs=1e-5)


def _dicom_slice(path, pixels, ipp, *, modality="MR", desc="Head_MRAC_PET_UMAP", units=None, slope=1.0):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription = modality, desc
    ds.ImageType = ["DERIVED", "PRIMARY", "MRAC" if "UMAP" in desc else "M"]
    if units:
        ds.Units = units
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.PixelSpacing = [4.0, 4.0]
    ds.SliceThickness = 4.0
    ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_series_at_1e4_per_cm_gives_water_at_the_right_place(tiny, tmp_path):
    folder = tmp_path / "umap"
    folder.mkdir()
    x0, y0, z0 = -62.0, -62.0, -28.0  # LPS corner; 15 slices of 4 mm
    for s in np.random.default_rng(1).permutation(15):  # files in shuffled order
        pix = np.zeros((32, 32), np.uint16)
        if s == 4:
            pix[10, 22] = 960  # 10⁴ x 0.096 cm⁻¹, row 10, column 22
        _dicom_slice(folder / f"s{s:02d}.dcm", pix, (x0, y0, z0 + 4 * s))
    mu, aff, info = mm.read_mumap(folder)
    assert info["format"] == "dicom" and info["n_files"] == 15
    out = mm.to_scanner_frame(mu, aff, tiny, folder)
    # LPS of the pixel, then scanner = (L, -P, -S) for head-first supine, then the centred grid index
    L, P, S = x0 + 22 * 4, y0 + 10 * 4, z0 + 4 * 4
    ix, iy, iz = (np.array([L, -P, -S]) / 4.0 + np.array([15.5, 15.5, 7.0])).round().astype(int)
    assert out[ix, iy, iz] == pytest.approx(WATER, abs=1e-6)
    assert out.sum() == pytest.approx(WATER, abs=1e-5)


def test_hardware_mumap_lands_where_niftypet_formula_says(tiny, tmp_path):
    o, f = (2.0, 2.0, 1.0), (2.0, -2.0, 0.0)  # $umap origin (pixels), $origin offset (mm)
    extra = "".join(f"$umap origin (pixels) [{i + 1}] := {o[i]:.4f}\n" for i in range(3)) + "".join(
        f"$origin offset (mm) [{i + 1}] := {f[i]:.4f}\n" for i in range(3))
    _, hdr = _interfile(tmp_path, "umap_coil.v", (4, 4, 4), 4.0, {(1, 2, 1): 0.1}, extra)
    bed = 8.0
    # NiftyPET get_hmupos, in cm and (z, y, x): vpos = -org*vs + off + gto - tpo, org = (-o3, o2, o1)
    vs = np.array([0.4, 0.4, 0.4])
    org = np.array([-o[2], o[1], o[0]])
    off = 0.1 * np.array([-f[2], f[1], f[0]])
    vpos = -org * vs + off
    k, j, i = 1, 2, 1
    x = 10 * (vpos[2] + i * vs[2])
    y = -10 * (vpos[1] + j * vs[1])
    z = bed - 10 * vpos[0] + 10 * k * vs[0]
    ix, iy, iz = (np.array([x, y, z]) / 4.0 + np.array([15.5, 15.5, 7.0])).round().astype(int)
    hw, infos = mm.hardware_mumap([hdr], tiny, bed_position_mm=bed)
    assert infos[0]["format"] == "interfile"
    assert hw[ix, iy, iz] == pytest.approx(0.1, abs=1e-6)
    assert hw.sum() == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(PetiqInputError, match="bed position"):
        mm.hardware_mumap([hdr], tiny)


def test_bad_inputs_name_the_file(tiny, tmp_path):
    aff = scanner_grid_affine(tiny.image_shape, tiny.voxel_size_mm)
    mu = _ball(tiny)
    for name, data, match in (("scaled.nii.gz", mu * 1e4, "10⁴"), ("per_mm.nii.gz", mu / 10, "1/mm")):
        p = _nii(tmp_path / name, data, aff)
        with pytest.raises(PetiqInputError, match=match) as err:
            mm.read_mumap(p)
        assert name in str(err.value)
    pet = tmp_path / "pet"
    pet.mkdir()
    _dicom_slice(pet / "pet.dcm", np.ones((32, 32), np.uint16), (0, 0, 0), modality="PT", desc="PET AC",
                 units="BQML")
    with pytest.raises(PetiqInputError, match="not a μ-map") as err:
        mm.read_mumap(pet)
    assert "pet.dcm" in str(err.value)
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00" * 300)
    with pytest.raises(PetiqInputError, match="junk.dat"):
        mm.read_mumap(junk)
    # a list-mode Interfile is raw data, not a μ-map
    lm = tmp_path / "lm.l.hdr"
    lm.write_text("!INTERFILE :=\n%total listmode word counts := 10\n!name of data file := lm.l\n")
    with pytest.raises(PetiqInputError, match="raw data") as err:
        mm.read_mumap(lm)
    assert "lm.l.hdr" in str(err.value)
    # a μ-map truncated axially: the object reaches its edge inside the field of view
    short = mu[:, :, 4:11]
    aff_short = aff.copy()
    aff_short[:3, 3] = aff[:3, 3] + aff[:3, 2] * 4
    p = _nii(tmp_path / "short.nii.gz", short, aff_short)
    with pytest.raises(PetiqInputError, match=r"mm missing on the -z .*\+z") as err:
        mm.to_scanner_frame(*mm.read_mumap(p)[:2], tiny, p)
    assert "short.nii.gz" in str(err.value)
