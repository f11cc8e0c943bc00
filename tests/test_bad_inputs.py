"""Every bad input a new user was seen to give, as one table: the config, the patient sheet, list-mode
files, split files, reading-session keys and ratings forms, `petiq predict` and the other sub-commands.

Each case is run as the user runs it — `snakemake -n` in a project folder, or a `petiq` command line —
and must end with exit code ≠ 0, a message holding the case's key words and a `Fix:`, no traceback,
and not one file created or changed in the project (Snakemake's own `.snakemake/` bookkeeping aside).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ANATOMY_DIR, ROOT
from helpers import write_site_files

BASE = yaml.safe_load((ROOT / "tests/config/config.yaml").read_text())
SHEET = (ROOT / "tests/config/patients.tsv").read_text()
KEY = "sessions/private/unblinding_key.tsv"
FORM = "sessions/session-1/session-1_ratings-form.tsv"


def merged(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merged(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def config(**override) -> dict:
    """Edits of the project: the test preset's config with ``override`` merged in."""
    return {"config/config.yaml": yaml.safe_dump(merged(PROJECT_CONFIG, override))}


PROJECT_CONFIG = merged(
    BASE,
    {
        "patients": "config/patients.tsv",
        "cohort": {"anatomy_dir": str(ANATOMY_DIR)},
        "training": {"weights_dir": str(ROOT / "resources/weights")},
    },
)
# the real row's files are the test preset's demo scanner's (real/d.l); real/a.l is a tiny-scanner list-mode
REAL = [
    "participant_id\tsource\tlistmode\tmumap\tnorm\tweight_kg\tinjected_mbq",
    "sub-R1\treal\treal/d.l\treal/mu.nii.gz\treal/norm.n\t70\t200",
]
CHECK = ["petiq", "check-patients", "config/patients.tsv", "--scanner", "demo"]


def sheet(*rows: str, header: str = REAL[0]) -> dict:
    return {"config/patients.tsv": "\n".join([header, *rows]) + "\n"}


def truncated(site: Path, name: str = "real/a.l") -> None:
    data = (site / name).read_bytes()
    (site / name).write_bytes(data[:-4])  # one event short: a copy that stopped early


def truncated_row(site: Path) -> None:
    truncated(site, "real/d.l")


def header_with(key: str, value: str):
    """The real row's list-mode header with ``key`` set to ``value``."""

    def edit(site: Path) -> None:
        path = site / "real/a.l.hdr"
        lines = [line for line in path.read_text().splitlines() if line.split(":=")[0].strip().lower() != key.lower()]
        lines.insert(2, f"{key} := {value}")
        path.write_text("\n".join(lines) + "\n")

    return edit


def header_without(name: str, key: str):
    """An edit: the list-mode header ``name`` without ``key``."""

    def edit(site: Path) -> None:
        path = site / name
        path.write_text(
            "".join(
                line + "\n"
                for line in path.read_text().splitlines()
                if line.split(":=")[0].strip().lower() != key.lower()
            )
        )

    return edit


def form(*rows: str, header: str = "blinded_id\trater\tGQR\tPR\tDC\tcomment") -> dict:
    return {FORM: "\n".join([header, *rows]) + "\n"}


def first_id(site: Path) -> str:
    return (site / FORM).read_text().splitlines()[1].split("\t")[0]


def form_with(score: str):
    """The filled form with its first reading's GQR replaced by ``score``."""

    def edit(site: Path) -> None:
        lines = (site / FORM).read_text().splitlines()
        cells = lines[1].split("\t")
        cells[2] = score
        lines[1] = "\t".join(cells)
        (site / FORM).write_text("\n".join(lines) + "\n")

    return edit


SIM = ["petiq", "simulate", "--scanner", "tiny", "--seed", "1", "--scanner-seed", "2", "--out", "out/sub-01.l"]
SIM_FILES = ["--truth", "truth.nii.gz", "--mumap", "mumap.nii.gz", "--participants", "participants.tsv"]
IMPORT = ["petiq", "ratings", "import", "--forms", "sessions", "--key", KEY, "--out"]
PLAN = [
    "petiq",
    "sessions",
    "plan",
    "--patients",
    "sub-01",
    "--doses",
    "100",
    "--n-sessions",
    "1",
    "--max-images",
    "5",
    "--seed",
    "7",
]
DRY = ["snakemake"]

# name: (command, words the message must hold, edits of the project before the command)
CASES = {
    # --- the config: `snakemake -n` stops at parse with the key, the value and the fix
    "config: unknown backbone": (
        DRY,
        ["training.backbone", "vgg17", "did you mean", "vgg16"],
        config(training={"backbone": "vgg17"}),
    ),
    "config: unknown survey backbone": (
        DRY,
        ["experiments.backbones[1]", "resnet9000"],
        config(experiments={"backbones": ["vgg16", "resnet9000"]}),
    ),
    "config: freeze level 7": (
        DRY,
        ["pretext_transfer_freeze_level", "7", "'pretext'"],
        config(experiments={"pretext_transfer_freeze_level": 7}),
    ),
    "config: freeze level all": (
        DRY,
        ["pretext_transfer_freeze_level", "'all'"],
        config(experiments={"pretext_transfer_freeze_level": "all"}),
    ),
    "config: Fig. 8 freeze level 6": (
        DRY,
        ["experiments.freeze_levels[1]", "6"],
        config(experiments={"freeze_levels": [0, 6]}),
    ),
    "config: misspelt top-level key": (
        DRY,
        ["scannr is not a petiq setting", "did you mean scanner"],
        config(scannr="mmr"),
    ),
    "config: misspelt nested key": (
        DRY,
        ["training.epoch is not a petiq setting", "epochs"],
        config(training={"epoch": 3}),
    ),
    "config: unknown scanner": (DRY, ["config key scanner", "petrace"], config(scanner="petrace")),
    "config: negative epochs": (DRY, ["training.epochs", "-1"], config(training={"epochs": -1})),
    "config: patch size as text": (DRY, ["patches.size", "eighty"], config(patches={"size": "eighty"})),
    "config: patch larger than the images": (DRY, ["patches.size", "200"], config(patches={"size": 200})),
    "config: split counts do not add up": (DRY, ["splits.counts", "has 6"], config(splits={"counts": {"test": 4}})),
    "config: Fig. 1 subject not in the sheet": (
        DRY,
        ["figures.fig01_subjects", "sub-99"],
        config(figures={"fig01_subjects": ["sub-01", "sub-99"]}),
    ),
    "config: missing ImageNet checkpoint": (
        DRY,
        ["training.imagenet_weights", "nowhere/vgg16.pth", "does not exist"],
        config(training={"imagenet_weights": "nowhere/vgg16.pth"}),
    ),
    "config: label rater that is no rater": (DRY, ["scoring.label_rater", "'7'"], config(scoring={"label_rater": "7"})),
    "config: too few reading sessions": (DRY, ["scoring.sessions.count"], config(scoring={"sessions": {"count": 2}})),
    "config: reading sessions too small": (
        DRY,
        ["scoring.sessions.max_size"],
        config(scoring={"sessions": {"count": 4, "max_size": 1}}),
    ),
    "config: Fig. 9 count above the transfer patients": (
        DRY,
        ["experiments.patient_counts", "[2]", "transfer_train"],
        config(experiments={"patient_counts": [1, 2]}),
    ),
    "config: no Fig. 9 counts": (
        DRY,
        ["experiments.patient_counts", "[] has 0 item(s)", "at least 1"],
        config(experiments={"patient_counts": []}),
    ),
    "config: ratings file missing": (
        DRY,
        ["scoring.ratings", "no/ratings.tsv"],
        config(scoring={"ratings": "no/ratings.tsv"}),
    ),
    "config: a dose of 0 %": (DRY, ["doses", "0"], config(doses=[0, 10, 100])),
    "config: a dose above 100 %": (DRY, ["doses", "150"], config(doses=[1, 10, 150])),
    "config: unknown list-mode form": (DRY, ["listmode.form", "hdf5"], config(listmode={"form": "hdf5"})),
    "config: negative duration": (DRY, ["listmode.duration_s", "-900"], config(listmode={"duration_s": -900})),
    "config: zero OSEM subsets": (DRY, ["recon.subsets", "0"], config(recon={"subsets": 0})),
    "config: unknown device": (DRY, ["device", "tpu"], config(device="tpu")),
    "config: a negative diagnosis share": (
        DRY,
        ["cohort.diagnosis_mix.CN", "-0.2"],
        config(cohort={"diagnosis_mix": {"CN": -0.2}}),
    ),
    "config: patient sheet missing": (DRY, ["nowhere.tsv", "does not exist"], config(patients="nowhere.tsv")),
    "config: a tab in the YAML": (
        DRY,
        ["config/config.yaml", "line 2, column 1", "tabs"],
        {"config/config.yaml": "seed: 7\n\tscanner: demo\n"},
    ),
    "config: a tab in another config file": (
        ["petiq", "check-config", "config/demo.yaml"],
        ["config/demo.yaml", "line 2, column 1", "tabs"],
        {"config/demo.yaml": "seed: 7\n\tscanner: demo\n"},
    ),
    "config: a config file that is a list": (
        ["petiq", "check-config", "config/demo.yaml"],
        ["config/demo.yaml", "not a mapping"],
        {"config/demo.yaml": "- seed\n- scanner\n"},
    ),
    # --- the patient sheet, through the workflow and through `petiq check-patients`
    "sheet: a patient twice": (
        DRY,
        ["sub-01 repeats row 2"],
        sheet("sub-01\tsynthetic", "sub-01\tsynthetic", header="participant_id\tsource"),
    ),
    "sheet: unknown column": (
        DRY,
        ["unknown column", "shoe_size"],
        sheet("sub-01\tsynthetic\t9", header="participant_id\tsource\tshoe_size"),
    ),
    "sheet: negative weight": (
        DRY,
        ["weight_kg is -70"],
        sheet("sub-01\tsynthetic\t-70", header="participant_id\tsource\tweight_kg"),
    ),
    "sheet: weight as text": (
        DRY,
        ["'heavy', not a number"],
        sheet("sub-01\tsynthetic\theavy", header="participant_id\tsource\tweight_kg"),
    ),
    "sheet: id not BIDS-style": (
        DRY,
        ["'01' is not BIDS-style"],
        sheet("01\tsynthetic", header="participant_id\tsource"),
    ),
    "sheet: unknown source": (
        DRY,
        ["source is 'simulated'"],
        sheet("sub-01\tsimulated", header="participant_id\tsource"),
    ),
    "sheet: unknown diagnosis": (
        DRY,
        ["diagnosis is 'flu'"],
        sheet("sub-01\tsynthetic\tflu", header="participant_id\tsource\tdiagnosis"),
    ),
    "sheet: real row without weight": (
        CHECK,
        ["sub-R1", "needs weight_kg"],
        sheet("sub-R1\treal\treal/d.l\treal/mu.nii.gz\treal/norm.n\t\t200"),
    ),
    "sheet: real row's list-mode missing": (
        CHECK,
        ["sub-R1", "real/b.l"],
        sheet("sub-R1\treal\treal/b.l\treal/mu.nii.gz\treal/norm.n\t70\t200"),
    ),
    "sheet: real row's list-mode truncated": (
        CHECK,
        ["sub-R1", "truncated"],
        {**sheet(REAL[1]), "truncate": truncated_row},
    ),
    "sheet: real row's list-mode truncated, in the workflow": (
        DRY,
        ["sub-R1", "truncated"],
        {**sheet(REAL[1]), "truncate": truncated_row},
    ),
    "sheet: real row's list-mode of another scanner": (
        CHECK,
        ["sub-R1", "real/a.l", "64 span-1 sinograms"],
        sheet("sub-R1\treal\treal/a.l\treal/mu.nii.gz\treal/norm.n\t70\t200"),
    ),
    "sheet: real row's norm of another scanner": (
        CHECK,
        ["sub-R1", "real/tiny/norm.n.hdr", "originating system 'tiny'", "demo"],
        sheet("sub-R1\treal\treal/d.l\treal/mu.nii.gz\treal/tiny/norm.n\t70\t200"),
    ),
    "sheet: real row's norm not a component norm": (
        CHECK,
        ["sub-R1", "real/mu.nii.gz", "not a component norm"],
        sheet("sub-R1\treal\treal/d.l\treal/mu.nii.gz\treal/mu.nii.gz\t70\t200"),
    ),
    "sheet: real row's norm without its header": (
        CHECK,
        ["sub-R1", "norm.n.hdr", "missing"],
        {**sheet(REAL[1]), "delete": "real/norm.n.hdr"},
    ),
    "sheet: real row's μ-map not covering the field of view, in the workflow": (
        DRY,
        ["sub-R1", "real/cut.nii.gz", "does not cover", "mm missing"],
        sheet("sub-R1\treal\treal/d.l\treal/cut.nii.gz\treal/norm.n\t70\t200"),
    ),
    "sheet: real row's hardware μ-map without a bed position": (
        CHECK,
        ["sub-R1", "real/d.l", "no 'start horizontal bed position (mm)'"],
        {
            **sheet(
                "sub-R1\treal\treal/d.l\treal/mu.nii.gz\treal/norm.n\t70\t200\treal/mu.nii.gz",
                header=REAL[0] + "\thardware_mumaps",
            ),
            "edit": header_without("real/d.l.hdr", "start horizontal bed position (mm)"),
        },
    ),
    "sheet: a synthetic row with hardware μ-maps": (
        CHECK,
        ["sub-01", "hardware_mumaps"],
        sheet("sub-01\tsynthetic\treal/mu.nii.gz", header="participant_id\tsource\thardware_mumaps"),
    ),
    "sheet: 0-byte file": (
        ["petiq", "check-patients", "config/patients.tsv"],
        ["is empty"],
        {"config/patients.tsv": b""},
    ),
    "sheet: Latin-1 text": (
        ["petiq", "check-patients", "config/patients.tsv"],
        ["not UTF-8"],
        {"config/patients.tsv": "participant_id\tsource\nsub-01\tsynth\xe9tic\n".encode("latin-1")},
    ),
    "sheet: UTF-16 without a byte-order mark": (DRY, ["UTF-16"], {"config/patients.tsv": SHEET.encode("utf-16-le")}),
    "sheet: a ragged row": (
        DRY,
        ["line 2", "cells"],
        {"config/patients.tsv": b"participant_id\tsource\nsub-01\tsynthetic\textra\tmore\n"},
    ),
    "sheet: no source column": (DRY, ["'source' is missing"], sheet("sub-01", header="participant_id")),
    "sheet: missing file": (["petiq", "check-patients", "nowhere.tsv"], ["nowhere.tsv", "does not exist"], {}),
    # --- a user's split file
    "splits: a patient twice": (
        DRY,
        ["splits.file", "more than once"],
        {
            **config(splits={"file": "config/splits.tsv"}),
            "config/splits.tsv": "participant_id\trole\nsub-01\ttest\nsub-01\ttest\n",
        },
    ),
    "splits: unknown patient": (
        DRY,
        ["splits.file", "not in the patient sheet"],
        {**config(splits={"file": "config/splits.tsv"}), "config/splits.tsv": "participant_id\trole\nsub-42\ttest\n"},
    ),
    "splits: unknown role": (
        DRY,
        ["splits.file", "unknown role"],
        {
            **config(splits={"file": "config/splits.tsv"}),
            "config/splits.tsv": "participant_id\trole\n" + "".join(f"sub-0{i}\tjudge\n" for i in range(1, 7)),
        },
    ),
    "splits: missing file": (DRY, ["splits.file", "does not exist"], config(splits={"file": "config/no-splits.tsv"})),
    # --- list-mode files
    "histogram: missing file": (
        ["petiq", "histogram", "real/none.l", "out.npz", "--scanner", "tiny"],
        ["real/none.l", "not found"],
        {},
    ),
    "histogram: truncated file": (
        ["petiq", "histogram", "real/a.l", "out.npz", "--scanner", "tiny"],
        ["real/a.l", "truncated"],
        {"truncate": truncated},
    ),
    "histogram: another scanner's file": (
        ["petiq", "histogram", "real/a.l", "out.npz", "--scanner", "mmr"],
        ["real/a.l", "tiny"],
        {},
    ),
    "histogram: span the scanner cannot use": (
        ["petiq", "histogram", "real/a.l", "out.npz", "--scanner", "tiny", "--span", "4"],
        ["span", "4"],
        {},
    ),
    "histogram: on 0 threads": (
        ["petiq", "histogram", "real/a.l", "out.npz", "--scanner", "tiny", "--threads", "0"],
        ["--threads is 0"],
        {},
    ),
    "histogram: a branching factor that is no number": (
        ["petiq", "histogram", "real/a.l", "out.npz", "--scanner", "tiny"],
        ["a.l.hdr", "isotope branching factor", "'0,97'", "not a number"],
        {"edit": header_with("isotope branching factor", "0,97")},
    ),
    "histogram: header missing": (
        ["petiq", "histogram", "real/a.l", "out.npz", "--scanner", "tiny"],
        ["a.l.hdr"],
        {"delete": "real/a.l.hdr"},
    ),
    "thin: fraction 0": (
        ["petiq", "thin", "real/a.l", "out/b.l", "--fraction", "0", "--seed", "1"],
        ["thinning fraction 0.0", "0 < p <= 1"],
        {},
    ),
    "thin: fraction above 1": (
        ["petiq", "thin", "real/a.l", "out/b.l", "--fraction", "1.5", "--seed", "1"],
        ["thinning fraction 1.5", "0 < p <= 1"],
        {},
    ),
    "thin: onto its own source": (
        ["petiq", "thin", "real/a.l", "real/a.l", "--fraction", "0.5", "--seed", "1"],
        ["real/a.l"],
        {},
    ),
    # --- sub-commands' arguments
    "simulate: without --truth": (
        [*SIM, "--mumap", "mumap.nii.gz", "--participants", "participants.tsv", "--subject", "sub-01"],
        ["--truth", "--norm"],
        {},
    ),
    "simulate: without --subject": ([*SIM, *SIM_FILES], ["--subject"], {}),
    "simulate: unknown subject": (
        [*SIM, *SIM_FILES, "--subject", "sub-99"],
        ["sub-99", "participants.tsv", "sub-01, sub-02"],
        {},
    ),
    "simulate: missing truth": (
        [*SIM, "--truth", "nowhere.nii.gz", *SIM_FILES[2:], "--subject", "sub-01"],
        ["nowhere.nii.gz", "does not exist"],
        {},
    ),
    "simulate: negative duration": (
        [*SIM, *SIM_FILES, "--subject", "sub-01", "--duration", "-5"],
        ["--duration", "-5", "> 0"],
        {},
    ),
    "simulate: zero duration": ([*SIM, *SIM_FILES, "--subject", "sub-01", "--duration", "0"], ["--duration"], {}),
    "resources: missing wheel": (
        ["petiq", "resources", "fetch", "--dest", "out/anatomy", "--wheel", "missing.whl"],
        ["missing.whl", "does not exist"],
        {},
    ),
    "resources: a file that is no wheel": (
        ["petiq", "resources", "fetch", "--dest", "out/anatomy", "--wheel", "notawheel.whl"],
        ["not a wheel"],
        {},
    ),
    # --- reading sessions and ratings forms
    "sessions: a new key over an existing one": (
        [*PLAN, "--out", KEY],
        ["unblinding key exists already", "--force"],
        {},
    ),
    "sessions: a key onto its splits file": (
        [
            "petiq",
            "sessions",
            "plan",
            "--splits",
            "splits.tsv",
            "--doses",
            "100",
            "--n-sessions",
            "1",
            "--max-images",
            "5",
            "--seed",
            "7",
            "--out",
            "splits.tsv",
            "--force",
        ],
        ["overwrite the input", "splits.tsv"],
        {},
    ),
    "sessions: blank forms over filled ones": (
        ["petiq", "sessions", "sheets", "--key", KEY, "--out-dir", "sessions"],
        ["exist already", "--force"],
        {},
    ),
    "sessions: more images than sessions hold": (
        [
            "petiq",
            "sessions",
            "plan",
            "--patients",
            "sub-01",
            "sub-02",
            "--doses",
            "1",
            "10",
            "100",
            "--n-sessions",
            "1",
            "--max-images",
            "2",
            "--seed",
            "7",
            "--out",
            "new/key.tsv",
        ],
        ["--max-images"],
        {},
    ),
    "ratings: onto the unblinding key": ([*IMPORT, KEY], ["overwrite the input", "unblinding_key.tsv"], {}),
    "ratings: onto a clinician's form": ([*IMPORT, FORM], ["overwrite the input", "ratings-form"], {}),
    "ratings: over an existing table": ([*IMPORT, "ratings.tsv"], ["exists already", "--force"], {}),
    "ratings: through a link to an existing table": ([*IMPORT, "link-to-ratings.tsv"], ["exists already"], {}),
    "ratings: a score off the 0.5 grid": ([*IMPORT, "new.tsv"], ["GQR", "2.3"], {"edit": form_with("2.3")}),
    "ratings: a score above 3": ([*IMPORT, "new.tsv"], ["GQR", "3.5"], {"edit": form_with("3.5")}),
    "ratings: a score as a word": ([*IMPORT, "new.tsv"], ["GQR", "good"], {"edit": form_with("good")}),
    "ratings: a form without the DC column": (
        [*IMPORT, "new.tsv"],
        ["DC"],
        form("img-000\tdr-a\t2\t2", header="blinded_id\trater\tGQR\tPR"),
    ),
    "ratings: an image the key does not know": (
        [*IMPORT, "new.tsv"],
        ["IMG-999", "not in the unblinding key"],
        form("img-999\tdr-a\t2\t2\t2\t"),
    ),
    "ratings: the key missing": (
        ["petiq", "ratings", "import", "--forms", "sessions", "--key", "no/key.tsv", "--out", "new.tsv"],
        ["no/key.tsv"],
        {},
    ),
    # --- petiq predict
    "predict: table onto its image": (
        ["petiq", "predict", "--model", "model", "recon.nii.gz", "--tsv", "recon.nii.gz"],
        ["overwrite the input"],
        {},
    ),
    "predict: table onto its image, spelt ./": (
        ["petiq", "predict", "--model", "model", "recon.nii.gz", "--tsv", "./recon.nii.gz"],
        ["overwrite the input"],
        {},
    ),
    "predict: table over an existing file": (
        ["petiq", "predict", "--model", "model", "recon.nii.gz", "--tsv", "ratings.tsv"],
        ["exists already", "--force"],
        {},
    ),
    "predict: a folder that is no model": (
        ["petiq", "predict", "--model", "model", "recon.nii.gz", "--tsv", "new.tsv"],
        ["model"],
        {},
    ),
    "predict: an image that does not exist": (
        ["petiq", "predict", "--model", "model", "none.nii.gz", "--tsv", "new.tsv"],
        ["none.nii.gz"],
        {},
    ),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's project folder: the test preset, a real row's files, a filled reading session,
    an image and the small files the sub-commands are given."""
    from petiq.cli import main
    from petiq.listmode import write_listmode
    from petiq.scanner.geometry import Scanner
    from petiq.scoring.sessions import blank_form, read_plan

    site = tmp_path_factory.mktemp("project")
    (site / "config").mkdir()
    (site / "config/config.yaml").write_text(yaml.safe_dump(PROJECT_CONFIG))
    (site / "config/patients.tsv").write_text(SHEET)
    (site / "real").mkdir()
    write_listmode(
        site / "real/a.l",
        np.array([0, 5, 9]),
        np.array([True, True, False]),
        np.array([0, 1, 2]),
        scanner=Scanner.tiny(),
    )
    write_site_files(site / "real", "demo", listmode="d.l")
    write_site_files(site / "real/tiny", "tiny")
    import nibabel as nib

    cut = nib.load(site / "real/mu.nii.gz")  # the head cut at the top of its μ-map, inside the field of view
    nib.save(
        nib.Nifti1Image(np.asarray(cut.dataobj)[:, :, 3:], cut.affine @ np.diag([1, 1, 1, 1.0]) @ _shift(3)),
        site / "real/cut.nii.gz",
    )
    cwd = Path.cwd()
    os.chdir(site)
    try:
        assert (
            main(
                [
                    "sessions",
                    "plan",
                    "--patients",
                    "sub-01",
                    "sub-02",
                    "--doses",
                    "1",
                    "10",
                    "100",
                    "--n-sessions",
                    "3",
                    "--max-images",
                    "10",
                    "--seed",
                    "7",
                    "--out",
                    KEY,
                ]
            )
            == 0
        )
    finally:
        os.chdir(cwd)
    plan = read_plan(site / KEY)
    for session in sorted(plan["session"].unique()):  # every session read and its form filled
        filled = blank_form(plan, session)
        filled["rater"], filled["GQR"], filled["PR"], filled["DC"] = "dr-a", "2", "2.5", "2"
        path = site / FORM.replace("session-1", f"session-{session}")
        path.parent.mkdir(parents=True)
        filled.to_csv(path, sep="\t", index=False)
    assert (
        main(
            [
                "ratings",
                "import",
                "--forms",
                str(site / "sessions"),
                "--key",
                str(site / KEY),
                "--out",
                str(site / "imported.tsv"),
            ]
        )
        == 0
    )
    (site / "imported.tsv").unlink()  # the forms as filled import cleanly: each case's edit is the only problem
    import nibabel as nib

    image = np.zeros((16, 16, 16), np.float32)
    image[4:12, 4:12, 4:12] = 1.0
    nib.save(nib.Nifti1Image(image, np.eye(4)), site / "recon.nii.gz")
    (site / "model").mkdir()
    (site / "truth.nii.gz").write_bytes(b"not read before the checks")
    (site / "mumap.nii.gz").write_bytes(b"not read before the checks")
    (site / "participants.tsv").write_text(
        "participant_id\tweight_kg\tinjected_mbq\nsub-01\t70\t200\nsub-02\t80\t190\n"
    )
    (site / "notawheel.whl").write_text("plain text")
    (site / "ratings.tsv").write_text("participant_id\tdose\trater\n")
    (site / "splits.tsv").write_text("participant_id\trole\nsub-01\ttest\n")
    os.symlink("ratings.tsv", site / "link-to-ratings.tsv")
    return site


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): (b"->" + os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if (p.is_file() or p.is_symlink()) and ".snakemake" not in p.parts
    }


def _folders(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir() and ".snakemake" not in p.parts}


def _shift(k: int):
    """The affine step that drops the first ``k`` slices of an image (its voxel (0, 0, k) becomes (0, 0, 0))."""
    out = np.eye(4)
    out[2, 3] = k
    return out


def test_the_table_covers_every_group():
    groups = {name.split(":")[0] for name in CASES}
    assert (
        len(CASES) >= 60
        and {"config", "sheet", "splits", "histogram", "thin", "ratings", "predict", "sessions", "simulate"} <= groups
    )


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_clearly_and_changes_nothing(case, project, tmp_path):
    command, words, edits = CASES[case]
    site = tmp_path / "project"
    shutil.copytree(project, site, symlinks=True)
    for path, content in edits.items():
        if callable(content):
            content(site)
        elif path == "delete":
            (site / content).unlink()
        else:
            (site / path).write_bytes(content if isinstance(content, bytes) else content.encode())
    files, folders = _files(site), _folders(site)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    if command[0] == "snakemake":
        argv = [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(site),
        ]
    else:
        argv = [sys.executable, "-m", "petiq.cli", *command[1:]]
    done = subprocess.run(argv, cwd=site, capture_output=True, text=True, timeout=300, env=env, check=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-2000:]
    for word in words:
        assert word in out, (word, out[-2000:])
    assert "Fix" in out and "Traceback" not in out, out[-3000:]
    assert _files(site) == files and _folders(site) == folders  # nothing created, nothing changed


def test_force_lets_a_table_be_replaced(project, tmp_path):
    """--force is the way to replace a table: the overwrite guard lets the command reach its own checks."""
    site = tmp_path / "project"
    shutil.copytree(project, site, symlinks=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "petiq.cli",
            "predict",
            "--model",
            "model",
            "recon.nii.gz",
            "--tsv",
            "ratings.tsv",
            "--force",
        ],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert done.returncode == 2 and "model" in done.stderr
    assert (
        "exists already" not in done.stderr and "overwrite" not in done.stderr
    )  # past the guard, stopped at the model check


# --- μ-maps and raw-data DICOMs given to `petiq recon` / `petiq histogram` (one block, run as the table above)
RECON = [
    "petiq",
    "recon",
    "real/a.l",
    "--norm",
    "real/norm_scan.npz",
    "--scanner",
    "tiny",
    "--span",
    "11",
    "--device",
    "cpu",
    "--quiet",
    "--out",
    "out/img.nii.gz",
]


def _mu_site(site: Path) -> None:
    """A norm scan that passes the pre-pass (its keys and scanner), a μ-map on the tiny grid cut axially to
    slices 4..10 of 15 (the object reaches its edge inside the field of view), a whole one, a hardware
    μ-map (e7 Interfile) and a DICOM μ-map slice."""
    import nibabel as nib

    from petiq.scanner.frame import scanner_grid_affine

    np.savez(
        site / "real/norm_scan.npz",
        scanner=np.asarray("tiny"),
        span=np.asarray(11),
        **{
            k: np.asarray(0.0)
            for k in (
                "fansums",
                "sinogram",
                "phantom_radius_mm",
                "phantom_mu_cm",
                "phantom_activity_bq_per_ml",
                "duration_s",
                "calibration_factor",
            )
        },
    )
    shape, vox = (32, 32, 15), (4.0, 4.0, 4.0)
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vox)]
    r = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    ball = np.where(r <= 40.0, 0.096, 0.0).astype(np.float32)
    affine = scanner_grid_affine(shape, vox)
    nib.save(nib.Nifti1Image(ball, affine), site / "real/mu_whole.nii.gz")
    cut = affine.copy()
    cut[:3, 3] += affine[:3, 2] * 4
    nib.save(nib.Nifti1Image(np.ascontiguousarray(ball[:, :, 4:11]), cut), site / "real/mu_cut.nii.gz")
    np.zeros((2, 2, 2), "<f4").tofile(site / "real/umap_coil.v")
    (site / "real/umap_coil.v.hdr").write_text(
        "!INTERFILE :=\n!name of data file := umap_coil.v\nnumber format := float\n!number of bytes per pixel := 4\n"
        + "".join(f"matrix size [{i}] := 2\nscale factor (mm/pixel) [{i}] := 4\n" for i in (1, 2, 3))
        + "!END OF INTERFILE :=\n"
    )
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription, ds.ImageType = "MR", "Head_MRAC_PET_UMAP", ["DERIVED", "PRIMARY", "MRAC"]
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.zeros((4, 4), "<u2").tobytes()
    ds.save_as(str(site / "real/umap.dcm"), enforce_file_format=True)


def _no_bed_position(site: Path) -> None:
    _mu_site(site)
    path = site / "real/a.l.hdr"
    path.write_text(
        "".join(
            line
            for line in path.read_text().splitlines(keepends=True)
            if "start horizontal bed position" not in line.lower()
        )
    )


MUMAP_CASES = {
    "recon: a μ-map that does not cover the field of view": (
        [*RECON, "--mumap", "real/mu_cut.nii.gz"],
        ["real/mu_cut.nii.gz", "does not cover", "mm missing on the -z", "whole field of view"],
        {"make": _mu_site},
    ),
    "recon: a hardware μ-map without a bed position": (
        [*RECON, "--mumap", "real/mu_whole.nii.gz", "--hardware-mumap", "real/umap_coil.v.hdr"],
        ["real/a.l", "bed position", "start horizontal bed position (mm)", "--bed-position-mm"],
        {"make": _no_bed_position},
    ),
    "histogram: a μ-map DICOM given as list-mode": (
        ["petiq", "histogram", "real/umap.dcm", "out.npz", "--scanner", "tiny"],
        ["real/umap.dcm", "no list-mode Interfile header", "MRPETLM_LARGE"],
        {"make": _mu_site},
    ),
    "recon: a μ-map DICOM given as list-mode": (
        [*RECON[:2], "real/umap.dcm", *RECON[3:], "--mumap", "real/mu_whole.nii.gz"],
        ["real/umap.dcm", "no list-mode Interfile header"],
        {"make": _mu_site},
    ),
}


@pytest.mark.parametrize("case", MUMAP_CASES)
def test_bad_mumap_input_is_refused_clearly_and_changes_nothing(case, project, tmp_path, monkeypatch):
    monkeypatch.setitem(CASES, case, MUMAP_CASES[case])  # the table's test, on this block's case
    test_bad_input_is_refused_clearly_and_changes_nothing(case, project, tmp_path)
