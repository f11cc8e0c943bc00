"""One acquisition through the whole reconstruction chain, without Snakemake (``petiq recon``).

:func:`reconstruct_acquisition` runs, for one list-mode file (or an already histogrammed sinogram
file), the same steps the workflow's rules run, by calling the same functions:

==============  ============================================  ==========================================
step            function                                      workflow rule
==============  ============================================  ==========================================
norm            :func:`~petiq.recon.pipeline.estimate_norm_file`  ``norm`` (skipped for a ready norm file)
attenuation     :func:`~petiq.recon.pipeline.attenuation_file`    ``attenuation``
histogram       :func:`histogram_file`                        ``histogram`` (``petiq histogram``; skipped
                                                              for a sinogram ``.npz``)
randoms         :func:`~petiq.recon.pipeline.randoms_file`        ``randoms``
scatter         :func:`~petiq.recon.pipeline.scatter_file`        ``scatter``
osem            :func:`~petiq.recon.pipeline.reconstruct_file`    ``osem``
==============  ============================================  ==========================================

The steps that need only the norm and the μ-map run first (the workflow's DAG orders them freely),
so that a μ-map the attenuation step refuses stops the run before a 1-GB list-mode is histogrammed.
Before any step, a cheap pre-pass checks every input and option: the values, the list-mode's header
(:func:`petiq.listmode.check_listmode`, no events read) or the sinogram file, the norm and the μ-map
(:func:`petiq.recon.corrections.check_mumap`), and the outputs (:func:`petiq.core.fileio.check_output`).

Input formats are told apart in one dispatch function each, so that a new format is one more branch:
:func:`_acquisition` (``.l``/``.l.hdr``, ``.dcm``/``.bf``, sinogram ``.npz``), :func:`_norm_npz` (a
norm ``.npz``, a norm scan ``.npz`` or the scanner's component norm ``.n``/``.dcm``) and
:func:`_attenuation` (a μ-map in any form :func:`petiq.recon.mumap.read_mumap` reads, and the
hardware μ-maps). Each checks its
input at once and returns the step (a callable) that makes the ``.npz`` the pipeline reads.

Intermediate files go to a work folder: a temporary one beside the output, removed at the end
(also after a failure), unless ``keep_intermediate`` or a ``work_dir`` of one's own is given with it.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.recon import correction_io as cio
from petiq.recon import pipeline as pl

__all__ = ["DEFAULTS", "histogram_file", "norm01_path", "reconstruct_acquisition"]

log = logging.getLogger("petiq.recon")


def _signature_defaults() -> dict:
    """The reconstruction defaults, from :func:`~petiq.recon.pipeline.reconstruct_file`'s signature
    (one place; tests/test_recon_cli.py checks them against the config schema's defaults)."""
    params = inspect.signature(pl.reconstruct_file).parameters
    out = {key: params[key].default for key in ("span", "n_iterations", "n_subsets", "post_filter_fwhm_mm", "backend")}
    out["scanner"] = "mmr"
    return out


#: scanner, span, n_iterations, n_subsets, post_filter_fwhm_mm, backend (the workflow's config defaults)
DEFAULTS = _signature_defaults()

STEP_FILES = {
    "norm": "norm.npz",
    "attenuation": "attenuation.npz",
    "sinograms": "sinograms.npz",
    "randoms": "randoms.npz",
    "scatter": "scatter.npz",
}


# ----------------------------------------------------------------------------- shared with `petiq histogram`
def histogram_file(src, out_npz, scanner, span: int, *, threads: int | None = None):
    """List-mode (``.l`` or ``.dcm``) → sinogram file: what ``petiq histogram`` (rule ``histogram``)
    does. Returns the :class:`~petiq.listmode.ListmodeHistogram`."""
    from petiq.listmode import histogram_listmode
    from petiq.listmode.sinograms import write_sinograms

    scanner = cio.as_scanner(scanner)
    hist = histogram_listmode(src, scanner, span=span, threads=threads)
    write_sinograms(out_npz, hist, scanner.name)
    return hist


def norm01_path(image) -> Path:
    """Where the 0–1 image goes beside ``image``, with the BIDS ``desc-norm01`` entity (the workflow
    puts it in the BIDS derivatives instead: :func:`petiq.core.bids.norm01_path`).

    >>> norm01_path("r/sub-01_rec-dose100p0_pet.nii.gz").as_posix(), norm01_path("x/img.nii").as_posix()
    ('r/sub-01_rec-dose100p0_desc-norm01_pet.nii.gz', 'x/img_desc-norm01.nii')
    """
    image = Path(image)
    suffix = ".nii.gz" if image.name.endswith(".nii.gz") else image.suffix
    stem = image.name[: len(image.name) - len(suffix)]
    head, sep, last = stem.rpartition("_")
    name = f"{head}_desc-norm01_{last}" if sep and "-" not in last else f"{stem}_desc-norm01"
    return image.with_name(name + suffix)


# ----------------------------------------------------------------------------- input dispatch
Step = Callable[[Path], Path]  # work folder -> the .npz the pipeline reads


def _acquisition(path, scanner, span: int, threads: int | None = None) -> tuple[str, Step]:
    """``(kind, step)`` for the acquisition: a list-mode (``.l``, its ``.l.hdr``, ``.dcm`` or ``.bf``;
    header and sizes checked now) is histogrammed by the step; a sinogram ``.npz`` is checked now and
    used as it is."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".npz"):
        sino = cio.read_sinograms_checked(path, scanner, span)
        if int(sino["n_prompts"]) <= 0 or not float(sino["duration_s"]) > 0:
            raise PetiqInputError(
                path,
                f"the sinograms hold {int(sino['n_prompts'])} prompts over {float(sino['duration_s']):g} s",
                "histogram a non-empty list-mode again",
            )
        return "sinograms", lambda work: path
    if name.endswith(".l.hdr"):
        path = path.with_name(path.name[:-4])
        name = name[:-4]
    if name.endswith((".l", ".dcm", ".bf")):
        from petiq.listmode import check_listmode

        check_listmode(path, scanner)

        def histogram(work: Path) -> Path:
            histogram_file(path, work / STEP_FILES["sinograms"], scanner, span, threads=threads)
            return work / STEP_FILES["sinograms"]

        return "listmode", histogram
    raise PetiqInputError(
        path,
        "is neither a list-mode file nor a sinogram file",
        "give the .l (its .l.hdr beside it), the .dcm of a DICOM export (its .bf beside it), "
        "or a sinogram .npz written by `petiq histogram`",
    )


def _listmode_data(path) -> Path:
    """The list-mode data path of an acquisition given as its ``.l.hdr`` (else the path itself)."""
    path = Path(path)
    return path.with_name(path.name[:-4]) if path.name.lower().endswith(".l.hdr") else path


def _npz_members(path: Path, what: str, fix: str) -> dict:
    """The small (0-d) members of an ``.npz`` and the names of all, without loading the sinograms."""
    if not path.is_file():
        raise PetiqInputError(path, f"{what} file not found", fix)
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            small = {key: data[key] for key in ("kind", "scanner", "span") if key in names}
    except (OSError, ValueError, EOFError) as error:
        raise PetiqInputError(path, f"not a readable {what} file ({error})", fix) from None
    return {"files": names, **{k: v.item() if v.ndim == 0 else v for k, v in small.items()}}


def _norm_npz(path, scanner, span: int) -> Step:
    """Check the norm input now; the returned step gives today's norm ``.npz`` (``kind="norm"``).

    * a norm ``.npz`` (``rule norm``'s output, ``kind="norm"``): checked in full, used as it is;
    * a norm scan ``.npz`` (``petiq simulate --norm``): its scanner checked now; the step runs
      :func:`~petiq.recon.pipeline.estimate_norm_file` into the work folder;
    * the scanner's component norm (``.n`` or its ``.n.hdr``, or the norm DICOM ``.dcm``/``.IMA``):
      read and checked in full now (:func:`~petiq.recon.component_norm.read_component_norm`); the
      step runs :func:`~petiq.recon.norm_assembly.component_norm_file` into the work folder."""
    path = Path(path)
    fix = (
        f"give the norm .npz of scanner {scanner.name!r}, span {span} (rule norm's output), its norm scan "
        f"(`petiq simulate --norm --scanner {scanner.name}`), or the scanner's component norm "
        "(.n with its .n.hdr, or the norm .dcm/.IMA)"
    )
    from petiq.recon import component_norm as cnm
    from petiq.recon import norm_assembly

    if cnm.is_component_norm(path):
        cnm.read_component_norm(path, scanner)

        def assemble(work: Path) -> Path:
            norm_assembly.component_norm_file(path, work / STEP_FILES["norm"], scanner, span)
            return work / STEP_FILES["norm"]

        return assemble
    if path.name.lower().endswith(".npz"):
        members = _npz_members(path, "norm", fix)
        if str(members.get("kind", "")) == "norm":
            cio.read_correction(path, "norm", scanner, span, ("norm", "calibration_factor"))
            return lambda work: path
        if all(key in members["files"] for key in cio.NORM_SCAN_KEYS):
            cio.check_scanner_span(path, {"scanner": members.get("scanner", "")}, scanner, span, "the norm scan", fix)

            def estimate(work: Path) -> Path:
                pl.estimate_norm_file(path, work / STEP_FILES["norm"], scanner, span)
                return work / STEP_FILES["norm"]

            return estimate
        raise PetiqInputError(
            path, f"neither a norm file nor a norm scan (kind {str(members.get('kind', '(none)'))!r})", fix
        )
    raise PetiqInputError(path, "is not a norm file petiq reads", fix)


def _attenuation(
    mumap,
    scanner,
    span: int,
    *,
    hardware_mumaps=(),
    bed_position_mm: float | None = None,
    listmode=None,
    table_position_origin_mm=None,
    gantry_table_home_offset_mm=None,
) -> Step:
    """Check the μ-map now; the step runs :func:`~petiq.recon.pipeline.attenuation_file`.

    Every form :func:`petiq.recon.mumap.read_mumap` reads is taken (NIfTI, e7 Interfile ``.v`` /
    ``.v.hdr`` / ``.hv``, DICOM file or series folder) and checked as the step will use it: readable,
    3-D, finite, cm⁻¹, a sound affine and tissue inside the scanner
    (:func:`petiq.recon.corrections.check_mumap`), and, unless it is exactly the scanner's image grid,
    covering the field of view where the object is (:func:`petiq.recon.mumap.to_scanner_frame`; a
    centred NIfTI of fewer slices is checked too, though attenuation_file would take it as it is).
    Hardware μ-maps need a bed position: ``bed_position_mm``, else the ``listmode`` header's
    ``start horizontal bed position (mm)``; none (sinograms, or a header without it) is an error now.
    The hardware files are read and placed now too (:func:`petiq.recon.hardware_mumap.hardware_mumap`), with
    the table offsets (x, y, z mm) NiftyPET ``get_hmupos`` uses: ``gantry_table_home_offset_mm``,
    else the DICOM μ-map's CSA ``GantryTableHomeOffset``; ``table_position_origin_mm``, else a list-mode
    ``.dcm``'s CSA ``TablePositionOrigin`` (:func:`petiq.recon.hardware_mumap.read_table_offsets_mm`). Neither
    known: both 0; only one known: an error (the hardware would be misplaced by the other)."""
    from petiq.recon import hardware_mumap
    from petiq.recon import mumap as mm
    from petiq.recon.corrections import check_mumap
    from petiq.scanner import frame

    mumap = Path(mumap)
    if not mumap.exists():
        raise PetiqInputError(
            mumap, "μ-map not found", "check the path (a NIfTI, an e7 .v/.v.hdr, or a DICOM μ-map file or folder)"
        )
    mu, affine, info = mm.read_mumap(mumap)
    check_mumap(mu, affine, scanner, mumap)
    if not (frame.is_scanner_grid(mu.shape, affine) and tuple(mu.shape) == tuple(scanner.image_shape)):
        # the FOV coverage rule, also for a NIfTI on a smaller centred grid (which attenuation_file uses as it is)
        mm.to_scanner_frame(mu, affine, scanner, mumap)
    hardware_mumaps = [Path(p) for p in (hardware_mumaps or ())]
    if hardware_mumaps:
        if bed_position_mm is None:
            bed_position_mm = hardware_mumap.read_bed_position_mm(listmode) if listmode is not None else None
        if bed_position_mm is None:
            where = listmode if listmode is not None else hardware_mumaps[0]
            raise PetiqInputError(
                where,
                "hardware μ-maps need the bed position, but none was given and "
                + (
                    "the list-mode header has no 'start horizontal bed position (mm)'"
                    if listmode is not None
                    else "the acquisition is a sinogram file (no list-mode header to read it from)"
                ),
                "give --bed-position-mm (the list-mode header's 'start horizontal bed position "
                "(mm)'), or reconstruct from the list-mode whose header holds it",
            )
        if not math.isfinite(float(bed_position_mm)):
            raise PetiqInputError(None, f"bed position {bed_position_mm!r} mm", "give the bed position in mm")
        bed_position_mm = float(bed_position_mm)
        offsets = _table_offsets(mumap, info["format"], listmode, table_position_origin_mm, gantry_table_home_offset_mm)
        hardware_mumap.hardware_mumap(hardware_mumaps, scanner, bed_position_mm, **offsets)
    else:
        offsets = {}

    def attenuation(work: Path) -> Path:
        pl.attenuation_file(
            mumap,
            work / STEP_FILES["attenuation"],
            scanner,
            span,
            hardware_mumaps=[str(p) for p in hardware_mumaps],
            bed_position_mm=bed_position_mm,
            **offsets,
        )
        return work / STEP_FILES["attenuation"]

    return attenuation


def _triple(value, what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise PetiqInputError(None, f"{what} = {value!r}", "give three numbers, x y z in mm")
    return out


def _table_offsets(mumap: Path, mumap_format: str, listmode, tpo, gto) -> dict:
    """The table offsets for :func:`petiq.recon.hardware_mumap.hardware_mumap`: given, else read from the
    μ-map DICOM (``GantryTableHomeOffset``) and a list-mode ``.dcm`` (``TablePositionOrigin``)."""
    from petiq.listmode.dicom import dicom_path, is_dicom_form
    from petiq.recon import hardware_mumap

    where = {"gto": "given", "tpo": "given"}
    if gto is None and mumap_format == "dicom":
        gto = hardware_mumap.read_table_offsets_mm(mumap)["gantry_table_home_offset_mm"]
        where["gto"] = str(mumap)
    if tpo is None and listmode is not None and is_dicom_form(listmode):
        tpo = hardware_mumap.read_table_offsets_mm(dicom_path(listmode))["table_position_origin_mm"]
        where["tpo"] = str(dicom_path(listmode))
    if tpo is None and gto is None:
        return {}
    if tpo is None or gto is None:
        have, lack = (
            ("GantryTableHomeOffset", "TablePositionOrigin")
            if tpo is None
            else ("TablePositionOrigin", "GantryTableHomeOffset")
        )
        found = where["gto"] if tpo is None else where["tpo"]
        raise PetiqInputError(
            found if found != "given" else None,
            f"the hardware μ-maps' table offsets are half known: {have} from {found}, but no "
            f"{lack} (NiftyPET places them by GantryTableHomeOffset - TablePositionOrigin)",
            f"give --{'table-position-origin-mm' if tpo is None else 'gantry-table-home-offset-mm'}"
            " X Y Z (the other DICOM's CSA header), or both as 0 0 0 to place without offsets",
        )
    return {
        "table_position_origin_mm": _triple(tpo, "table position origin (mm)"),
        "gantry_table_home_offset_mm": _triple(gto, "gantry table home offset (mm)"),
    }


# ----------------------------------------------------------------------------- options
def _check_options(scanner, span, n_iterations, n_subsets, post_filter_fwhm_mm, backend, scatter_options, threads):
    from petiq.recon.osem import BACKENDS, subset_views
    from petiq.recon.scatter import estimate_scatter

    scanner = cio.as_scanner(scanner)
    span = scanner.check_span(span)
    if isinstance(n_iterations, bool) or not isinstance(n_iterations, (int, np.integer)) or n_iterations < 1:
        raise PetiqInputError(None, f"iterations = {n_iterations!r}", "give a whole number ≥ 1 (e7, the paper: 2)")
    if isinstance(n_subsets, bool) or not isinstance(n_subsets, (int, np.integer)):
        raise PetiqInputError(None, f"subsets = {n_subsets!r}", "give a whole number of subsets (the paper: 21)")
    subset_views(scanner.n_views, n_subsets)
    if post_filter_fwhm_mm is None or not math.isfinite(post_filter_fwhm_mm) or post_filter_fwhm_mm < 0:
        raise PetiqInputError(None, f"post-filter FWHM = {post_filter_fwhm_mm!r} mm", "give 0 (off) or a FWHM in mm")
    if str(backend).strip().lower() not in BACKENDS:
        raise PetiqInputError(None, f"unknown device/backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")
    allowed = [name for name, p in inspect.signature(estimate_scatter).parameters.items() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(scatter_options) - set(allowed))
    if unknown:
        raise PetiqInputError(None, f"unknown scatter option(s) {unknown}", f"use some of: {', '.join(allowed)}")
    if threads is not None and (isinstance(threads, bool) or threads not in (1, 2, 4)):
        raise PetiqInputError(None, f"threads = {threads!r}", "give 1, 2 or 4 histogram threads, or leave it out")
    return scanner, span


def _check_outputs(out_nii, out_json, out_norm01_nii, inputs, force: bool) -> tuple[Path, Path, Path]:
    from petiq.core.fileio import check_output, same_file

    out_nii = Path(out_nii)
    if not out_nii.name.lower().endswith((".nii", ".nii.gz")):
        raise PetiqInputError(out_nii, "the image is written as NIfTI", "give an output ending in .nii.gz (or .nii)")
    out_json = out_nii.with_name(out_nii.name.split(".nii")[0] + ".json") if out_json is None else Path(out_json)
    out_norm01_nii = norm01_path(out_nii) if out_norm01_nii is None else Path(out_norm01_nii)
    outs = (("image", out_nii), ("sidecar", out_json), ("0–1 image", out_norm01_nii))
    for what, path in outs:
        check_output(path, inputs, force=force, what=what)
    for i, (what, path) in enumerate(outs):
        for other, second in outs[i + 1 :]:
            if same_file(path, second):
                raise PetiqInputError(path, f"the {what} and the {other} are one file", "give them different paths")
    return out_nii, out_json, out_norm01_nii


# ----------------------------------------------------------------------------- the chain
def reconstruct_acquisition(
    acquisition,
    *,
    norm,
    mumap,
    out_nii,
    out_json=None,
    out_norm01_nii=None,
    scanner=DEFAULTS["scanner"],
    span: int = DEFAULTS["span"],
    n_iterations: int = DEFAULTS["n_iterations"],
    n_subsets: int = DEFAULTS["n_subsets"],
    post_filter_fwhm_mm: float = DEFAULTS["post_filter_fwhm_mm"],
    backend: str = DEFAULTS["backend"],
    scatter_options: dict | None = None,
    metadata: dict | None = None,
    work_dir=None,
    keep_intermediate: bool = False,
    threads: int | None = None,
    force: bool = False,
    progress: bool = True,
    hardware_mumaps=(),
    bed_position_mm: float | None = None,
    table_position_origin_mm=None,
    gantry_table_home_offset_mm=None,
) -> dict:
    """Reconstruct one acquisition as the workflow does: list-mode or sinograms + norm + μ-map →
    image NIfTI (kBq/mL), PET-BIDS sidecar JSON and the 0–1 image.

    ``acquisition``: ``.l`` (or its ``.l.hdr``), ``.dcm`` (or ``.bf``), or a sinogram ``.npz``.
    ``norm``: a norm ``.npz``, a norm scan ``.npz`` or a component norm ``.n``/``.n.hdr``/``.dcm``/``.IMA``
    (:func:`_norm_npz`). ``mumap``: NIfTI (cm⁻¹), e7 Interfile or DICOM (:func:`_attenuation`).
    ``hardware_mumaps``: the site's coil/table μ-maps, placed by ``bed_position_mm`` or, when it is
    None, the list-mode header's bed position, and by the table offsets (x, y, z mm; None: read from
    the DICOM μ-map / list-mode ``.dcm``, see :func:`_attenuation`).
    ``out_json`` defaults to the image's name with ``.json``, ``out_norm01_nii`` to
    :func:`norm01_path`. Options as the config keys (``scanner``, ``span``, ``recon.*``, ``device``
    = ``backend``); ``scatter_options`` go to :func:`petiq.recon.scatter.estimate_scatter` (the
    workflow passes none); ``metadata`` adds keys to the sidecar; ``threads``: histogram threads.

    Intermediate files (``sinograms``, ``norm`` when estimated, ``randoms``, ``attenuation``,
    ``scatter`` ``.npz``) go to ``work_dir`` (made if missing; step files there are overwritten)
    or, by default, to a temporary folder beside the image; they are removed at the end unless
    ``keep_intermediate`` (without ``work_dir``, they are then kept in ``<image>_work/``).

    Every input, option and output path is checked before any step runs (bad ones raise
    :class:`~petiq.core.errors.PetiqInputError`); outputs appear together or not at all. Returns
    ``{"sidecar", "outputs", "intermediate" (kept files, else empty), "timings_s" (per step)}``."""
    started = time.perf_counter()
    scatter_options = dict(scatter_options or {})
    scanner, span = _check_options(
        scanner, span, n_iterations, n_subsets, post_filter_fwhm_mm, backend, scatter_options, threads
    )
    try:
        from petiq.core.fileio import json_default

        json.dumps(metadata or {}, default=json_default)  # as reconstruct_file checks it, but before any step
    except TypeError as error:
        raise PetiqInputError(
            None, f"metadata is not JSON serialisable ({error})", "pass plain numbers and strings"
        ) from None
    inputs = [Path(acquisition), Path(norm), Path(mumap), *(Path(p) for p in (hardware_mumaps or ()))]
    out_nii, out_json, out_norm01_nii = _check_outputs(out_nii, out_json, out_norm01_nii, inputs, force)
    if work_dir is None and keep_intermediate:
        work_dir = out_nii.with_name(out_nii.name.split(".nii")[0] + "_work")
    if work_dir is not None:
        work_dir = Path(work_dir)
        if work_dir.exists() and not work_dir.is_dir():
            raise PetiqInputError(work_dir, "the work folder is a file", "give a folder (made if missing)")
        from petiq.core.fileio import same_file

        for name in STEP_FILES.values():
            for given in inputs:
                if same_file(work_dir / name, given):
                    raise PetiqInputError(
                        given,
                        f"the input is where the work folder's step file {name} goes",
                        "give another --work-dir (the step files there are overwritten)",
                    )
    # the pre-pass: every input checked, no step run yet (the work folder does not exist yet)
    kind, sinograms_step = _acquisition(acquisition, scanner, span, threads)
    norm_step = _norm_npz(norm, scanner, span)
    attenuation_step = _attenuation(
        mumap,
        scanner,
        span,
        hardware_mumaps=hardware_mumaps,
        bed_position_mm=bed_position_mm,
        listmode=_listmode_data(acquisition) if kind == "listmode" else None,
        table_position_origin_mm=table_position_origin_mm,
        gantry_table_home_offset_mm=gantry_table_home_offset_mm,
    )
    log.info(
        "recon: inputs checked (%s %s, norm %s, μ-map %s; scanner %s, span %d, %d iterations x %d subsets)",
        kind,
        acquisition,
        norm,
        mumap,
        scanner.name,
        span,
        n_iterations,
        n_subsets,
    )

    made_dir = work_dir is None or not work_dir.exists()
    if work_dir is None:
        out_nii.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".petiq-recon-", dir=out_nii.parent))
    else:
        work = work_dir
        work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    written: list[Path] = []
    steps = 6

    def run(i: int, name: str, fn):
        log.info("recon: [%d/%d] %s ...", i, steps, name)
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 3)
        log.info("recon: [%d/%d] %s done in %.1f s", i, steps, name, timings[name])
        return result

    def produced(path: Path) -> Path:  # a step file this run writes (an input passed through is not one)
        if path.parent == work and not any(path == Path(given) for given in inputs):
            written.append(path)
        return path

    try:
        norm_npz = produced(run(1, "norm", lambda: norm_step(work)))
        attenuation_npz = produced(run(2, "attenuation", lambda: attenuation_step(work)))
        sinograms_npz = produced(run(3, "histogram", lambda: sinograms_step(work)))
        randoms_npz = produced(work / STEP_FILES["randoms"])
        run(4, "randoms", lambda: pl.randoms_file(sinograms_npz, randoms_npz, scanner, span))
        scatter_npz = produced(work / STEP_FILES["scatter"])
        run(
            5,
            "scatter",
            lambda: pl.scatter_file(
                sinograms_npz,
                norm_npz,
                randoms_npz,
                attenuation_npz,
                scatter_npz,
                scanner=scanner,
                span=span,
                **scatter_options,
            ),
        )
        sidecar = run(
            6,
            "osem",
            lambda: pl.reconstruct_file(
                sinograms_npz,
                norm_npz,
                randoms_npz,
                attenuation_npz,
                scatter_npz,
                out_nii,
                out_json,
                out_norm01_nii,
                scanner=scanner,
                span=span,
                n_iterations=n_iterations,
                n_subsets=n_subsets,
                post_filter_fwhm_mm=post_filter_fwhm_mm,
                backend=backend,
                metadata=metadata,
                progress=progress,
            ),
        )
    finally:
        if not keep_intermediate:  # with keep_intermediate, the step files stay after a failure too
            for path in written:
                path.unlink(missing_ok=True)
            if made_dir:
                shutil.rmtree(work, ignore_errors=True)
    timings["total"] = round(time.perf_counter() - started, 3)
    log.info(
        "recon: %s, %s, %s in %.1f s%s",
        out_nii,
        out_json,
        out_norm01_nii,
        timings["total"],
        f" (intermediate files in {work})" if keep_intermediate else "",
    )
    return {
        "sidecar": sidecar,
        "outputs": [out_nii, out_json, out_norm01_nii],
        "intermediate": [p for p in written if p.exists()] if keep_intermediate else [],
        "timings_s": timings,
    }
