# Configuration, the patient sheet and the names every rule file shares. Everything here is
# checked while the workflow is parsed: bad input stops the run before any job starts.
from snakemake.utils import validate

from petiq.cohort import read_patients
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


wildcard_constraints:
    subject=r"sub-[A-Za-z0-9]+",


def log_path(stage, name):
    return f"results/logs/{stage}/{name}.log"


def benchmark_path(stage, name):
    return f"results/benchmarks/{stage}/{name}.tsv"
