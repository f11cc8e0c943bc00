"""The training engine (petiq.learning.train): determinism, resume, stacked repeats, frozen-block cache, outputs.

A narrow VGG-shaped backbone (4–16 channels, 32 px patches) stands in for VGG16: registered here as a
test fixture, not in petiq.learning.models.BACKBONES.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models.vgg import VGG, make_layers

from petiq.core.errors import PetiqInputError
from petiq.core.seeding import derive_seed, rng_for
from petiq.learning import models
from petiq.learning.baseline import train_dose_baseline
from petiq.learning.checkpoints import load_run
from petiq.learning.data import PatchSet, apply_preprocessing
from petiq.learning.models import BackboneSpec, build_model, set_freeze_level, split_vgg
from petiq.learning.outputs import predict_patches
from petiq.learning.spec import ADAM_BETAS, TrainSpec
from petiq.learning.train import train_repeats
from petiq.learning.weights import CAFFE_BGR, NO_PREPROCESSING, TORCHVISION_RGB

TINY = [4, "M", 8, "M", 8, "M", 16, "M", 16, "M"]
SCORES = ("GQR", "PR", "DC")


@pytest.fixture(autouse=True)
def tiny_backbones(monkeypatch):
    for name, bn in (("tiny_vgg", False), ("tiny_vgg_bn", True)):
        spec = BackboneSpec(
            name, lambda bn=bn: VGG(make_layers(TINY, batch_norm=bn), init_weights=False), split_vgg, "keras"
        )
        monkeypatch.setitem(models.BACKBONES, name, spec)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_set(patients, seed, n=6, doses=(1.0, 25.0, 100.0), targets=SCORES) -> PatchSet:
    """Noisy patches whose noise falls with dose; scores rise with dose."""
    rng = np.random.default_rng(seed)
    parts = []
    for p in patients:
        for d in doses:
            noise = 0.3 / np.sqrt(d)
            x = np.clip(0.5 + noise * rng.standard_normal((n, 32, 32)), 0, 1).astype(np.float16)
            y = np.tile([min(3.0, 0.5 + d / 40 + j * 0.1) for j in range(len(targets))], (n, 1))
            parts.append(PatchSet(x, y, targets, [p] * n, [d] * n, np.arange(n)))
    return PatchSet.concat(parts)


@pytest.fixture(scope="module")
def data():
    return make_set(["sub-01", "sub-02", "sub-03"], 1), make_set(["sub-04"], 2), make_set(["sub-05"], 3)


def spec_(**kw) -> TrainSpec:
    base = dict(
        backbone="tiny_vgg",
        init="random",
        freeze_level=5,
        epochs=2,
        device="cpu",
        precision="fp32",
        learning_rate=1e-3,
        checkpoint_every_s=0.0,
    )
    return TrainSpec(**{**base, **kw})


def run(spec, data, seeds, root, **kw):
    train, val, test = data
    dirs = [root / f"rep-{i}" for i in range(len(seeds))]
    return train_repeats(spec, train, val, {"test": test}, seeds, dirs, progress=False, **kw), dirs


def outputs(d):
    curve = pd.read_csv(d / "curve.tsv", sep="\t").drop(columns="seconds")
    return curve, pd.read_csv(d / "predictions_patches.tsv", sep="\t")


def assert_same_run(a, b, exact=True, atol=0.0):
    (ca, pa), (cb, pb) = outputs(a), outputs(b)
    if exact:
        pd.testing.assert_frame_equal(ca, cb, check_exact=True)
        pd.testing.assert_frame_equal(pa, pb, check_exact=True)
    else:
        pd.testing.assert_frame_equal(ca, cb, check_exact=False, rtol=0, atol=atol)
        pd.testing.assert_frame_equal(pa, pb, check_exact=False, rtol=0, atol=atol)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_numbers_other_seed_other_numbers(data, tmp_path, precision):
    spec = spec_(backbone="tiny_vgg_bn", freeze_level=4, precision=precision)
    _, a = run(spec, data, [11], tmp_path / "a")
    _, b = run(spec, data, [11], tmp_path / "b")
    _, c = run(spec, data, [12], tmp_path / "c")
    assert_same_run(a[0], b[0])
    assert not outputs(a[0])[1]["pred_GQR"].equals(outputs(c[0])[1]["pred_GQR"])


def test_a_torchvision_backbone_trains_stacked_in_bf16(data, tmp_path):
    """MobileNetV3 (batch norm, squeeze-excitation, hard-swish) through the stacked bf16 path and back."""
    cards, dirs = run(
        spec_(backbone="mobilenet_v3_small", freeze_level=3, precision="bf16", stack=2, epochs=1),
        data,
        [1, 2],
        tmp_path,
    )
    assert cards[0]["engine"]["stacked_repeats"] == 2 and cards[0]["trained_blocks"] == [3, 4, 5]
    model, _, prep = load_run(dirs[1])
    preds = pd.read_csv(dirs[1] / "predictions_patches.tsv", sep="\t").query("set == 'val'")
    np.testing.assert_allclose(
        predict_patches(model, data[1].patches, prep), preds.filter(like="pred_").to_numpy(), rtol=0, atol=1e-5
    )


def test_engine_is_the_textbook_loop(data, tmp_path):
    """One repeat, fp32, no cache: the numbers of a hand-written PyTorch loop of the paper's recipe."""
    train, val, _ = data
    spec = spec_(freeze_level=4, epochs=2, cache_frozen=False, keep_resume_state=True)
    cards, dirs = run(spec, data, [5], tmp_path)
    model = set_freeze_level(build_model("tiny_vgg", 3, patch_size=32, seed=derive_seed(5, "init")), 4)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=ADAM_BETAS, eps=1e-7)
    x_all = TORCHVISION_RGB.apply(torch.from_numpy(train.patches.astype(np.float32)))
    y_all = torch.from_numpy(train.targets)
    train_losses, val_losses = [], []
    for epoch in range(2):
        model.train()
        order = rng_for(5, "shuffle", epoch).permutation(len(train))
        total = 0.0
        for start in range(0, len(train), 10):
            idx = torch.from_numpy(order[start : start + 10])
            loss = torch.nn.functional.mse_loss(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        train_losses.append(total / len(train))
        model.eval()
        with torch.no_grad():
            pred = model(TORCHVISION_RGB.apply(torch.from_numpy(val.patches.astype(np.float32))))
            val_losses.append(torch.nn.functional.mse_loss(pred, torch.from_numpy(val.targets)).item())
    curve = pd.read_csv(dirs[0] / "curve.tsv", sep="\t")
    np.testing.assert_allclose(curve["train_loss"], train_losses, rtol=1e-6)
    np.testing.assert_allclose(curve["val_loss"], val_losses, rtol=1e-6)
    last = torch.load(dirs[0] / "last.pt", weights_only=True)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(last["params"]) == set(trained)  # exactly the retrained blocks and the head are stacked
    for name, value in trained.items():
        torch.testing.assert_close(last["params"][name], value.detach(), rtol=0, atol=1e-6)
    assert cards[0]["best_epoch"] == int(np.argmin(val_losses)) + 1


def test_an_interrupted_run_resumes_to_the_same_numbers(data, tmp_path):
    spec = spec_(backbone="tiny_vgg_bn", freeze_level=5, epochs=3, stack=2)
    _, straight = run(spec, data, [1, 2], tmp_path / "straight")

    class Stop(Exception):
        pass

    def stop_after_first(epoch, curves):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        run(spec, data, [1, 2], tmp_path / "cut", callback=stop_after_first)
    cut = [tmp_path / "cut" / f"rep-{i}" for i in range(2)]
    assert all((d / "last.pt").is_file() and not (d / "model.pt").exists() for d in cut)
    cards, _ = run(spec, data, [1, 2], tmp_path / "cut")
    for a, b, card in zip(straight, cut, cards):
        assert_same_run(a, b)
        assert card["resumed_from_epoch"] == 1 and card["epochs_run"] == 3
        assert not (b / "last.pt").exists()  # removed once the outputs are written

    # a resume state never continues a run with other settings
    with pytest.raises(Stop):
        run(spec, data, [1, 2], tmp_path / "other", callback=stop_after_first)
    with pytest.raises(PetiqInputError, match="last.pt: the resume state was written for other settings"):
        run(
            spec_(backbone="tiny_vgg_bn", freeze_level=5, epochs=3, stack=2, learning_rate=1e-4),
            data,
            [1, 2],
            tmp_path / "other",
        )


def test_repeats_interrupted_at_different_epochs_resume_apart(data, tmp_path):
    """A crash between two repeats' last.pt writes leaves them one epoch apart: each resumes on its own."""
    import shutil

    class Stop(Exception):
        pass

    def stop_at(n):
        def callback(epoch, curves):
            if epoch == n:
                raise Stop

        return callback

    spec = spec_(epochs=3, stack=2)
    _, straight = run(spec, data, [1, 2], tmp_path / "straight")
    for n in (1, 2):
        with pytest.raises(Stop):
            run(spec, data, [1, 2], tmp_path / f"stop{n}", callback=stop_at(n))
    mixed = tmp_path / "mixed"
    for i, n in ((0, 2), (1, 1)):
        (mixed / f"rep-{i}").mkdir(parents=True)
        shutil.copy(tmp_path / f"stop{n}" / f"rep-{i}" / "last.pt", mixed / f"rep-{i}" / "last.pt")
    cards, dirs = run(spec, data, [1, 2], mixed)
    assert [c["resumed_from_epoch"] for c in cards] == [2, 1]
    assert [c["engine"]["stacked_repeats"] for c in cards] == [1, 1]
    for a, b in zip(straight, dirs):
        assert_same_run(a, b, exact=False, atol=2e-5)


@pytest.mark.parametrize("k", [2, 5])
def test_stacked_repeats_equal_separate_runs(data, tmp_path, k):
    """Without batch norm: with it, a convolution bias just before a batch norm has a gradient that is zero up to
    rounding, and Adam turns that rounding noise (which grouped and single convolutions round differently)
    into steps of the learning rate's size, so stacked and separate runs drift apart in those biases."""
    spec = spec_(freeze_level=k, epochs=2, stack=2)
    cards, stacked = run(spec, data, [3, 4], tmp_path / "stacked")
    assert all(c["engine"]["stacked_repeats"] == 2 for c in cards)
    for i, seed in enumerate([3, 4]):
        _, alone = run(spec_(freeze_level=k, epochs=2, stack=1), data, [seed], tmp_path / f"alone-{seed}")
        assert_same_run(stacked[i], alone[0], exact=False, atol=2e-5)


@pytest.mark.parametrize("k", [0, 2, 4])
@pytest.mark.parametrize("init", ["random", "pretext"])
def test_frozen_block_cache_equals_the_plain_loop(data, tmp_path, k, init):
    if init == "pretext":  # frozen blocks shared by all repeats: one cache
        run(spec_(targets=("dose_per_kg",), epochs=1), pretext_data(data), [9], tmp_path / "pretext")
        init = str(tmp_path / "pretext" / "rep-0")
    cached, a = run(spec_(init=init, freeze_level=k, stack=2), data, [1, 2], tmp_path / "cached")
    plain, b = run(spec_(init=init, freeze_level=k, stack=2, cache_frozen=False), data, [1, 2], tmp_path / "plain")
    assert {c["engine"]["frozen_cache"] for c in cached} == {"fp32"}
    assert {c["engine"]["frozen_cache"] for c in plain} == {"off"}
    for x, y in zip(a, b):
        assert_same_run(x, y, exact=False, atol=1e-6)


def pretext_data(data):
    def as_dose(ps):
        return PatchSet(
            ps.patches, ps.dose[:, None] / 40.0, ("dose_per_kg",), ps.participant_id, ps.dose, ps.patch_index
        )

    return tuple(as_dose(ps) for ps in data)


def test_cache_over_the_memory_limit_goes_bf16_then_plain(data, tmp_path, caplog):
    train, val, _ = data
    numel = 8 * 8 * 8  # tiny_vgg after block 2 at 32 px
    need_gb = numel * (len(train) + len(val)) * 4 / 1e9
    caplog.set_level(logging.INFO, logger="petiq.learning.train")
    bf16, _ = run(spec_(freeze_level=3, cache_max_gb=0.75 * need_gb), data, [1], tmp_path / "bf16")
    assert bf16[0]["engine"]["frozen_cache"] == "bf16" and "storing it in bf16" in caplog.text
    plain, a = run(spec_(freeze_level=3, cache_max_gb=0.25 * need_gb), data, [1], tmp_path / "plain")
    assert plain[0]["engine"]["frozen_cache"] == "off" and "recomputing the frozen blocks" in caplog.text
    _, b = run(spec_(freeze_level=3, cache_frozen=False), data, [1], tmp_path / "ref")
    assert_same_run(a[0], b[0])


def test_bf16_precision_trains(data, tmp_path):
    fp32, ref = run(spec_(backbone="tiny_vgg_bn", freeze_level=4), data, [1], tmp_path / "fp32")
    for stack in (1, 2):  # single (channels-last) and stacked (vmap) paths
        cards, dirs = run(
            spec_(backbone="tiny_vgg_bn", freeze_level=4, precision="bf16", stack=stack),
            data,
            [1, 2],
            tmp_path / f"bf16-{stack}",
        )
        engine = cards[0]["engine"]
        assert engine["precision"] == "bf16"
        assert engine["memory_format"] == ("channels_last" if stack == 1 else "contiguous")
        (curve, preds), (curve32, _) = outputs(dirs[0]), outputs(ref[0])
        assert np.isfinite(preds.filter(like="pred_").to_numpy()).all()
        # bf16 follows the fp32 run closely, but not exactly
        np.testing.assert_allclose(curve["train_loss"], curve32["train_loss"], rtol=0.05)
        assert not curve["train_loss"].equals(curve32["train_loss"])


def test_outputs_card_and_reloading(data, tmp_path):
    train, val, test = data
    cards, dirs = run(spec_(freeze_level=2, head="relu"), data, [21], tmp_path, extra_card={"experiment": "fig08"})
    d, card = dirs[0], cards[0]
    for name in (
        "model.pt",
        "curve.tsv",
        "curve.png",
        "predictions_patches.tsv",
        "predictions_images.tsv",
        "card.json",
    ):
        assert (d / name).is_file(), name
    assert json.loads((d / "card.json").read_text()) == json.loads(json.dumps(card))
    assert card["experiment"] == "fig08" and card["backbone"] == "tiny_vgg" and card["head"] == "relu"
    assert card["init"]["kind"] == "random" and card["weights_origin"] == "random"
    assert card["preprocessing"]["name"] == "torchvision_rgb"
    assert card["freeze_level"] == 2 and card["trained_blocks"] == [4, 5]
    assert [b["trained"] for b in card["blocks"]] == [False, False, False, True, True, True]
    assert card["seed"] == 21 and card["epochs_run"] == 2
    assert card["data"]["train"]["patients"] == ["sub-01", "sub-02", "sub-03"]
    assert card["data"]["val"]["patients"] == ["sub-04"] and card["data"]["test"]["n_images"] == 3
    assert card["versions"]["torch"] == torch.__version__
    curve = pd.read_csv(d / "curve.tsv", sep="\t")
    assert list(curve.columns) == ["epoch", "train_loss", "val_loss", "seconds"]
    assert card["best_epoch"] == int(curve.loc[curve["val_loss"].idxmin(), "epoch"])
    assert card["best_val_loss"] == pytest.approx(curve["val_loss"].min())

    patches = pd.read_csv(d / "predictions_patches.tsv", sep="\t")
    images = pd.read_csv(d / "predictions_images.tsv", sep="\t")
    assert list(patches.columns[:4]) == ["set", "participant_id", "dose", "patch_index"]
    assert list(images.columns) == [
        "set",
        "participant_id",
        "dose",
        "n_patches",
        "target_GQR",
        "target_PR",
        "target_DC",
        "pred_GQR",
        "pred_PR",
        "pred_DC",
        "sd_GQR",
        "sd_PR",
        "sd_DC",
    ]
    assert len(patches) == len(val) + len(test) and len(images) == 6 and (images["n_patches"] == 6).all()
    g = patches.groupby(["set", "participant_id", "dose"], sort=False)
    np.testing.assert_allclose(images["pred_PR"], g["pred_PR"].mean().to_numpy())
    np.testing.assert_allclose(images["sd_PR"], g["pred_PR"].std(ddof=0).to_numpy())
    # the val set's MSE at the kept epoch is the card's best validation loss (fp32, same function)
    v = patches[patches["set"] == "val"]
    mse = np.mean(
        (v[["pred_GQR", "pred_PR", "pred_DC"]].to_numpy() - v[["target_GQR", "target_PR", "target_DC"]].to_numpy()) ** 2
    )
    assert mse == pytest.approx(card["best_val_loss"], rel=1e-5)

    model, card2, prep = load_run(d)
    assert card2["seed"] == 21 and prep.name == "torchvision_rgb" and isinstance(model.head[-1], torch.nn.ReLU)
    again = predict_patches(model, val.patches, prep, "cpu", batch_size=7)
    np.testing.assert_allclose(again, v[["pred_GQR", "pred_PR", "pred_DC"]].to_numpy(), rtol=0, atol=1e-6)
    with pytest.raises(PetiqInputError, match="N × 32 × 32"):
        predict_patches(model, val.patches[:, :16, :16], prep)
    with pytest.raises(ValueError, match="may not replace"):
        run(spec_(epochs=1), data, [1], tmp_path / "clash", extra_card={"seed": 3})


def test_pretext_checkpoint_starts_a_transfer_run(data, tmp_path):
    run(spec_(targets=("dose_per_kg",), preprocessing="caffe_bgr"), pretext_data(data), [9], tmp_path / "pretext")
    pre = torch.load(tmp_path / "pretext" / "rep-0" / "model.pt", weights_only=True)
    assert pre["n_outputs"] == 1 and pre["preprocessing"]["name"] == "caffe_bgr"
    cards, dirs = run(spec_(init=str(tmp_path / "pretext" / "rep-0"), freeze_level=1), data, [1], tmp_path / "transfer")
    card = cards[0]
    assert card["init"]["kind"] == "pretext" and card["preprocessing"]["name"] == "caffe_bgr"
    assert card["init"]["pretext"]["targets"] == ["dose_per_kg"]
    post = torch.load(dirs[0] / "model.pt", weights_only=True)["state_dict"]
    for name, value in pre["state_dict"].items():
        if name.startswith(("blocks.0.", "blocks.1.", "blocks.2.", "blocks.3.")):  # frozen at level 1
            assert torch.equal(post[name], value), name
    assert post["head.1.weight"].shape == (3, 16)
    with pytest.raises(PetiqInputError, match="not tiny_vgg_bn"):
        run(spec_(backbone="tiny_vgg_bn", init=str(tmp_path / "pretext" / "rep-0")), data, [1], tmp_path / "bad")
    with pytest.raises(PetiqInputError, match="neither 'imagenet', 'random'"):
        run(spec_(init=str(tmp_path / "nowhere")), data, [1], tmp_path / "bad")


def test_missing_imagenet_weights_stop_the_run_before_any_work(data, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    spec = spec_(backbone="vgg16", init="imagenet", weights_dir=str(tmp_path / "weights"))
    with pytest.raises(PetiqInputError, match="petiq weights fetch"):
        run(spec, data, [1], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_inputs_are_refused_before_any_work(data, tmp_path):
    train, val, test = data
    with pytest.raises(PetiqInputError, match="2 seeds for 1 output folders"):
        train_repeats(spec_(), train, val, {}, [1, 2], [tmp_path / "a"], progress=False)
    with pytest.raises(PetiqInputError, match="share an output folder"):
        train_repeats(spec_(), train, val, {}, [1, 2], [tmp_path / "a", tmp_path / "a"], progress=False)
    with pytest.raises(PetiqInputError, match="targets"):
        train_repeats(spec_(targets=("GQR",)), train, val, {}, [1], [tmp_path / "a"], progress=False)
    small = PatchSet(test.patches[:, :16, :16], test.targets, SCORES, test.participant_id, test.dose, test.patch_index)
    with pytest.raises(PetiqInputError, match="patch sizes differ"):
        train_repeats(spec_(), train, val, {"test": small}, [1], [tmp_path / "a"], progress=False)
    with pytest.raises(PetiqInputError, match="freeze_level 7"):
        spec_(freeze_level=7)
    assert not (tmp_path / "a").exists()


def test_preprocessing_on_device_is_the_weights_formula():
    x = torch.rand(4, 8, 8)
    for prep in (CAFFE_BGR, TORCHVISION_RGB, NO_PREPROCESSING):
        assert torch.equal(apply_preprocessing(prep, x), prep.apply(x))


def test_patch_set_from_an_image_table(tmp_path):
    from petiq.learning.patches import extract_patches

    rng = np.random.default_rng(0)
    rows = []
    for pid, dose, score in (("sub-01", 1.0, 0.5), ("sub-01", 100.0, 3.0), ("sub-02", 10.0, 2.0)):
        volume = rng.random((40, 40, 40)).astype(np.float32)
        patches, table = extract_patches(
            volume, size=32, candidates=60, per_plane=3, threshold_fraction=0.1, seed=1, dtype="float16"
        )
        npy, tsv = tmp_path / f"{pid}_{dose}.npy", tmp_path / f"{pid}_{dose}.tsv"
        np.save(npy, patches)
        table.to_csv(tsv, sep="\t", index=False)
        rows.append(
            {
                "participant_id": pid,
                "dose": dose,
                "patches_npy": npy.name,
                "patches_tsv": tsv.name,
                "GQR": score,
                "PR": score - 0.5,
                "DC": score,
            }
        )
    table = pd.DataFrame(rows)
    ps = PatchSet.from_table(table, SCORES, base_dir=tmp_path)
    assert len(ps) == 27 and ps.patch_size == 32 and ps.patients == ["sub-01", "sub-02"]
    images = ps.images()
    assert images[["participant_id", "dose", "n_patches", "PR"]].values.tolist() == [
        ["sub-01", 1.0, 9, 0.0],
        ["sub-01", 100.0, 9, 2.5],
        ["sub-02", 10.0, 9, 1.5],
    ]
    with pytest.raises(PetiqInputError, match=r"columns \['DC'\] are missing"):
        PatchSet.from_table(table.drop(columns="DC"), SCORES, base_dir=tmp_path)
    with pytest.raises(PetiqInputError, match="targets missing or not numbers for sub-02"):
        PatchSet.from_table(table.assign(GQR=[1.0, 2.0, None]), SCORES, base_dir=tmp_path)
    with pytest.raises(PetiqInputError, match="does not exist"):
        PatchSet.from_table(table, SCORES, base_dir=tmp_path / "elsewhere")


def test_dose_baseline_learns_scores_from_dose_per_kg(tmp_path):
    rng = np.random.default_rng(4)

    def table(pids):
        rows = []
        for pid in pids:
            for dose in (0.5, 5.0, 50.0, 100.0):
                per_kg = 3.0 * dose / 100 * rng.uniform(0.9, 1.1)
                rows.append(
                    {
                        "participant_id": pid,
                        "dose": dose,
                        "dose_per_kg": per_kg,
                        "GQR": 0.8 * per_kg + 0.4,
                        "PR": 0.6 * per_kg + 1.0,
                        "DC": 0.5 * per_kg + 1.2,
                    }
                )
        return pd.DataFrame(rows)

    spec = spec_(epochs=300, learning_rate=1e-2)
    dirs = [tmp_path / "rep-0", tmp_path / "rep-1"]
    cards = train_dose_baseline(
        spec, table(["a", "b", "c", "d"]), table(["e"]), {"test": table(["f", "g"])}, [1, 2], dirs, progress=False
    )
    curve = pd.read_csv(dirs[0] / "curve.tsv", sep="\t")
    assert curve["val_loss"].iloc[-1] < 0.05 * curve["val_loss"].iloc[0]
    images = pd.read_csv(dirs[0] / "predictions_images.tsv", sep="\t")
    assert set(images["set"]) == {"val", "test"} and (images["n_patches"] == 1).all() and (images["sd_GQR"] == 0).all()
    assert cards[0]["kind"] == "dose_baseline" and cards[0]["data"]["test"]["patients"] == ["f", "g"]
    assert cards[0]["metrics"]["test"]["image_mae"]["GQR"] < 0.15
    model, card, prep = load_run(dirs[0])
    assert prep is None and card["seed"] == 1 and model[0].in_features == 1
    with pytest.raises(PetiqInputError, match="lacks columns"):
        train_dose_baseline(spec, table(["a"]).drop(columns="dose_per_kg"), table(["e"]), {}, [1], [tmp_path / "x"])
