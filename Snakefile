# petiq — Hopson et al. 2022 (IEEE TRPMS) as one workflow: digital cohort → list-mode → dose
# thinning → e7-style OSEM → clinical scores → patches → CNN training → every figure and table.
#
#   snakemake --cores 2 --configfile config/demo.yaml      # the demo on a laptop
#   snakemake --profile profiles/slurm                      # the paper's scale on a cluster
#   snakemake --cores 2 results/figures/cohort.png          # one figure and only what it needs
import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# This checkout's petiq library, installed or not: first on sys.path here and, through PYTHONPATH,
# in every job (script and shell rules, and the jobs a cluster executor runs, which parse this file)
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
# (Set with update(): Snakemake's linter reads `os.environ[...]` as a variable the user must provide.)
if SRC not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))


from petiq.core.config import read_config_file
from petiq.core.errors import PetiqInputError

# Snakemake's message for a broken YAML file names neither the file nor the line. (A broken
# --configfile is read by Snakemake before this file; `petiq check-config FILE` names its line.)
try:
    if Path("config/config.yaml").is_file():
        read_config_file("config/config.yaml")
except PetiqInputError as error:
    raise WorkflowError(f"petiq: {error}") from None


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/listmode.smk"
include: "workflow/rules/recon.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        rules.cohort.input,
        rules.listmode.input,
        rules.recon.input,
        SCORING_TARGETS,
        FIGURE_TARGETS,
