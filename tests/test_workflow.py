"""The workflow as its users run it: dry runs of every preset, lint, bad input, and a real run."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ANATOMY_DIR, ROOT
from helpers import bids_validator_errors, write_sheet
from scipy import ndimage

from petiq.core.bids import norm01_path, recon_image_path

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
PRESETS = {"paper": "config/config.yaml", "demo": "config/demo.yaml", "test": "tests/config/config.yaml"}


def snakemake(*args, cwd=ROOT, timeout=600):
    # as after `. .venv/bin/activate`: the environment's `petiq` and `python` come first on PATH
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": path}
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("preset", PRESETS)
def test_dry_run_lists_cohort_jobs(preset):
    done = snakemake("-n", "--cores", "2", "--configfile", PRESETS[preset], "--forceall")
    assert done.returncode == 0, done.stderr
    sheet = pd.read_csv(ROOT / ("tests/config/patients.tsv" if preset == "test" else "config/patients.tsv"), sep="\t")
    stats = done.stdout + done.stderr
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in stats.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert counts["phantom"] == (sheet["source"] == "synthetic").sum()
    for rule in (
        "participants",
        "splits",
        "cohort_figure",
        "cohort_table",
        "scanner_norm",
        "norm",
        "fig01_dose_examples",
    ):
        assert counts[rule] == 1
    n_doses = len(yaml.safe_load((ROOT / PRESETS[preset]).read_text())["doses"])
    assert counts["simulate"] == counts["phantom"] and counts["attenuation"] == len(sheet)
    for rule in ("histogram", "randoms", "scatter", "osem"):
        assert counts[rule] == len(sheet) * n_doses, rule
    assert counts["thin"] == len(sheet) * (n_doses - 1)
    # scores, patches, training and figures: one job per image, per run (all repeats) or per figure
    from petiq.learning.experiments import plan_experiments

    config = yaml.safe_load((ROOT / PRESETS[preset]).read_text())
    plan = plan_experiments(config)
    assert counts["extract_patches"] == len(sheet) * n_doses
    assert counts["reader_truth"] == counts["phantom"]
    for stage in ("pretext", "transfer", "survey", "baseline"):
        assert counts.get(f"train_{stage}", 0) == len(plan.runs_of(stage)), stage
    for rule in (
        "sessions_plan",
        "reading_sheets",
        "virtual_reader",
        "reader_calibration",
        "scoring_figures",
        "fig04_backbones",
        "fig08_freeze_levels",
        "fig09_patients",
        "fig10_pipelines",
        "table2_pretext",
        "table3_dose_baseline",
        "table4_pipelines",
        "diagrams",
        "paper_comparison",
    ):
        assert counts[rule] == 1, rule


def _job_counts(done) -> dict[str, int]:
    return {
        line.split()[0]: int(line.split()[1])
        for line in (done.stdout + done.stderr).splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }


def test_figure_target_trains_only_its_runs():
    """`snakemake results/figures/fig08_freeze_levels.png` trains Fig. 8's runs and nothing else."""
    from petiq.learning.experiments import plan_experiments

    config = yaml.safe_load((ROOT / PRESETS["test"]).read_text())
    done = snakemake(
        "-n", "--cores", "2", "--configfile", PRESETS["test"], "--forceall", "results/figures/fig08_freeze_levels.png"
    )
    assert done.returncode == 0, done.stderr
    counts = _job_counts(done)
    assert counts["train_transfer"] == len({a.run for a in plan_experiments(config).arms["fig08"]}) == 2
    assert counts["fig08_freeze_levels"] == 1 and counts["virtual_reader"] == 1
    for rule in ("train_pretext", "train_baseline", "fig09_patients", "paper_comparison", "reading_sheets", "diagrams"):
        assert rule not in counts, rule


STAGE_RULES = {  # stage target: rules it must plan, rules of later stages it must not
    "cohort": ({"participants", "splits", "cohort_figure"}, {"histogram", "osem"}),
    "listmode": ({"simulate", "thin", "histogram"}, {"osem", "extract_patches"}),
    "recon": ({"osem", "fig01_dose_examples"}, {"extract_patches", "virtual_reader"}),
    "scoring": ({"virtual_reader", "reader_calibration", "reading_sheets", "scoring_figures"}, {"extract_patches"}),
    "patches": ({"extract_patches"}, {"virtual_reader", "train_transfer"}),
    "training": ({"train_pretext", "train_transfer", "train_baseline"}, {"fig08_freeze_levels"}),
    "figures": ({"fig08_freeze_levels", "fig04_backbones", "table2_pretext", "paper_comparison"}, {"reading_sheets"}),
}


@pytest.mark.parametrize("stage", STAGE_RULES)
def test_every_stage_has_a_target_that_stops_at_that_stage(stage):
    """`snakemake <stage>` plans that stage's rules (and what they need), and no later stage's."""
    done = snakemake("-n", "--cores", "2", "--configfile", PRESETS["test"], "--forceall", stage)
    assert done.returncode == 0, done.stderr
    counts = _job_counts(done)
    planned, later = STAGE_RULES[stage]
    assert planned <= set(counts), planned - set(counts)
    assert not later & set(counts), later & set(counts)
    assert counts[stage] == 1


def test_paper_preset_asks_a_gpu_for_every_training_job():
    """The paper's grid (~150 runs of 1000 epochs): every network-training job declares gpu=1."""
    done = snakemake("-n", "--cores", "2", "--configfile", PRESETS["paper"], "--forceall", "--printshellcmds")
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    blocks = [
        b for b in text.split("\nrule ")[1:] if b.split(":")[0] in ("train_pretext", "train_transfer", "train_survey")
    ]
    counts = _job_counts(done)
    assert len(blocks) == counts["train_pretext"] + counts["train_transfer"] + counts["train_survey"] == 24
    assert all("gpu=1" in b.split("resources:")[1].splitlines()[0] for b in blocks)


def test_lint_is_clean():
    done = snakemake("--lint")
    assert done.returncode == 0, done.stdout + done.stderr


def test_bad_sheet_stops_before_any_job(tmp_path):
    sheet = write_sheet(
        tmp_path / "p.tsv", ["participant_id", "source"], [["sub-01", "synthetic"], ["sub-01", "synthetic"]]
    )
    done = snakemake(
        "-n",
        "--cores",
        "1",
        "--config",
        f"patients={sheet}",
        "--directory",
        str(tmp_path),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--configfile",
        str(ROOT / "tests/config/config.yaml"),
    )
    assert done.returncode != 0
    message = done.stdout + done.stderr
    assert "row 3: participant_id sub-01 repeats row 2" in message and "Fix: give every patient its own id" in message
    assert not (tmp_path / "results").exists()


def test_bad_config_value_is_refused(tmp_path):
    done = snakemake("-n", "--cores", "1", "--config", "scanner=petrace", "--configfile", "tests/config/config.yaml")
    assert done.returncode != 0 and "petrace" in done.stdout + done.stderr


REAL_ID = "sub-R1"
REAL_ACTIVITY = 20.0  # kBq/mL in the real patient's ball


def _demo_site_export(folder: Path) -> dict[str, str]:
    """A site's export on the test preset's demo scanner, in the mMR's formats: a simulated
    20 kBq/mL water ball (radius 60 mm) as PETLINK list-mode, the scanner's ``.n`` and the μ-map as
    e7 Interfile (tests/helpers.py writes the layout from its definition)."""
    import nibabel as nib
    from helpers import e7_layout, write_e7_interfile

    from petiq.listmode.simulate import scanner_component_norm, simulate_patient
    from petiq.recon.norm_writer import write_component_norm
    from petiq.scanner.frame import scanner_grid_affine
    from petiq.scanner.geometry import Scanner

    sc = Scanner.demo()
    folder.mkdir()
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(sc.image_shape, sc.voxel_size_mm)]
    r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + (axes[2][None, None, :] * 60 / 50) ** 2
    ball = r2 < 60.0**2
    affine = scanner_grid_affine(sc.image_shape, sc.voxel_size_mm)
    for name, data in (("truth", REAL_ACTIVITY * ball), ("mu", 0.096 * ball)):
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), folder / f"{name}.nii.gz")
    simulate_patient(
        truth_path=folder / "truth.nii.gz",
        mumap_path=folder / "mu.nii.gz",
        participant={"participant_id": REAL_ID, "injected_mbq": 200.0, "weight_kg": 70.0, "uptake_min": 40.0},
        scanner=sc,
        scanner_seed=11,
        seed=12,
        out_path=folder / "acq.l",
        duration_s=900.0,
        progress=False,
    )
    write_component_norm(folder / "norm.n", scanner_component_norm(sc, 11, 11), sc)
    write_e7_interfile(folder / "umap.v", e7_layout((0.096 * ball).astype(np.float32)), sc.voxel_size_mm[0])
    (folder / "truth.nii.gz").rename(folder.parent / "real-truth.nii.gz")  # not part of an export
    return {"listmode": str(folder / "acq.l"), "mumap": str(folder / "umap.v.hdr"), "norm": str(folder / "norm.n")}


@pytest.mark.slow
def test_cohort_figure_target_runs_only_what_it_needs(tmp_path):
    """`snakemake results/figures/cohort.png` on the test preset: phantoms and the figure, no table;
    then the whole preset: list-mode, reconstruction and Fig. 1. One patient is real: a site's export
    in the mMR's formats (list-mode, .n, e7 μ-map), which goes through every figure."""
    (tmp_path / "config").mkdir()
    export = _demo_site_export(tmp_path / "export")
    rows = (ROOT / "tests/config/patients.tsv").read_text().splitlines()[1:-1]  # the last synthetic row makes way
    (tmp_path / "config/patients.tsv").write_text(
        "participant_id\tsource\tlistmode\tmumap\tnorm\tweight_kg\tinjected_mbq\n"
        + "".join(f"{r}\t\t\t\t\t\n" for r in rows)
        + f"{REAL_ID}\treal\t{export['listmode']}\t{export['mumap']}\t{export['norm']}\t70\t200\n"
    )
    config = yaml.safe_load((ROOT / "tests/config/config.yaml").read_text())
    config["patients"] = "config/patients.tsv"
    config["cohort"].update(anatomy_dir=str(ANATOMY_DIR), shape=[40, 40, 36], voxel_size_mm=[7.0, 7.0, 7.0])
    config["training"]["weights_dir"] = str(ROOT / "resources/weights")
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    args = ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "2"]
    done = snakemake(*args, "results/figures/cohort.png")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results/figures/cohort.png").stat().st_size > 10_000
    assert not (tmp_path / "results/tables/cohort.tsv").exists()
    participants = pd.read_csv(tmp_path / "results/cohort/participants.tsv", sep="\t")
    assert participants.set_index("participant_id").loc[REAL_ID, "source"] == "real"
    assert not (tmp_path / f"results/cohort/{REAL_ID}").exists()
    for pid in participants.loc[participants["source"] == "synthetic", "participant_id"]:
        for suffix in ("pet-truth.nii.gz", "mumap.nii.gz", "T1w.nii.gz", "brainmask.nii.gz"):
            assert (tmp_path / f"results/cohort/{pid}/{pid}_{suffix}").is_file()
        assert (tmp_path / f"results/logs/cohort/phantom_{pid}.log").read_text().strip()
    # the rest of the stage, then nothing left to do
    done = snakemake(*args, timeout=2400)  # the whole test preset: list-mode to every figure
    assert done.returncode == 0, done.stderr[-3000:]
    splits = pd.read_csv(tmp_path / "results/cohort/splits.tsv", sep="\t")
    assert splits["role"].value_counts().to_dict() == {
        "pretext_train": 2,
        "pretext_val": 1,
        "transfer_train": 1,
        "transfer_val": 1,
        "test": 1,
    }
    # the real patient: no rated role (the virtual reader reads synthetic patients only), its own norm
    assert splits.set_index("participant_id").loc[REAL_ID, "role"] in ("pretext_train", "pretext_val")
    assert (tmp_path / f"results/sinograms/{REAL_ID}/{REAL_ID}_norm.npz").is_file()
    assert "umap.v.hdr (interfile)" in (tmp_path / f"results/logs/recon/attenuation_{REAL_ID}.log").read_text()
    # list-mode stage: every dose histogrammed; thinned counts follow the binomial law
    from petiq.listmode.sinograms import read_sinograms

    for pid in participants["participant_id"]:
        full = read_sinograms(tmp_path / f"results/sinograms/{pid}/{pid}_dose-100.0_sinograms.npz")
        assert full["n_prompts"] > 1000 and full["n_delayeds"] > 100
        for dose in ("001.0", "010.0"):
            low = read_sinograms(tmp_path / f"results/sinograms/{pid}/{pid}_dose-{dose}_sinograms.npz")
            p = float(dose) / 100
            for key in ("n_prompts", "n_delayeds"):
                sigma = (full[key] * p * (1 - p)) ** 0.5
                assert abs(low[key] - p * full[key]) < 4 * sigma + 1, (pid, dose, key)
            header = (tmp_path / f"results/listmode/{pid}/{pid}_dose-{dose}.l.hdr").read_text()  # the real one's too
            assert "petiq thinning seed" in header and "petiq source file sha256" in header
    # reconstruction stage: every patient and dose, quantitative, with its sidecar; Fig. 1 drawn
    import json

    import nibabel as nib

    for pid in participants["participant_id"]:
        means = {}
        for dose in ("001.0", "010.0", "100.0"):
            image = recon_image_path(tmp_path / "results/bids", pid, float(dose))
            means[dose] = float(np.asarray(nib.load(image).dataobj).mean())
            sidecar = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
            assert sidecar["ReconMethodParameterValues"] == [2, 21] and sidecar["DoseFractionPercent"] == float(dose)
            norm01 = np.asarray(nib.load(norm01_path(tmp_path / "results/bids", pid, float(dose))).dataobj)
            assert norm01.min() >= 0 and norm01.max() == pytest.approx(1.0)
        assert means["010.0"] == pytest.approx(0.1 * means["100.0"], rel=0.15)
    real = np.asarray(nib.load(recon_image_path(tmp_path / "results/bids", REAL_ID, 100)).dataobj)
    # the reconstructions and their 0-1 derivatives are a BIDS dataset the official validator accepts
    assert bids_validator_errors(tmp_path / "results/bids") == []
    truth = np.asarray(nib.load(tmp_path / "real-truth.nii.gz").dataobj)
    inner = ndimage.binary_erosion(truth > 0, iterations=4)  # the ball well inside its edge
    assert float(real[inner].mean()) == pytest.approx(REAL_ACTIVITY, rel=0.05)
    assert (tmp_path / "results/figures/fig01_dose_examples.png").stat().st_size > 10_000
    _check_scores_training_and_figures(tmp_path, participants, splits)
    done = snakemake(*args, "-n")
    assert "Nothing to be done" in done.stdout + done.stderr
    done = snakemake(*args, "--report", "report.html")  # one HTML report, every figure and table captioned
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 100_000
    _check_every_key_reruns_the_steps_that_read_it(tmp_path, args, config)


def _planned_jobs(done) -> dict[str, int]:
    """{rule: job count} from a dry run's "Job stats" table."""
    text = (done.stdout + done.stderr).split("Job stats:", 1)[-1].split("total", 1)[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)\s*$", text, flags=re.M)}


def _rule_graph(args) -> dict[str, set[str]]:
    """{rule: the rules that take its outputs}, from `snakemake --rulegraph`."""
    done = snakemake(*args, "--rulegraph", "--forceall")
    assert done.returncode == 0, done.stderr[-3000:]
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', done.stdout, flags=re.M))
    children: dict[str, set[str]] = {name: set() for name in names.values()}
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)", done.stdout, flags=re.M):
        children[names[a]].add(names[b])
    return children


def _check_every_key_reruns_the_steps_that_read_it(tmp_path, args, config):
    """Walk every key of the config schema on the finished run: with the key changed, the dry run
    plans first exactly the steps the schema's `x-reruns` names for it (the steps that read the
    key), and beyond them only steps downstream of them. A key a script read behind Snakemake's
    back would plan nothing; a rule taking a whole config section would plan too much."""
    from concurrent.futures import ThreadPoolExecutor

    from schema_walk import VALUES, changed_config, changed_keys, gone_steps, schema_keys

    keys = schema_keys(yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text()))
    assert set(keys) == set(VALUES), "every schema key needs a walk value in tests/schema_walk.py"
    assert all(isinstance(rules, list) for rules in keys.values()), [
        k for k, rules in keys.items() if not isinstance(rules, list)
    ]
    children = _rule_graph(args)
    parents = {rule: {p for p, cs in children.items() if rule in cs} for rule in children}

    def downstream(rules, without=frozenset()):
        seen, todo = set(rules), list(rules)
        while todo:
            for child in (
                children.get(todo.pop(), set()) - seen - without
            ):  # a rule the base run lacks (e.g. score_images) has none
                seen.add(child)
                todo.append(child)
        return seen

    def dry_run(key):
        path = tmp_path / f"config/walk-{key}.yaml"
        path.write_text(yaml.safe_dump(changed_config(config, key, tmp_path)))
        done = snakemake(*args, "-n", "--configfile", str(path))
        assert done.returncode == 0, (key, done.stderr[-3000:])
        return key, set(_planned_jobs(done)) - {"all"}

    with ThreadPoolExecutor(2) as pool:  # two dry runs at a time (each mostly parses the workflow)
        planned = dict(pool.map(dry_run, keys))
    wrong = {}
    for key, rules in planned.items():
        gone = gone_steps(key)  # steps the change takes out: no path through them
        declared = {rule for name in changed_keys(key) for rule in keys[name]} - gone
        expected = {
            r for r in declared if not any(r in downstream(children.get(d, set()) - gone, gone) for d in declared - {r})
        }
        first = {r for r in rules if not parents.get(r, set()) & rules}
        if first != expected or not rules <= downstream(declared):
            wrong[key] = {
                "x-reruns": sorted(expected),
                "planned first": sorted(first),
                "planned, not downstream": sorted(rules - downstream(declared)),
            }
    assert not wrong, wrong


def _check_scores_training_and_figures(tmp_path, participants, splits):
    """Scores, patches, models and every figure and table of the test preset's full run."""
    import json

    from petiq.learning.experiments import plan_experiments

    results = tmp_path / "results"
    key = pd.read_csv(results / "scores/sessions/private/unblinding_key.tsv", sep="\t")
    rated = set(splits.loc[splits["role"].isin(["transfer_train", "transfer_val", "test"]), "participant_id"])
    assert set(key["participant_id"]) == rated and (key["reading"] == "repeat").sum() == 2
    for session in sorted(key["session"].unique()):  # blinded material: no patient id, no dose
        form = (results / f"scores/sessions/session-{session}/session-{session}_ratings-form.tsv").read_text()
        assert (
            "sub-" not in form
            and (results / f"scores/sessions/session-{session}/session-{session}.pdf").stat().st_size > 5_000
        )
    ratings = pd.read_csv(results / "scores/ratings.tsv", sep="\t")
    assert len(ratings) == len(key) + (key["reading"] == "first").sum()  # rater 1 reads all, rater 2 the first readings
    scores = ratings[["GQR", "PR", "DC"]].to_numpy()
    assert ((scores * 2) % 1 == 0).all() and scores.min() >= 0 and scores.max() <= 3
    calibration = pd.read_csv(results / "tables/reader_calibration.tsv", sep="\t")
    assert {"target", "achieved", "within"} <= set(calibration.columns) and len(calibration) >= 11
    for pid in participants["participant_id"]:  # 4 patches per plane of every image, found again in the volume
        patches = np.load(results / f"patches/{pid}/{pid}_dose-010.0_patches.npy")
        table = pd.read_csv(results / f"patches/{pid}/{pid}_dose-010.0_patches.tsv", sep="\t")
        assert patches.shape == (12, 32, 32) and table["plane"].value_counts().to_dict() == {
            "transverse": 4,
            "sagittal": 4,
            "coronal": 4,
        }
    config = yaml.safe_load((tmp_path / "config/config.yaml").read_text())
    plan = plan_experiments(config)
    for name, run in plan.runs.items():
        for r in range(2 if run.stage != "pretext" else 1):
            card = json.loads((results / f"models/{run.stage}/{name}/rep-{r}/card.json").read_text())
            assert card["seed"] and card["best_epoch"] == 1
            # the real export row is a pretext patient (above): pretext models learnt from partly real data
            expected = "partly" if run.stage == "pretext" else True
            assert card["schema"] == "petiq-card/1" and card["data_source"]["synthetic"] == expected, run.stage
            assert (REAL_ID in card["data_source"]["images"].get("real", [])) == (run.stage == "pretext")
            images = pd.read_csv(results / f"models/{run.stage}/{name}/rep-{r}/predictions_images.tsv", sep="\t")
            assert set(images["set"]) == ({"val"} if run.stage == "pretext" else {"val", "test"})
    for name in (
        "fig02_intersession",
        "fig03_colour_scale",
        "fig04_backbones",
        "fig05_vgg16",
        "fig06_scores_vs_dose",
        "fig07_pipelines",
        "fig08_freeze_levels",
        "fig09_patients",
        "fig10_pipelines",
    ):
        assert (results / f"figures/{name}.png").stat().st_size > 10_000, name
    comparison = pd.read_csv(results / "tables/paper_comparison.tsv", sep="\t")
    assert len(comparison) == 111 and comparison["petiq"].notna().sum() >= 100
    for name in ("table1_metric_correlations", "table2_pretext", "table3_dose_baseline", "table4_pipelines"):
        assert len(pd.read_csv(results / f"tables/{name}.tsv", sep="\t")) > 0, name
    # a reconstruction no score model has seen (a pretext patient), scored by pipeline (b)'s model
    outsider = splits.loc[splits["role"] == "pretext_train", "participant_id"].iloc[0]
    image = recon_image_path(results / "bids", outsider, 100)
    model = results / f"models/transfer/{plan.arms['fig10'][2].run}"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "petiq"),
            "predict",
            "--model",
            str(model),
            str(image),
            "--tsv",
            str(tmp_path / "scored.tsv"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    scored = pd.read_csv(tmp_path / "scored.tsv", sep="\t")
    assert len(scored) == 1 and all(np.isfinite(scored[m]).all() for m in ("GQR", "PR", "DC", "sd_GQR"))


def test_dicom_form_config_writes_and_reads_the_dicom_export(tmp_path):
    config = yaml.safe_load((ROOT / PRESETS["test"]).read_text())
    config.setdefault("listmode", {})["form"] = "dicom"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(
        "-n",
        "--cores",
        "2",
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--forceall",
        "--printshellcmds",
        "results/sinograms/sub-01/sub-01_dose-100.0_sinograms.npz",
        "results/sinograms/sub-01/sub-01_dose-010.0_sinograms.npz",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert "--out results/listmode/sub-01/sub-01_acq-full.dcm" in out
    assert "results/listmode/sub-01/sub-01_acq-full.bf" in out  # the pair is an output and an input
    command = r"-m petiq\.cli --log \S+ "  # shell rules log through petiq's --log, then the sub-command
    assert re.search(
        command + "thin results/listmode/sub-01/sub-01_acq-full.dcm results/listmode/sub-01/sub-01_dose-010.0.dcm", out
    )
    assert re.search(command + "histogram results/listmode/sub-01/sub-01_dose-010.0.dcm", out)
    assert re.search(command + "histogram results/listmode/sub-01/sub-01_acq-full.dcm", out)
    assert ".l.hdr" not in out


def test_shell_rules_call_this_workflows_petiq_without_an_activated_venv():
    """Shell rules run `python -m petiq.cli` with this checkout's src/ first on PYTHONPATH (the same
    code as the script rules and as in conda mode), under the interpreter running Snakemake: no `petiq` on PATH
    is needed (a venv that is not activated used to fail with exit status 127)."""
    for rules in (ROOT / "workflow/rules").glob("*.smk"):
        # a bare `petiq <command>` anywhere in a shell string (not `{params.petiq} <command>`)
        assert not re.search(
            r"(?<![\w.])petiq\s+[a-z]", "\n".join(re.findall(r'^\s*"(.*)"\s*$', rules.read_text(), flags=re.M))
        ), rules
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}  # no venv on PATH
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-p",
            "--cores",
            "1",
            "--configfile",
            "tests/config/config.yaml",
            "--forceall",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    calls = [line for line in done.stdout.splitlines() if "-m petiq.cli" in line]
    commands = {re.search(r"-m petiq\.cli --log \S+ (\w+)", line)[1] for line in calls}  # every job logs through --log
    assert {"simulate", "thin", "histogram", "patches"} <= commands
    # this checkout's src/ reaches every job through PYTHONPATH, set in the Snakefile's environment
    assert all(f"{shlex.quote(sys.executable)} -m petiq.cli" in line for line in calls)
