"""A list-mode pair written exactly as a Biograph mMR writes it is read and histogrammed unedited.

The header carries the keys of a genuine mMR export (STIR's ``InterfileListmodeHeaderSiemens``
lists them; NiftyPET's ``mmraux.hdr_lm``/``vh_bedpos`` read the bed and tracer keys), including
``%axial compression:=1`` next to the span-11 ``%segment table``. The expected events and the
span-11 sinograms are computed here from the PETLINK format description, independently of petiq.
"""

from __future__ import annotations

import numpy as np
import pytest

from petiq.core.errors import PetiqInputError
from petiq.listmode import (
    header_path,
    histogram_listmode,
    read_listmode,
    write_listmode,
    write_listmode_words,
)
from petiq.scanner.geometry import Scanner

MMR_HEADER = """!INTERFILE:=
%comment:=SMS-MI header
!originating system:=2008
%SMS-MI header name space:=PETLINK bin address
%SMS-MI version number:=3.4
!GENERAL DATA:=
%listmode header file:=
!name of data file:=PET_ACQ_1_00000.l
!GENERAL IMAGE DATA:=
%study date (yyyy:mm:dd):=2017:11:20
%study time (hh:mm:ss GMT+00:00):=09:31:07
isotope name:=F-18
isotope gamma halflife (sec):=6586.2
isotope branching factor:=0.97
radiopharmaceutical:=Fluorodeoxyglucose
%tracer injection date (yyyy:mm:dd):=2017:11:20
%tracer injection time (hh:mm:ss GMT+00:00):=08:51:02
relative time of tracer injection (sec):=-2405
tracer activity at time of injection (Bq):=1.5e+08
injected volume (ml):=0
image data byte order:=LITTLEENDIAN
%patient orientation:=HFS
!PET data type:=emission
data format:=CoincidenceList
%LM event and tag words format (bits):=32
%preset type:=time
%preset value:=900
%preset unit:=seconds
%energy window lower level (keV) [1]:=430
%energy window upper level (keV) [1]:=610
%coincidence window width (ns):=5.85938
PET scanner type:=cylindrical
transaxial FOV diameter (cm):=59.6
number of rings:=64
distance between rings (cm):=0.40625
gantry crystal radius (cm):=32.8
bin size (cm):=0.20445
septa state:=none
gantry tilt angle (degrees):=0
%number of projections:=344
%number of views:=252
%axial compression:=1
%maximum ring difference:=60
%number of segments:=11
%segment table:={127,115,115,93,93,71,71,49,49,27,27}
%tof mashing factor:=1
start horizontal bed position (mm):=-1199.5
end horizontal bed position (mm):=-1199.5
start vertical bed position (mm):=-18
%bed zero offset (mm):=0
!IMAGE DATA DESCRIPTION:=
!total number of data sets:=1
image duration (sec):=900
image relative start time (sec):=0
%total listmode word counts:={n_words}
%timing tagwords interval (msec):=1
%singles polling method:=instantaneous
%singles polling interval (sec):=2
%singles scale factor:=8
%total number of singles blocks:=224
%time_sync:=25934299
!END OF INTERFILE:=
"""

N_VIEWS, N_RADIAL, N_RINGS, MRD = 252, 344, 64, 60


def span1_rings():
    """(ring difference d, lower ring ax) of every span-1 sinogram, PETLINK order 0, -1, +1, ..."""
    out = []
    for d in [0] + [s * k for k in range(1, MRD + 1) for s in (-1, 1)]:
        out += [(d, ax) for ax in range(N_RINGS - abs(d))]
    return out


def span11_index(d: int, ax: int) -> int:
    """Span-11 sinogram of a span-1 one: segment 0 = |d| <= 5, segment +-k = 6+11(k-1) .. 5+11k,
    order 0, -1, +1, ...; within a segment by ring sum m = 2 ax + |d| from its smallest."""
    table = [127, 115, 115, 93, 93, 71, 71, 49, 49, 27, 27]
    k = 0 if abs(d) <= 5 else (abs(d) - 6) // 11 + 1
    seg_pos = 0 if k == 0 else 2 * k - 1 + (d > 0)
    lo = 0 if k == 0 else 6 + 11 * (k - 1)
    return sum(table[:seg_pos]) + (2 * ax + abs(d) - lo)


def decode(words):
    """The test's own PETLINK decoder: events (offset, prompt, time) and tags by kind."""
    events, kinds, cur = [], {"time": [], "singles": [], "other": 0}, None
    for w in (int(x) for x in words):
        if w >> 31 == 0:
            events.append((w & 0x3FFFFFFF, bool(w >> 30 & 1), cur))
        elif w >> 29 == 0b100:
            cur = w & 0x1FFFFFFF
            kinds["time"].append(cur)
        elif w >> 29 == 0b101:
            kinds["singles"].append(((w >> 19) & 0x3FF, (w & 0x7FFFF) * 8, cur))
        else:
            kinds["other"] += 1
    return events, kinds


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    rng = np.random.default_rng(20171120)
    n_bins = 4084 * N_VIEWS * N_RADIAL
    t0 = 25934299  # the scanner's clock: time tags need not start at 0
    words = []
    for ms in range(t0, t0 + 40):
        words.append(0x80000000 | ms)
        if (ms - t0) % 20 == 0:  # a singles report per bucket (bits 19-28), value / 8 in bits 0-18
            words += [0xA0000000 | b << 19 | int(rng.integers(1000, 5000)) for b in range(224)]
        words.append(0xC0000000 | 7)  # gantry/motion
        words.append(0xE0000000 | 1)  # gating
        words.append(0xF0000000 | 3)  # control
        for _ in range(int(rng.integers(0, 60))):
            words.append(int(rng.integers(0, n_bins)) | (0x40000000 if rng.random() < 0.7 else 0))
    words = np.asarray(words, dtype=np.uint32)
    d = tmp_path_factory.mktemp("mmr")
    path = d / "PET_ACQ_1_00000.l"
    path.write_bytes(words.astype("<u4").tobytes())
    header_path(path).write_text(MMR_HEADER.replace("{n_words}", str(words.size)))
    return path, words


def test_genuine_header_is_read_and_events_agree(export):
    path, words = export
    lm = read_listmode(path, scanner=Scanner.mmr())
    events, kinds = decode(words)
    assert lm.bins.tolist() == [e[0] for e in events]
    assert lm.prompt.tolist() == [e[1] for e in events]
    assert lm.time_ms.tolist() == [e[2] for e in events]
    # duration: last minus first time tag (NiftyPET lmaux.cu offsets by the first tag)
    assert lm.duration_ms == kinds["time"][-1] - kinds["time"][0] == 39
    # every key kept, as written
    assert lm.header["%segment table"] == "{127,115,115,93,93,71,71,49,49,27,27}"
    assert lm.header["%time_sync"] == "25934299" and lm.header["%tof mashing factor"] == "1"
    assert lm.header["start horizontal bed position (mm)"] == "-1199.5"


def test_genuine_export_histograms_to_the_span11_sum(export):
    path, words = export
    h = histogram_listmode(path, Scanner.mmr(), span=11)
    events, _ = decode(words)
    rings = span1_rings()
    plane = N_VIEWS * N_RADIAL
    want = {True: {}, False: {}}
    for off, prompt, _ in events:
        z1, rest = divmod(off, plane)
        key = span11_index(*rings[z1]) * plane + rest
        want[prompt][key] = want[prompt].get(key, 0) + 1
    for prompt, sino in ((True, h.prompts), (False, h.delayeds)):
        flat = sino.reshape(-1)
        nz = np.flatnonzero(flat)
        assert dict(zip(nz.tolist(), flat[nz].tolist())) == want[prompt]
    assert h.duration_s == pytest.approx(0.039)


@pytest.mark.parametrize(
    "line, new, message",
    [
        ("!originating system:=2008", "!originating system:=1104", "another scanner"),
        (
            "%segment table:={127,115,115,93,93,71,71,49,49,27,27}",
            "%segment table:={127,115,115,93,93}",
            "not the segment layout",
        ),
        ("%number of segments:=11", "%number of segments:=9", "number of segments"),
        ("%maximum ring difference:=60", "%maximum ring difference:=49", "span-1 sinograms"),
    ],
)
def test_other_scanners_and_inconsistent_headers_are_refused(export, tmp_path, line, new, message):
    path, _ = export
    other = tmp_path / path.name
    other.write_bytes(path.read_bytes())
    text = header_path(path).read_text()
    assert line in text
    header_path(other).write_text(text.replace(line, new))
    with pytest.raises(PetiqInputError, match=message):
        read_listmode(other, scanner=Scanner.mmr())


def _keys(text):
    return [line.split(":=", 1)[0] for line in text.splitlines() if ":=" in line]


def test_petiq_writes_the_keys_of_a_real_export_in_its_order(tmp_path):
    """The defaults (no header given) have exactly the keys of the scanner's header, spelled and
    ordered as it writes them; a real header given to the writer comes out as it went in."""
    path = write_listmode(tmp_path / "x.l", [1], [True], [0], scanner=Scanner.mmr())
    text = header_path(path).read_text()
    assert _keys(text) == _keys(MMR_HEADER)
    assert "%time_sync:=0\n" in text  # the first time tag the writer wrote
    given = dict(line.split(":=", 1) for line in MMR_HEADER.splitlines() if ":=" in line)
    given["%patient lab note"] = "kept"  # a key no default has, after the last one: it goes last
    words = np.array([0x80000000 | 25934299, 5, 0x80000000 | 25934300, 0x40000000 | 6], dtype=np.uint32)
    out = write_listmode_words(tmp_path / "PET_ACQ_1_00000.l", words, given, scanner=Scanner.mmr())
    lines = [ln for ln in header_path(out).read_text().splitlines() if ln.strip()]
    want = [ln for ln in MMR_HEADER.replace("{n_words}", "4").splitlines() if ln.strip()]
    assert lines == want[:-1] + ["%patient lab note:=kept"] + want[-1:]
    assert read_listmode(out, scanner=Scanner.mmr()).duration_ms == 1
