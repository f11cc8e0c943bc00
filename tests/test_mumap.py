"""μ-maps as a site exports them (petiq.recon.mumap): expected values derived here, independently."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from helpers import write_mumap_dicom_slice

from petiq.core.errors import PetiqInputError
from petiq.recon import hardware_mumap
from petiq.recon import mumap as mm
from petiq.scanner.frame import scanner_grid_affine, write_nifti
from petiq.scanner.geometry import Scanner

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
    got = mm.to_scanner_frame(
        *mm.read_mumap(_nii(tmp_path / "perm.nii.gz", np.transpose(mu, (2, 0, 1)), aff @ perm))[:2], tiny
    )
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
        f"scale factor (mm/pixel) [3] := {voxel_mm:.5f}\n" + extra + "!END OF INTERFILE :=\n"
    )
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
    # the same header named .hv (STIR/e7 tools' name for an image header) is read as well
    hv = hdr.with_name("mu.hv")
    hv.write_text(hdr.read_text())
    np.testing.assert_array_equal(mm.read_mumap(hv)[0], mm.read_mumap(hdr)[0])


def test_dicom_series_at_1e4_per_cm_gives_water_at_the_right_place(tiny, tmp_path):
    folder = tmp_path / "umap"
    folder.mkdir()
    x0, y0, z0 = -62.0, -62.0, -28.0  # LPS corner; 15 slices of 4 mm
    for s in np.random.default_rng(1).permutation(15):  # files in shuffled order
        pix = np.zeros((32, 32), np.uint16)
        if s == 4:
            pix[10, 22] = 960  # 10⁴ x 0.096 cm⁻¹, row 10, column 22
        write_mumap_dicom_slice(folder / f"s{s:02d}.dcm", pix, (x0, y0, z0 + 4 * s))
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
        f"$origin offset (mm) [{i + 1}] := {f[i]:.4f}\n" for i in range(3)
    )
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
    hw, infos = hardware_mumap.hardware_mumap([hdr], tiny, bed_position_mm=bed)
    assert infos[0]["format"] == "interfile"
    assert hw[ix, iy, iz] == pytest.approx(0.1, abs=1e-6)
    assert hw.sum() == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(PetiqInputError, match="bed position"):
        hardware_mumap.hardware_mumap([hdr], tiny)


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
    write_mumap_dicom_slice(
        pet / "pet.dcm", np.ones((32, 32), np.uint16), (0, 0, 0), modality="PT", desc="PET AC", units="BQML"
    )
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


# ----------------------------------------------------------------------------- attenuation_file + hardware
SPAN = 11


def _hw_block(tmp_path):
    """A hardware block (4 x 2 x 3 voxels of 4 mm, 0.1 cm⁻¹) with non-zero $umap origin and $origin offset."""
    o, f = (1.0, 2.0, 2.0), (-10.0, -2.0, 0.0)
    extra = "".join(f"$umap origin (pixels) [{i + 1}] := {o[i]:.4f}\n" for i in range(3)) + "".join(
        f"$origin offset (mm) [{i + 1}] := {f[i]:.4f}\n" for i in range(3)
    )
    voxels = {(k, j, i): 0.1 for k in range(3) for j in range(2) for i in range(4)}
    _, hdr = _interfile(tmp_path, "umap_coil.v", (4, 2, 3), 4.0, voxels, extra)
    return hdr, o, f


def _niftypet_indices(o, f, bed_mm, shape_xyz, sc):
    """Tiny-grid indices of every hardware voxel by NiftyPET get_hmupos (cm, zyx):
    vpos = -org vs + off (no table offsets), org = (-o3, o2, o1), off = 0.1 (-f3, f2, f1); voxel (k, j, i)
    at scanner x = vpos_x + i vs, y = -(vpos_y + j vs), z = hbed - vpos_z + k vs."""
    vs = 0.4
    org = np.array([-o[2], o[1], o[0]])
    off = 0.1 * np.array([-f[2], f[1], f[0]])
    vpos = -org * vs + off
    nx, ny, nz = shape_xyz
    out = []
    for k in range(nz):
        for j in range(ny):
            for i in range(nx):
                xyz_mm = 10 * np.array([vpos[2] + i * vs, -(vpos[1] + j * vs), 0.1 * bed_mm - vpos[0] + k * vs])
                ijk = xyz_mm / np.asarray(sc.voxel_size_mm) + (np.asarray(sc.image_shape) - 1) / 2
                assert np.allclose(ijk, np.round(ijk)), ijk  # the block was chosen to land on grid voxels
                out.append(tuple(int(v) for v in np.round(ijk)))
    return out


def _listmode_with_bed(tmp_path, bed):
    from petiq.listmode import write_listmode

    lm = write_listmode(
        tmp_path / "scan.l", np.array([0, 5]), np.array([True, True]), np.array([0, 1]), scanner=Scanner.tiny()
    )
    hdr = tmp_path / "scan.l.hdr"
    lines = [ln for ln in hdr.read_text().splitlines() if "start horizontal bed position" not in ln.lower()]
    if bed is not None:
        lines.insert(2, f"start horizontal bed position (mm) := {bed}")
    hdr.write_text("\n".join(lines) + "\n")
    return lm


def test_attenuation_file_adds_the_hardware_placed_by_the_listmode_bed_position(tiny, tmp_path):
    """The hardware μ-map is added to the patient's: the factors are exp(-P(μ_patient + μ_hardware)) with the
    hardware voxels where NiftyPET's formula puts them for the list-mode header's bed position (12 mm)."""
    from petiq.recon.corrections import attenuation_factors
    from petiq.recon.pipeline import attenuation_file

    patient = _ball(tiny)
    nii = _nii(tmp_path / "mu.nii.gz", patient, scanner_grid_affine(patient.shape, tiny.voxel_size_mm))
    hdr, o, f = _hw_block(tmp_path)
    lm = _listmode_with_bed(tmp_path, 12.0)
    assert hardware_mumap.read_bed_position_mm(lm) == 12.0
    expected_mu = patient.copy()
    cells = _niftypet_indices(o, f, 12.0, (4, 2, 3), tiny)
    for ijk in cells:
        expected_mu[ijk] += 0.1
    assert len(set(cells)) == 24
    info = attenuation_file(nii, tmp_path / "att.npz", tiny, SPAN, hardware_mumaps=[hdr], listmode=lm)
    assert info["bed_position_mm"] == 12.0 and info["hardware_mumaps"] == [str(hdr)]
    with np.load(tmp_path / "att.npz") as data:
        att = data["attenuation"]
    np.testing.assert_allclose(
        att, attenuation_factors(expected_mu, tiny.voxel_size_mm, tiny, SPAN), rtol=1e-5, atol=1e-6
    )
    # the μ sum: the hardware adds 24 voxels x 0.1 cm⁻¹ (the line integrals grow by exactly that block's)
    hw, _ = hardware_mumap.hardware_mumap([hdr], tiny, 12.0)
    assert float(hw.sum()) == pytest.approx(24 * 0.1, rel=1e-5)
    assert all(hw[ijk] == pytest.approx(0.1, abs=1e-6) for ijk in cells)
    # a given bed position wins over the header's; another bed position moves the block along z
    attenuation_file(nii, tmp_path / "att0.npz", tiny, SPAN, hardware_mumaps=[hdr], listmode=lm, bed_position_mm=-8.0)
    moved = patient.copy()
    for ijk in _niftypet_indices(o, f, -8.0, (4, 2, 3), tiny):
        moved[ijk] += 0.1
    with np.load(tmp_path / "att0.npz") as data:
        np.testing.assert_allclose(
            data["attenuation"], attenuation_factors(moved, tiny.voxel_size_mm, tiny, SPAN), rtol=1e-5, atol=1e-6
        )


def test_bed_position_missing_from_the_listmode_header_is_an_error_naming_it(tiny, tmp_path):
    from petiq.recon.pipeline import attenuation_file

    patient = _ball(tiny)
    nii = _nii(tmp_path / "mu.nii.gz", patient, scanner_grid_affine(patient.shape, tiny.voxel_size_mm))
    hdr, _, _ = _hw_block(tmp_path)
    lm = _listmode_with_bed(tmp_path, None)
    assert hardware_mumap.read_bed_position_mm(lm) is None
    with pytest.raises(PetiqInputError, match="start horizontal bed position") as err:
        attenuation_file(nii, tmp_path / "att.npz", tiny, SPAN, hardware_mumaps=[hdr], listmode=lm)
    assert "scan.l" in str(err.value) and not (tmp_path / "att.npz").exists()


# ----------------------------------------------------------------------------- table offsets from the CSA header
def _csa2(elements: dict) -> bytes:
    """A Siemens CSA2 header written here: 'SV10', 4 unused bytes, n_tags, 77; per element a 64-byte name,
    vm, vr, syngodt, n_items, 77; per item [len, len, 77, len] and the value padded to 4 bytes."""
    import struct

    out = b"SV10\x04\x03\x02\x01" + struct.pack("<2I", len(elements), 77)
    for name, values in elements.items():
        items = [f"{v:.8f}".encode() + b"\x00" for v in values] if values else []
        out += struct.pack(
            "<64si4s3i", name.encode().ljust(64, b"\x00"), len(values), b"FD\x00\x00", 4, len(items) or 1, 77
        )
        for item in items or [b""]:
            out += struct.pack("<4i", len(item), len(item), 77, len(item)) + item + b"\x00" * ((-len(item)) % 4)
    return out


def test_table_offsets_read_from_the_mumap_dicom_csa_header_move_the_hardware(tiny, tmp_path):
    """GantryTableHomeOffset / TablePositionOrigin in the CSA Series Header Info (0029,1020) of a DICOM μ-map
    are read; passed to hardware_mumap they shift it by gto - tpo (NiftyPET: vpos = ... + gto - tpo)."""
    folder = tmp_path / "umap"
    folder.mkdir()
    f = write_mumap_dicom_slice(folder / "s0.dcm", np.zeros((32, 32), np.uint16), (0, 0, 0))
    import pydicom

    ds = pydicom.dcmread(str(f))
    ds.add_new((0x0029, 0x0010), "LO", "SIEMENS CSA HEADER")
    gto, tpo = (0.0, 8.0, -1220.0), (4.0, 0.0, -1212.0)
    ds.add_new(
        (0x0029, 0x1020),
        "OB",
        _csa2(
            {
                "UsedPatientWeight": [70.0],
                "GantryTableHomeOffset": list(gto),
                "TablePositionOrigin": list(tpo),
                "Empty": [],
            }
        ),
    )
    ds.save_as(str(f))
    got = hardware_mumap.read_table_offsets_mm(folder)
    assert got == {"table_position_origin_mm": tpo, "gantry_table_home_offset_mm": gto}
    hdr, _, _ = _hw_block(tmp_path)
    base, _ = hardware_mumap.hardware_mumap([hdr], tiny, 12.0)
    moved, _ = hardware_mumap.hardware_mumap(
        [hdr],
        tiny,
        12.0,
        table_position_origin_mm=got["table_position_origin_mm"],
        gantry_table_home_offset_mm=got["gantry_table_home_offset_mm"],
    )
    # vpos (x, y, z) grows by gto - tpo = (-4, 8, -8) mm: x -4 (one voxel to -x), y = -(vpos_y): -8 (two
    # voxels to -y), z = bed - vpos_z: +8 (two voxels to +z)
    np.testing.assert_allclose(moved, np.roll(base, (-1, -2, 2), axis=(0, 1, 2)), atol=1e-6)
    # a DICOM without the CSA header: None for both
    plain = write_mumap_dicom_slice(tmp_path / "plain.dcm", np.zeros((32, 32), np.uint16), (0, 0, 0))
    assert hardware_mumap.read_table_offsets_mm(plain) == {
        "table_position_origin_mm": None,
        "gantry_table_home_offset_mm": None,
    }
