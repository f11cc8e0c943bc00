# Configuration, the patient sheet and the names every rule file shares. Everything here is
# checked while the workflow is parsed: bad input stops the run before any job starts.
from snakemake.utils import validate

from petiq.cohort import read_patients
from petiq.doses import dose_label
from petiq.seeding import derive_seed
from petiq.errors import PetiqInputError


validate(config, schema="../schemas/config.schema.yaml")

try:
    PATIENTS = read_patients(config["patients"])
except PetiqInputError as error:
    raise WorkflowError(f"petiq: {error}") from None

SUBJECTS = list(PATIENTS["participant_id"])
SYNTHETIC = list(PATIENTS.loc[PATIENTS["source"] == "synthetic", "participant_id"])
ENV = "../../envs/petiq.yaml"
COHORT = "results/cohort"
ANATOMY_FILES = [
    f"{config['cohort']['anatomy_dir']}/{name}"
    for name in ("Hammers.nii.gz", "Hammers.csv", "csf_TPM.nii.gz")
]

DOSES = [dose_label(d) for d in config["doses"]]
FULL_DOSE = dose_label(100)
LISTMODE = "results/listmode"
SINOGRAMS = "results/sinograms"
SCANNER_SEED = derive_seed(config["seed"], "scanner", config["scanner"])


def source_listmode(wildcards):
    """The 100 % list-mode file: the simulation for synthetic patients, the user's file for real ones."""
    row = PATIENTS.set_index("participant_id").loc[wildcards.subject]
    if row["source"] == "real":
        return row["listmode"]
    return f"{LISTMODE}/{wildcards.subject}/{wildcards.subject}_acq-full.l"


def dose_listmode(wildcards):
    if wildcards.dose == FULL_DOSE:
        return source_listmode(wildcards)
    return f"{LISTMODE}/{wildcards.subject}/{wildcards.subject}_dose-{wildcards.dose}.l"


wildcard_constraints:
    subject=r"sub-[A-Za-z0-9]+",
    dose=r"\d{3}\.\d",


def log_path(stage, name):
    return f"results/logs/{stage}/{name}.log"


def benchmark_path(stage, name):
    return f"results/benchmarks/{stage}/{name}.tsv"
