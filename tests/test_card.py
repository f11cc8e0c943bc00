"""The model card: schema-valid cards from a real training run, real vs synthetic intended use from the data's
provenance, a `petiq predict` command that runs, and the schema's refusals."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_predict import brain_volume, save, train_small_run

from petiq.core.errors import PetiqInputError
from petiq.learning.card import (
    CARD_SCHEMA,
    IMAGE_PLACEHOLDER,
    METADATA_KEYS,
    card_metadata,
    card_problems,
    validate_card,
)

SYNTHETIC = {
    "images": {"synthetic": ["sub-01", "sub-02", "sub-03", "sub-04"]},
    "labels": "virtual_reader",
    "ratings_file": None,
    "label_rater": "1",
}
REAL = {
    "images": {"real": ["sub-01", "sub-02", "sub-03", "sub-04"]},
    "labels": "clinicians",
    "ratings_file": "config/ratings.tsv",
    "label_rater": "AH",
}


def read_card(run):
    return json.loads((run / "rep-0" / "card.json").read_text())


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    return train_small_run(tmp_path_factory.mktemp("card") / "synthetic", extra_card={"sources": SYNTHETIC})


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    return train_small_run(tmp_path_factory.mktemp("card") / "real", extra_card={"sources": REAL})


def test_a_trained_card_validates_and_keeps_its_provenance(synthetic_run):
    card = read_card(synthetic_run)
    assert card_problems(card) == []
    assert set(METADATA_KEYS) <= set(card) and card["schema"] == CARD_SCHEMA
    # the provenance is all still there, and `petiq predict`'s keys with it
    for key in ("kind", "backbone", "init", "weights_origin", "preprocessing", "data", "seed", "versions", "patch"):
        assert key in card
    image = card["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [32, 32] == [card["patch_size"]] * 2
    assert image["value_range"] == [0, 1] and image["is_patch_data"] is True and image["num_channels"] == 1
    pred = card["network_data_format"]["outputs"]["pred"]
    assert pred["type"] == "score" and pred["num_channels"] == 3 and pred["value_range"] == [0, 3]
    assert [pred["channel_def"][str(i)].split(":")[0] for i in range(3)] == ["GQR", "PR", "DC"]
    assert any("Hopson" in r and "10.1109/TRPMS.2022.3231702" in r for r in card["references"])
    assert any("Simonyan" in r for r in card["references"])  # a VGG16 backbone
    assert not any("Sandler" in r for r in card["references"])
    assert card["license"] == "MIT" and "random initialisation" in card["weights_license"]


def test_intended_use_follows_the_data(synthetic_run, real_run):
    synthetic, real = read_card(synthetic_run), read_card(real_run)
    assert synthetic["intended_use"].startswith("Research only")
    assert synthetic["data_source"]["synthetic"] is True
    assert "synthetic" in synthetic["intended_use"] and "virtual reader" in synthetic["intended_use"]
    assert real["data_source"]["synthetic"] is False
    assert "real clinicians" in real["intended_use"] and "Trained on real data" in real["intended_use"]
    assert "synthetic" not in real["intended_use"] and "virtual reader" not in real["intended_use"]
    assert "config/ratings.tsv" in real["data_source"]["summary"]
    # a mix, and a card whose caller recorded nothing, say so rather than guess
    mixed = dict(synthetic, sources={**SYNTHETIC, "images": {"synthetic": ["sub-01"], "real": ["sub-02"]}})
    assert card_metadata(mixed, "x")["data_source"]["synthetic"] == "partly"
    unknown = {k: v for k, v in synthetic.items() if k != "sources"}
    meta = card_metadata(unknown, "x")
    assert meta["data_source"]["synthetic"] is None and "not recorded" in meta["intended_use"]
    assert "synthetic patients" not in meta["intended_use"]


def test_the_inference_command_runs(synthetic_run, tmp_path):
    inference = read_card(synthetic_run)["inference"]
    argv = inference["argv"]
    assert shlex.split(inference["command"]) == argv and argv[:3] == ["petiq", "predict", "--model"]
    assert Path(argv[3]) == synthetic_run / "rep-0"
    image = save(tmp_path / "new.nii.gz", brain_volume(seed=31))
    command = [
        sys.executable,
        "-m",
        "petiq.cli",
        *[str(image) if a == IMAGE_PLACEHOLDER else a for a in argv[1:]],
        "--device",
        "cpu",
        "--quiet",
    ]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "GQR" in done.stdout and "new.nii.gz" in done.stdout


def test_cards_written_before_the_schema_still_predict(synthetic_run, tmp_path):
    from petiq.learning.predict import predict_images

    old = tmp_path / "old" / "rep-0"
    shutil.copytree(synthetic_run / "rep-0", old)
    card = read_card(synthetic_run)
    (old / "card.json").write_text(
        json.dumps({k: v for k, v in card.items() if k not in METADATA_KEYS and k != "sources"})
    )
    image = save(tmp_path / "img.nii.gz", brain_volume(seed=32))
    table = predict_images(old, [image], device="cpu", progress=False)
    assert table["GQR"].notna().all()


@pytest.mark.parametrize(
    "key", ["intended_use", "network_data_format", "inference", "weights_license", "schema", "seed"]
)
def test_a_card_missing_a_key_fails_naming_it(synthetic_run, key):
    card = read_card(synthetic_run)
    del card[key]
    with pytest.raises(PetiqInputError) as error:
        validate_card(card, "card.json")
    assert f"'{key}' is a required property" in str(error.value) and CARD_SCHEMA in str(error.value)


def test_the_schema_checks_inside_the_keys(synthetic_run):
    card = read_card(synthetic_run)
    broken = copy.deepcopy(card)
    del broken["network_data_format"]["inputs"]["image"]["spatial_shape"]
    broken["network_data_format"]["outputs"]["pred"]["value_range"] = [0]
    broken["sources"]["labels"] = "guessed"
    problems = card_problems(broken)
    assert any(p.startswith("network_data_format/inputs/image:") and "'spatial_shape'" in p for p in problems)
    assert any(p.startswith("network_data_format/outputs/pred/value_range:") for p in problems)
    assert any(p.startswith("sources/labels:") for p in problems)
    assert card_problems(card) == []


def test_weights_licence_names_the_source():
    from petiq.learning.weights import FETCH

    card = {
        "backbone": "vgg16",
        "init": {
            "kind": "imagenet",
            "weights": {"origin": "petiq_fetch", "backbone": "vgg16", "path": "resources/weights/x.pth"},
        },
    }
    assert FETCH["vgg16"].licence in card_metadata_license(card)
    hub = {
        "backbone": "mobilenet_v2",
        "init": {
            "kind": "imagenet",
            "weights": {
                "origin": "torch_hub",
                "backbone": "mobilenet_v2",
                "path": "/hub/checkpoints/mobilenet_v2-b0353104.pth",
            },
        },
    }
    assert card_metadata_license(hub).startswith(
        "see source:"
    ) and "mobilenet_v2-b0353104.pth" in card_metadata_license(hub)
    config = {"backbone": "vgg16", "init": {"kind": "imagenet", "weights": {"origin": "config", "path": "my/vgg.pth"}}}
    assert card_metadata_license(config).startswith("see source:") and "my/vgg.pth" in card_metadata_license(config)


def card_metadata_license(card):
    from petiq.learning.card import _weights_license

    return _weights_license(card)


def test_extra_card_cannot_replace_the_metadata():
    from petiq.learning.outputs import check_extra_card

    for key in METADATA_KEYS:
        with pytest.raises(ValueError, match=key):
            check_extra_card({key: "anything", "experiment": "fig08"})
    check_extra_card({"sources": SYNTHETIC, "patch": {}})  # the workflow's provenance keys are the caller's
