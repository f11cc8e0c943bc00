"""The paper's experiments as a set of training runs, named by what they train.

Every figure and table of the paper compares *arms* (freeze levels, patient counts, pipelines,
backbones). An arm is a training configuration; several arms of different figures are the same
configuration (Fig. 8's "last 2 blocks", Fig. 9's "7 patients" and pipeline (b) of Fig. 10 are
one model), so runs are named by their configuration and trained once::

    vgg16_imagenet_k2_lr1e-04_n7        transfer run: backbone, init, freeze level, lr, patients
    pretext/vgg16_imagenet_k2_lr1e-04   pretext (dose per weight) run
    dose-fc_lr1e-03                     Table III baseline

>>> plan = plan_experiments({"training": {}, "experiments": {}})
>>> plan.arms["fig08"][2]
Arm(label='2', run='vgg16_imagenet_k2_lr1e-04_n7', repeats=7)
>>> plan.arms["fig10"][2].run == plan.arms["fig08"][2].run
True
>>> plan.runs["vgg16_pretext-imagenet_k0_lr1e-04_n7"].init
'pretext/vgg16_imagenet_k2_lr1e-04'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

#: Table II: the two pretext models (ImageNet + last 2 blocks; random + all 5).
PRETEXT_ARMS = {"imagenet_last2": ("imagenet", 2), "random_all5": ("random", 5)}

#: Fig. 10 / Table IV pipelines: label -> (init, freeze level, learning rate or None = training default).
#: (c) and (d) start from the pretext models; their freeze level is a config key (see schema).
PIPELINES = ("a_random_lr1e-3", "a_random_lr1e-4", "b_imagenet_last2", "c_pretext_random", "d_pretext_imagenet")

DEFAULT_TRAINING = {"backbone": "vgg16", "learning_rate": 1e-4, "repeats": 7}
DEFAULT_EXPERIMENTS = {
    "freeze_levels": [0, 1, 2, 3, 4, 5],
    "patient_counts": [1, 2, 3, 4, 5, 6, 7],
    "pretext_repeats": 1,
    "pretext_transfer_freeze_level": 0,
    "dose_baseline_learning_rates": [1e-3, 1e-4],
    "backbones": ["vgg16", "vgg19", "resnet18", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0"],
    "backbone_repeats": 3,
}


def lr_label(lr: float) -> str:
    """The learning rate as run names spell it.

    >>> lr_label(1e-4), lr_label(0.001)
    ('1e-04', '1e-03')
    """
    return f"{lr:.0e}"


@dataclass(frozen=True)
class Run:
    """One training configuration (trained ``repeats`` times with seeds derived from its name)."""

    name: str
    stage: str  # pretext | transfer | survey (other backbones, Fig. 4) | baseline (Table III)
    backbone: str
    init: str  # imagenet | random | pretext/<pretext run name> (its rep-0 best checkpoint)
    freeze_level: int
    learning_rate: float
    n_patients: int | None  # transfer patients used (None: all of the role)
    repeats: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Arm:
    """One box of a figure: its label, the run behind it and how many of the run's repeats it uses."""

    label: str
    run: str
    repeats: int


@dataclass
class ExperimentPlan:
    runs: dict[str, Run] = field(default_factory=dict)
    arms: dict[str, list[Arm]] = field(default_factory=dict)

    def add(self, experiment: str, label: str, run: Run) -> None:
        """Add an arm; a run two arms share is trained once, with the larger number of repeats."""
        known = self.runs.get(run.name, run)
        if replace(known, repeats=run.repeats) != run:
            raise ValueError(f"two configurations share the run name {run.name}: {known} and {run}")
        self.runs[run.name] = replace(run, repeats=max(known.repeats, run.repeats))
        self.arms.setdefault(experiment, []).append(Arm(label, run.name, run.repeats))

    def runs_of(self, stage: str) -> list[str]:
        return sorted(name for name, run in self.runs.items() if run.stage == stage)


def transfer_run_name(backbone: str, init_label: str, k: int, lr: float, n: int) -> str:
    """A transfer run's name.

    >>> transfer_run_name("vgg16", "imagenet", 2, 1e-4, 7)
    'vgg16_imagenet_k2_lr1e-04_n7'
    """
    return f"{backbone}_{init_label}_k{k}_lr{lr_label(lr)}_n{n}"


def plan_experiments(config: dict, n_transfer_patients: int | None = None) -> ExperimentPlan:
    """Expand the config's ``training`` and ``experiments`` sections into named runs and arms.

    ``n_transfer_patients`` (default: the config's ``splits.counts.transfer_train``, else 7) is
    the number of transfer_train patients; patient counts above it are dropped.
    """
    training = {**DEFAULT_TRAINING, **config.get("training", {})}
    exp = {**DEFAULT_EXPERIMENTS, **config.get("experiments", {})}
    if n_transfer_patients is None:
        n_transfer_patients = int(config.get("splits", {}).get("counts", {}).get("transfer_train", 7))
    n_all = n_transfer_patients
    backbone, lr, repeats = training["backbone"], float(training["learning_rate"]), int(training["repeats"])
    plan = ExperimentPlan()

    def transfer(
        experiment: str,
        label: str,
        init: str,
        k: int,
        run_lr: float = lr,
        n: int = n_all,
        net: str = backbone,
        reps: int = repeats,
        stage: str = "transfer",
    ) -> None:
        init_label = "pretext-" + init.split("_")[1] if init.startswith("pretext/") else init
        name = transfer_run_name(net, init_label, k, run_lr, n)
        plan.add(experiment, label, Run(name, stage, net, init, k, run_lr, n, reps))

    pretext_names = {}
    for label, (init, k) in PRETEXT_ARMS.items():
        name = f"{backbone}_{init}_k{k}_lr{lr_label(lr)}"
        pretext_names[label] = f"pretext/{name}"
        plan.add("table2", label, Run(name, "pretext", backbone, init, k, lr, None, int(exp["pretext_repeats"])))

    for k in exp["freeze_levels"]:
        transfer("fig08", str(k), "imagenet", int(k))
    for n in exp["patient_counts"]:  # petiq.core.config refuses counts above n_all before the workflow plans
        if int(n) <= n_all:
            transfer("fig09", str(n), "imagenet", 2, n=int(n))

    after_pretext = exp["pretext_transfer_freeze_level"]
    for label in PIPELINES:
        if label.startswith("a_"):
            transfer("fig10", label, "random", 5, run_lr=1e-3 if label.endswith("1e-3") else 1e-4)
        elif label.startswith("b_"):
            transfer("fig10", label, "imagenet", 2)
        else:
            pretext = "random_all5" if label.startswith("c_") else "imagenet_last2"
            k = PRETEXT_ARMS[pretext][1] if after_pretext == "pretext" else int(after_pretext)
            transfer("fig10", label, pretext_names[pretext], k)

    for rate in exp["dose_baseline_learning_rates"]:
        name = f"dose-fc_lr{lr_label(float(rate))}"
        label = "dose_fc_lr" + lr_label(float(rate)).replace("e-0", "e-")  # the paper's row names: dose_fc_lr1e-3
        plan.add("table3", label, Run(name, "baseline", "dose-fc", "random", 0, float(rate), n_all, repeats))
    pretrained = plan.arms["fig10"][2]  # the pre-trained network of Table III is pipeline (b)
    plan.arms["table3"].append(Arm("pretrained_network", pretrained.run, pretrained.repeats))

    survey_repeats = int(exp["backbone_repeats"])
    for net in exp["backbones"]:  # the main backbone's arm reuses its transfer run (its first repeats)
        if net == backbone:
            transfer("fig04", net, "imagenet", 2, reps=min(survey_repeats, repeats))
        else:
            transfer("fig04", net, "imagenet", 2, net=net, reps=survey_repeats, stage="survey")
    return plan


def transfer_patients(transfer_train: list[str], n: int, seed: int) -> list[str]:
    """The first ``n`` of a seeded permutation of the transfer patients (nested: n ⊂ n + 1).

    >>> transfer_patients(["sub-01", "sub-02", "sub-03"], 2, 1) == transfer_patients(["sub-03", "sub-02", "sub-01"], 2, 1)
    True
    >>> set(transfer_patients(["a", "b", "c"], 2, 5)) <= set(transfer_patients(["a", "b", "c"], 3, 5))
    True
    """
    from ..core.seeding import rng_for

    if not 1 <= n <= len(transfer_train):
        raise ValueError(f"{n} transfer patients asked for; the split has {len(transfer_train)}")
    order = rng_for(seed, "transfer-patients").permutation(sorted(transfer_train))
    return [str(p) for p in order[:n]]


def dose_per_kg(participants, participant_id: str, dose_percent: float) -> float:
    """Injected activity of a simulated dose per body weight (MBq/kg): the pretext target."""
    row = participants.set_index("participant_id").loc[participant_id]
    return float(row["injected_mbq"]) * float(dose_percent) / 100.0 / float(row["weight_kg"])


def labels_from_ratings(ratings, rater: str):
    """One label per image: ``rater``'s first reading (the paper used clinician one's scores)."""
    from ..core.errors import PetiqInputError

    rows = ratings[(ratings["rater"].astype(str) == str(rater)) & (ratings["reading"] == "first")]
    if rows.empty:
        raise PetiqInputError(
            "ratings",
            f"no first readings by rater {rater!r} (raters present: {sorted(ratings['rater'].astype(str).unique())})",
            "set scoring.label_rater in the config to one of the raters present",
        )
    return rows[["participant_id", "dose", "GQR", "PR", "DC"]].reset_index(drop=True)


def run_tables(run: Run, *, splits, participants, ratings, doses, label_rater: str, seed: int, patch_paths) -> dict:
    """The images each role of a run learns or is judged from, with their targets.

    Returns {"train": df, "val": df, "test": df} with columns participant_id, dose, dose_per_kg,
    patches_npy, patches_tsv and the targets (dose_per_kg for pretext runs; GQR, PR, DC
    otherwise). ``patch_paths(participant_id, dose) -> (npy, tsv)`` names the patch files.
    Pretext runs use every dose of the pretext patients; score runs the rated images of the
    transfer patients (Fig. 9: the first ``n`` of a seeded permutation) and of the val/test roles.
    """
    import pandas as pd

    roles = splits.set_index("participant_id")["role"]

    def members(role: str) -> list[str]:
        return sorted(p for p, r in roles.items() if r == role)

    def with_files(df):
        df = df.copy()
        df["dose_per_kg"] = [dose_per_kg(participants, p, d) for p, d in zip(df["participant_id"], df["dose"])]
        files = [patch_paths(p, d) for p, d in zip(df["participant_id"], df["dose"])]
        df["patches_npy"] = [str(f[0]) for f in files]
        df["patches_tsv"] = [str(f[1]) for f in files]
        return df.sort_values(["participant_id", "dose"]).reset_index(drop=True)

    if run.stage == "pretext":

        def all_doses(role):
            return with_files(
                pd.DataFrame([(p, float(d)) for p in members(role) for d in doses], columns=["participant_id", "dose"])
            )

        return {"train": all_doses("pretext_train"), "val": all_doses("pretext_val"), "test": all_doses("pretext_val")}

    labels = labels_from_ratings(ratings, label_rater)
    train_patients = members("transfer_train")
    if run.n_patients is not None and run.n_patients < len(train_patients):
        train_patients = transfer_patients(train_patients, run.n_patients, seed)

    def rated(patients):
        return with_files(labels[labels["participant_id"].isin(patients)])

    tables = {"train": rated(train_patients), "val": rated(members("transfer_val")), "test": rated(members("test"))}
    for role, df in tables.items():
        if df.empty:
            from ..core.errors import PetiqInputError

            raise PetiqInputError(
                "ratings",
                f"run {run.name}: no rated images for its {role} patients",
                "rate the transfer_train, transfer_val and test patients (scoring.rated_roles)",
            )
    return tables
