"""Bad configuration stops `snakemake -n` at parse time with the key, the value, the reason and the fix
(petiq.core.config): one line per problem, no schema dump, no traceback, no file written."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from petiq.core.config import schema_problems
from petiq.learning.models import BACKBONES

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
BASE = yaml.safe_load((ROOT / "tests/config/config.yaml").read_text())
SUBJECTS = list(pd.read_csv(ROOT / "tests/config/patients.tsv", sep="\t")["participant_id"])


def merged(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = (
            merged(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def full(override: dict) -> dict:
    """The test preset with ``override`` merged in and the schema's defaults filled, as Snakemake sees it."""
    config = merged(BASE, override)
    validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"))
    return config


def test_schema_backbones_are_the_ones_the_model_code_builds():
    assert SCHEMA["$defs"]["backbone"]["enum"] == list(BACKBONES)


SCHEMA_CASES = {
    "unknown backbone": (
        {"training": {"backbone": "vgg17"}},
        ["training.backbone", "'vgg17'", "did you mean", "vgg16"],
    ),
    "unknown survey backbone": (
        {"experiments": {"backbones": ["vgg16", "resnet9000"]}},
        ["experiments.backbones[1]", "resnet9000", "resnet50"],
    ),
    "freeze level 7": (
        {"experiments": {"pretext_transfer_freeze_level": 7}},
        ["pretext_transfer_freeze_level", "7", "from 0 to 5", "'pretext'"],
    ),
    "freeze level all": (
        {"experiments": {"pretext_transfer_freeze_level": "all"}},
        ["pretext_transfer_freeze_level", "'all'", "'pretext'"],
    ),
    "Fig. 8 freeze level 6": ({"experiments": {"freeze_levels": [0, 6]}}, ["experiments.freeze_levels[1]", "6"]),
    "misspelt top-level key": ({"scannr": "mmr"}, ["scannr is not a petiq setting", "did you mean scanner"]),
    "misspelt nested key": ({"training": {"epoch": 3}}, ["training.epoch is not a petiq setting", "epochs"]),
    "unknown scanner": ({"scanner": "petrace"}, ["config key scanner", "petrace", "mmr, demo, tiny"]),
    "negative epochs": ({"training": {"epochs": -1}}, ["training.epochs", "-1"]),
    "patch size as text": ({"patches": {"size": "eighty"}}, ["patches.size", "eighty"]),
}


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_schema_problem_is_one_line_naming_the_key(case):
    override, words = SCHEMA_CASES[case]
    lines = schema_problems(merged(BASE, override), SCHEMA)
    assert lines, case
    text = "\n".join(lines)
    for word in words:
        assert word in text, (word, text)
    assert all("Fix:" in line and "\n" not in line for line in lines)
    assert len(text) < 1500  # not the schema


CHECK_CASES = {
    "split counts do not add up": (
        {
            "splits": {
                "counts": {"pretext_train": 2, "pretext_val": 1, "transfer_train": 1, "transfer_val": 1, "test": 3}
            }
        },
        ["splits.counts", "8 patients", "has 6"],
    ),
    "Fig. 1 subject not in the sheet": (
        {"figures": {"fig01_subjects": ["sub-01", "sub-99"]}},
        ["figures.fig01_subjects", "sub-99"],
    ),
    "Fig. 1 with three subjects": (
        {"figures": {"fig01_subjects": ["sub-01", "sub-02", "sub-03"]}},
        ["figures.fig01_subjects", "two"],
    ),
    "patch larger than the images": ({"patches": {"size": 200}}, ["patches.size", "200", "80x80x63"]),
    "missing ImageNet checkpoint": (
        {"training": {"imagenet_weights": "nowhere/vgg16.pth"}},
        ["training.imagenet_weights", "nowhere/vgg16.pth", "does not exist"],
    ),
    "label rater that is no virtual rater": ({"scoring": {"label_rater": "7"}}, ["scoring.label_rater", "'7'", "1, 2"]),
    "sessions too few for three categories": (
        {"scoring": {"sessions": {"count": 2}}},
        ["scoring.sessions", "scoring.sessions.count >= 3"],
    ),
    "sessions too small": (
        {"scoring": {"sessions": {"count": 4, "max_size": 1}}},
        ["scoring.sessions", "scoring.sessions.max_size"],
    ),
    "user split file missing": ({"splits": {"file": "no/such/splits.tsv"}}, ["splits.file", "does not exist"]),
}


@pytest.mark.parametrize("case", CHECK_CASES)
def test_config_problem_names_key_value_and_fix(case):
    from petiq.core.config import config_problems

    override, words = CHECK_CASES[case]
    problems = config_problems(full(override), SUBJECTS, root=ROOT)
    text = "\n".join(map(str, problems))
    for word in words:
        assert word in text, (word, text)
    assert all("Fix:" in str(p) for p in problems) and problems


def test_presets_have_no_problems():
    from petiq.core.config import config_problems

    for preset, sheet in [
        ("tests/config/config.yaml", "tests/config/patients.tsv"),
        ("config/demo.yaml", "config/patients.tsv"),
        ("config/config.yaml", "config/patients.tsv"),
    ]:
        config = yaml.safe_load((ROOT / preset).read_text())
        validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"))
        subjects = list(pd.read_csv(ROOT / sheet, sep="\t", comment="#")["participant_id"])
        assert config_problems(config, subjects, root=ROOT) == [], preset


@pytest.mark.parametrize(
    "text, words",
    [
        ("participant_id\trole\nsub-01\ttest\nsub-01\ttest\n", ["listed more than once"]),
        ("participant_id\trole\nsub-42\ttest\n", ["not in the patient sheet"]),
        ("participant_id\trole\n" + "".join(f"sub-0{i}\tjudge\n" for i in range(1, 7)), ["unknown role"]),
    ],
)
def test_user_split_file_is_checked_at_parse(tmp_path, text, words):
    from petiq.core.config import config_problems

    (tmp_path / "splits.tsv").write_text(text)
    problems = config_problems(full({"splits": {"file": str(tmp_path / "splits.tsv")}}), SUBJECTS, root=ROOT)
    assert problems and all(w in str(problems[0]) for w in ["splits.file", *words]), problems
