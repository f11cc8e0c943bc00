"""`petiq predict`: input checks, the model's patch settings, and scoring images end to end with a small model."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from petiq.core.errors import PetiqInputError
from petiq.learning.predict import check_image, find_images, model_dir, patch_settings, predict_images

VOXEL = (4.0, 4.0, 4.0)
PATCH = {
    "size": 32,
    "voxel_size_mm": list(VOXEL),
    "candidates": 60,
    "per_plane": 4,
    "threshold_fraction": 0.125,
    "dtype": "float32",
}


def brain_volume(shape=(40, 44, 36), seed=0, noise=0.1) -> np.ndarray:
    """An ellipsoid 'head' with a hotter cortex-like shell, on a zero background."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid[0] / 0.8) ** 2 + (grid[1] / 0.85) ** 2 + (grid[2] / 0.75) ** 2)
    vol = np.where(r < 1, 1.0, 0.0) + np.where((r > 0.7) & (r < 1), 2.0, 0.0)
    vol = vol * (1 + noise * rng.standard_normal(shape))
    return np.clip(vol, 0, None).astype(np.float32) * 7.5  # kBq/mL-like, not 0-1


def save(path, data, voxel=VOXEL):
    img = nib.Nifti1Image(np.asarray(data), np.diag([*voxel, 1.0]))
    nib.save(img, str(path))
    return path


# --- input checks (before any model is loaded) -----------------------------------------------------------------------


def test_bad_images_are_refused_with_file_problem_and_fix(tmp_path):
    good = save(tmp_path / "good.nii.gz", brain_volume())
    cases = {
        "missing.nii.gz": (None, "does not exist"),
        "four_d.nii.gz": (np.zeros((8, 8, 8, 2), np.float32) + 1, "shape"),
        "two_d.nii.gz": (np.ones((8, 8), np.float32), "shape"),
        "nan.nii.gz": (np.where(brain_volume() > 20, np.nan, brain_volume()), "NaN or infinite"),
        "empty.nii.gz": (np.zeros((16, 16, 16), np.float32), "empty"),
        "flat.nii.gz": (np.full((16, 16, 16), 3.0, np.float32), "constant"),
    }
    for name, (data, problem) in cases.items():
        path = tmp_path / name
        if data is not None:
            save(path, data)
        with pytest.raises(PetiqInputError, match=problem) as info:
            predict_images(
                tmp_path / "no-model-here", [good, path]
            )  # images are checked before the model is looked for
        assert name in str(info.value) and "Fix:" in str(info.value)
    (tmp_path / "text.nii").write_text("not an image")
    with pytest.raises(PetiqInputError, match="not a readable NIfTI"):
        check_image(tmp_path / "text.nii")
    assert check_image(good).shape == (40, 44, 36)
    single_frame = save(tmp_path / "frame.nii.gz", brain_volume()[..., None])
    assert check_image(single_frame).shape == (40, 44, 36)


def test_no_images_and_no_model(tmp_path):
    good = save(tmp_path / "good.nii.gz", brain_volume())
    with pytest.raises(PetiqInputError, match="no images to score"):
        predict_images(tmp_path, [])
    with pytest.raises(PetiqInputError, match="no model.pt"):
        predict_images(tmp_path / "run", [good])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PetiqInputError, match="no images matching"):
        find_images(tmp_path / "empty")
    with pytest.raises(PetiqInputError, match="not a folder"):
        find_images(good)


def test_model_dir_picks_the_best_repeat(tmp_path):
    for r, loss in enumerate((0.4, 0.2, 0.3)):
        rep = tmp_path / f"rep-{r}"
        rep.mkdir()
        (rep / "model.pt").write_bytes(b"")
        (rep / "card.json").write_text(json.dumps({"best_val_loss": loss}))
    assert model_dir(tmp_path).name == "rep-1"
    assert model_dir(tmp_path / "rep-2").name == "rep-2"


def test_patch_settings_from_the_card():
    card_patch = {k: v for k, v in PATCH.items() if k != "threshold_fraction"} | {
        "voxel_size_mm": 4.0,
        "threshold": 0.2,
    }
    settings = patch_settings({"patch": card_patch})
    assert settings["voxel_size_mm"] == VOXEL and settings["threshold_fraction"] == 0.2 and settings["size"] == 32
    with pytest.raises(PetiqInputError, match="no patch settings"):
        patch_settings({})
    with pytest.raises(PetiqInputError, match=r"lack \['candidates'\]"):
        patch_settings({"patch": {k: v for k, v in PATCH.items() if k != "candidates"}})


# --- end to end with a small trained model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return train_small_run(tmp_path_factory.mktemp("run") / "b_imagenet_last2")


def train_small_run(root, extra_card=None):
    """A VGG16 run on 32 px patches (head only, one epoch) trained by the real engine, with the card's patch settings
    (and ``extra_card``'s keys)."""
    from petiq.learning.data import PatchSet
    from petiq.learning.patches import extract_patches
    from petiq.learning.spec import TrainSpec
    from petiq.learning.train import train_repeats

    def patch_set(seed: int, scores: tuple[float, float, float]) -> PatchSet:
        vol = brain_volume(seed=seed)
        patches, table = extract_patches(vol / vol.max(), size=32, candidates=60, per_plane=4, seed=seed)
        n = len(patches)
        return PatchSet(
            patches,
            np.tile(scores, (n, 1)),
            ("GQR", "PR", "DC"),
            np.full(n, f"sub-{seed:02d}"),
            np.full(n, 100.0),
            table["patch_index"].to_numpy(),
        )

    spec = TrainSpec(backbone="vgg16", init="random", freeze_level=0, epochs=1, device="cpu", precision="fp32")
    train = PatchSet.concat([patch_set(1, (2.5, 2.0, 2.0)), patch_set(2, (1.0, 1.5, 1.0))])
    train_repeats(
        spec,
        train,
        patch_set(3, (2.0, 2.0, 1.5)),
        {"test": patch_set(4, (3.0, 2.5, 2.5))},
        seeds=[7],
        out_dirs=[root / "rep-0"],
        extra_card={"patch": PATCH, **(extra_card or {})},
        progress=False,
    )
    return root


def manual_prediction(run_dir, path, seed=0):
    """The pipeline spelled out: resample (identity here), divide by the maximum, the paper's patches, the model."""
    from petiq.core.seeding import derive_seed
    from petiq.learning.checkpoints import load_run
    from petiq.learning.outputs import predict_patches
    from petiq.learning.patches import extract_patches

    model, card, prep = load_run(run_dir)
    vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    patches, _ = extract_patches(
        vol / vol.max(),
        size=32,
        candidates=60,
        per_plane=4,
        threshold_fraction=0.125,
        seed=derive_seed(seed, "predict", path.name),
    )
    pred = predict_patches(model, patches, prep, "cpu")
    return pred.mean(axis=0), pred.std(axis=0)


def test_scores_match_the_training_pipeline(trained_run, tmp_path):
    path = save(tmp_path / "new.nii.gz", brain_volume(seed=11))
    table = predict_images(trained_run, [path], progress=False)  # run folder: its best repeat is used
    row = table.iloc[0]
    mean, sd = manual_prediction(trained_run / "rep-0", path)
    assert [row["GQR"], row["PR"], row["DC"]] == pytest.approx(mean.tolist(), abs=1e-6)
    assert [row["sd_GQR"], row["sd_PR"], row["sd_DC"]] == pytest.approx(sd.tolist(), abs=1e-6)
    assert row["n_patches"] == 12 and row["voxel_size_mm"] == "4x4x4" and row["shape"] == "40x44x36"
    assert row["model"].endswith("rep-0")
    # the same image in other units (kBq/mL × 1000) scores the same: images are divided by their maximum
    other = tmp_path / "scaled"
    other.mkdir()
    scaled = save(other / "new.nii.gz", brain_volume(seed=11) * 1000)
    again = predict_images(trained_run / "rep-0", [scaled], progress=False).iloc[0]
    assert [again[s] for s in ("GQR", "PR", "DC")] == pytest.approx([row[s] for s in ("GQR", "PR", "DC")], abs=1e-5)
    # deterministic for a seed; another seed draws other patches
    assert predict_images(trained_run, [path], progress=False).equals(table)
    assert predict_images(trained_run, [path], seed=1, progress=False).iloc[0]["GQR"] != row["GQR"]


def test_images_of_any_voxel_size_are_resampled(trained_run, tmp_path):
    from scipy import ndimage

    fine = ndimage.zoom(brain_volume(seed=12), 2.0, order=1)  # 2 mm voxels, twice the matrix
    path = save(tmp_path / "fine.nii.gz", fine, voxel=(2.0, 2.0, 2.0))
    row = predict_images(trained_run, [path], progress=False).iloc[0]
    assert row["source_shape"] == "80x88x72" and row["source_voxel_size_mm"] == "2x2x2"
    assert row["shape"] == "40x44x36" and row["n_patches"] == 12
    assert np.isfinite([row["GQR"], row["PR"], row["DC"], row["sd_GQR"]]).all()


def test_folder_and_command_line(trained_run, tmp_path, capsys):
    from petiq.cli import main
    from petiq.learning.predict import predict_folder

    folder = tmp_path / "to_score"
    folder.mkdir()
    for seed in (21, 22):
        save(folder / f"img-{seed}.nii.gz", brain_volume(seed=seed))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "scored.tsv"
    table = predict_folder(trained_run, folder, out, device="cpu", progress=False)
    written = pd.read_csv(out, sep="\t")
    assert [p.split("/")[-1] for p in written["image"]] == ["img-21.nii.gz", "img-22.nii.gz"]
    assert written["GQR"].to_numpy() == pytest.approx(table["GQR"].to_numpy())

    cli_tsv = tmp_path / "cli.tsv"
    assert (
        main(
            [
                "predict",
                "--model",
                str(trained_run),
                str(folder / "img-21.nii.gz"),
                "--tsv",
                str(cli_tsv),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "GQR (± patch SD)" in printed and "img-21.nii.gz" in printed
    assert pd.read_csv(cli_tsv, sep="\t")["GQR"].iloc[0] == pytest.approx(table["GQR"].iloc[0])

    nan = save(tmp_path / "nan.nii.gz", np.full((20, 20, 20), np.nan, np.float32))
    assert main(["predict", "--model", str(trained_run), str(nan), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nan.nii.gz" in err and "NaN or infinite" in err and "Fix:" in err
