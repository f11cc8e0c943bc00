# Configuration, the patient sheet and the names every rule file shares. Everything here is
# checked while the workflow is parsed: bad input stops the run before any job starts.
from snakemake.utils import validate

from petiq.core import bids, paths
from petiq.cohort.patients import read_patients
from petiq.core.doses import dose_label
from petiq.core.seeding import derive_seed
from petiq.core.errors import PetiqInputError
from petiq.listmode import data_path, header_path


def stop(problems):
    """Stop the parse with every problem, one line each (no traceback, no schema dump)."""
    raise WorkflowError("petiq: the configuration has problems:\n  " + "\n  ".join(map(str, problems)))


try:
    validate(config, schema="../schemas/config.schema.yaml")
except WorkflowError:
    import yaml
    from petiq.core.config import schema_problems

    stop(
        schema_problems(
            config, yaml.safe_load((Path(workflow.basedir) / "workflow/schemas/config.schema.yaml").read_text())
        )
        or ["see above"]
    )

try:
    PATIENTS = read_patients(config["patients"], scanner=config["scanner"])
except PetiqInputError as error:
    raise WorkflowError(f"petiq: {error}") from None

SUBJECTS = list(PATIENTS["participant_id"])
from petiq.core.config import check_label_rater, config_problems

CONFIG_PROBLEMS = config_problems(config, SUBJECTS)
if CONFIG_PROBLEMS:
    stop(CONFIG_PROBLEMS)
SYNTHETIC = list(PATIENTS.loc[PATIENTS["source"] == "synthetic", "participant_id"])


def unrated_patients():
    """Real patients while the virtual reader scores (it knows synthetic patients' truth only), with the
    rated roles they must not take; None when there are none (then the split does not read the scoring keys)."""
    real = list(PATIENTS.loc[PATIENTS["source"] == "real", "participant_id"])
    if not real or config["scoring"]["ratings"] is not None:
        return None
    return {"ids": real, "roles": list(config["scoring"]["rated_roles"])}


ENV = "../../envs/petiq.yaml"


def petiq_command():
    """How shell rules call petiq: this workflow's own library (src/ first on PYTHONPATH, set in the
    Snakefile) under the job's Python — the interpreter running Snakemake, or the conda environment's
    `python` in conda mode — so the code is the same in every mode and an unactivated venv works too."""
    import shlex
    from snakemake.settings.types import DeploymentMethod

    in_env = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    python = "python" if in_env else shlex.quote(sys.executable)
    return f"{python} -m petiq.cli"


PETIQ = petiq_command()
COHORT = paths.COHORT
ANATOMY_FILES = [
    f"{config['cohort']['anatomy_dir']}/{name}" for name in ("Hammers.nii.gz", "Hammers.csv", "csf_TPM.nii.gz")
]

DOSES = [dose_label(d) for d in config["doses"]]
FULL_DOSE = dose_label(100)
# The reconstructions form a BIDS dataset, the 0-1 images its derivatives (petiq.core.bids spells every
# path in them); the osem rule's {rec} wildcard is a dose's reconstruction label (rec-dose005p0).
RECON = paths.RECON
RECON_PATHS = bids.patterns(RECON)


recon_image = paths.recon_image
norm01_image = paths.norm01_image


def at_rec_dose(pattern):
    """An input function: ``pattern`` ({subject}, {dose}) at the dose of the job's {rec} wildcard."""
    return lambda wildcards: pattern.format(
        subject=wildcards.subject, dose=bids.dose_label_from_rec_label(wildcards.rec)
    )


LISTMODE = paths.LISTMODE
# The form list-mode is written in (config listmode.form): the file the tools are given, and the
# other file of the pair (Interfile: .l + .l.hdr; DICOM export: .dcm + .bf).
LM_EXT, LM_PAIR = {"interfile": (".l", ".l.hdr"), "dicom": (".dcm", ".bf")}[config["listmode"]["form"]]
SINOGRAMS = paths.SINOGRAMS
SCANNER_SEED = derive_seed(config["seed"], "scanner", config["scanner"])


def source_listmode(wildcards):
    """The 100 % list-mode file: the simulation for synthetic patients, the user's file for real ones."""
    row = PATIENTS.set_index("participant_id").loc[wildcards.subject]
    if row["source"] == "real":
        return row["listmode"]
    return f"{LISTMODE}/{wildcards.subject}/{wildcards.subject}_acq-full{LM_EXT}"


def listmode_pair(listmode):
    """An input function: the other file of the list-mode pair of ``listmode(wildcards)`` (the
    .l.hdr of a .l, the .bf of a .dcm), so that a changed header or data file reruns the job."""

    def pair(wildcards):
        path = listmode(wildcards)
        return str(header_path(path) if data_path(path) == Path(path) else data_path(path))

    return pair


def dose_listmode(wildcards):
    if wildcards.dose == FULL_DOSE:
        return source_listmode(wildcards)
    return f"{LISTMODE}/{wildcards.subject}/{wildcards.subject}_dose-{wildcards.dose}{LM_EXT}"


def patient_mumap(wildcards):
    """The μ-map: the phantom's for synthetic patients, the user's file for real ones."""
    row = PATIENTS.set_index("participant_id").loc[wildcards.subject]
    if row["source"] == "real":
        return row["mumap"]
    return f"{COHORT}/{wildcards.subject}/{wildcards.subject}_mumap.nii.gz"


def patient_hardware_mumaps(wildcards):
    """A real patient's hardware μ-maps (head-and-neck coil, table) as the sheet names them; none for synthetic ones."""
    from petiq.cohort.site import hardware_paths

    row = PATIENTS.set_index("participant_id").loc[wildcards.subject]
    return [str(p) for p in hardware_paths(row["hardware_mumaps"])] if row["source"] == "real" else []


def hardware_listmode(wildcards):
    """The list-mode whose header's bed position places the hardware μ-maps (none without hardware)."""
    return [source_listmode(wildcards)] if patient_hardware_mumaps(wildcards) else []


def synthetic_norm_source(wildcards=None):
    """The simulated scanner's norm: its component norm file, or its norm scan (config recon.norm)."""
    if config["recon"]["norm"] == "norm_scan":
        return f"{LISTMODE}/norm_scan.npz"
    return f"{LISTMODE}/scanner_norm.n"


def _real_row(wildcards):
    row = PATIENTS.set_index("participant_id").loc[wildcards.subject]
    if row["source"] != "real":
        raise ValueError(
            f"{wildcards.subject} is synthetic: its norm is the simulated scanner's ({SINOGRAMS}/norm.npz)"
        )
    return row


def site_norm_source(wildcards):
    """A real patient's norm file as the sheet names it (.n, .n.hdr, .dcm/.IMA)."""
    return _real_row(wildcards)["norm"]


def site_norm_pair(wildcards):
    """The other file of a real patient's norm: the .n.hdr of a .n (the .n of a .n.hdr); a DICOM norm has none."""
    path = site_norm_source(wildcards)
    if path.lower().endswith(".n.hdr"):
        return [path[: -len(".hdr")]]
    if path.lower().endswith(".n"):
        return [f"{path}.hdr"]
    return []


def subject_norm(wildcards):
    """The normalisation sinograms of a patient: the site's for a real patient, the simulated scanner's otherwise."""
    row = PATIENTS.set_index("participant_id").loc[wildcards.subject]
    if row["source"] == "real":
        return f"{SINOGRAMS}/{wildcards.subject}/{wildcards.subject}_norm.npz"
    return f"{SINOGRAMS}/norm.npz"


# Reconstruction asks the scheduler for a GPU unless the config pins it to the CPU; it falls back
# to the CPU (with a line in its log) when none is visible.
GPU_PER_RECON = 0 if config["device"] == "cpu" else 1


def fig01_doses():
    """Low, medium and high: the lowest configured dose of each category that is present."""
    from petiq.core.doses import dose_category

    chosen = {}
    for dose in sorted(config["doses"]):
        chosen.setdefault(dose_category(dose), dose)
    if 100 in config["doses"]:
        chosen["high"] = 100
    return [dose_label(chosen[c]) for c in ("low", "medium", "high") if c in chosen]


def fig01_examples(wildcards=None):
    """{subject: {dose label: normalised image}} for the two patients of Fig. 1."""
    subjects = config["figures"]["fig01_subjects"] or SUBJECTS[:2]
    return {s: {d: norm01_image(s, d) for d in fig01_doses()} for s in subjects}


def fig01_inputs(wildcards):
    return {f"{s}_{d}": path for s, by_dose in fig01_examples().items() for d, path in by_dose.items()}


wildcard_constraints:
    subject=r"sub-[A-Za-z0-9]+",
    dose=r"\d{3}\.\d",
    rec=r"dose\d{3}p\d",


log_path = paths.log_path
benchmark_path = paths.benchmark_path


def mem_mb(base):
    """Memory that grows with each retry (a job killed for memory gets more next time)."""
    return lambda wildcards, attempt: base * attempt


# --- Scores, patches, training, figures ------------------------------------------------------
from petiq.learning.experiments import plan_experiments

SCORES = paths.SCORES
PATCHES = paths.PATCHES
MODELS = paths.MODELS
TABLES = paths.TABLES
FIGURES = paths.FIGURES
VIRTUAL_READER = config["scoring"]["ratings"] is None
RATINGS = f"{SCORES}/ratings.tsv" if VIRTUAL_READER else config["scoring"]["ratings"]
if not VIRTUAL_READER:  # real clinicians' ratings: every problem reported before any job starts
    from petiq.scoring.ratings import check_ratings_table

    try:
        check_label_rater(config["scoring"]["label_rater"], check_ratings_table(RATINGS), RATINGS)
    except PetiqInputError as error:
        raise WorkflowError(f"petiq: {error}") from None
SESSIONS = [s + 1 for s in range(config["scoring"]["sessions"]["count"])]

PLAN = plan_experiments(config)
STAGE_REPEATS = {
    "pretext": config["experiments"]["pretext_repeats"],
    "transfer": config["training"]["repeats"],
    "survey": config["experiments"]["backbone_repeats"],
    "baseline": config["training"]["repeats"],
}
# Training asks the scheduler for a GPU unless the config pins the workflow to the CPU.
GPU_PER_TRAIN = 0 if config["device"] == "cpu" else 1


def patch_files(subject, dose):
    from petiq.learning.patches import patch_paths

    return tuple(str(path) for path in patch_paths(PATCHES, subject, dose))


ALL_PATCHES = [f for s in SUBJECTS for d in DOSES for f in patch_files(s, d)]


def run_files(run, name, repeats=None):
    """A run's per-repeat files (``name`` in each rep-R folder), for its first ``repeats`` repeats."""
    stage = PLAN.runs[run].stage
    count = STAGE_REPEATS[stage] if repeats is None else repeats
    return [f"{MODELS}/{stage}/{run}/rep-{r}/{name}" for r in range(count)]


def init_checkpoint(wildcards):
    """Pipelines (c) and (d) start from the best checkpoint of a pretext run's first repeat."""
    init = PLAN.runs[wildcards.run].init
    return [f"{MODELS}/{init}/rep-0/model.pt"] if init.startswith("pretext/") else []


# The config values a training job reads: params, so changing one re-runs exactly the jobs that use it
# (Snakemake's params rerun trigger); workflow/scripts/train.py reads nothing from snakemake.config.
TRAINING_KEYS = ("backbone", "head", "epochs", "batch_size", "precision", "imagenet_weights", "weights_dir")


def training_params(stage):
    return {
        "run": lambda wildcards: PLAN.runs[wildcards.run].as_dict(),
        "training": {key: config["training"][key] for key in TRAINING_KEYS},
        "patches": config["patches"],
        "doses": config["doses"],
        "seed": config["seed"],
        "label_rater": None if stage == "pretext" else config["scoring"]["label_rater"],
        # real clinicians' ratings file, or None for the virtual reader (recorded in the model card)
        "ratings": None if stage == "pretext" else config["scoring"]["ratings"],
    }


def arm_predictions(experiment):
    """{arm label: its runs' image predictions, one file per repeat} for one figure or table."""
    return {arm.label: run_files(arm.run, "predictions_images.tsv", arm.repeats) for arm in PLAN.arms[experiment]}


def arm_inputs(experiment):
    return lambda wildcards: [f for files in arm_predictions(experiment).values() for f in files]
