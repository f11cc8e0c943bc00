"""The mMR component normalisation (petiq.recon.component_norm) against numbers derived here.

Expected values come from NiftyPET's own definitions, re-derived in this file: the reading order
and sizes of ``mmrnorm.get_components``, the transaxial crystal pair of ``mmraux.transaxial_lut``
(the formula ``src/norm.cu``'s ``dev_norm`` evaluates), the span-1 ring pairs and span-11 sinogram
numbers of ``mmraux.axial_lut`` and the per-LOR product of ``dev_norm``. petiq's geometry helpers
(``view_radial_to_dets``, ``span1_rings``, ``span1_to_sinogram``) are never used for an expected
value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from petiq.core.errors import PetiqInputError
from petiq.recon import component_norm as cnm
from petiq.recon import norm_assembly, norm_writer
from petiq.scanner.geometry import Scanner

# ----------------------------------------------------------------------------- NiftyPET, re-derived


def niftypet_sizes(nrng: int, ncrs: int, nsbins: int, nsn11: int) -> list[tuple[str, int]]:
    """(name, float32 count) in ``get_components``' reading order."""
    nseg0 = 2 * nrng - 1
    return [
        ("geo", nsbins * nseg0),
        ("cinf", 9 * nsbins),
        ("ceff", ncrs * nrng),
        ("axe1", nsn11),
        ("dtp", nrng),
        ("dtnp", nrng),
        ("dtc", 9),
        ("axe2", nsn11),
    ]


def niftypet_transaxial(ncrs: int, nsbins: int, nangles: int):
    """``transaxial_lut`` / ``dev_norm``: crystals (c1, c2) of bin (ia, iw) (norm.cu's names) and the
    live mask ((c + OFFGAP) % TGAP > 0 for both, OFFGAP = 1, TGAP = 9)."""
    ia = np.arange(nangles)[:, None].astype(np.float64)
    iw = np.arange(nsbins)[None, :].astype(np.float64)
    c1 = np.floor(np.mod(ia + 0.5 * (ncrs - 2 + nsbins / 2 - iw), ncrs)).astype(int)
    c2 = np.floor(np.mod(ia + 0.5 * (2 * ncrs - 2 - nsbins / 2 + iw), ncrs)).astype(int)
    c1, c2 = np.broadcast_arrays(c1, c2)
    live = ((c1 + 1) % 9) * ((c2 + 1) % 9) > 0
    return c1, c2, live


def niftypet_span11_segments(mrd: int):
    """Cnt['MNRD'], Cnt['MXRD'] of span 11 (mMR: -5..5, -16..-6, 6..16, ...), cut at ``mrd``."""
    mn, mx = [-5], [5]
    lo = 6
    while lo <= mrd:
        hi = min(lo + 10, mrd)
        mn += [-hi, lo]
        mx += [-lo, hi]
        lo += 11
    return mn, mx


def niftypet_axial_lut(nrng: int, mrd: int):
    """``mmraux.axial_lut`` (full ring range): per span-1 sinogram ``sni`` the rings (r0, r1), its
    span-11 sinogram ``sn1_sn11`` and that sinogram's member count ``sn1_sn11no``."""
    mnrd, mxrd = niftypet_span11_segments(mrd)
    mssrb = -np.ones((nrng, nrng), int)
    mseg = -np.ones((nrng, nrng), int)
    for r1 in range(nrng):
        for r0 in range(nrng):
            if abs(r1 - r0) > mrd:
                continue
            rd = r1 - r0
            mssrb[r1, r0] = r0 + r1
            mseg[r1, r0] = next(i for i in range(len(mnrd)) if mnrd[i] <= rd <= mxrd[i])
    msn = -np.ones((nrng, nrng), int)
    mnos = -np.ones((nrng, nrng), int)
    i = 0
    for iseg in range(len(mnrd)):
        msk = mseg == iseg
        mtmp = np.where(msk, mssrb, -1)
        for u in np.unique(mtmp[msk]):
            msn[mtmp == u] = i
            mnos[mtmp == u] = np.sum(mtmp == u)
            i += 1
    rno, sn11, sn11no = [], [], []
    for ro in range(nrng):
        for m in range(1 if ro == 0 else 2):
            for li in range(nrng * ro, nrng * nrng, nrng + 1):
                if m == 0:
                    r1 = li // nrng
                    r0 = li - r1 * nrng
                else:
                    r0 = li // nrng
                    r1 = li - r0 * nrng
                if msn[r1, r0] < 0:
                    continue
                rno.append((r0, r1))
                sn11.append(msn[r0, r1])
                sn11no.append(mnos[r0, r1])
    return np.array(rno), np.array(sn11), np.array(sn11no), i


def dt(s, dtp, dtnp):
    """NiftyPET's per-crystal dead-time factor (float32 as in dev_norm)."""
    s, dtp, dtnp = np.float32(s), np.float32(dtp), np.float32(dtnp)
    den = np.float32(1) + np.float32(0.5) * s * dtnp
    return np.float32(np.exp(np.float32(0.5) * s * dtp / den) / den)


def dev_norm_lor(cn, sc, ia, iw, sni, rno, sn11, bckts=None, geo_row=None):
    """``nrmfctr / axe1[s11]`` of one span-1 LOR, as dev_norm evaluates it."""
    c1s, c2s, live = niftypet_transaxial(sc.crystals_per_ring, sc.n_radial, sc.n_views)
    if not live[ia, iw]:
        return 0.0
    c1, c2 = c1s[ia, iw], c2s[ia, iw]
    r0, r1 = rno[sni]
    row = 0 if geo_row is None else geo_row
    v = (
        float(cn.geometric[row, iw])
        * float(cn.interference[iw, ia % 9])
        * float(cn.crystal_efficiency[r0, c1])
        * float(cn.crystal_efficiency[r1, c2])
    )
    if bckts is not None:
        bt = -(-sc.crystals_per_ring // 18)
        b1 = c1 // 18 + bt * (r0 // 8)
        b2 = c2 // 18 + bt * (r1 // 8)
        v *= float(dt(bckts[b1], cn.ring_dead_time_paralysing[r0], cn.ring_dead_time_nonparalysing[r0]))
        v *= float(dt(bckts[b2], cn.ring_dead_time_paralysing[r1], cn.ring_dead_time_nonparalysing[r1]))
    return v / float(cn.axial[sn11[sni]])


def random_components(sc: Scanner, seed: int = 0, dead_time: bool = False) -> cnm.ComponentNorm:
    rng = np.random.default_rng(seed)
    lay = cnm.component_layout(sc)
    arr = {f: rng.uniform(0.5, 1.5, shape).astype(np.float32) for f, shape in lay.items()}
    if dead_time:
        arr["ring_dead_time_paralysing"] = rng.uniform(-3e-6, -1e-6, lay["ring_dead_time_paralysing"]).astype(
            np.float32
        )
        arr["ring_dead_time_nonparalysing"] = rng.uniform(1e-7, 5e-7, lay["ring_dead_time_nonparalysing"]).astype(
            np.float32
        )
    else:
        arr["ring_dead_time_paralysing"][:] = 0
        arr["ring_dead_time_nonparalysing"][:] = 0
    return cnm.ComponentNorm(
        **arr,
        quantification_factor=12345.678,
        scanner=sc.name,
        originating_system=sc.name if sc.name != "mmr" else "2008",
        n_buckets=sc.n_buckets,
    )


@pytest.fixture(scope="module")
def tiny():
    return Scanner.from_name("tiny")


@pytest.fixture(scope="module")
def mmr():
    return Scanner.mmr()


# ----------------------------------------------------------------------------- layout


def test_mmr_layout_matches_niftypet_reading_order(mmr):
    lay = cnm.component_layout(mmr)
    want = niftypet_sizes(nrng=64, ncrs=504, nsbins=344, nsn11=837)
    assert [int(np.prod(s)) for s in lay.values()] == [n for _, n in want]
    assert lay["geometric"] == (127, 344) and lay["interference"] == (344, 9)
    assert lay["crystal_efficiency"] == (64, 504) and lay["axial"] == (837,) and lay["axial_2"] == (837,)
    total = sum(n for _, n in want)
    assert total == 80851 and 4 * total == 323404
    assert [f for f, _ in cnm.COMPONENTS] == list(lay)


def test_niftypet_axial_lut_rederivation_is_the_mmrs(mmr):
    # sanity of this file's re-derivation: 4084 span-1 and 837 span-11 sinograms
    rno, sn11, sn11no, n11 = niftypet_axial_lut(64, 60)
    assert len(rno) == 4084 and n11 == 837
    assert np.bincount(sn11, minlength=837).tolist() == [int(n) for n in sn11no[np.unique(sn11, return_index=True)[1]]]


# ----------------------------------------------------------------------------- round trips


def _same(a: cnm.ComponentNorm, b: cnm.ComponentNorm):
    for f, _ in cnm.COMPONENTS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == np.float32 and x.shape == y.shape
        assert x.tobytes() == np.asarray(y, np.float32).tobytes(), f


def test_round_trip_interfile_tiny(tmp_path, tiny):
    cn = random_components(tiny, 1, dead_time=True)
    data = norm_writer.write_component_norm(tmp_path / "norm.n", cn, tiny)
    assert data.name == "norm.n" and (tmp_path / "norm.n.hdr").is_file()
    n_floats = sum(n for _, n in niftypet_sizes(8, 72, 28, tiny.n_sinograms(11)))
    assert data.stat().st_size == 4 * n_floats
    for p in (tmp_path / "norm.n", tmp_path / "norm.n.hdr"):
        back = cnm.read_component_norm(p, tiny)
        _same(back, cn)
        assert back.quantification_factor == pytest.approx(12345.678, rel=1e-9)
        assert back.scanner == "tiny"


def test_round_trip_dicom_tiny(tmp_path, tiny):
    cn = random_components(tiny, 2, dead_time=True)
    p = norm_writer.write_component_norm(tmp_path / "norm.dcm", cn, tiny)
    back = cnm.read_component_norm(p, tiny)
    _same(back, cn)
    assert back.quantification_factor == pytest.approx(12345.678, rel=1e-9)
    import pydicom

    ds = pydicom.dcmread(p)
    assert "MRPETNORM" in str(ds[0x0029, 0x1008].value)
    raw = bytes(ds[0x7FE1, 0x1010].value)
    assert raw == b"".join(getattr(cn, f).astype("<f4").tobytes() for f, _ in cnm.COMPONENTS)


MMR_HEADER = """!INTERFILE:=
%comment:=SMS-MI normalization
!originating system:=2008
%SMS-MI header name space:=component based normalization
!GENERAL DATA:=
!name of data file:=mmr_norm.n
!GENERAL IMAGE DATA:=
!type of data:=PET
imagedata byte order:=LITTLEENDIAN
!PET data type:=normalization
data format:=component based normalization
number format:=float
!number of bytes per pixel:=4
%number of buckets:=224
%number of normalization components:=8
%normalization component[1]:=geometric effects
data offset in bytes[1]:=0
number of dimensions[1]:=2
%matrix size[1]:={344,127}
%matrix axis label[1]:={sinogram projections,sinogram planes}
%normalization component[2]:=crystal interference
data offset in bytes[2]:=174752
number of dimensions[2]:=2
%matrix size[2]:={9,344}
%normalization component[3]:=crystal efficiencies
data offset in bytes[3]:=187136
number of dimensions[3]:=2
%matrix size[3]:={504,64}
%normalization component[4]:=axial effects
data offset in bytes[4]:=316160
number of dimensions[4]:=1
%matrix size[4]:={837}
%normalization component[5]:=paralyzing ring DT parameters
data offset in bytes[5]:=319508
number of dimensions[5]:=1
%matrix size[5]:={64}
%normalization component[6]:=non-paralyzing ring DT parameters
data offset in bytes[6]:=319764
number of dimensions[6]:=1
%matrix size[6]:={64}
%normalization component[7]:=TX crystal DT parameter
data offset in bytes[7]:=320020
number of dimensions[7]:=1
%matrix size[7]:={9}
%normalization component[8]:=additional axial effects
data offset in bytes[8]:=320056
number of dimensions[8]:=1
%matrix size[8]:={837}
%scanner quantification factor (Bq*s/ECAT counts):=3.1415926e+07
%cross calibration factor:=1.0
"""


def write_mmr_by_hand(folder, seed=0, header=MMR_HEADER):
    """A full-size mMR norm as the scanner lays it out: header text above, floats by numpy."""
    rng = np.random.default_rng(seed)
    sizes = niftypet_sizes(64, 504, 344, 837)
    parts = {name: rng.uniform(0.5, 1.5, n).astype("<f4") for name, n in sizes}
    parts["dtp"] = rng.uniform(-3e-6, -1e-6, 64).astype("<f4")
    parts["dtnp"] = rng.uniform(1e-7, 5e-7, 64).astype("<f4")
    (folder / "mmr_norm.n").write_bytes(b"".join(parts[name].tobytes() for name, _ in sizes))
    (folder / "mmr_norm.n.hdr").write_bytes(header.replace("\n", "\r\n").encode("ascii"))
    return folder / "mmr_norm.n", parts


def test_offsets_in_the_hand_header_are_niftypets():
    at, offs = 0, []
    for _, n in niftypet_sizes(64, 504, 344, 837):
        offs.append(at)
        at += 4 * n
    for i, off in enumerate(offs, start=1):
        assert f"data offset in bytes[{i}]:={off}\n" in MMR_HEADER


def test_reads_a_hand_written_mmr_norm(tmp_path, mmr):
    path, parts = write_mmr_by_hand(tmp_path)
    cn = cnm.read_component_norm(path, mmr)
    assert cn.quantification_factor == pytest.approx(3.1415926e7, rel=1e-12)
    assert cn.originating_system == "2008" and cn.n_buckets == 224
    assert cn.geometric.shape == (127, 344)
    assert cn.geometric.tobytes() == parts["geo"].tobytes()
    assert cn.interference.tobytes() == parts["cinf"].tobytes() and cn.interference.shape == (344, 9)
    assert cn.crystal_efficiency.tobytes() == parts["ceff"].tobytes() and cn.crystal_efficiency.shape == (64, 504)
    # row-major as NiftyPET reshapes: ceff[r, c] is float number r*504 + c
    assert cn.crystal_efficiency[3, 17] == parts["ceff"][3 * 504 + 17]
    assert cn.geometric[5, 200] == parts["geo"][5 * 344 + 200]
    assert cn.interference[100, 4] == parts["cinf"][100 * 9 + 4]
    for field, name in (
        ("axial", "axe1"),
        ("ring_dead_time_paralysing", "dtp"),
        ("ring_dead_time_nonparalysing", "dtnp"),
        ("crystal_dead_time", "dtc"),
        ("axial_2", "axe2"),
    ):
        assert getattr(cn, field).tobytes() == parts[name].tobytes(), field


# ----------------------------------------------------------------------------- assembly


def _check_bins(cn, sc, span, picks, bckts=None, by_plane=False):
    rno, sn11, sn11no, _ = niftypet_axial_lut(sc.n_rings, sc.max_ring_difference)
    out = norm_assembly.norm_sinogram(cn, sc, span, bckts, geometric_by_plane=by_plane)
    assert out.shape == (len(rno) if span == 1 else int(sn11.max()) + 1, sc.n_views, sc.n_radial)
    for s, ia, iw in picks:
        if span == 1:
            members = [s]
            want = dev_norm_lor(cn, sc, ia, iw, s, rno, sn11, bckts, rno[s].sum() if by_plane else None)
            if cn.span1_axial is not None:
                want *= float(cn.span1_axial[s])
        else:
            members = np.nonzero(sn11 == s)[0]
            assert len(members) == sn11no[members[0]]
            want = sum(
                dev_norm_lor(cn, sc, ia, iw, m, rno, sn11, bckts, rno[m].sum() if by_plane else None) / sn11no[m]
                for m in members
            )
        assert out[s, ia, iw] == pytest.approx(want, rel=2e-6, abs=1e-30), (span, s, ia, iw)
    return out


def _picks(sc, n_sino, seed=3, n=40):
    rng = np.random.default_rng(seed)
    picks = [
        (int(rng.integers(n_sino)), int(rng.integers(sc.n_views)), int(rng.integers(sc.n_radial))) for _ in range(n)
    ]
    _, _, live = niftypet_transaxial(sc.crystals_per_ring, sc.n_radial, sc.n_views)
    dead = np.argwhere(~live)
    picks += [(n_sino - 1, int(a), int(w)) for a, w in dead[:3]]  # gap LORs
    return picks


@pytest.mark.parametrize("span", [1, 11])
def test_norm_sinogram_is_dev_norm(tiny, span):
    cn = random_components(tiny, 4)
    n_sino = tiny.n_sinograms(span)
    out = _check_bins(cn, tiny, span, _picks(tiny, n_sino))
    _, _, live = niftypet_transaxial(tiny.crystals_per_ring, tiny.n_radial, tiny.n_views)
    assert np.all(out[:, ~live] == 0) and np.all(out[:, live] > 0)


@pytest.mark.parametrize("span", [1, 11])
def test_norm_sinogram_with_dead_time_and_plane_geometry(tiny, span):
    cn = random_components(tiny, 5, dead_time=True)
    nb = -(-tiny.crystals_per_ring // 18) * -(-tiny.n_rings // 8)
    bckts = np.random.default_rng(6).integers(50_000, 300_000, nb)
    _check_bins(cn, tiny, span, _picks(tiny, tiny.n_sinograms(span), seed=7), bckts=bckts)
    _check_bins(cn, tiny, span, _picks(tiny, tiny.n_sinograms(span), seed=8), by_plane=True)


def test_span1_axial_factors(tiny):
    cn = random_components(tiny, 9)
    cn = cn.replace(span1_axial=np.random.default_rng(10).uniform(0.8, 1.2, tiny.n_sinograms(1)).astype(np.float32))
    _check_bins(cn, tiny, 1, _picks(tiny, tiny.n_sinograms(1), seed=11))


def test_norm_sinogram_demo_span11_bins():
    demo = Scanner.demo()  # 32 rings, MRD 27: three span-11 segments pairs, real member counts
    cn = random_components(demo, 12)
    _check_bins(cn, demo, 11, _picks(demo, demo.n_sinograms(11), seed=13, n=25))


def test_dead_time_factor_by_hand(mmr):
    cn = random_components(mmr, 14, dead_time=True)
    singles = np.arange(224, dtype=np.int64) * 1000 + 50_000
    f = norm_assembly.dead_time_factor(cn, mmr, singles)
    assert f.shape == (64, 504)
    for r, c in ((13, 100), (0, 0), (63, 503), (40, 17), (8, 18)):
        b = c // 18 + 28 * (r // 8)
        s = 0.5 * singles[b]
        dtp = float(cn.ring_dead_time_paralysing[r])
        dtnp = float(cn.ring_dead_time_nonparalysing[r])
        want = np.exp(s * dtp / (1 + s * dtnp)) / (1 + s * dtnp)
        det = (c + 1) % 504
        assert f[r, det] == pytest.approx(want, rel=1e-12), (r, c)
    assert 13 // 8 == 1 and 100 // 18 + 28 == 33  # the worked example: bucket 33
    with pytest.raises(PetiqInputError, match="bucket"):
        norm_assembly.dead_time_factor(cn, mmr, singles[:10])


@pytest.mark.parametrize("span", [1, 11])
def test_from_truth_gives_petiqs_norm(tiny, span):
    rng = np.random.default_rng(15)
    n = tiny.crystals_per_ring
    eff = rng.uniform(0.7, 1.3, (tiny.n_rings, n))
    eff[:, np.arange(n) % 9 == 0] = 0.0  # petiq's gaps: det % 9 == 0
    g = rng.uniform(0.8, 1.2, tiny.n_radial)
    cn = norm_assembly.component_norm_from_truth(tiny, eff, g, 7.5)
    assert cn.quantification_factor == pytest.approx(1 / 7.5)  # e7's Bq·s per count: 1/κ
    out = norm_assembly.norm_sinogram(cn, tiny, span)
    # petiq's truth: n = eps(ring_a, det_a) eps(ring_b, det_b) g_t, span-S bin = mean over members.
    # Independent pairing: NiftyPET's c1 = det_b - 1 with r0 = ring_b, c2 = det_a - 1 with r1 = ring_a.
    c1, c2, _ = niftypet_transaxial(n, tiny.n_radial, tiny.n_views)
    det_b, det_a = (c1 + 1) % n, (c2 + 1) % n
    rno, sn11, sn11no, n11 = niftypet_axial_lut(tiny.n_rings, tiny.max_ring_difference)
    e32 = eff.astype(np.float32).astype(np.float64)
    g32 = g.astype(np.float32).astype(np.float64)
    lors = np.stack([e32[r1][det_a] * e32[r0][det_b] * g32[None, :] for r0, r1 in rno])
    if span == 1:
        want = lors
    else:
        want = np.zeros((n11,) + lors.shape[1:])
        np.add.at(want, sn11, lors / sn11no[:, None, None])
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=1e-12)


# ----------------------------------------------------------------------------- bad inputs


def _raises(exc_info, path, *words):
    msg = str(exc_info.value)
    assert str(path) in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


def test_tiny_norm_read_as_mmr(tmp_path, tiny, mmr):
    norm_writer.write_component_norm(tmp_path / "t.n", random_components(tiny), tiny)
    with pytest.raises(PetiqInputError) as e:
        cnm.read_component_norm(tmp_path / "t.n", mmr)
    _raises(e, tmp_path / "t.n.hdr", "originating system")
    # the same header claiming to be the mMR: the matrix sizes give it away
    hdr = (tmp_path / "t.n.hdr").read_text().replace("originating system:=tiny", "originating system:=2008")
    (tmp_path / "t.n.hdr").write_text(hdr)
    with pytest.raises(PetiqInputError) as e:
        cnm.read_component_norm(tmp_path / "t.n", mmr)
    _raises(e, tmp_path / "t.n.hdr", "matrix size")


def test_missing_header(tmp_path, tiny):
    norm_writer.write_component_norm(tmp_path / "t.n", random_components(tiny), tiny)
    (tmp_path / "t.n.hdr").unlink()
    with pytest.raises(PetiqInputError) as e:
        cnm.read_component_norm(tmp_path / "t.n", tiny)
    _raises(e, tmp_path / "t.n.hdr", "missing")


def test_truncated_data(tmp_path, mmr):
    path, _ = write_mmr_by_hand(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: -4 * 837])
    with pytest.raises(PetiqInputError) as e:
        cnm.read_component_norm(path, mmr)
    _raises(e, path, "bytes", "323404")


def test_nan_efficiency(tmp_path, tiny):
    cn = random_components(tiny)
    norm_writer.write_component_norm(tmp_path / "t.n", cn, tiny)
    vals = np.fromfile(tmp_path / "t.n", dtype="<f4")
    lay = cnm.component_layout(tiny)
    start = int(np.prod(lay["geometric"])) + int(np.prod(lay["interference"]))
    vals[start + 5] = np.nan
    vals.tofile(tmp_path / "t.n")
    with pytest.raises(PetiqInputError) as e:
        cnm.read_component_norm(tmp_path / "t.n", tiny)
    _raises(e, tmp_path / "t.n", "crystal efficiencies", "NaN")


def test_header_without_quantification_factor(tmp_path, mmr):
    header = "\n".join(ln for ln in MMR_HEADER.splitlines() if "quantification" not in ln) + "\n"
    path, _ = write_mmr_by_hand(tmp_path, header=header)
    with pytest.raises(PetiqInputError) as e:
        cnm.read_component_norm(path, mmr)
    _raises(e, tmp_path / "mmr_norm.n.hdr", "quantification factor")


def test_listmode_dicom_is_not_a_norm(tmp_path, tiny):
    from petiq.listmode.dicom import write_dicom_header

    lm_hdr = (
        "!INTERFILE:=\n!originating system:=2008\n!PET data type:=list mode\n"
        "!name of data file:=lm.bf\n%study date (yyyy:mm:dd):=2020:01:01\n"
    )
    dcm = tmp_path / "lm.dcm"
    write_dicom_header(dcm, lm_hdr)
    with pytest.raises(PetiqInputError) as e:
        cnm.read_component_norm(dcm, tiny)
    _raises(e, dcm, "not a normalisation")


def test_plain_dicom_is_not_a_norm(tmp_path, tiny):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.PatientID = "x"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    p = tmp_path / "other.IMA"
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(PetiqInputError) as e:
        cnm.read_component_norm(p, tiny)
    _raises(e, p, "normalisation interfile header")


# ----------------------------------------------------------------------------- dead time from singles


def niftypet_buckets(singles, reports):
    """``lm/mmrhist.py`` literally: the uint32 ``bck`` array, in-place division, kept rows, int32."""
    bck = np.zeros((2,) + singles.shape, dtype=np.uint32)
    bck[0] = singles
    nsr = reports
    bck[0, nsr > 0] = bck[0, nsr > 0] / nsr[nsr > 0]
    tmsk = np.sum(nsr, axis=1) > 0
    single_rate = np.copy(bck[0, tmsk, :])
    return np.int32(np.sum(single_rate, axis=0) / single_rate.shape[0])


def test_mean_bucket_singles_by_hand():
    singles = np.array([[0, 0, 0], [200_001, 7, 0], [100_000, 0, 0], [0, 0, 0]], dtype=np.int64)
    reports = np.array([[0, 0, 0], [2, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.int32)
    # kept intervals 1 and 2; bucket 0: (100000 [200001 // 2] + 100000) / 2; bucket 1: (7 + 0) / 2 -> 3
    got = norm_assembly.mean_bucket_singles(singles, reports)
    assert got.dtype == np.int32 and got.tolist() == [100_000, 3, 0]


def test_mean_bucket_singles_is_mmrhists():
    rng = np.random.default_rng(20)
    reports = rng.integers(0, 3, (50, 224)).astype(np.int32)
    reports[::3] = 0  # intervals without any report
    singles = np.where(
        reports > 0, reports * rng.integers(10_000, 400_000, (50, 224)) + rng.integers(0, 5, (50, 224)), 0
    )
    got = norm_assembly.mean_bucket_singles(singles.astype(np.int64), reports)
    np.testing.assert_array_equal(got, niftypet_buckets(singles, reports))
    with pytest.raises(PetiqInputError, match="no report"):
        norm_assembly.mean_bucket_singles(np.zeros((3, 224), np.int64), np.zeros((3, 224), np.int32))
    with pytest.raises(PetiqInputError, match="shape"):
        norm_assembly.mean_bucket_singles(np.zeros((3, 224), np.int64), np.zeros((3, 223), np.int32))


def test_has_dead_time(tiny):
    assert not norm_assembly.has_dead_time(random_components(tiny))
    assert norm_assembly.has_dead_time(random_components(tiny, dead_time=True))
    cn = random_components(tiny)
    dtnp = cn.ring_dead_time_nonparalysing.copy()
    dtnp[3] = 1e-7
    assert norm_assembly.has_dead_time(cn.replace(ring_dead_time_nonparalysing=dtnp))


def test_component_norm_file_keeps_the_components(tmp_path, tiny):
    cn = random_components(tiny, 21, dead_time=True)
    norm_writer.write_component_norm(tmp_path / "t.n", cn, tiny)
    summary = norm_assembly.component_norm_file(tmp_path / "t.n", tmp_path / "norm.npz", tiny, 11)
    assert summary["calibration_factor"] == pytest.approx(1 / 12345.678)  # κ = 1/qf
    with np.load(tmp_path / "norm.npz") as z:
        data = {k: z[k] for k in z.files}
    for key in ("kind", "norm", "crystal_efficiency", "radial_factor", "radial_measured", "calibration_factor"):
        assert key in data
    assert str(data["kind"]) == "norm"
    for f, _ in cnm.COMPONENTS:
        assert data[f"component_{f}"].tobytes() == getattr(cn, f).tobytes()
    assert float(data["quantification_factor"]) == pytest.approx(12345.678, rel=1e-9)
    back = norm_assembly.components_from_npz(data, tiny)
    _same(back, cn)
    nb = -(-tiny.crystals_per_ring // 18) * -(-tiny.n_rings // 8)
    bckts = np.full(nb, 150_000)
    np.testing.assert_array_equal(
        norm_assembly.norm_sinogram(back, tiny, 11, bckts), norm_assembly.norm_sinogram(cn, tiny, 11, bckts)
    )
    np.testing.assert_array_equal(data["norm"], norm_assembly.norm_sinogram(cn, tiny, 11))
    # a norm estimated from a norm scan has no components
    no_comp = {k: v for k, v in data.items() if not k.startswith("component_") and k != "quantification_factor"}
    assert norm_assembly.components_from_npz(no_comp, tiny) is None
    partial = dict(no_comp, component_geometric=data["component_geometric"])
    with pytest.raises(PetiqInputError, match="lacks"):
        norm_assembly.components_from_npz(partial, tiny)


def test_dicom_forms_ima_inline_and_dcm_with_bf(tmp_path, tiny):
    import pydicom

    cn = random_components(tiny, 30, dead_time=True)
    ima = norm_writer.write_component_norm(tmp_path / "norm.IMA", cn, tiny)
    _same(cnm.read_component_norm(ima, tiny), cn)
    # the .dcm + .bf export: the binary beside the DICOM (NiftyPET: dfile[:-4] + '.bf')
    ds = pydicom.dcmread(ima)
    raw = bytes(ds[0x7FE1, 0x1010].value)
    del ds[0x7FE1, 0x1010]
    ds.save_as(tmp_path / "exp.dcm")
    with pytest.raises(PetiqInputError) as e:
        cnm.read_component_norm(tmp_path / "exp.dcm", tiny)
    _raises(e, tmp_path / "exp.dcm", ".bf")
    (tmp_path / "exp.bf").write_bytes(raw)
    _same(cnm.read_component_norm(tmp_path / "exp.dcm", tiny), cn)
    _same(cnm.read_component_norm(tmp_path / "exp.bf", tiny), cn)


def test_chain_norm_step_from_a_component_norm(tmp_path, tiny):
    from petiq.recon import chain

    cn = random_components(tiny, 31)
    norm_writer.write_component_norm(tmp_path / "norm.dcm", cn, tiny)
    step = chain._norm_npz(tmp_path / "norm.dcm", tiny, 11)
    work = tmp_path / "work"
    work.mkdir()
    out = step(work)
    assert out == work / "norm.npz"
    with np.load(out) as z:
        np.testing.assert_array_equal(z["norm"], norm_assembly.norm_sinogram(cn, tiny, 11))
    # checked at once, before any step: a missing header
    norm_writer.write_component_norm(tmp_path / "x.n", cn, tiny)
    (tmp_path / "x.n.hdr").unlink()
    with pytest.raises(PetiqInputError) as e:
        chain._norm_npz(tmp_path / "x.n", tiny, 11)
    _raises(e, tmp_path / "x.n.hdr", "missing")


def test_full_size_mmr_span11_bins_with_dead_time(tmp_path, mmr):
    """At mMR size (837 span-11 sinograms, MRD 60, 224 buckets), from the hand-written file (~5 s)."""
    path, _ = write_mmr_by_hand(tmp_path, seed=40)
    cn = cnm.read_component_norm(path, mmr)
    bckts = np.random.default_rng(41).integers(50_000, 300_000, 224)
    picks = _picks(mmr, 837, seed=42, n=12) + [(0, 0, 0), (836, 251, 343), (418, 126, 172)]
    _check_bins(cn, mmr, 11, picks, bckts=bckts)


def test_reconstruction_norm_carries_the_acquisitions_dead_time(tmp_path, tiny):
    """pipeline.read_norm: a norm with dead-time parameters, the same in every ring, and an acquisition
    whose buckets all report s cps: every crystal's factor is d = exp(½s·p/(1+½s·n))/(1+½s·n), so
    every live bin of the span-11 norm is d² times the norm without dead time."""
    from petiq.recon import pipeline as pl

    cn = random_components(tiny, 4)
    p, n = -2.0e-6, 4.0e-7
    cn = cn.replace(
        ring_dead_time_paralysing=np.full(tiny.n_rings, p, np.float32),
        ring_dead_time_nonparalysing=np.full(tiny.n_rings, n, np.float32),
    )
    norm_writer.write_component_norm(tmp_path / "dt.n", cn, tiny)
    pl.norm_file(tmp_path / "dt.n", tmp_path / "norm.npz", tiny, 11)
    s = 200_000
    sino = {
        "singles": np.full((3, tiny.n_buckets), 2 * s, np.int64),
        "singles_reports": np.full((3, tiny.n_buckets), 2),
        "singles_interval_s": 1.0,
    }
    plain, _, no_dt = pl.read_norm(tmp_path / "norm.npz", tiny, 11)
    with_dt, kappa, info = pl.read_norm(tmp_path / "norm.npz", tiny, 11, sino, "sino.npz")
    d = math.exp(0.5 * s * p / (1 + 0.5 * s * n)) / (1 + 0.5 * s * n)
    live = plain > 0
    np.testing.assert_allclose(with_dt[live] / plain[live], d * d, rtol=2e-6)
    assert not with_dt[~live].any()
    assert no_dt == {"dead_time": False} and info["dead_time"] is True
    assert info["crystal_dead_time_factor_mean"] == pytest.approx(d, rel=1e-6)
    assert kappa == pytest.approx(1 / 12345.678)
    # an acquisition histogrammed before petiq kept the singles cannot be corrected: a clear error
    with pytest.raises(PetiqInputError, match="sino.npz.*no singles"):
        pl.read_norm(tmp_path / "norm.npz", tiny, 11, {"prompts": None}, "sino.npz")
