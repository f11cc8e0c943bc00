"""List-mode simulation: a cohort patient → a 100 % PETLINK acquisition, and the scanner's norm scan.

The expected data of a span-1 bin ``i`` (crystals ``a``, ``b``; member of span-``S`` sinogram ``k``)
over an acquisition of ``D`` seconds::

    trues_i    = c_T · n_i · a_i · (P₁ x)_i              the member's own attenuated line integral
    scatter_i  = c_S · n_i · smooth(ē)_k                  ē_k: mean of c_T·a_i·(P₁ x)_i over bin k's members
    randoms_i  = 2τ · s_a · s_b · D                       singles-rate model (delayeds: same)
    prompts_i ~ Poisson(trues_i + scatter_i + randoms_i),   delayeds_i ~ Poisson(randoms_i)

* ``P₁`` is the Joseph projector of the span-1 LORs on the phantom's grid: every span-1 bin gets its
  own line integral ``(P₁ x)_i`` and attenuation ``a_i = exp(−(P₁ μ)_i)``, times its own
  normalisation (a compressed bin of the reconstruction then sums them, as the scanner does).
* ``n_i = ε_a ε_b g_t``: crystal efficiencies (block profile × random spread, zero in the gaps) and a
  radial geometric factor with the interleaving pattern of odd/even radial bins: the scanner's
  normalisation *truth*, drawn once per scanner from the config seed (:func:`scanner_truth`).
* ``a = exp(−P μ)`` from the μ-map (cm⁻¹; the projector integrates in mm).
* Count level: ``c_T = κ · BR · D / DCF`` with ``κ`` the scanner's calibration factor (counts per
  second per positron-emitting Bq/mm² of line integral, :func:`scanner_calibration`), ``BR`` the
  ¹⁸F branching ratio and ``DCF`` the decay correction of the ``D``-second scan to its start
  (:func:`petiq.core.decay.decay_correction_factor`: the phantom's activity is the one at the scan start,
  and the scan records the mean over it, 4.6 % less for 15 min of ¹⁸F). ``κ`` is fixed so that an
  unattenuated reference ¹⁸F source — a uniform cylinder of radius 100 mm and length 160 mm —
  gives ``η`` trues per second per MBq (mMR ≈ 15 kcps/MBq, its NEMA sensitivity). For the reduced presets ``η`` is scaled by their
  image voxel volume, so that counts *per image voxel* — and so the noise of a reconstruction at a
  given dose — match the mMR's (:func:`trues_sensitivity`). Because
  ``κ`` is a constant of the scanner, the count rate follows the patient's activity and attenuation,
  and a reconstruction with the same ``κ`` (stored with the norm scan, like e7's calibration
  factor, with the header's branching factor and half-life) is quantitative in kBq/mL at the scan
  start. Decay during the scan also shapes the time stamps and the singles reports.
* Scatter: a broad smoothing (σ ≈ 60 mm radially, a few views and planes) of the attenuated emission,
  scaled to a scatter fraction drawn per patient in [0.30, 0.40] of trues + scatter.
* Randoms: singles per crystal ``s = σ₁ · ε · A`` with σ₁ set so that a typical brain study (≈ 18 MBq
  in the field of view) has a randoms fraction near 20 % on the mMR; it grows with activity like a
  real scanner's. Reduced presets scale σ₁ (:func:`singles_scale`) to keep that randoms fraction.
* Events are shuffled (a Poisson process's events come in uniformly random order) and given
  millisecond times from a multinomial over the acquisition's milliseconds, weighted by ¹⁸F decay.
* Singles tags as the mMR writes them: every polling interval (header, 2 s) from 0 ms, one tag per
  bucket (``Scanner.crystal_buckets``) with the bucket's rate ``Σ s`` over its crystals, scaled by
  the decay at that moment (mean over the acquisition = ``s``), after that millisecond's time tag
  (:func:`singles_reports`). The rates are the model's expected values (no counting noise).

The normalisation acquisition (:func:`simulate_norm_scan`) is a long scan of a uniform water
cylinder, kept as span-1 crystal fan sums and a span-``S`` sinogram (a 10⁹-count list-mode file would
serve no purpose), for the reconstruction stage's component-based norm estimate.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ..cohort.phantom import F18_HALF_LIFE_MIN
from ..core.decay import ISOTOPES, mean_decay_fraction
from ..recon.projectors import JosephProjector, compress_span1
from ..scanner.geometry import Scanner

MMR_TRUES_CPS_PER_MBQ = 15_000.0
#: The simulated tracer (constants as the header states them: :data:`petiq.core.decay.ISOTOPES`).
ISOTOPE = ISOTOPES["F-18"]
COINCIDENCE_WINDOW_NS = 5.86
#: Singles per crystal per MBq in the field of view (cps/MBq), for a ~20 % randoms fraction at 18 MBq.
SINGLES_CPS_PER_MBQ = 4.3


@dataclass(frozen=True)
class ScannerTruth:
    """The simulated scanner's normalisation truth (what a norm scan measures)."""

    crystal_efficiency: np.ndarray  # (n_rings, crystals_per_ring), 0 in the gaps
    radial_factor: np.ndarray  # (n_radial,)

    def span1_plane_norm(self, scanner: Scanner, z: int, dets: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """``n_i`` of one span-1 sinogram plane ``z``: (n_views, n_radial)."""
        ring_a, ring_b = (r[z] for r in scanner.span1_rings())
        det_a, det_b = dets
        eff = self.crystal_efficiency
        return eff[ring_a][det_a] * eff[ring_b][det_b] * self.radial_factor[None, :]


def scanner_truth(scanner: Scanner, rng: np.random.Generator) -> ScannerTruth:
    """Crystal efficiencies (block-position profile × 10 % random spread) and radial factors."""
    pos = (np.arange(scanner.crystals_per_ring) - 1) % scanner.block_positions  # 0..7 real, 8 the gap
    centre = (scanner.block_positions - 2) / 2.0
    block_profile = 1.0 - 0.12 * ((pos - centre) / max(centre, 1.0)) ** 2  # edge crystals see less
    eff = block_profile[None, :] * np.exp(rng.normal(0.0, 0.10, size=(scanner.n_rings, scanner.crystals_per_ring)))
    eff[:, scanner.is_gap(np.arange(scanner.crystals_per_ring))] = 0.0
    tp = np.arange(scanner.n_radial) - scanner.n_radial // 2
    radial = (1.0 - 0.25 * (tp / (scanner.n_radial / 2.0)) ** 2) * np.where(tp % 2 == 0, 1.04, 0.96)
    return ScannerTruth(eff.astype(np.float32), radial.astype(np.float32))


@dataclass(frozen=True)
class AcquisitionSettings:
    duration_s: float = 900.0
    span: int = 11
    scatter_fraction: float = 0.35
    trues_cps_per_mbq: float = MMR_TRUES_CPS_PER_MBQ
    singles_cps_per_mbq: float = SINGLES_CPS_PER_MBQ
    coincidence_window_ns: float = COINCIDENCE_WINDOW_NS


def trues_sensitivity(scanner: Scanner, mmr_cps_per_mbq: float = MMR_TRUES_CPS_PER_MBQ) -> float:
    """η for this scanner: the mMR's × (mMR image voxel volume / this preset's image voxel volume).

    Counts per image voxel — and so the noise of a reconstruction at a given dose, which is what a
    reader and the CNN see — then match the mMR's: the demo's voxels are 8× larger, so a demo scan
    records 8× fewer counts than the same patient on the mMR.
    """
    mmr_voxel = float(np.prod(Scanner.mmr().voxel_size_mm))
    return mmr_cps_per_mbq * mmr_voxel / float(np.prod(scanner.voxel_size_mm))


def singles_scale(scanner: Scanner) -> float:
    """Factor on the mMR's singles per crystal that keeps the randoms fraction of the mMR.

    Trues per LOR grow with η / (number of span-1 bins); randoms per LOR grow with singles², so the
    singles scale with the square root of that ratio (1 for the mMR).
    """
    mmr = Scanner.mmr()
    trues_per_lor = (trues_sensitivity(scanner) / scanner.n_bins(1)) / (MMR_TRUES_CPS_PER_MBQ / mmr.n_bins(1))
    return float(np.sqrt(trues_per_lor))


REFERENCE_CYLINDER = {"radius_mm": 100.0, "length_mm": 160.0}


def uniform_cylinder(radius_mm: float, length_mm: float, voxel_mm: float = 4.0):
    """A unit-valued cylinder on a grid centred on the scanner: (image, voxel_size_mm)."""
    nx = int(np.ceil(2 * radius_mm / voxel_mm)) + 2
    nz = int(np.ceil(length_mm / voxel_mm)) + 2
    voxel = (voxel_mm, voxel_mm, length_mm / (nz - 2))
    x = (np.arange(nx) - (nx - 1) / 2) * voxel_mm
    inside = (x[:, None] ** 2 + x[None, :] ** 2) <= radius_mm**2
    image = np.repeat(inside[:, :, None], nz, axis=2).astype(np.float32)
    image[:, :, [0, -1]] = 0.0
    return image, voxel


@functools.lru_cache(maxsize=8)
def scanner_calibration(scanner: Scanner, span: int, mmr_cps_per_mbq: float = MMR_TRUES_CPS_PER_MBQ) -> float:
    """κ: trues per second per (positron-emitting Bq/mm²) of line integral of one span-1 LOR.

    Fixed so that the unattenuated reference cylinder of ¹⁸F gives η trues/s per MBq of ¹⁸F
    (:func:`trues_sensitivity`); per positron, κ is that divided by ¹⁸F's branching ratio, which is
    how e7 keeps one calibration for every isotope.
    A compressed bin's projection is the sum of its members' (:mod:`petiq.recon.projectors`), so
    the total line integral, and κ, are the same at every ``span`` (up to float rounding).
    """
    image, voxel = uniform_cylinder(**REFERENCE_CYLINDER)
    proj = JosephProjector(scanner, image_shape=image.shape, voxel_size_mm=voxel, span=span)
    line_integrals = float(proj.forward(image).sum(dtype=np.float64))  # for 1 Bq/mm³
    activity_mbq = float(image.sum(dtype=np.float64) * np.prod(voxel)) / 1e6
    return trues_sensitivity(scanner, mmr_cps_per_mbq) * activity_mbq / line_integrals / ISOTOPE.branching_ratio


@dataclass
class ExpectedData:
    """Expected counts at the simulation span, plus what is needed to expand them to span 1."""

    emission_span1: np.ndarray  # c_T · a_i · (P₁ x)_i per span-1 bin i, before normalisation
    emission: np.ndarray  # its mean over each span-S bin's members (span S), before normalisation
    scatter: np.ndarray  # c_S · smooth(emission) per member (span S), before normalisation
    singles_cps: np.ndarray  # (n_rings, crystals_per_ring)
    activity_mbq: float
    summary: dict


def expected_data(
    activity: np.ndarray,
    mu: np.ndarray,
    voxel_size_mm,
    scanner: Scanner,
    truth: ScannerTruth,
    settings: AcquisitionSettings,
) -> ExpectedData:
    """Expected trues per span-1 bin and their span-S member means, scatter (span S, per member),
    all un-normalised, and singles rates.

    Memory: two float32 span-1 sinograms (mMR: 1.4 GB each) while the trues are formed."""
    proj = JosephProjector(scanner, image_shape=activity.shape, voxel_size_mm=voxel_size_mm, span=1)
    line_integrals = proj.forward(activity.astype(np.float32))  # Bq/mm² (kBq/mL = Bq/mm³), per span-1 LOR
    attenuation = proj.forward(mu.astype(np.float32))
    np.exp(np.float32(-0.1) * attenuation, out=attenuation)  # μ in cm⁻¹, path in mm
    voxel_ml = float(np.prod(voxel_size_mm)) / 1000.0
    activity_mbq = float(activity.sum(dtype=np.float64) * voxel_ml / 1000.0)  # kBq/mL · mL → MBq
    total_geometric = float(line_integrals.sum(dtype=np.float64))
    kappa = scanner_calibration(scanner, settings.span, settings.trues_cps_per_mbq)
    decay = mean_decay_fraction(ISOTOPE.half_life_s, settings.duration_s)  # 1 / DCF
    counts_factor = kappa * ISOTOPE.branching_ratio * decay  # expected counts / s per Bq/mm² at the scan start
    c_t = counts_factor * settings.duration_s
    emission1 = attenuation
    emission1 *= line_integrals
    del line_integrals
    mean_attenuation = float(emission1.sum(dtype=np.float64)) / max(total_geometric, 1e-30)
    emission1 *= np.float32(c_t)
    emission = compress_span1(emission1, scanner, settings.span, mean=True)

    radial_sigma_bins = 60.0 / (2 * np.pi * scanner.lor_radius_mm / scanner.crystals_per_ring / 2)
    smooth = ndimage.gaussian_filter(
        emission.astype(np.float64), sigma=(2.0, 3.0, radial_sigma_bins), mode=("nearest", "wrap", "constant")
    )
    sf = settings.scatter_fraction
    scatter = (smooth * (sf / (1.0 - sf)) * emission.sum(dtype=np.float64) / max(smooth.sum(), 1e-30)).astype(
        np.float32
    )
    singles = settings.singles_cps_per_mbq * singles_scale(scanner) * activity_mbq * decay * truth.crystal_efficiency
    return ExpectedData(
        emission_span1=emission1,
        emission=emission,
        scatter=scatter,
        singles_cps=singles.astype(np.float64),
        activity_mbq=activity_mbq,
        summary={
            "activity_in_fov_mbq": activity_mbq,
            "trues_sensitivity_cps_per_mbq": trues_sensitivity(scanner, settings.trues_cps_per_mbq),
            "calibration_factor": kappa,
            "branching_ratio": ISOTOPE.branching_ratio,
            "decay_correction_factor": 1.0 / decay,
            # κ · BR / DCF: what multiplies D · n · a · P x in the expected counts (x at the scan start)
            "effective_calibration_factor": counts_factor,
            "scatter_fraction": sf,
            "mean_attenuation_factor": mean_attenuation,
        },
    )


def _span1_plane_tables(scanner: Scanner, span: int):
    """What expanding span-``span`` data plane by plane to span 1 needs: the span map, the crystal
    pair ``(det_a, det_b)`` of every (view, radial) bin, and the rings of every span-1 plane."""
    view, t = np.meshgrid(np.arange(scanner.n_views), np.arange(scanner.n_radial), indexing="ij")
    dets = scanner.view_radial_to_dets(view, t)
    ring_a_of_z, ring_b_of_z = scanner.span1_rings()
    return scanner.span1_to_sinogram(span), dets, ring_a_of_z, ring_b_of_z


def iter_span1_counts(
    expected: ExpectedData,
    scanner: Scanner,
    truth: ScannerTruth,
    settings: AcquisitionSettings,
    rng: np.random.Generator,
    progress: bool = True,
):
    """Yield ``(z, prompts, delayeds)`` Poisson counts of every span-1 sinogram plane (uint32 arrays
    (n_views, n_radial)), in list-mode order."""
    span_map, dets, ring_a_of_z, ring_b_of_z = _span1_plane_tables(scanner, settings.span)
    randoms_scale = 2.0 * settings.coincidence_window_ns * 1e-9 * settings.duration_s
    s = expected.singles_cps
    for z in tqdm(range(span_map.size), desc="span-1 planes", disable=not progress, mininterval=5):
        norm = truth.span1_plane_norm(scanner, z, dets)
        k = span_map[z]
        randoms = randoms_scale * s[ring_a_of_z[z]][dets[0]] * s[ring_b_of_z[z]][dets[1]]
        lam_prompt = norm * (expected.emission_span1[z] + expected.scatter[k]) + randoms
        yield z, rng.poisson(lam_prompt).astype(np.uint32), rng.poisson(randoms).astype(np.uint32)


def draw_events(
    expected: ExpectedData,
    scanner: Scanner,
    truth: ScannerTruth,
    settings: AcquisitionSettings,
    rng: np.random.Generator,
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """All events of the acquisition as PETLINK event words (uint32), in random (= time) order."""
    plane_bins = scanner.n_views * scanner.n_radial
    chunks, n_prompts, n_delayeds = [], 0, 0
    for z, prompts, delayeds in iter_span1_counts(expected, scanner, truth, settings, rng, progress):
        base = np.uint32(z * plane_bins)
        for counts, flag in ((prompts.ravel(), np.uint32(1 << 30)), (delayeds.ravel(), np.uint32(0))):
            nz = np.flatnonzero(counts)
            if nz.size:
                words = np.repeat(nz.astype(np.uint32) + base, counts[nz]) | flag
                chunks.append(words)
        n_prompts += int(prompts.sum())
        n_delayeds += int(delayeds.sum())
    words = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint32)
    rng.shuffle(words)
    return words, {"prompts": n_prompts, "delayeds": n_delayeds}


def decay_weights(duration_s: float, start_after_injection_min: float) -> np.ndarray:
    """¹⁸F activity of every millisecond of the acquisition, relative to injection (float64)."""
    n_ms = int(round(duration_s * 1000))
    t_min = start_after_injection_min + np.arange(n_ms) / 60000.0
    return 0.5 ** (t_min / F18_HALF_LIFE_MIN)


def event_times_ms(
    n_events: int, duration_s: float, start_after_injection_min: float, rng: np.random.Generator
) -> np.ndarray:
    """Events per millisecond (int64 counts, one per ms): multinomial, weighted by ¹⁸F decay."""
    weights = decay_weights(duration_s, start_after_injection_min)
    return rng.multinomial(n_events, weights / weights.sum())


def bucket_singles_cps(scanner: Scanner, singles_cps: np.ndarray) -> np.ndarray:
    """Singles rate of every bucket (float64 ``(n_buckets,)``): the sum over its crystals
    (``Scanner.crystal_buckets``) of ``singles_cps`` ``(n_rings, crystals_per_ring)``."""
    buckets = scanner.crystal_buckets().ravel()
    return np.bincount(buckets, weights=np.asarray(singles_cps, dtype=np.float64).ravel(), minlength=scanner.n_buckets)


def singles_reports(bucket_cps: np.ndarray, weights: np.ndarray, interval_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """What the scanner reports: at ``0, P, 2P, ...`` ms (``P = interval_ms``, inside the
    acquisition of ``weights.size`` ms) the instantaneous singles rate of every bucket,
    ``bucket_cps`` (the acquisition's mean rate) times the decay ``weights[t] / mean(weights)``.
    Returns ``(times_ms (n,), rates (n, n_buckets))``."""
    times = np.arange(0, weights.size, int(interval_ms), dtype=np.int64)
    scale = weights[times] / weights.mean() if weights.size else np.zeros(0)
    return times, scale[:, None] * np.asarray(bucket_cps, dtype=np.float64)[None, :]


def settings_dict(settings: AcquisitionSettings) -> dict:
    return asdict(settings)


def write_events_with_times(
    writer,
    words: np.ndarray,
    per_ms: np.ndarray,
    chunk_events: int = 8_000_000,
    singles: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Stream shuffled event words into a :class:`petiq.listmode.ListmodeWriter`, ``per_ms[m]``
    events in millisecond ``m`` (the writer adds one time tag per millisecond). ``singles``:
    ``(times_ms, rates)`` from :func:`singles_reports`; report ``k`` is written after the time tag
    of ``times_ms[k]``, before that millisecond's events, as the scanner interleaves them."""
    ends = np.cumsum(per_ms)
    report_ms, rates = singles if singles is not None else (np.zeros(0, np.int64), None)
    k = 0
    start_event, start_ms = 0, 0
    while start_ms < per_ms.size:
        while k < report_ms.size and report_ms[k] <= start_ms:
            writer.write_singles(rates[k], time_ms=int(report_ms[k]))
            k += 1
        limit = int(report_ms[k]) if k < report_ms.size else per_ms.size  # the next report's ms
        stop_ms = int(np.searchsorted(ends, start_event + chunk_events, side="right"))
        stop_ms = max(stop_ms, start_ms + 1)
        stop_ms = min(stop_ms, limit)
        stop_event = int(ends[stop_ms - 1])
        chunk = words[start_event:stop_event]
        times = np.repeat(np.arange(start_ms, stop_ms, dtype=np.int64), per_ms[start_ms:stop_ms])
        writer.write_events(
            (chunk & np.uint32(0x3FFFFFFF)).astype(np.int64), (chunk >> np.uint32(30)) & np.uint32(1) == 1, times
        )
        start_event, start_ms = stop_event, stop_ms


def read_inputs(truth_path, mumap_path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The activity (kBq/mL) and μ-map (cm⁻¹) NIfTIs mapped by their affines onto one centred
    scanner grid (head-first supine, :mod:`petiq.scanner.frame`): the activity's own shape and voxel size
    with its axes matched to the scanner's (:func:`petiq.scanner.frame.grid_like`), unchanged when it is
    already on such a grid. Returns ``(activity, mu, voxel_size_mm)``."""
    from ..core.errors import PetiqInputError
    from ..scanner import frame

    images = [
        (*frame.load_nifti(path, what, f"give the {what} as a NIfTI"), path, what)
        for path, what in ((truth_path, "activity"), (mumap_path, "μ-map"))
    ]
    (activity, a_affine, _, _), _ = images
    if activity.ndim != 3:
        raise PetiqInputError(
            truth_path, f"the activity has shape {activity.shape}, expected a 3-D volume", "give a 3-D NIfTI"
        )
    shape, voxel = frame.grid_like(activity.shape, a_affine, truth_path)
    out = [
        frame.to_scanner_grid(data, affine, shape, voxel, order=1, path=path, what=what)
        for data, affine, path, what in images
    ]
    return out[0], out[1], voxel


def simulate_patient(
    *,
    truth_path,
    mumap_path,
    participant: dict,
    scanner: Scanner,
    scanner_seed: int,
    seed: int,
    out_path,
    duration_s: float = 900.0,
    span: int = 11,
    progress: bool = True,
) -> dict:
    """Simulate one patient's 100 % list-mode acquisition to ``out_path`` (+ ``.hdr``; a ``.dcm``
    ``out_path`` writes the scanner's DICOM form, ``.dcm`` + ``.bf``); return a summary.
    The activity and μ-map are mapped onto the scanner frame by their affines (:func:`read_inputs`)."""
    from . import ListmodeWriter

    activity, mu, voxel = read_inputs(truth_path, mumap_path)
    rng = np.random.default_rng(seed)
    settings = AcquisitionSettings(duration_s=duration_s, span=span, scatter_fraction=float(rng.uniform(0.30, 0.40)))
    truth = scanner_truth(scanner, np.random.default_rng(scanner_seed))
    expected = expected_data(activity, mu, voxel, scanner, truth, settings)
    words, counts = draw_events(expected, scanner, truth, settings, rng, progress)
    per_ms = event_times_ms(words.size, duration_s, float(participant["uptake_min"]), rng)
    uptake_s = 60.0 * float(participant["uptake_min"])
    weights = decay_weights(duration_s, float(participant["uptake_min"]))
    header = {  # the keys the scanner writes where the simulation knows the value, then petiq's own
        "isotope name": ISOTOPE.name,
        "isotope gamma halflife (sec)": f"{ISOTOPE.half_life_s:g}",
        "isotope branching factor": f"{ISOTOPE.branching_ratio:g}",
        "radiopharmaceutical": "Fluorodeoxyglucose",
        # seconds from the scan start, negative before it (a real export: -2405 for an injection
        # 40 min before the scan, with the injection and study times it gives)
        "relative time of tracer injection (sec)": f"{-uptake_s:g}",
        "tracer activity at time of injection (Bq)": f"{1e6 * float(participant['injected_mbq']):g}",
        "image duration (sec)": f"{duration_s:g}",
        "patient ID": participant["participant_id"],
        "petiq injected activity (MBq)": participant["injected_mbq"],
        "petiq body weight (kg)": participant["weight_kg"],
        "petiq uptake time (min)": participant["uptake_min"],
        "petiq simulation seed": seed,
        "petiq scanner": scanner.name,
    }
    with ListmodeWriter(out_path, header, scanner=scanner) as writer:
        singles = singles_reports(
            bucket_singles_cps(scanner, expected.singles_cps), weights, writer.singles_interval_ms
        )
        write_events_with_times(writer, words, per_ms, singles=singles)
    expected_trues = float(expected.emission_span1.sum(dtype=np.float64))
    return {
        **expected.summary,
        "participant_id": participant["participant_id"],
        "scanner": scanner.name,
        "span": span,
        "duration_s": duration_s,
        "prompts": counts["prompts"],
        "delayeds": counts["delayeds"],
        "randoms_fraction_of_prompts": counts["delayeds"] / max(counts["prompts"], 1),
        "expected_trues_before_norm": expected_trues,
        "seed": seed,
        "scanner_seed": scanner_seed,
    }


def scanner_component_norm(scanner: Scanner, scanner_seed: int, span: int = 11):
    """The simulated scanner's normalisation truth as the mMR's component norm
    (:class:`petiq.recon.component_norm.ComponentNorm`; ``petiq simulate --norm --out scanner.n``
    writes it as ``.n`` + ``.n.hdr``), so that the ``norm`` rule reads one format for real and
    simulated scanners: crystal efficiencies and radial (geometric) factors of
    :func:`scanner_truth`, no dead time (the simulation has none) and the quantification factor of
    the calibration ``κ`` of span ``span`` (:func:`scanner_calibration`)."""
    from ..recon.norm_assembly import component_norm_from_truth

    truth = scanner_truth(scanner, np.random.default_rng(scanner_seed))
    return component_norm_from_truth(
        scanner, truth.crystal_efficiency, truth.radial_factor, scanner_calibration(scanner, span)
    )


NORM_PHANTOM = {"radius_mm": 100.0, "mu_cm": 0.096, "activity_bq_per_ml": 5000.0}


def simulate_norm_scan(
    scanner: Scanner, scanner_seed: int, seed: int, span: int = 11, counts_per_bin: float = 200.0, progress: bool = True
) -> dict:
    """A long scan of a uniform water cylinder (radius 100 mm, 5 kBq/mL, the whole axial FOV), as
    arrays: ``fansums`` (span-1 counts per crystal, (n_rings, crystals_per_ring)), ``sinogram`` (span
    ``span``), the phantom's description, its duration and the scanner's calibration factor κ,
    from which the norm stage estimates the components and the reconstruction its scale.

    ``counts_per_bin`` sets the mean trues per span-1 bin inside the cylinder (a real norm scan
    collects ~10⁹ counts); the duration follows from it."""
    truth = scanner_truth(scanner, np.random.default_rng(scanner_seed))
    cylinder, voxel = uniform_cylinder(NORM_PHANTOM["radius_mm"], scanner.n_rings * scanner.ring_pitch_mm)
    proj = JosephProjector(scanner, image_shape=cylinder.shape, voxel_size_mm=voxel, span=1)
    rate = proj.forward(cylinder)  # every span-1 LOR's own line integral (float32 span-1 sinogram)
    inside = rate > 0
    kappa = scanner_calibration(scanner, span)
    concentration = NORM_PHANTOM["activity_bq_per_ml"] / 1000.0  # Bq/mm³
    rate *= np.float32(kappa * concentration) * np.exp(np.float32(-0.1 * NORM_PHANTOM["mu_cm"]) * rate)  # per s
    duration_s = counts_per_bin / max(float(rate[inside].mean(dtype=np.float64)), 1e-30)
    del inside
    expected = rate
    expected *= np.float32(duration_s)
    rng = np.random.default_rng(seed)
    span_map, dets, ring_a_of_z, ring_b_of_z = _span1_plane_tables(scanner, span)
    fansums = np.zeros((scanner.n_rings, scanner.crystals_per_ring), dtype=np.float64)
    sinogram = np.zeros(scanner.sinogram_shape(span), dtype=np.uint32)
    for z in tqdm(range(span_map.size), desc="norm scan planes", disable=not progress, mininterval=5):
        counts = rng.poisson(truth.span1_plane_norm(scanner, z, dets) * expected[z])
        sinogram[span_map[z]] += counts.astype(np.uint32)
        np.add.at(fansums[ring_a_of_z[z]], dets[0].ravel(), counts.ravel())
        np.add.at(fansums[ring_b_of_z[z]], dets[1].ravel(), counts.ravel())
    return {
        "fansums": fansums,
        "sinogram": sinogram,
        "span": span,
        "phantom_radius_mm": NORM_PHANTOM["radius_mm"],
        "phantom_mu_cm": NORM_PHANTOM["mu_cm"],
        "phantom_activity_bq_per_ml": NORM_PHANTOM["activity_bq_per_ml"],
        "counts_per_bin": counts_per_bin,
        "duration_s": duration_s,
        "calibration_factor": kappa,
        "true_crystal_efficiency": truth.crystal_efficiency,
        "true_radial_factor": truth.radial_factor,
    }
