"""The DICOM form of an mMR list-mode export (``.dcm`` with the Interfile header in the Siemens
private tags + ``.bf`` with the words) gives the same events as the ``.l``/``.l.hdr`` pair.

The ``.dcm`` files here are written by pydicom in the test, laid out as the scanner lays them out
(NiftyPET ``mmraux.hdr_lm``: the header at (0029,1010) or (0029,1110); NIMPA ``dcminfo``: CSA Data
Type ``MRPETLM_LARGE``, ImageType ``PET_LISTMODE``), not by petiq's writer.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from helpers import write_sheet, write_site_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from test_mmr_export import MMR_HEADER, decode

from petiq.cohort.patients import read_patients
from petiq.core.errors import PetiqInputError
from petiq.listmode import (
    ListmodeWriter,
    header_path,
    histogram_listmode,
    iter_listmode_chunks,
    read_listmode,
    read_listmode_header,
    thin_listmode,
    write_listmode,
)
from petiq.scanner.geometry import Scanner

# Siemens "CSA Non-Image Storage", the private SOP class of the scanner's raw-data objects.
CSA_NON_IMAGE_STORAGE = "1.3.12.2.1107.5.9.1"
N_BINS_MMR = 4084 * 252 * 344  # span-1 sinograms x views x radial bins of the mMR


def mmr_words(seed=7, n_ms=30):
    """PETLINK words as the mMR writes them: a time tag per ms from the scanner's clock, singles,
    gantry, gating and control tags, prompts and delayeds."""
    rng = np.random.default_rng(seed)
    t0 = 25934299
    words = []
    for ms in range(t0, t0 + n_ms):
        words.append(0x80000000 | ms)
        if (ms - t0) % 10 == 0:
            words += [0xA0000000 | b << 19 | int(rng.integers(1000, 5000)) for b in range(0, 224, 7)]
        words += [0xC0000000 | 7, 0xE0000000 | 1, 0xF0000000 | 3]
        for _ in range(int(rng.integers(0, 40))):
            words.append(int(rng.integers(0, N_BINS_MMR)) | (0x40000000 if rng.random() < 0.7 else 0))
    return np.asarray(words, dtype=np.uint32)


def write_dcm(path, header_text, *, layout="B20P", data_type="MRPETLM_LARGE", with_header=True):
    """A list-mode ``.dcm`` as the scanner exports it. B20P/E11: (0029,0010) is the CSA NON-IMAGE
    block, the header at (0029,1010), the CSA series header at (0029,1120); B18P: the creators
    swapped, the header at (0029,1110)."""
    ds = Dataset()
    ds.SOPClassUID = CSA_NON_IMAGE_STORAGE
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.Modality = "PT"
    ds.Manufacturer = "SIEMENS"
    ds.ManufacturerModelName = "Biograph_mMR"
    ds.SoftwareVersions = "syngo MR B18P" if layout == "B18P" else "syngo MR B20P"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "PET_LISTMODE"]
    ds.ImageComments = "Listmode"
    non_image, csa = (0x10, 0x11) if layout != "B18P" else (0x11, 0x10)
    ds.add_new((0x0029, non_image), "LO", "SIEMENS CSA NON-IMAGE")
    ds.add_new((0x0029, csa), "LO", "SIEMENS CSA HEADER")
    ds.add_new((0x0029, non_image << 8 | 0x08), "CS", data_type)
    ds.add_new((0x0029, non_image << 8 | 0x09), "LO", "1.0")
    if with_header:
        raw = header_text.encode("ascii")
        ds.add_new((0x0029, non_image << 8 | 0x10), "OB", raw + b"\0" * (len(raw) % 2))
    ds.add_new((0x0029, csa << 8 | 0x20), "OB", b"SV10\x04\x03\x02\x01" + b"\0" * 8)  # CSA series header
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def both_forms(tmp_path_factory):
    words = mmr_words()
    d = tmp_path_factory.mktemp("forms")
    text = MMR_HEADER.replace("{n_words}", str(words.size))
    lpath = d / "PET_ACQ_1_00000.l"
    lpath.write_bytes(words.astype("<u4").tobytes())
    header_path(lpath).write_text(text)
    dcm = write_dcm(d / "1.3.12.2.1107.5.2.38.51014.30000017112009310734300000019.dcm", text)
    dcm.with_suffix(".bf").write_bytes(words.astype("<u4").tobytes())
    return lpath, dcm, words, text


@pytest.mark.parametrize("which", [".dcm", ".bf"])
def test_dicom_export_gives_the_events_of_the_interfile_pair(both_forms, which):
    lpath, dcm, words, _ = both_forms
    events, kinds = decode(words)  # the test's own PETLINK decoder
    ref = read_listmode(lpath, scanner=Scanner.mmr())
    got = read_listmode(dcm.with_suffix(which), scanner=Scanner.mmr())
    assert got.bins.tolist() == [e[0] for e in events] == ref.bins.tolist()
    assert got.prompt.tolist() == [e[1] for e in events]
    assert got.time_ms.tolist() == [e[2] for e in events]
    assert got.duration_ms == kinds["time"][-1] - kinds["time"][0] == ref.duration_ms
    assert got.header == ref.header and got.header["%time_sync"] == "25934299"
    assert got.path == dcm.with_suffix(".bf")
    chunks = list(iter_listmode_chunks(dcm.with_suffix(which), chunk_words=97, scanner=Scanner.mmr()))
    assert np.concatenate([c.bins for c in chunks]).tolist() == ref.bins.tolist()
    assert read_listmode_header(dcm.with_suffix(which)) == ref.header


def test_b18p_layout_header_at_0029_1110(both_forms, tmp_path):
    lpath, _, words, text = both_forms
    dcm = write_dcm(tmp_path / "lm.dcm", text, layout="B18P")
    assert pydicom.dcmread(dcm)[0x0029, 0x1110].value.startswith(b"!INTERFILE")
    dcm.with_suffix(".bf").write_bytes(words.astype("<u4").tobytes())
    assert read_listmode(dcm, scanner=Scanner.mmr()).bins.tolist() == read_listmode(lpath).bins.tolist()


def test_thinning_a_dicom_export_equals_thinning_the_pair(both_forms, tmp_path):
    lpath, dcm, _, _ = both_forms
    a = thin_listmode(lpath, tmp_path / "a.l", 0.4, seed=11)
    b = thin_listmode(dcm, tmp_path / "b.l", 0.4, seed=11)
    assert (tmp_path / "a.l").read_bytes() == (tmp_path / "b.l").read_bytes()
    assert a.prompts_out == b.prompts_out and a.source_sha256 == b.source_sha256
    hdr = read_listmode_header(tmp_path / "b.l")
    assert hdr["%petiq source file"] == dcm.name and hdr["!name of data file"] == "b.l"
    with pytest.raises(PetiqInputError, match="overwrite the input"):
        thin_listmode(dcm, dcm.with_suffix(".bf"), 0.4, seed=11)


def _copy_pair(src_dcm, dst_dir, name="x"):
    dcm = dst_dir / f"{name}.dcm"
    dcm.write_bytes(src_dcm.read_bytes())
    dcm.with_suffix(".bf").write_bytes(src_dcm.with_suffix(".bf").read_bytes())
    return dcm


def test_not_a_dicom_file(both_forms, tmp_path):
    lpath, _, _, _ = both_forms
    bad = tmp_path / "x.dcm"
    bad.write_bytes(lpath.read_bytes())  # the raw words renamed .dcm
    bad.with_suffix(".bf").write_bytes(lpath.read_bytes())
    with pytest.raises(PetiqInputError, match=r"x\.dcm: is not a DICOM file.*Fix: give the \.dcm"):
        read_listmode(bad)


def test_no_listmode_header_in_the_private_tags(tmp_path):
    dcm = write_dcm(tmp_path / "x.dcm", "", with_header=False)
    dcm.with_suffix(".bf").write_bytes(b"\0" * 8)
    with pytest.raises(PetiqInputError, match=r"no list-mode Interfile header.*\(0029,1010\)"):
        read_listmode(dcm)


def test_a_norm_dicom_is_refused_by_name(both_forms, tmp_path):
    _, _, _, text = both_forms
    dcm = write_dcm(tmp_path / "x.dcm", text, data_type="MRPETNORM")
    with pytest.raises(PetiqInputError, match="normalisation"):
        read_listmode(dcm)


def test_missing_bf(both_forms, tmp_path):
    _, src, _, _ = both_forms
    dcm = _copy_pair(src, tmp_path)
    dcm.with_suffix(".bf").unlink()
    with pytest.raises(PetiqInputError, match=r"x\.bf: the list-mode data file of x\.dcm is missing"):
        read_listmode(dcm)
    with pytest.raises(PetiqInputError, match=r"x\.bf: the list-mode data file"):
        thin_listmode(dcm, tmp_path / "t.l", 0.5, seed=1)


def test_missing_dcm_beside_a_bf(both_forms, tmp_path):
    _, src, _, _ = both_forms
    dcm = _copy_pair(src, tmp_path)
    dcm.unlink()
    with pytest.raises(PetiqInputError, match=r"x\.dcm: the DICOM header of the list-mode export is missing"):
        read_listmode(dcm.with_suffix(".bf"))


def test_bf_size_disagrees_with_the_header(both_forms, tmp_path):
    _, src, words, _ = both_forms
    dcm = _copy_pair(src, tmp_path)
    dcm.with_suffix(".bf").write_bytes(words[:-5].astype("<u4").tobytes())
    with pytest.raises(PetiqInputError, match=r"x\.bf: holds \d+ words but its header x\.dcm says .*truncated"):
        read_listmode(dcm)


def test_patient_sheet_takes_a_dicom_export(both_forms, tmp_path):
    _, src, _, _ = both_forms
    dcm = _copy_pair(src, tmp_path, "lm")
    write_site_files(tmp_path / "site", "mmr")
    for name in ("mu.nii.gz", "norm.n", "norm.n.hdr"):
        (tmp_path / "site" / name).rename(tmp_path / name)
    cols = ["participant_id", "source", "listmode", "mumap", "norm", "weight_kg", "injected_mbq"]
    row = ["sub-01", "real", "lm.dcm", "mu.nii.gz", "norm.n", "70", "200"]
    sheet = write_sheet(tmp_path / "patients.tsv", cols, [row])
    assert read_patients(sheet, root=tmp_path, scanner="mmr")["listmode"].tolist() == ["lm.dcm"]
    dcm.with_suffix(".bf").unlink()
    with pytest.raises(PetiqInputError, match=r"row 2 \(sub-01\): the list-mode data file .*lm\.bf does not exist"):
        read_patients(sheet, root=tmp_path, scanner="mmr")


# --------------------------------------------------------------------------------------------
# Writing the DICOM form
# --------------------------------------------------------------------------------------------
def tiny_events(seed=3, n=400):
    rng = np.random.default_rng(seed)
    n_bins = int(np.prod(Scanner.tiny().sinogram_shape(1)))
    return rng.integers(0, n_bins, n), rng.random(n) < 0.7, np.sort(rng.integers(0, 2500, n))


def test_writer_writes_the_scanner_form(tmp_path):
    bins, prompt, t = tiny_events()
    header = {"patient ID": "sub-07", "%study date (yyyy:mm:dd)": "2017:11:20"}
    write_listmode(tmp_path / "a.l", bins, prompt, t, header)  # mMR defaults
    write_listmode(tmp_path / "b.dcm", bins, prompt, t, header)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.l", "a.l.hdr", "b.bf", "b.dcm"]  # no temporaries
    assert (tmp_path / "b.bf").read_bytes() == (tmp_path / "a.l").read_bytes()
    ds = pydicom.dcmread(tmp_path / "b.dcm")
    assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == CSA_NON_IMAGE_STORAGE
    assert (ds.Modality, ds.Manufacturer, ds.ManufacturerModelName) == ("PT", "SIEMENS", "Biograph_mMR")
    assert "PET_LISTMODE" in ds.ImageType and ds.ImageComments == "Listmode"
    assert ds.PatientID == "sub-07" and ds.StudyDate == "20171120"
    assert ds[0x0029, 0x0010].value == "SIEMENS CSA NON-IMAGE" and ds[0x0029, 0x1008].value == "MRPETLM_LARGE"
    text = ds[0x0029, 0x1010].value.rstrip(b"\0").decode("ascii")
    want = (tmp_path / "a.l.hdr").read_text().replace("!name of data file:=a.l", "!name of data file:=b.bf")
    assert text == want
    first = (tmp_path / "b.dcm").read_bytes()
    write_listmode(tmp_path / "b.dcm", bins, prompt, t, header)
    assert (tmp_path / "b.dcm").read_bytes() == first  # UIDs derived from the content: reproducible


def test_a_failed_write_leaves_nothing(tmp_path):
    bins, prompt, t = tiny_events()
    with pytest.raises(RuntimeError), ListmodeWriter(tmp_path / "x.dcm", scanner=Scanner.tiny()) as w:
        w.write_events(bins, prompt, t)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_thinning_dicom_to_dicom_keeps_the_export_attributes(both_forms, tmp_path):
    lpath, dcm, _, _ = both_forms
    thin_listmode(lpath, tmp_path / "a.l", 0.3, seed=5)
    thin_listmode(dcm, tmp_path / "b.dcm", 0.3, seed=5)
    assert (tmp_path / "b.bf").read_bytes() == (tmp_path / "a.l").read_bytes()
    src, out = pydicom.dcmread(dcm), pydicom.dcmread(tmp_path / "b.dcm")
    assert out.SoftwareVersions == src.SoftwareVersions == "syngo MR B20P"
    assert out[0x0029, 0x1120].value == src[0x0029, 0x1120].value  # other private tags kept
    assert out.SOPInstanceUID != src.SOPInstanceUID
    hdr = read_listmode_header(tmp_path / "b.dcm")
    assert hdr["%petiq thinning fraction"] == "0.3" and hdr["!name of data file"] == "b.bf"
    assert hdr["%time_sync"] == "25934299"  # every scanner key kept


# --------------------------------------------------------------------------------------------
# End to end: a synthetic patient exported in both forms
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_export(tmp_path_factory):
    """One tiny-scanner patient simulated twice with the same seeds: the Interfile and the DICOM form."""
    from test_simulate import PARTICIPANT, SCANNER, head

    from petiq.listmode.simulate import simulate_patient

    d = tmp_path_factory.mktemp("synthetic")
    paths, _, _ = head(d)
    outs = {}
    for name in ("sub-01_acq-full.l", "sub-01_acq-full.dcm"):
        simulate_patient(
            truth_path=paths["truth"],
            mumap_path=paths["mumap"],
            participant=PARTICIPANT,
            scanner=SCANNER,
            scanner_seed=5,
            seed=3,
            out_path=d / name,
            duration_s=5.0,
            progress=False,
        )
        outs[name.rsplit(".", 1)[1]] = d / name
    return outs, SCANNER


def test_synthetic_export_histograms_identically_in_both_forms(synthetic_export, tmp_path):
    from petiq.cli import main
    from petiq.listmode.sinograms import read_sinograms

    outs, scanner = synthetic_export
    bf = outs["dcm"].with_suffix(".bf")
    assert bf.read_bytes() == outs["l"].read_bytes()
    events, kinds = decode(np.fromfile(bf, dtype="<u4"))  # the test's own decoder reads the .bf
    assert len(kinds["time"]) == 5001 and kinds["time"][0] == 0  # a tag per ms, 0 .. 5000
    offsets = np.array([e[0] for e in events])
    prompt = np.array([e[1] for e in events])
    assert prompt.sum() > 10_000 and (~prompt).sum() > 100  # prompts and delayeds (tiny: few randoms)
    shape1 = tuple(int(v) for v in scanner.sinogram_shape(1))
    for span in (1, 3):
        a = histogram_listmode(outs["l"], scanner, span=span)
        b = histogram_listmode(outs["dcm"], scanner, span=span)
        assert np.array_equal(a.prompts, b.prompts) and np.array_equal(a.delayeds, b.delayeds)
        assert np.array_equal(a.delayed_fansums, b.delayed_fansums) and a.duration_s == b.duration_s == 5.0
    # span 1: a sinogram bin is the PETLINK offset itself
    h1 = histogram_listmode(bf, scanner, span=1)
    assert np.array_equal(h1.prompts.reshape(-1), np.bincount(offsets[prompt], minlength=int(np.prod(shape1))))
    assert np.array_equal(h1.delayeds.reshape(-1), np.bincount(offsets[~prompt], minlength=int(np.prod(shape1))))
    # the command line takes the .dcm as it takes the .l
    for form in ("l", "dcm"):
        assert (
            main(["histogram", str(outs[form]), str(tmp_path / f"{form}.npz"), "--scanner", "tiny", "--span", "3"]) == 0
        )
    a, b = read_sinograms(tmp_path / "l.npz"), read_sinograms(tmp_path / "dcm.npz")
    assert np.array_equal(a["prompts"], b["prompts"]) and np.array_equal(a["delayeds"], b["delayeds"])


def test_synthetic_dicom_export_reads_as_a_scanner_export(synthetic_export):
    outs, _ = synthetic_export
    ds = pydicom.dcmread(outs["dcm"])
    assert ds.SOPClassUID == CSA_NON_IMAGE_STORAGE and ds.PatientID == "sub-01"
    assert (ds.Manufacturer, ds.ManufacturerModelName) == ("petiq", "simulated tiny")  # not an mMR
    text = ds[0x0029, 0x1010].value.rstrip(b"\0").decode("ascii")
    interfile = header_path(outs["l"]).read_text()
    assert text == interfile.replace("sub-01_acq-full.l\n", "sub-01_acq-full.bf\n")
    hdr = read_listmode_header(outs["dcm"])
    assert hdr["tracer activity at time of injection (Bq)"] == "2e+08"  # 200 MBq
    assert hdr["relative time of tracer injection (sec)"] == "-2400"  # 40 min before the scan
