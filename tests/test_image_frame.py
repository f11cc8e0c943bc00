"""The scanner's frame: crystal positions and sinogram addresses against NiftyPET, the RAS+ affine of
every image, and inputs mapped by their affine (issue 13, item 4).

Expected numbers are re-derived here from NiftyPET's code (``niftypet/nipet/mmraux.py``
``transaxial_lut`` and ``axial_lut``, ``lm/src/hst.cu``, ``prj/src/tprj.cu``,
``img/mmrimg.py`` ``image_affine``; constants from ``niftypet/ninst/raw/resources.py``), never from
petiq's own functions.
"""

from __future__ import annotations

import numpy as np
import pytest

from petiq.scanner.geometry import Scanner

# NiftyPET resources.py: NCRS, NRNG, NSBINS, NSANGLES, MRD, R, DOI (cm), AXR (cm), TGAP, OFFGAP
NCRS, NRNG, NSBINS, NSANGLES, MRD = 504, 64, 344, 252, 60
R_RING_CM = 32.8 + 0.67
AXR_CM = 0.40625


@pytest.fixture(scope="module")
def mmr() -> Scanner:
    return Scanner.mmr()


def niftypet_crystals() -> np.ndarray:
    """``crs`` of ``mmraux.transaxial_lut`` (cm): both ends of every crystal face, gaps left at 0."""
    bw, ntblk, alpha = 3.209, 56, 0.1122
    crs = np.zeros((NCRS, 4))
    phi = 0.5 * np.pi - alpha / 2 - 0.001
    for bi in range(ntblk):
        y, x = R_RING_CM * np.sin(phi), R_RING_CM * np.cos(phi)
        pv = np.array([-y, x]) / np.hypot(x, y)
        phi -= alpha
        xcp, ycp = x + (bw / 2) * pv[0], y + (bw / 2) * pv[1]
        for n in range(1, 9):
            c = bi * 9 + n - 1
            xc, yc = x + (bw / 2 - n * bw / 8) * pv[0], y + (bw / 2 - n * bw / 8) * pv[1]
            crs[c] = xcp, ycp, xc, yc
            xcp, ycp = xc, yc
    return crs


def niftypet_s2c() -> np.ndarray:
    """``s2cF`` of ``transaxial_lut``: (crystal c0, crystal c1) of bin index ``ia + iw*NSANGLES``."""
    iw, ia = np.meshgrid(np.arange(NSBINS), np.arange(NSANGLES), indexing="ij")
    c0 = np.floor(np.mod(ia + 0.5 * (NCRS - 2 + NSBINS / 2 - iw), NCRS)).astype(int)
    c1 = np.floor(np.mod(ia + 0.5 * (2 * NCRS - 2 - NSBINS / 2 + iw), NCRS)).astype(int)
    return np.stack([c0.ravel(), c1.ravel()], axis=1)  # row ia + iw*NSANGLES (iw slow)


def niftypet_sn1_rno() -> np.ndarray:
    """``sn1_rno`` of ``axial_lut`` (span 1, all rings): (r0, r1) of every span-1 sinogram."""
    out = []
    for ro in range(NRNG):
        for m in range(1 if ro == 0 else 2):
            for li in range(NRNG * ro, NRNG * NRNG, NRNG + 1):
                if m == 0:
                    r1, r0 = divmod(li, NRNG)
                else:
                    r0, r1 = divmod(li, NRNG)
                if abs(r1 - r0) <= MRD:
                    out.append((r0, r1))
    return np.asarray(out)


def test_crystal_positions_are_niftypets(mmr):
    """Every real crystal's LOR end (centre of its face, as ``tprj.cu`` takes it) agrees with
    NiftyPET's ``crs`` table to < 0.1 mm, with NiftyPET's c = petiq's det - 1."""
    crs = niftypet_crystals()
    centre_mm = 10.0 * 0.5 * (crs[:, :2] + crs[:, 2:])
    c = np.arange(NCRS)
    real = (c + 1) % 9 != 0  # NiftyPET (c + OFFGAP) % TGAP
    xy = mmr.crystal_xy()[(c + 1) % NCRS]
    err = np.hypot(*(xy[real] - centre_mm[real]).T)
    assert real.sum() == 448
    assert err.max() < 0.1, err.max()
    # clockwise from just left of +y: c = 0 at ~89.1 deg, then decreasing azimuth all the way round
    ang = np.degrees(np.arctan2(centre_mm[:, 1], centre_mm[:, 0]))
    assert 88.5 < ang[0] < 89.5 and np.all(np.diff(np.unwrap(np.radians(ang[real]))) < 0)
    # the gap positions lie halfway between the neighbouring blocks' last and first crystals
    gaps = mmr.crystal_xy()[mmr.is_gap(np.arange(NCRS))]
    assert gaps.shape == (56, 2)
    np.testing.assert_allclose(np.hypot(*gaps.T), 334.7, rtol=1e-12)


def test_listmode_addresses_land_on_niftypets_lors(mmr):
    """A span-1 list-mode address decoded as NiftyPET's histogrammer does (``hst.cu``:
    si = val / (NSBINS*NSANGLES), a = aw / NSBINS, w = aw % NSBINS; crystals ``s2cF[a + NSANGLES*w]``,
    rings ``sn1_rno[si]`` with r0 on c0) gives the LOR petiq reads for it, end for end to < 0.1 mm,
    ring z = (r - 31.5) * AXR as ``axial_lut``'s ``rng`` (ring centre)."""
    rng = np.random.default_rng(13)
    s2c, rno, crs = niftypet_s2c(), niftypet_sn1_rno(), niftypet_crystals()
    assert rno.shape == (4084, 2)
    val = rng.integers(0, 4084 * NSBINS * NSANGLES, 50_000)
    si, aw = np.divmod(val, NSBINS * NSANGLES)
    a, w = np.divmod(aw, NSBINS)
    c0, c1 = s2c[a + NSANGLES * w].T
    r0, r1 = rno[si].T
    live = ((c0 + 1) % 9 != 0) & ((c1 + 1) % 9 != 0)
    centre = 10.0 * 0.5 * (crs[:, :2] + crs[:, 2:])
    ring_z = 10.0 * (-0.5 * NRNG * AXR_CM + np.arange(NRNG) * AXR_CM + 0.5 * AXR_CM)
    q0 = np.column_stack([centre[c0], ring_z[r0]])
    q1 = np.column_stack([centre[c1], ring_z[r1]])
    ring_a, det_a, ring_b, det_b = mmr.bin_crystals(val)
    assert np.array_equal(det_a, (c1 + 1) % NCRS) and np.array_equal(det_b, (c0 + 1) % NCRS)
    assert np.array_equal(ring_a, r1) and np.array_equal(ring_b, r0)
    p1, p2 = mmr.lor_endpoints(val)
    assert np.abs(p1 - q1)[live].max() < 0.1 and np.abs(p2 - q0)[live].max() < 0.1
    # the inverse LUT (NiftyPET c2sF, crystal pair -> bin) is petiq's crystals_to_bin
    bins = mmr.crystals_to_bin(r1, (c1 + 1) % NCRS, r0, (c0 + 1) % NCRS)
    assert np.array_equal(bins, val)


# ----------------------------------------------------------------------------- the image affine
# NiftyPET resources.py: SO_IMX = SO_IMY = 344, SO_IMZ = 127, SO_VXX = SO_VXY = 0.208626, SO_VXZ = 0.203125 cm
IMX, IMZ, VXY, VXZ = 344, 127, 2.08626, 2.03125


def niftypet_image_affine() -> np.ndarray:
    """``img/mmrimg.py`` ``image_affine`` (no gantry offset, bed at 0), in mm."""
    b = np.diag([-VXY, VXY, VXZ, 1.0])
    b[0, 3] = 0.5 * IMX * VXY
    b[1, 3] = (-0.5 * IMX + 1) * VXY
    b[2, 3] = (-0.5 * IMZ + 1) * VXZ
    return b


def niftypet_voxel_centre(u, v, w) -> np.ndarray:
    """Scanner mm of NiftyPET's image voxel ``im[w, v, u]`` as its projector sees it: ``tprj.cu``
    column ``u = SZ_IMX/2 + floor(x/vx)``, row ``v = SZ_IMY/2 - ceil(y/vy)``; ``prjf.cu`` slice
    ``w = floor(SZ_IMZ/2 + z/vz)``."""
    return np.array([(u - IMX / 2 + 0.5) * VXY, (IMX / 2 - v - 0.5) * VXY, (w - IMZ / 2 + 0.5) * VXZ])


def niftypet_ras(u, v, w) -> np.ndarray:
    """RAS mm NiftyPET's NIfTI gives voxel ``im[w, v, u]``: written as ``array2nii(im[::-1, ::-1, :], B)``
    (``prj/mmrrec.py``), i.e. NIfTI index ``(u, IMY-1-v, IMZ-1-w)`` (``miutil`` ``array2nii`` transposes)."""
    return (niftypet_image_affine() @ np.array([u, IMX - 1 - v, IMZ - 1 - w, 1.0]))[:3]


def niftypet_scanner_from_ras_direction() -> np.ndarray:
    """d(scanner mm)/d(RAS mm) of NiftyPET's frame, from the two functions above."""
    base = [100.0, 200.0, 30.0]
    scan0, ras0 = niftypet_voxel_centre(*base), niftypet_ras(*base)
    d_scan, d_ras = [], []
    for step in np.eye(3):
        p = np.asarray(base) + step
        d_scan.append(niftypet_voxel_centre(*p) - scan0)
        d_ras.append(niftypet_ras(*p) - ras0)
    return np.array(d_scan).T @ np.linalg.inv(np.array(d_ras).T)


def test_affine_is_niftypets_frame_on_the_centred_grid(mmr):
    """petiq's image affine has NiftyPET's orientation (HFS: scanner +x = patient left, +y anterior,
    +z inferior) and centres voxels where NiftyPET's projector does; NiftyPET's ``image_affine`` puts
    them half a voxel further (its offsets are 0.5 N v, not 0.5 (N - 1) v)."""
    from petiq.scanner.frame import scanner_grid_affine

    d = niftypet_scanner_from_ras_direction()
    np.testing.assert_allclose(d, np.diag([-1.0, 1.0, -1.0]), atol=1e-12)
    a = scanner_grid_affine(mmr.image_shape, mmr.voxel_size_mm)
    rng = np.random.default_rng(4)
    for u, v, w in rng.integers(0, [IMX, IMX, IMZ], size=(20, 3)):
        # the same physical voxel in petiq's array [ix, iy, iz] (x, y, z grow with the index)
        centre = niftypet_voxel_centre(u, v, w)
        ix, iy, iz = u, IMX - 1 - v, w
        petiq_centre = (np.array([ix, iy, iz]) - (np.array([IMX, IMX, IMZ]) - 1) / 2) * [VXY, VXY, VXZ]
        np.testing.assert_allclose(petiq_centre, centre, atol=1e-9)  # projector module doc grid
        ras = (a @ [ix, iy, iz, 1.0])[:3]
        np.testing.assert_allclose(ras, np.linalg.solve(d, centre), atol=1e-9)  # NiftyPET's direction
        np.testing.assert_allclose(ras - niftypet_ras(u, v, w), -0.5 * np.array([VXY, VXY, VXZ]), atol=1e-9)


def test_written_images_carry_qform_and_sform(tmp_path, mmr):
    import nibabel as nib

    from petiq.scanner.frame import scanner_grid_affine, write_nifti

    a = scanner_grid_affine((8, 6, 4), (2.0, 3.0, 4.0))
    write_nifti(tmp_path / "x.nii.gz", np.arange(192, dtype=np.float32).reshape(8, 6, 4), a)
    img = nib.load(tmp_path / "x.nii.gz")
    for form, code in (img.get_qform(coded=True), img.get_sform(coded=True)):
        assert code == 1 and np.allclose(form, a)
    assert nib.aff2axcodes(img.affine) == ("L", "A", "I")  # +x left, +y anterior, +z inferior
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert not list(tmp_path.glob(".*tmp*"))


# ----------------------------------------------------------------------------- inputs by their affine
#: A 12 mm hot cube at the patient's left, anterior, superior: RAS (-40, +30, +36) mm (RAS: +x right).
CUBE_RAS = np.array([-40.0, 30.0, 36.0])


def odd_affine() -> np.ndarray:
    """2 mm voxels stored as array axes (posterior, superior, left): RAS -y, +z, -x, off centre."""
    a = np.zeros((4, 4))
    a[:3, 0] = [0.0, -2.0, 0.0]
    a[:3, 1] = [0.0, 0.0, 2.0]
    a[:3, 2] = [-2.0, 0.0, 0.0]
    a[:3, 3] = [5.0 + 69.0, -3.0 + 59.0, 4.0 - 49.0]  # grid (60, 50, 70) centred at RAS (5, -3, 4)
    a[3, 3] = 1.0
    return a


def save_cube(path, affine, shape=(60, 50, 70), value=1.0):
    import nibabel as nib

    ijk = np.indices(shape).reshape(3, -1)
    ras = affine[:3, :3] @ ijk + affine[:3, 3:4]
    cube = np.all(np.abs(ras - CUBE_RAS[:, None]) <= 6.0, axis=0).reshape(shape)
    nib.save(nib.Nifti1Image((value * cube).astype(np.float32), affine), path)


def test_hot_cube_in_a_flipped_nifti_lands_on_the_right_lors(tmp_path, mmr):
    """The simulator reads an activity / μ-map NIfTI with any affine onto the scanner grid: the cube
    lands at NiftyPET's scanner position of RAS (-40, 30, 36) (its frame's direction, re-derived
    above: (+40, +30, -36) mm), and the mMR bins petiq projects it into are those whose LORs, taken
    from NiftyPET's crystal table and sinogram LUT, pass through that point."""
    from petiq.listmode.simulate import read_inputs
    from petiq.recon.projectors import JosephProjector

    save_cube(tmp_path / "act.nii.gz", odd_affine(), value=10.0)
    save_cube(tmp_path / "mu.nii.gz", odd_affine(), value=0.096)
    act, mu, voxel = read_inputs(tmp_path / "act.nii.gz", tmp_path / "mu.nii.gz")
    assert act.shape == mu.shape == (70, 60, 50) and voxel == pytest.approx((2.0, 2.0, 2.0))
    assert np.allclose(mu / 0.096, act / 10.0, atol=1e-6)
    want = niftypet_scanner_from_ras_direction() @ CUBE_RAS
    np.testing.assert_allclose(want, [40.0, 30.0, -36.0], atol=1e-9)
    xyz = (np.indices(act.shape).reshape(3, -1).T - (np.asarray(act.shape) - 1) / 2) * 2.0
    centroid = (xyz * act.reshape(-1, 1)).sum(0) / act.sum()
    np.testing.assert_allclose(centroid, want, atol=0.5)
    import nibabel as nib

    given = np.asarray(nib.load(tmp_path / "act.nii.gz").dataobj)
    assert act.sum() == pytest.approx(given.sum(), rel=0.01)  # same voxel size: the activity is kept

    # project into direct span-1 planes; NiftyPET's LORs of the bins that see the cube centre on it
    s2c, crs = niftypet_s2c(), niftypet_crystals()
    centre = 10.0 * 0.5 * (crs[:, :2] + crs[:, 2:])
    proj = JosephProjector(mmr, image_shape=act.shape, voxel_size_mm=voxel, span=1)
    views = np.array([0, 40, 101, 163, 230])
    iw = np.arange(NSBINS)
    ring_z = (np.arange(NRNG) - 31.5) * AXR_CM * 10
    ring = int(np.argmin(np.abs(ring_z - want[2])))  # direct sinogram z = ring (segment 0 first)
    for ia in views:
        bins = (ring * NSANGLES + ia) * NSBINS + iw  # hst.cu: val = (si*NSANGLES + a)*NSBINS + w
        counts = proj.forward(act, bins=bins)
        assert counts.sum() > 0
        c0, c1 = s2c[ia + NSANGLES * iw].T
        live = ((c0 + 1) % 9 != 0) & ((c1 + 1) % 9 != 0)  # NiftyPET gives gaps no coordinates
        counts, c0, c1 = counts[live], c0[live], c1[live]
        p0, p1 = centre[c0], centre[c1]
        d = p1 - p0
        signed = (d[:, 0] * (want[1] - p0[:, 1]) - d[:, 1] * (want[0] - p0[:, 0])) / np.hypot(d[:, 0], d[:, 1])
        # the object spans +-7 mm (7 voxels of 2 mm), +-2 mm more through the interpolations: no
        # count on a NiftyPET LOR that misses it, and every one through its core sees all of it
        assert np.all(np.abs(signed[counts > 0]) < 12.0)
        core = np.abs(signed) < 4.0
        assert core.any() and np.all(counts[core] > 0.8 * counts.max())
    # axially: the superior cube is seen by the low rings, nothing by the mirrored ones
    per_ring = [proj.forward(act, bins=(r * NSANGLES + 40) * NSBINS + iw).sum() for r in range(NRNG)]
    per_ring = np.asarray(per_ring)
    assert abs((ring_z * per_ring).sum() / per_ring.sum() - want[2]) < 1.0
    assert per_ring[ring_z > 0].sum() == 0


def test_mumap_with_a_flipped_affine_gives_the_same_attenuation(tmp_path):
    """A μ-map stored with flipped and permuted axes (its affine saying so) gives the attenuation
    factors of the same μ-map stored on the scanner grid."""
    import nibabel as nib

    from petiq.cohort.phantom import grid_affine
    from petiq.recon import correction_io as cio
    from petiq.recon import pipeline as pl

    sc = Scanner.tiny()
    shape, vox = sc.image_shape, sc.voxel_size_mm
    mu = np.zeros(shape, np.float32)
    mu[8:24, 8:24, 3:12] = 0.096  # water block, off centre axially
    mu[20:24, 18:22, 8:11] = 0.17  # bone at +x (patient left), +y (anterior), +z (inferior)
    a = grid_affine(shape, vox)
    nib.save(nib.Nifti1Image(mu, a), tmp_path / "grid.nii.gz")
    # the same voxels as array axes (z reversed, x, y reversed): voxel (k', i, j') -> a @ (i, j, k)
    flipped = np.transpose(mu, (2, 0, 1))[::-1, :, ::-1]
    perm = np.zeros((4, 4))
    perm[0, 1] = 1.0  # i = axis 1
    perm[1, 2], perm[1, 3] = -1.0, shape[1] - 1  # j = (ny - 1) - axis 2
    perm[2, 0], perm[2, 3] = -1.0, shape[2] - 1  # k = (nz - 1) - axis 0
    perm[3, 3] = 1.0
    nib.save(nib.Nifti1Image(np.ascontiguousarray(flipped), a @ perm), tmp_path / "flipped.nii.gz")
    att = {}
    for name in ("grid", "flipped"):
        pl.attenuation_file(tmp_path / f"{name}.nii.gz", tmp_path / f"{name}.npz", sc, 3)
        att[name] = cio.read_correction(tmp_path / f"{name}.npz", "attenuation", sc, 3, ("attenuation",))["attenuation"]
    np.testing.assert_allclose(att["flipped"], att["grid"], rtol=1e-6)
    assert att["grid"].min() < 0.5  # the block attenuates


def test_bad_affines_and_orientations_are_refused(tmp_path):
    from petiq.core.errors import PetiqInputError
    from petiq.listmode.header import MMR_HEADER_DEFAULTS, check_listmode_header
    from petiq.scanner.frame import (
        check_affine,
        check_patient_orientation,
        grid_like,
        to_scanner_grid,
    )

    good = np.diag([2.0, 2.0, 2.0, 1.0])
    singular = good.copy()
    singular[2, 2] = 0.0
    sheared = good.copy()
    sheared[0, 1] = 0.5
    nan = good.copy()
    nan[0, 3] = np.nan
    for affine, words in ((singular, "singular"), (sheared, "shears"), (nan, "finite")):
        with pytest.raises(PetiqInputError, match=words) as info:
            check_affine(affine, tmp_path / "mu.nii.gz")
        assert "mu.nii.gz" in str(info.value)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    oblique = np.array([[2 * c, -2 * s, 0, 0], [2 * s, 2 * c, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1.0]])
    check_affine(oblique)  # a rotation is a sound affine (the μ-map path resamples it) ...
    with pytest.raises(PetiqInputError, match="oblique"):
        grid_like((10, 10, 10), oblique)  # ... but has no nearest axis-aligned grid of its own
    far = np.ones((4, 4, 4), np.float32)
    shifted = good.copy()
    shifted[:3, 3] = 500.0  # half a metre from the scanner: outside any head-sized grid
    with pytest.raises(PetiqInputError, match="outside the scanner grid"):
        to_scanner_grid(far, shifted, (20, 20, 20), (2.0, 2.0, 2.0), what="activity")
    # list-mode headers: head-first supine (or no key) only
    header = {k: v for k, v in MMR_HEADER_DEFAULTS.items()}
    header["%total listmode word counts"] = "0"
    check_listmode_header(header, "x.l.hdr")
    check_patient_orientation({}, "x.l.hdr")
    for value in ("FFS", "HFP", "hfdl"):
        header["%patient orientation"] = value
        with pytest.raises(PetiqInputError, match="head-first supine") as info:
            check_listmode_header(header, "x.l.hdr")
        assert value.upper() in str(info.value) and "x.l.hdr" in str(info.value)


def test_cube_reconstructs_where_the_input_affine_put_it(tmp_path):
    """End to end on the tiny scanner: a cube at the patient's left, anterior, superior side, given in
    a permuted and flipped NIfTI, is simulated (noise-free, its own 2 mm grid), reconstructed with
    OSEM and written with petiq's affine: read back through that affine it sits at the same RAS point."""
    import nibabel as nib

    from petiq.listmode.simulate import read_inputs
    from petiq.recon.osem import reconstruct
    from petiq.recon.projectors import JosephProjector
    from petiq.scanner.frame import scanner_grid_affine, write_nifti

    sc = Scanner.tiny()
    ras_centre = np.array([-24.0, 16.0, 12.0])  # left, anterior, superior; inside the tiny FOV
    a = odd_affine()
    a[:3, 3] = [0.0 + 29.0, 0.0 + 19.0, 0.0 - 15.0]  # grid (20, 16, 30) of 2 mm centred on the scanner
    shape = (20, 16, 30)
    ijk = np.indices(shape).reshape(3, -1)
    ras = a[:3, :3] @ ijk + a[:3, 3:4]
    cube = np.all(np.abs(ras - ras_centre[:, None]) <= 4.0, axis=0).reshape(shape).astype(np.float32)
    for name in ("act", "mu"):
        nib.save(nib.Nifti1Image(cube * (5.0 if name == "act" else 0.0), a), tmp_path / f"{name}.nii.gz")
    act, _, voxel = read_inputs(tmp_path / "act.nii.gz", tmp_path / "mu.nii.gz")
    y = JosephProjector(sc, image_shape=act.shape, voxel_size_mm=voxel, span=3).forward(act)
    image = reconstruct(
        y,
        sc,
        3,
        duration_s=1.0,
        calibration_factor=1.0,
        norm=np.ones_like(y),
        n_iterations=10,
        n_subsets=4,
        progress=False,
        backend="cpu",
    )
    write_nifti(tmp_path / "rec.nii.gz", image, scanner_grid_affine(image.shape, sc.voxel_size_mm))
    img = nib.load(tmp_path / "rec.nii.gz")
    data = np.asarray(img.dataobj)
    hot = data > 0.5 * data.max()
    pos = (img.affine @ np.vstack([*np.nonzero(hot), np.ones(hot.sum())]))[:3]
    centroid = (pos * data[hot]).sum(1) / data[hot].sum()
    np.testing.assert_allclose(centroid, ras_centre, atol=1.5)  # 4 mm voxels
