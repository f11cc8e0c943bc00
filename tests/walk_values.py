"""A changed, valid value of every config key, for the walk over the schema on a finished run."""
import shutil


def _copy(src, dst):
    def make(site):
        (site / dst).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (site / src).is_dir() else shutil.copy)(site / src, site / dst)
        return dst
    return make


def _folder_of_one_image(site):
    (site / "to-score").mkdir(exist_ok=True)
    shutil.copy(site / "results/recon/sub-01/sub-01_dose-100.0_pet.nii.gz", site / "to-score/a.nii.gz")
    return "to-score"


VALUES = {
    "seed": 8,
    "patients": _copy("config/patients.tsv", "config/patients-copy.tsv"),
    "doses": [1, 10, 50, 100],
    "scanner": "mmr",
    "span": 1,
    "listmode.duration_s": 600,
    "listmode.form": "dicom",
    "listmode.norm_counts_per_bin": 100,
    "device": "auto",
    "recon.iterations": 3,
    "recon.subsets": 7,
    "recon.post_filter_fwhm_mm": 4.0,
    "figures.fig01_subjects": ["sub-03", "sub-04"],
    "cohort.anatomy_dir": _copy("anatomy", "anatomy-copy"),
    "cohort.shape": [40, 40, 38],
    "cohort.voxel_size_mm": [7.0, 7.0, 6.5],
    "cohort.diagnosis_mix.CN": 0.5,
    "cohort.diagnosis_mix.AD": 0.5,
    "cohort.diagnosis_mix.FTD": 0.5,
    "cohort.diagnosis_mix.DLB": 0.5,
    "cohort.clinic.age": {"CN": [60.0, 8.0], "AD": [74.0, 7.0], "FTD": [63.0, 7.0], "DLB": [75.0, 6.0]},
    "cohort.clinic.weight_kg": {"F": [60.0, 12.0], "M": [82.0, 13.0]},
    "cohort.clinic.injected_mbq": {"mean": 180.0, "sd": 12.0, "min": 150.0, "max": 250.0},
    "cohort.clinic.uptake_min": [35.0, 45.0],
    "cohort.clinic.severity": [0.5, 1.0],
    "splits.file": _copy("results/cohort/splits.tsv", "config/splits.tsv"),
    "splits.counts.pretext_train": {"pretext_train": 1, "pretext_val": 2},
    "splits.counts.pretext_val": {"pretext_val": 2, "pretext_train": 1},
    "splits.counts.transfer_train": {"transfer_train": 2, "pretext_train": 1},
    "splits.counts.transfer_val": {"transfer_val": 2, "pretext_train": 1},
    "splits.counts.test": {"test": 2, "pretext_train": 1},
    "scoring.ratings": _copy("results/scores/ratings.tsv", "config/ratings.tsv"),
    "scoring.design": "all_doses",
    "scoring.rated_roles": ["pretext_val", "transfer_train", "transfer_val", "test"],
    "scoring.rereads": 1,
    "scoring.sessions.count": 5,
    "scoring.sessions.min_size": 2,
    "scoring.sessions.max_size": 7,
    "scoring.raters": 3,
    "scoring.label_rater": "2",
    "patches.size": 40,
    "patches.candidates": 100,
    "patches.per_plane": 3,
    "patches.threshold": 0.2,
    "patches.dtype": "float32",
    "training.backbone": "vgg19",
    "training.epochs": 2,
    "training.batch_size": 8,
    "training.learning_rate": 2.0e-4,
    "training.repeats": 3,
    "training.head": "relu",
    "training.precision": "fp32",
    "training.imagenet_weights": _copy("weights/vgg16_keras-imagenet.pth", "config/vgg16.pth"),
    "training.weights_dir": _copy("weights", "weights-copy"),
    "experiments.freeze_levels": [0, 1],
    "experiments.patient_counts": [1, 2],
    "experiments.pretext_repeats": 2,
    "experiments.pretext_transfer_freeze_level": 2,
    "experiments.dose_baseline_learning_rates": [1.0e-3],
    "experiments.backbones": ["vgg16", "resnet18"],
    "experiments.backbone_repeats": 2,
    "score_images": _folder_of_one_image,
}
