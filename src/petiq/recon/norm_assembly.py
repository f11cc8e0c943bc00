"""From components to a normalisation sinogram as NiftyPET's ``norm.cu`` assembles it (with the ring
dead time of an acquisition's singles), and the components of petiq's simulated scanner."""

from __future__ import annotations

import json

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.core.fileio import write_npz
from petiq.scanner.geometry import Scanner

from .component_norm import (
    FIELDS,
    ComponentNorm,
    axial_span,
    component_layout,
    read_component_norm,
    system_name,
    validate,
)


# ----------------------------------------------------------------------------- petiq truth
def to_niftypet_crystals(a: np.ndarray) -> np.ndarray:
    """petiq ``(n_rings, crystals_per_ring)`` by ``det`` -> NiftyPET's by ``c = det - 1``:
    ``out[:, c] = a[:, (c + 1) % N]``."""
    return np.roll(np.asarray(a), -1, axis=-1)


def from_niftypet_crystals(a: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_niftypet_crystals`: ``out[:, det] = a[:, (det - 1) % N]``."""
    return np.roll(np.asarray(a), 1, axis=-1)


def calibration_factor(quantification_factor: float) -> float:
    """petiq's calibration ``κ`` (expected counts per second per positron-emitting Bq/mm² of line
    integral, :func:`petiq.recon.osem.system_model`) of a norm's quantification factor (e7: Bq·s
    per count): ``κ = 1 / qf``. NiftyPET scales its image by ``qf · qf_loc / (BF · duration)``
    (``prj/mmrrec.py``) with ``qf_loc = 0.205`` fitted to its own projector; petiq's projector has
    its own units, so a real scanner's factor gives petiq's absolute scale only up to that fit (the
    README says so). petiq's simulated scanner writes ``qf = 1 / κ``, and reads back its own κ.

    >>> calibration_factor(4.0), quantification_factor(calibration_factor(4.0))
    (0.25, 4.0)
    """
    qf = float(quantification_factor)
    if not (np.isfinite(qf) and qf > 0):
        raise PetiqInputError(None, f"quantification factor {qf!r}", "give a positive quantification factor")
    return 1.0 / qf


def quantification_factor(calibration: float) -> float:
    """The quantification factor (Bq·s per count) that gives petiq's calibration ``κ``: ``1 / κ``."""
    return 1.0 / float(calibration)


def component_norm_from_truth(
    scanner: Scanner | str, crystal_efficiency, radial_factor, calibration: float
) -> ComponentNorm:
    """petiq's simulated truth (:class:`petiq.listmode.simulate.ScannerTruth`) as mMR components.

    Geometric effects: every one of the ``2 n_rings - 1`` rows is ``radial_factor`` (petiq's
    radial index ``t`` is NiftyPET's ``iw``), so NiftyPET's row 0 and STIR's row ``r1 + r2`` agree;
    crystal interference and both axial effects 1; crystal efficiencies in NiftyPET's numbering
    (:func:`to_niftypet_crystals`; 0 in the gaps, as petiq's truth has them); all dead-time
    parameters 0, which makes NiftyPET's dead-time factor exactly 1 for any bucket singles (petiq's
    simulation has no dead time); the quantification factor is ``1 / κ``
    (:func:`quantification_factor` of petiq's calibration factor ``calibration_factor``).
    :func:`norm_sinogram` of the result is petiq's ``mean over members of ε_a ε_b g_t``."""
    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    lay = component_layout(scanner)
    eff = np.asarray(crystal_efficiency, dtype=np.float32).reshape(lay["crystal_efficiency"])
    g = np.asarray(radial_factor, dtype=np.float32).reshape(scanner.n_radial)
    eff = np.where(scanner.is_gap(np.arange(scanner.crystals_per_ring))[None, :], 0.0, eff).astype(np.float32)
    return ComponentNorm(
        geometric=np.broadcast_to(g, lay["geometric"]).astype(np.float32),
        interference=np.ones(lay["interference"], np.float32),
        crystal_efficiency=to_niftypet_crystals(eff).astype(np.float32),
        axial=np.ones(lay["axial"], np.float32),
        ring_dead_time_paralysing=np.zeros(lay["ring_dead_time_paralysing"], np.float32),
        ring_dead_time_nonparalysing=np.zeros(lay["ring_dead_time_nonparalysing"], np.float32),
        crystal_dead_time=np.zeros(lay["crystal_dead_time"], np.float32),
        axial_2=np.ones(lay["axial_2"], np.float32),
        quantification_factor=quantification_factor(calibration),
        scanner=scanner.name,
        originating_system=system_name(scanner),
        n_buckets=scanner.n_buckets,
    )


# ----------------------------------------------------------------------------- assembly
def dead_time_factor(cn: ComponentNorm, scanner: Scanner, bucket_singles) -> np.ndarray:
    """float64 ``(n_rings, crystals_per_ring)`` (petiq numbering): NiftyPET's per-crystal factor
    ``exp(s/2 · dtp[r] / (1 + s/2 · dtnp[r])) / (1 + s/2 · dtnp[r])`` with ``s`` the singles of the
    crystal's bucket (``Scanner.crystal_buckets``, NiftyPET ``b = c/18 + 28 (r/8)``)."""
    s = np.asarray(bucket_singles, dtype=np.float64).ravel()
    if s.size != scanner.n_buckets:
        raise PetiqInputError(
            None,
            f"bucket singles have {s.size} entries, scanner {scanner.name!r} has {scanner.n_buckets} buckets",
            "pass one singles value per bucket",
        )
    half = 0.5 * s[scanner.crystal_buckets()]
    dtp = np.asarray(cn.ring_dead_time_paralysing, np.float64)[:, None]
    dtnp = np.asarray(cn.ring_dead_time_nonparalysing, np.float64)[:, None]
    den = 1.0 + half * dtnp
    return np.exp(half * dtp / den) / den


def mean_bucket_singles(singles, singles_reports) -> np.ndarray:
    """NiftyPET's ``buckets`` (``lm/mmrhist.py``, ``hist``): the mean singles rate of every bucket,
    int32 ``(n_buckets,)``, from a sinogram file's ``singles`` (summed reported rates, cps, shape
    (polling intervals, n_buckets)) and ``singles_reports`` (how many reports each sum holds).

    Mirrors NiftyPET step by step: per interval and bucket the sum is divided by its reports where
    reports > 0, in integers (NiftyPET assigns ``bck / nsr`` back into its ``uint32`` array, so the
    quotient is truncated); the intervals kept are those where any bucket reported
    (``np.sum(nsr, axis=1) > 0``); the result is the sum over those intervals divided by their
    number, truncated by ``np.int32``. A bucket with no report in a kept interval counts 0 there, as
    in NiftyPET. (NiftyPET's intervals are its 1 s time-tag bins, most without a report; petiq's are
    the polling intervals; the kept rows and the mean are the same.) No report at all is an error
    (NiftyPET would divide by zero).

    One difference cannot be undone from petiq's sums: NiftyPET's report counter counts only reports
    with a non-zero value (``lm/src/hst.cu``: ``((word & 0x0007ffff) > 0) << 30``), petiq's
    ``singles_reports`` counts every report. Where a bucket reports 0 (a dead bucket, the first
    report of a scan) petiq averages the zero in, NiftyPET does not; with only non-zero reports the
    two agree."""
    s = np.asarray(singles)
    n = np.asarray(singles_reports)
    if s.ndim != 2 or s.shape != n.shape:
        raise PetiqInputError(
            None,
            f"singles {s.shape} and singles_reports {n.shape} are not one (intervals, buckets) shape",
            "pass the sinogram file's singles and singles_reports",
        )
    if (n < 0).any() or (s < 0).any():
        raise PetiqInputError(
            None,
            "singles or singles_reports hold negative values",
            "pass the sinogram file's singles and singles_reports",
        )
    s = s.astype(np.int64)
    n = n.astype(np.int64)
    rate = np.where(n > 0, s // np.maximum(n, 1), 0)
    keep = n.sum(axis=1) > 0
    if not keep.any():
        raise PetiqInputError(
            None,
            "the singles hold no report (every singles_reports is 0), so there is no "
            "bucket singles rate for the dead-time correction",
            "histogram the list-mode with its singles tags, or leave out the dead time",
        )
    return np.int32(rate[keep].sum(axis=0) / int(keep.sum()))


def has_dead_time(cn: ComponentNorm) -> bool:
    """True when any paralysing or non-paralysing ring dead-time parameter is non-zero (else
    NiftyPET's dead-time factor is 1 for any singles)."""
    return bool(
        np.any(np.asarray(cn.ring_dead_time_paralysing) != 0)
        or np.any(np.asarray(cn.ring_dead_time_nonparalysing) != 0)
    )


def components_from_npz(data, scanner: Scanner | str) -> ComponentNorm | None:
    """The :class:`ComponentNorm` a :func:`component_norm_file` ``.npz`` stores (keys
    ``component_<field>`` and ``quantification_factor``), checked against ``scanner``; ``None`` when
    ``data`` (a dict or an open ``.npz``) has no component keys (a norm estimated from a norm scan)."""
    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    keys = [f"component_{f}" for f in FIELDS]
    present = [k for k in keys if k in data]
    if not present:
        return None
    missing = [k for k in keys + ["quantification_factor"] if k not in data]
    if missing:
        raise PetiqInputError(
            None,
            f"the norm .npz has component keys but lacks {missing}",
            "rebuild it from the component norm (.n) with component_norm_file",
        )
    cn = ComponentNorm(
        **{f: np.asarray(data[f"component_{f}"], dtype=np.float32) for f in FIELDS},
        quantification_factor=float(np.asarray(data["quantification_factor"])),
        scanner=scanner.name,
        originating_system=system_name(scanner),
        n_buckets=scanner.n_buckets,
    )
    validate(cn, scanner, None)
    return cn


def norm_sinogram(
    components: ComponentNorm,
    scanner: Scanner | str,
    span: int,
    bucket_singles=None,
    *,
    geometric_by_plane: bool = False,
) -> np.ndarray:
    """float32 span-``span`` sinogram (``scanner.sinogram_shape(span)``): the efficiency that
    multiplies the expected counts, as NiftyPET's ``norm.cu`` (``dev_norm``) forms it.

    Per span-1 LOR (view, t) between petiq crystals ``(ring_a, det_a)`` and ``(ring_b, det_b)``:
    ``geo[0, t] · cinf[t, view % 9] · ε_a ε_b · DT_a DT_b / axe1[s11]``, with ``ε`` the
    crystal efficiency (NiftyPET crystal ``det - 1``), ``DT`` :func:`dead_time_factor` when
    ``bucket_singles`` (one value per bucket) are given (else 1) and ``s11`` the LOR's span-11
    sinogram; span 1 multiplies by ``components.span1_axial`` when set. A bin is the mean over its
    span-1 members; LORs touching a gap crystal are 0. ``geometric_by_plane``: STIR's row
    ``ring_a + ring_b`` of the geometric effects instead of NiftyPET's row 0."""
    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    span = scanner.check_span(int(span))
    if components.scanner != scanner.name:
        raise PetiqInputError(
            components.source or None,
            f"the norm components are for scanner {components.scanner!r}, not {scanner.name!r}",
            "read the norm for the scanner the data came from",
        )
    validate(components, scanner, components.source or None)
    eff = from_niftypet_crystals(np.asarray(components.crystal_efficiency, np.float64))
    eff = np.where(scanner.is_gap(np.arange(scanner.crystals_per_ring))[None, :], 0.0, eff)
    if bucket_singles is not None:
        eff = eff * dead_time_factor(components, scanner, bucket_singles)
    nv, nr = scanner.n_views, scanner.n_radial
    view = np.arange(nv)[:, None]
    det_a, det_b = scanner.view_radial_to_dets(
        np.broadcast_to(view, (nv, nr)), np.broadcast_to(np.arange(nr), (nv, nr))
    )
    cinf = np.asarray(components.interference, np.float64)  # (n_radial, block_positions)
    transaxial = cinf[np.arange(nr)[None, :], (view % scanner.block_positions)]  # (nv, nr)
    geo = np.asarray(components.geometric, np.float64)
    if not geometric_by_plane:
        transaxial = transaxial * geo[0][None, :]
    ring_a, ring_b = scanner.span1_rings()
    to_s = scanner.span1_to_sinogram(span)
    to_s11 = scanner.span1_to_sinogram(axial_span(scanner))
    weight = 1.0 / np.asarray(components.axial, np.float64)[to_s11]
    weight = weight / scanner.sinogram_members(span)[to_s]
    if span == 1 and components.span1_axial is not None:
        axf1 = np.asarray(components.span1_axial, np.float64).ravel()
        if axf1.size != ring_a.size:
            raise PetiqInputError(
                None,
                f"span1_axial has {axf1.size} entries, scanner {scanner.name!r} has {ring_a.size} span-1 sinograms",
                "pass one factor per span-1 sinogram",
            )
        weight = weight * axf1
    out = np.zeros(scanner.sinogram_shape(span), dtype=np.float32)
    eff = eff.astype(np.float32)
    eff_a = eff[:, det_a]  # (n_rings, nv, nr): crystal a's efficiency for every ring
    eff_b = eff[:, det_b]
    geo32 = geo.astype(np.float32)
    weight = weight.astype(np.float32)
    for z in range(ring_a.size):
        ra, rb = ring_a[z], ring_b[z]
        lor = eff_a[ra] * eff_b[rb]
        if geometric_by_plane:
            lor *= geo32[ra + rb][None, :]
        lor *= weight[z]
        out[to_s[z]] += lor
    out *= transaxial.astype(np.float32)[None]
    return out


def component_norm_file(n_path, out_npz, scanner: Scanner | str, span: int) -> dict:
    """Component norm file (``.n``/``.n.hdr``/``.dcm``) -> the ``.npz`` the ``norm`` rule writes
    (kind "norm", keys of :func:`petiq.recon.pipeline.estimate_norm_file`): ``norm`` from
    :func:`norm_sinogram` (no dead time), ``crystal_efficiency`` in petiq's numbering (0 in the
    gaps), ``radial_factor`` = row 0 of the geometric effects, every radial bin measured,
    ``calibration_factor`` κ = ``1 / qf`` (:func:`calibration_factor`); and the components themselves, to
    reassemble the norm with dead time (:func:`components_from_npz`): ``component_<field>`` for
    every field of :data:`COMPONENTS` and ``quantification_factor``."""
    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    span = scanner.check_span(int(span))
    cn = read_component_norm(n_path, scanner)
    norm = norm_sinogram(cn, scanner, span)
    eff = from_niftypet_crystals(cn.crystal_efficiency).astype(np.float32)
    eff[:, scanner.is_gap(np.arange(scanner.crystals_per_ring))] = 0.0
    kappa = calibration_factor(cn.quantification_factor)
    summary = {
        "source": str(n_path),
        "scanner": scanner.name,
        "span": span,
        "calibration_factor": kappa,
        "quantification_factor": cn.quantification_factor,
        "method": "component norm file (NiftyPET norm.cu)",
    }
    write_npz(
        out_npz,
        kind=np.asarray("norm"),
        scanner=np.asarray(scanner.name),
        span=np.asarray(span),
        norm=norm,
        crystal_efficiency=eff,
        radial_factor=cn.geometric[0].astype(np.float32),
        radial_measured=np.ones(scanner.n_radial, dtype=bool),
        calibration_factor=np.asarray(kappa),
        summary=np.asarray(json.dumps(summary)),
        quantification_factor=np.asarray(cn.quantification_factor),
        **{f"component_{f}": np.asarray(getattr(cn, f), dtype=np.float32) for f in FIELDS},
    )
    return summary
