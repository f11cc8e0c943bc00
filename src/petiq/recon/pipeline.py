"""One function per workflow step of the reconstruction stage: read files, compute, write atomically.

Every function checks all of its inputs (file kind, scanner, span, shapes, values) before it
computes anything, raises :class:`petiq.core.errors.PetiqInputError` with the fix on a bad input, and
writes its outputs through :func:`petiq.core.fileio.atomic_path`, so a failed step leaves no output.

Files (NumPy ``.npz``, each with ``kind``, ``scanner`` (preset name) and ``span``):

* norm (``kind="norm"``): ``norm`` (float32 span-S sinogram, mean of the members' ``ε_a ε_b g_t``),
  ``crystal_efficiency``, ``radial_factor``, ``radial_measured``, ``calibration_factor`` κ,
  ``summary`` (JSON text); one made from the scanner's component norm (``.n``) also keeps the
  components (``component_*``, :func:`petiq.recon.norm_assembly.component_norm_file`), from which
  :func:`read_norm` adds the dead time of each acquisition's bucket singles.
* randoms (``kind="randoms"``): ``singles`` (relative singles per crystal) and ``scale``; the
  randoms sinogram is ``scale · Σ_members s_a s_b`` (:func:`read_randoms` expands it; storing the
  singles instead of the sinogram keeps the file a few kB, not 290 MB at mMR size), ``n_delayeds``.
* attenuation (``kind="attenuation"``): ``attenuation`` (float32 span-S sinogram ``exp(−Pμ)``).
* scatter (``kind="scatter"``): ``scatter`` (float32 span-S sinogram, counts), ``scale``,
  ``scatter_fraction``, ``n_tail_bins``.

The sinogram file is :mod:`petiq.listmode.sinograms`'s; the norm scan file is what ``petiq simulate --norm``
writes (:func:`petiq.listmode.simulate.simulate_norm_scan` plus ``scanner``).

The workflow's rules call these functions one job each; ``petiq recon``
(:func:`petiq.recon.chain.reconstruct_acquisition`) calls the same ones in one process for one acquisition.
"""

from __future__ import annotations

import contextlib
import json
import logging

import numpy as np

from petiq.core.decay import frame_quantification
from petiq.core.errors import PetiqInputError
from petiq.core.fileio import atomic_path
from petiq.recon import corrections as corr
from petiq.recon import scatter as sct
from petiq.recon.osem import osem, resolve_backend, system_model

from .correction_io import (
    NORM_SCAN_KEYS,
    as_scanner,
    check_scanner_span,
    load_npz,
    read_correction,
    read_randoms,
    read_sinograms_checked,
    save_npz,
)

__all__ = [
    "attenuation_file",
    "estimate_norm_file",
    "norm_file",
    "randoms_file",
    "read_norm",
    "reconstruct_file",
    "scatter_file",
]

log = logging.getLogger("petiq.recon")


# ----------------------------------------------------------------------------- steps
def estimate_norm_file(norm_scan_npz, out_npz, scanner, span: int) -> dict:
    """Norm scan (``petiq simulate --norm``) → component-based normalisation file (span ``span``)."""
    scanner = as_scanner(scanner)
    span = scanner.check_span(int(span))
    fix = f"simulate the norm scan for scanner {scanner.name!r} (`petiq simulate --norm --scanner {scanner.name}`)"
    scan = load_npz(norm_scan_npz, "norm scan", fix)
    missing = [k for k in NORM_SCAN_KEYS if k not in scan]
    if missing:
        raise PetiqInputError(norm_scan_npz, f"norm scan lacks {missing}", fix)
    check_scanner_span(norm_scan_npz, {"scanner": scan.get("scanner", "")}, scanner, span, "the norm scan", fix)
    scan_span = scanner.check_span(int(scan["span"]))
    if scan["fansums"].size != scanner.n_crystals or scan["sinogram"].shape != scanner.sinogram_shape(scan_span):
        raise PetiqInputError(norm_scan_npz, "norm scan arrays do not match the scanner's crystals/sinogram", fix)
    if (
        float(scan["fansums"].sum()) <= 0
        or not float(scan["duration_s"]) > 0
        or not float(scan["calibration_factor"]) > 0
    ):
        raise PetiqInputError(norm_scan_npz, "norm scan has no counts, or a non-positive duration/calibration", fix)
    est = corr.estimate_normalisation(
        scan["fansums"],
        scan["sinogram"],
        scanner,
        norm_scan_span=scan_span,
        phantom_radius_mm=float(scan["phantom_radius_mm"]),
        phantom_mu_cm=float(scan["phantom_mu_cm"]),
        phantom_activity_bq_per_ml=float(scan["phantom_activity_bq_per_ml"]),
        duration_s=float(scan["duration_s"]),
        calibration_factor=float(scan["calibration_factor"]),
        span=span,
    )
    summary = {**est.summary, "scanner": scanner.name, "span": span, "calibration_factor": est.calibration_factor}
    save_npz(
        out_npz,
        {
            "kind": np.asarray("norm"),
            "scanner": np.asarray(scanner.name),
            "span": np.asarray(span),
            "norm": est.norm,
            "crystal_efficiency": est.crystal_efficiency,
            "radial_factor": est.radial_factor,
            "radial_measured": est.radial_measured,
            "calibration_factor": np.asarray(est.calibration_factor),
            "summary": np.asarray(json.dumps(summary)),
        },
    )
    return summary


def norm_file(src, out_npz, scanner, span: int) -> dict:
    """The ``norm`` step for any source: the scanner's component norm (``.n`` + ``.n.hdr`` or its
    DICOM form: :func:`petiq.recon.norm_assembly.component_norm_file`, what real scanners and
    petiq's simulated scanner both give) or a norm scan ``.npz`` (:func:`estimate_norm_file`, for
    scanners without a component norm)."""
    from petiq.recon.component_norm import is_component_norm
    from petiq.recon.norm_assembly import component_norm_file

    if is_component_norm(src):
        return component_norm_file(src, out_npz, as_scanner(scanner), span)
    return estimate_norm_file(src, out_npz, scanner, span)


def read_norm(
    path, scanner, span: int, sino: dict | None = None, sinograms_path=None
) -> tuple[np.ndarray, float, dict]:
    """(norm sinogram, κ, info) of a norm file for one acquisition.

    When the norm keeps the scanner's components and they have dead-time parameters (a real mMR
    norm), the sinogram is assembled again with the dead time of the acquisition's mean bucket
    singles (``sino``'s ``singles``/``singles_reports``, NiftyPET ``mmrhist`` ``buckets``), as NiftyPET's
    ``norm.cu`` does for every frame; otherwise it is the file's ``norm``. ``info`` says which
    (``dead_time``: False, or the mean and range of the crystals' dead-time factors)."""
    from petiq.recon import norm_assembly

    scanner = as_scanner(scanner)
    data = read_correction(path, "norm", scanner, span, ("norm", "calibration_factor"))
    kappa = float(data["calibration_factor"])
    components = norm_assembly.components_from_npz(data, scanner)
    if components is None or not norm_assembly.has_dead_time(components) or sino is None:
        return data["norm"], kappa, {"dead_time": False}
    from petiq.listmode.sinograms import require_singles

    singles, reports, _interval = require_singles(sino, sinograms_path, scanner.n_buckets)
    buckets = norm_assembly.mean_bucket_singles(singles, reports)
    norm = norm_assembly.norm_sinogram(components, scanner, span, buckets)
    factor = norm_assembly.dead_time_factor(components, scanner, buckets)
    live = ~scanner.is_gap(np.arange(scanner.crystals_per_ring))
    info = {
        "dead_time": True,
        "mean_bucket_singles_cps": float(np.mean(buckets)),
        "crystal_dead_time_factor_mean": float(factor[:, live].mean()),
        "crystal_dead_time_factor_range": [float(factor[:, live].min()), float(factor[:, live].max())],
    }
    log.info(
        "dead time from the bucket singles (mean %.4g cps): crystal factors %.4f (%.4f–%.4f)",
        info["mean_bucket_singles_cps"],
        info["crystal_dead_time_factor_mean"],
        *info["crystal_dead_time_factor_range"],
    )
    return norm, kappa, info


def randoms_file(sinograms_npz, out_npz, scanner, span: int) -> dict:
    """Delayeds of a sinogram file → variance-reduced randoms file (singles from delayed fan sums)."""
    scanner = as_scanner(scanner)
    span = scanner.check_span(int(span))
    sino = read_sinograms_checked(sinograms_npz, scanner, span)
    est = corr.estimate_randoms(sino["delayeds"], sino["delayed_fansums"], scanner, span)
    n_delayeds = float(sino["delayeds"].sum(dtype=np.float64))
    save_npz(
        out_npz,
        {
            "kind": np.asarray("randoms"),
            "scanner": np.asarray(scanner.name),
            "span": np.asarray(span),
            "singles": est.singles,
            "scale": np.asarray(est.scale),
            "n_delayeds": np.asarray(n_delayeds),
        },
    )
    return {
        "scanner": scanner.name,
        "span": span,
        "n_delayeds": n_delayeds,
        "expected_randoms_total": float(est.randoms.sum(dtype=np.float64)),
    }


def attenuation_file(
    mumap,
    out_npz,
    scanner,
    span: int,
    *,
    hardware_mumaps=(),
    listmode=None,
    bed_position_mm: float | None = None,
    table_position_origin_mm=(0.0, 0.0, 0.0),
    gantry_table_home_offset_mm=(0.0, 0.0, 0.0),
) -> dict:
    """μ-map (NIfTI cm⁻¹ any orientation, e7 Interfile ``.v``/``.v.hdr``, or DICOM series:
    :func:`petiq.recon.mumap.read_mumap`) [+ hardware μ-maps placed by the bed position] →
    attenuation factor file.

    A NIfTI μ-map already on a centred scanner grid (:func:`petiq.scanner.frame.is_scanner_grid`, e.g. the
    simulated phantoms') is used as it is; any other is mapped by its affine onto the scanner's image
    grid (:func:`petiq.recon.mumap.to_scanner_frame`; linear, a truncated μ-map is an error). Hardware
    μ-maps (:func:`petiq.recon.hardware_mumap.hardware_mumap`) need ``bed_position_mm`` or a ``listmode`` whose
    header holds ``start horizontal bed position (mm)``, and the table offsets (x, y, z mm) go to it;
    they are added to the patient μ-map."""
    from petiq.recon import hardware_mumap
    from petiq.recon import mumap as mm
    from petiq.scanner import frame

    scanner = as_scanner(scanner)
    span = scanner.check_span(int(span))
    hardware_mumaps = [str(p) for p in (hardware_mumaps or ())]
    if hardware_mumaps and bed_position_mm is None:
        bed_position_mm = hardware_mumap.read_bed_position_mm(listmode) if listmode is not None else None
        if bed_position_mm is None:
            raise PetiqInputError(
                listmode if listmode is not None else hardware_mumaps[0],
                "hardware μ-maps need the bed position, but none was given and "
                + (
                    "the list-mode header has no 'start horizontal bed position (mm)'"
                    if listmode is not None
                    else "no list-mode was given"
                ),
                "pass the list-mode whose header holds the bed position (or bed_position_mm)",
            )
    mu, affine, info = mm.read_mumap(mumap)
    voxel = corr.check_mumap(mu, affine, scanner, mumap)
    on_centred_grid = info["format"] == "nifti" and frame.is_scanner_grid(mu.shape, affine)
    if not on_centred_grid or (hardware_mumaps and tuple(mu.shape) != tuple(scanner.image_shape)):
        # onto the scanner's image grid: any μ-map not on a centred grid (checked for truncation), and a
        # centred grid of its own when hardware μ-maps (on the scanner's grid) are added to it
        voxel = tuple(float(v) for v in scanner.voxel_size_mm)
        mu = (
            mm.to_scanner_frame(mu, affine, scanner, mumap)
            if not on_centred_grid
            else frame.to_scanner_grid(mu, affine, scanner.image_shape, voxel, order=1, path=mumap, what="μ-map")
        )
    hardware_info = []
    if hardware_mumaps:
        hw, hardware_info = hardware_mumap.hardware_mumap(
            hardware_mumaps,
            scanner,
            bed_position_mm,
            table_position_origin_mm=table_position_origin_mm,
            gantry_table_home_offset_mm=gantry_table_home_offset_mm,
        )
        mu = (mu + hw).astype(np.float32)
    att = corr.attenuation_factors(mu, voxel, scanner, span)
    source = {
        "mumap_format": info["format"],
        "hardware_mumaps": hardware_mumaps,
        "bed_position_mm": bed_position_mm,
        "hardware": hardware_info,
    }
    save_npz(
        out_npz,
        {
            "kind": np.asarray("attenuation"),
            "scanner": np.asarray(scanner.name),
            "span": np.asarray(span),
            "attenuation": att,
            "mumap_shape": np.asarray(mu.shape),
            "mumap_voxel_mm": np.asarray(voxel),
            "mumap_format": np.asarray(info["format"]),
            "hardware_mumaps": np.asarray(json.dumps(hardware_mumaps)),
        },
    )
    return {
        "scanner": scanner.name,
        "span": span,
        "min_attenuation_factor": float(att.min()),
        "mumap_shape": list(mu.shape),
        "mumap_voxel_mm": list(voxel),
        **source,
    }


def scatter_file(
    sinograms_npz, norm_npz, randoms_npz, attenuation_npz, out_npz, *, scanner, span: int, **scatter_options
) -> dict:
    """Prompts + norm + randoms + attenuation → scatter file (:func:`petiq.recon.scatter.estimate_scatter`;
    ``scatter_options`` go to it)."""
    scanner = as_scanner(scanner)
    span = scanner.check_span(int(span))
    sino = read_sinograms_checked(sinograms_npz, scanner, span)
    norm, _kappa, _dead_time = read_norm(norm_npz, scanner, span, sino, sinograms_npz)
    att = read_correction(attenuation_npz, "attenuation", scanner, span, ("attenuation",))["attenuation"]
    randoms = read_randoms(randoms_npz, scanner, span)
    est = sct.estimate_scatter(sino["prompts"], randoms, norm, att, scanner, span, **scatter_options)
    save_npz(
        out_npz,
        {
            "kind": np.asarray("scatter"),
            "scanner": np.asarray(scanner.name),
            "span": np.asarray(span),
            "scatter": est.scatter,
            "scale": np.asarray(est.scale),
            "scatter_fraction": np.asarray(est.scatter_fraction),
            "n_tail_bins": np.asarray(est.n_tail_bins),
            "summary": np.asarray(json.dumps(est.summary)),
        },
    )
    return {
        "scanner": scanner.name,
        "span": span,
        "scatter_fraction": est.scatter_fraction,
        "scale": est.scale,
        "n_tail_bins": est.n_tail_bins,
    }


SCATTER_METHOD = (
    "tail-fitted smoothed emission (broad Gaussian of the randoms-subtracted, norm-corrected "
    "emission inside the object, scaled by least squares to the scatter tails); not e7's "
    "single scatter simulation"
)


RANDOMS_METHOD = "DLYD (delayed window, variance-reduced: singles from delayed fan sums)"


ATTENUATION_METHOD = "measured μ-map (cm⁻¹), attenuation factors exp(-∫μ) forward-projected in the system model"


def _sidecar(
    *,
    n_iterations,
    n_subsets,
    post_filter_fwhm_mm,
    backend,
    scanner,
    span,
    sino,
    kappa,
    quant,
    dead_time,
    scatter_fraction,
    image,
    metadata,
) -> dict:
    own = {
        "Units": "kBq/mL",
        "ReconMethodName": "OP-OSEM",
        "ReconMethodParameterLabels": ["iterations", "subsets"],
        "ReconMethodParameterUnits": ["none", "none"],
        "ReconMethodParameterValues": [int(n_iterations), int(n_subsets)],
        "ReconFilterType": "Gaussian" if post_filter_fwhm_mm else "none",
        "ReconFilterSize": float(post_filter_fwhm_mm) if post_filter_fwhm_mm else 0,
        "AttenuationCorrection": ATTENUATION_METHOD,
        "ScatterCorrectionMethod": SCATTER_METHOD,
        "RandomsCorrectionMethod": RANDOMS_METHOD,
        "DeadTimeCorrection": (
            f"bucket singles (mean {dead_time['mean_bucket_singles_cps']:.4g} cps) through the "
            f"norm's ring dead-time parameters (NiftyPET norm.cu); mean crystal factor "
            f"{dead_time['crystal_dead_time_factor_mean']:.4f}"
        )
        if dead_time.get("dead_time")
        else "none (the norm has no dead-time parameters)",
        # BIDS PET times are seconds from TimeZero, which petiq takes to be the scan start; an image
        # that is not decay corrected names the scan start too (the key is required either way)
        "ImageDecayCorrectionTime": 0.0,
        **quant.sidecar(),
        "AcquisitionMode": "list mode",
        "ScanStart": 0.0,
        **({"InjectionStart": float(sino["injection_start_s"])} if "injection_start_s" in sino else {}),
        "FrameTimesStart": [quant.frame_start_s],
        "FrameDuration": [float(sino["duration_s"])],
        "ImageVoxelSize": [float(v) for v in scanner.voxel_size_mm],
        "Scanner": scanner.name,
        "Span": int(span),
        "CalibrationFactor": float(kappa),
        "PromptsInSinograms": int(sino["n_prompts"]),
        "DelayedsInSinograms": int(sino["n_delayeds"]),
        "EstimatedScatterFraction": float(scatter_fraction),
        "ImageMaximum_kBq_per_mL": float(image.max()),
        "ReconstructionBackend": backend,
    }
    out = {}
    for key, value in (metadata or {}).items():
        if key in own:
            log.warning(
                "sidecar: metadata key %r is set by the reconstruction; keeping the reconstruction's value", key
            )
            continue
        out[key] = value
    out.update(own)
    return out


def reconstruct_file(
    sinograms_npz,
    norm_npz,
    randoms_npz,
    attenuation_npz,
    scatter_npz,
    out_nii,
    out_json,
    out_norm01_nii,
    *,
    scanner,
    span: int = 11,
    n_iterations: int = 2,
    n_subsets: int = 21,
    post_filter_fwhm_mm: float = 0.0,
    backend: str = "auto",
    metadata: dict | None = None,
    progress: bool = True,
) -> dict:
    """OP-OSEM of one sinogram file with all corrections → image NIfTI (kBq/mL), PET-BIDS JSON sidecar
    and the image divided by its maximum (0–1, as the paper normalises) as a second NIfTI.

    All three outputs appear together or not at all. Returns the sidecar dict."""
    import nibabel as nib

    from petiq.core.fileio import json_default
    from petiq.scanner.frame import nifti_image, scanner_grid_affine

    scanner = as_scanner(scanner)
    span = scanner.check_span(int(span))
    if post_filter_fwhm_mm is None or post_filter_fwhm_mm < 0:
        raise PetiqInputError(None, f"post_filter_fwhm_mm = {post_filter_fwhm_mm!r}", "use 0 (off) or a FWHM in mm")
    backend_used = resolve_backend(backend)
    # --- all inputs, checked before any work
    sino = read_sinograms_checked(sinograms_npz, scanner, span)
    prompts = sino["prompts"]
    if int(sino["n_prompts"]) <= 0 or not prompts.any():
        raise PetiqInputError(
            sinograms_npz,
            "the sinograms hold 0 prompts (empty list-mode)",
            "check the list-mode file (thinning fraction, acquisition) and histogram it again",
        )
    if not sino["duration_s"] > 0:
        raise PetiqInputError(
            sinograms_npz,
            f"acquisition duration {sino['duration_s']} s",
            "the list-mode needs time tags or an 'image duration (sec)' header key",
        )
    norm, kappa, dead_time = read_norm(norm_npz, scanner, span, sino, sinograms_npz)
    att = read_correction(attenuation_npz, "attenuation", scanner, span, ("attenuation",))["attenuation"]
    randoms = read_randoms(randoms_npz, scanner, span)
    scat_data = read_correction(scatter_npz, "scatter", scanner, span, ("scatter",))
    try:
        json.dumps(metadata or {}, default=json_default)
    except TypeError as error:
        raise PetiqInputError(
            None, f"metadata is not JSON serialisable ({error})", "pass plain numbers and strings"
        ) from None
    # e7's quantification (NiftyPET prj/mmrrec.py): κ per positron, × branching ratio, decay over the
    # frame; the image is the activity concentration at the scan start
    quant = frame_quantification(sino)
    log.info(
        "quantification: κ %.6g, branching ratio %.4g, decay correction %.5f to the scan start%s",
        kappa,
        quant.branching_ratio,
        quant.decay_correction_factor,
        "" if quant.decay_corrected else " (the sinograms name no isotope: not decay corrected)",
    )
    mult, add = system_model(
        scanner,
        span,
        duration_s=sino["duration_s"],
        calibration_factor=kappa * quant.count_scale,
        norm=norm,
        attenuation=att,
        randoms=randoms,
        scatter=scat_data.pop("scatter"),
    )
    del att, randoms, norm  # only prompts, mult and add stay in memory (3 x 290 MB at mMR size)
    sino.pop("delayeds")
    image = osem(
        prompts,
        mult,
        add,
        scanner,
        span,
        n_iterations=n_iterations,
        n_subsets=n_subsets,
        post_filter_fwhm_mm=post_filter_fwhm_mm,
        backend=backend_used,
        progress=progress,
    )
    sidecar = _sidecar(
        n_iterations=n_iterations,
        n_subsets=n_subsets,
        post_filter_fwhm_mm=post_filter_fwhm_mm,
        backend=backend_used,
        scanner=scanner,
        span=span,
        sino=sino,
        kappa=kappa,
        quant=quant,
        dead_time=dead_time,
        scatter_fraction=float(scat_data.get("scatter_fraction", np.nan)),
        image=image,
        metadata=metadata,
    )
    peak = float(image.max())
    norm01 = (image / peak if peak > 0 else np.zeros_like(image)).astype(np.float32)
    affine = scanner_grid_affine(image.shape, scanner.voxel_size_mm)  # RAS+, head-first supine

    def nifti(data):
        return nifti_image(data, affine)  # qform = sform = affine, code 1

    with contextlib.ExitStack() as stack:
        tmp_img = stack.enter_context(atomic_path(out_nii))
        tmp_json = stack.enter_context(atomic_path(out_json))
        tmp_01 = stack.enter_context(atomic_path(out_norm01_nii))
        nib.save(nifti(image), str(tmp_img))
        tmp_json.write_text(json.dumps(sidecar, indent=2, default=json_default) + "\n")
        nib.save(nifti(norm01), str(tmp_01))
    log.info("reconstruction: max %.3g kBq/mL -> %s", peak, out_nii)
    return sidecar
