"""Where the workflow writes: every folder of ``results/`` named once.

The rules (``workflow/rules/common.smk``), the command line's defaults and the docs take the
layout from here; the file names inside the BIDS dataset (reconstructions, 0–1 images) come from
:mod:`petiq.core.bids`, through :func:`recon_image` and :func:`norm01_image`. Paths are relative
to the working directory Snakemake runs in.

>>> norm01_image("sub-01", 5)
'results/bids/derivatives/petiq/sub-01/pet/sub-01_rec-dose005p0_desc-norm01_pet.nii.gz'
>>> log_path("recon", "osem_sub-01")
'results/logs/recon/osem_sub-01.log'
"""

from __future__ import annotations

from . import bids

RESULTS = "results"
#: Stage 1: participants, phantoms (truth and μ-map), the cohort table and figure.
COHORT = f"{RESULTS}/cohort"
#: Stage 2: list-mode (100 % and thinned), the scanner's norm; sinograms histogrammed from them.
LISTMODE = f"{RESULTS}/listmode"
SINOGRAMS = f"{RESULTS}/sinograms"
#: Stage 3: the reconstructions as a BIDS dataset; its derivatives hold the 0–1 images.
RECON = f"{RESULTS}/bids"
#: Stages 4–7: scores (sessions, ratings, reader), patches, trained models, tables, figures.
SCORES = f"{RESULTS}/scores"
PATCHES = f"{RESULTS}/patches"
MODELS = f"{RESULTS}/models"
TABLES = f"{RESULTS}/tables"
FIGURES = f"{RESULTS}/figures"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"


def log_path(stage: str, name: str) -> str:
    """A job's log file."""
    return f"{LOGS}/{stage}/{name}.log"


def benchmark_path(stage: str, name: str) -> str:
    """A job's Snakemake benchmark table."""
    return f"{BENCHMARKS}/{stage}/{name}.tsv"


def recon_image(subject: str, dose: float | str) -> str:
    """The reconstruction (kBq/mL) of a patient at a dose (percent, or its label ``005.0``)."""
    return bids.recon_image_path(RECON, subject, float(dose)).as_posix()


def norm01_image(subject: str, dose: float | str) -> str:
    """The 0–1 image readers and networks see, of a patient at a dose, in the BIDS derivatives."""
    return bids.norm01_path(RECON, subject, float(dose)).as_posix()
