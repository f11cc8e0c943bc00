"""Evaluation metrics against scipy and hand-made cases; repeats, tables, the comparison with the paper; the figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from petiq.core.errors import PetiqInputError
from petiq.evaluation.metrics import (
    comparison_table,
    dose_metrics,
    for_comparison,
    image_metrics,
    paper_table,
    quantise,
    read_reference,
    run_dose_metrics,
    run_metrics,
    spearman,
    summarise,
)


def frame(targets: dict[str, list], preds: dict[str, list], sds: dict[str, list] | None = None) -> pd.DataFrame:
    n = len(next(iter(targets.values())))
    df = pd.DataFrame({"set": "test", "participant_id": [f"sub-{i:02d}" for i in range(n)], "dose": 10.0})
    for m in targets:
        df[f"target_{m}"] = targets[m]
        df[f"pred_{m}"] = preds[m]
        if sds:
            df[f"sd_{m}"] = sds[m]
    return df


# --- quantise and Spearman --------------------------------------------------------------------------------------------


def test_quantise_rounds_to_half_steps_and_clips():
    x = [-1.0, 0.0, 0.24, 0.25, 0.74, 0.76, 1.249, 2.75, 2.9, 3.0, 3.26, 10.0]
    assert quantise(x).tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert np.isnan(quantise([np.nan])[0])
    grid = np.arange(0, 3.01, 0.5)
    assert quantise(grid).tolist() == grid.tolist()  # scores on the scale are kept


@pytest.mark.parametrize(
    "case",
    [
        ([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]),
        ([0, 0.5, 0.5, 1, 2, 2, 3], [0.2, 0.1, 0.9, 1.4, 1.4, 2.8, 2.1]),  # ties on both sides
        ([3, 2, 1, 0], [0.1, 0.2, 0.3, 0.4]),  # perfectly reversed
    ],
)
def test_spearman_matches_scipy(case):
    x, y = case
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_matches_scipy_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        target = rng.integers(0, 7, size=9) / 2.0
        pred = np.round(target + rng.normal(0, 0.6, 9), 1)
        assert spearman(pred, target) == pytest.approx(spearmanr(pred, target).statistic, abs=1e-12)


def test_spearman_undefined_cases_are_nan():
    assert np.isnan(spearman([1, 1, 1], [0, 1, 2]))  # constant prediction
    assert np.isnan(spearman([1.0], [2.0]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


# --- image_metrics ----------------------------------------------------------------------------------------------------


def test_perfect_agreement():
    t = [0.0, 0.5, 1.5, 2.0, 3.0]
    out = image_metrics(frame({"GQR": t, "PR": t, "DC": t}, {"GQR": t, "PR": t, "DC": t})).set_index("score")
    assert list(out.index) == ["GQR", "PR", "DC", "all"]
    assert (out["mae"] == 0).all() and (out["pct_exact"] == 100).all() and (out["pct_close"] == 100).all()
    assert np.allclose(out["spearman"], 1.0)
    assert out.loc["all", "n"] == 15


def test_hand_made_case():
    # rounded predictions 0, 1.5, 2, 2.5 against 0, 1, 2, 3: exact 2/4, close 4/4; raw MAE (0.2 + 0.6 + 0 + 0.6) / 4
    df = frame({"GQR": [0, 1, 2, 3]}, {"GQR": [0.2, 1.6, 2.0, 2.4]}, {"GQR": [0.1, 0.3, 0.2, 0.2]})
    row = image_metrics(df, ("GQR",)).set_index("score").loc["GQR"]
    assert row["mae"] == pytest.approx(0.35)
    assert row["mae_rounded"] == pytest.approx(0.25)
    assert row["pct_exact"] == pytest.approx(50.0)
    assert row["pct_close"] == pytest.approx(100.0)
    assert row["spearman"] == pytest.approx(1.0)
    assert row["patch_sd"] == pytest.approx(0.2)
    assert "all" not in set(image_metrics(df, ("GQR",))["score"])  # one score: nothing to pool


def test_close_means_within_half_a_step_after_rounding():
    # 1.74 rounds to 1.5 (close to 1 and 2, not exact); 1.76 rounds to 2.0 (more than 0.5 from 1)
    row = image_metrics(frame({"PR": [1.0, 1.0, 2.0]}, {"PR": [1.74, 1.76, 1.76]}), ("PR",)).iloc[0]
    assert row["pct_exact"] == pytest.approx(100 / 3)
    assert row["pct_close"] == pytest.approx(200 / 3)


def test_predictions_beyond_the_scale_are_clipped_before_agreement():
    row = image_metrics(frame({"DC": [3.0, 0.0]}, {"DC": [3.7, -0.6]}), ("DC",)).iloc[0]
    assert row["pct_exact"] == 100.0
    assert row["mae"] == pytest.approx(0.65)  # the raw prediction's error is kept in the MAE
    assert row["mae_rounded"] == 0.0


def test_all_pools_every_score_and_unscored_rows_are_left_out():
    rng = np.random.default_rng(3)
    t = {m: list(rng.integers(0, 7, 6) / 2) for m in ("GQR", "PR", "DC")}
    p = {m: list(np.asarray(t[m]) + rng.normal(0, 0.5, 6)) for m in t}
    df = frame(t, p)
    extra = df.iloc[:2].copy()
    extra[["target_GQR", "target_PR", "target_DC"]] = np.nan  # unscored doses
    extra[["pred_GQR", "pred_PR", "pred_DC"]] = 9.0
    out = image_metrics(pd.concat([df, extra])).set_index("score")
    pred = np.concatenate([p[m] for m in t])
    target = np.concatenate([t[m] for m in t])
    assert out.loc["all", "n"] == 18
    assert out.loc["all", "mae"] == pytest.approx(np.mean(np.abs(pred - target)))
    assert out.loc["all", "spearman"] == pytest.approx(spearmanr(pred, target).statistic)
    assert out.loc["all", "pct_exact"] == pytest.approx(100 * np.mean(quantise(pred) == target))


def test_bad_inputs_name_the_problem():
    with pytest.raises(PetiqInputError, match="missing column"):
        image_metrics(frame({"GQR": [1.0]}, {"GQR": [1.0]}))
    with pytest.raises(PetiqInputError, match="no finite pred_GQR"):
        image_metrics(frame({"GQR": [1.0, 2.0]}, {"GQR": [np.nan, 2.0]}), ("GQR",))
    with pytest.raises(PetiqInputError, match="no image has a GQR score"):
        image_metrics(frame({"GQR": [np.nan]}, {"GQR": [2.0]}), ("GQR",))


# --- runs on disk, repeats and summaries --------------------------------------------------------------------------------


def write_run(root, experiment, run, repeats, rng, *, pretext=False, backbone="vgg16", val_loss=0.3):
    dirs = []
    for r in range(repeats):
        rep = root / experiment / run / f"rep-{r}"
        rep.mkdir(parents=True)
        rows = []
        for s, pid in (("val", "sub-01"), ("test", "sub-02"), ("test", "sub-03")):
            for d, dose in enumerate((0.5, 1, 5, 10, 25, 50, 100)):
                row = {"set": s, "participant_id": pid, "dose": dose, "n_patches": 30}
                if pretext:
                    truth = 3.0 * dose / 100
                    row |= {
                        "target_dose_per_kg": truth,
                        "pred_dose_per_kg": truth + rng.normal(0, 0.02),
                        "sd_dose_per_kg": 0.1,
                    }
                else:
                    scored = dose in (1, 10, 100)
                    for m in ("GQR", "PR", "DC"):
                        truth = min(3.0, 0.5 * d) if scored else np.nan
                        row |= {
                            f"target_{m}": truth,
                            f"pred_{m}": min(3.0, 0.5 * d) + rng.normal(0, 0.4),
                            f"sd_{m}": 0.3,
                        }
                rows.append(row)
        pd.DataFrame(rows).to_csv(rep / "predictions_images.tsv", sep="\t", index=False)
        card = {
            "backbone": backbone,
            "weights_origin": "random",
            "freeze_level": 5,
            "best_val_loss": val_loss + 0.01 * r,
        }
        (rep / "card.json").write_text(json.dumps(card))
        dirs.append(rep)
    return root / experiment / run


def test_run_metrics_and_summary_over_repeats(tmp_path):
    rng = np.random.default_rng(1)
    run = write_run(tmp_path, "pipelines", "b_imagenet_last2", 3, rng)
    df = run_metrics([run])
    assert sorted(df["repeat"].unique()) == [0, 1, 2]
    assert set(df["run"]) == {"b_imagenet_last2"} and set(df["experiment"]) == {"pipelines"}
    assert (df.loc[df["score"] == "GQR", "n"] == 6).all()  # 2 test patients x 3 scored doses
    assert set(df["backbone"]) == {"vgg16"} and df["best_val_loss"].notna().all()
    # one rep folder alone gives the same numbers as that repeat within the run
    alone = run_metrics(run / "rep-1")
    pd.testing.assert_frame_equal(
        alone.drop(columns="repeat"), df[df["repeat"] == 1].drop(columns="repeat").reset_index(drop=True)
    )

    summary = summarise(df)
    mae_all = df.loc[df["score"] == "all", "mae"].to_numpy()
    row = summary[(summary["score"] == "all") & (summary["metric"] == "mae")].iloc[0]
    assert row["mean"] == pytest.approx(mae_all.mean())
    assert row["sd"] == pytest.approx(mae_all.std(ddof=1))
    assert row["n_repeats"] == 3

    table = paper_table(summary, {"b_imagenet_last2": "ImageNet, last 2 blocks"})
    assert list(table["score"]) == ["GQR", "PR", "DC"]
    gqr = df[df["score"] == "GQR"]
    assert table.loc[0, "pct_close"] == pytest.approx(gqr["pct_close"].mean())
    assert table.loc[0, "mae_sd"] == pytest.approx(gqr["mae"].std(ddof=1))


def test_run_metrics_errors(tmp_path):
    with pytest.raises(PetiqInputError, match="no predictions_images.tsv"):
        run_metrics([tmp_path])
    run = write_run(tmp_path, "pretext", "imagenet_last2", 1, np.random.default_rng(0), pretext=True)
    with pytest.raises(PetiqInputError, match="use run_dose_metrics"):
        run_metrics([run])
    with pytest.raises(PetiqInputError, match="no rows of set 'train'"):
        run_dose_metrics([run], set="train")


# --- the pretext task ---------------------------------------------------------------------------------------------------


def test_dose_metrics_nearest_level_hand_made():
    levels = {"sub-01": [0.015, 0.03, 0.15, 0.3, 0.75, 1.5, 3.0]}
    df = pd.DataFrame(
        {
            "participant_id": "sub-01",
            "target_dose_per_kg": [0.015, 0.03, 0.3, 1.5, 3.0],
            "pred_dose_per_kg": [0.02, 0.10, 0.20, 1.2, 2.0],
        }
    )
    # nearest levels: 0.015 (yes), 0.15 (no, true 0.03), 0.15 (no, true 0.3), 1.5 (yes), 1.5 (no, true 3.0)
    row = dose_metrics(df, levels).iloc[0]
    assert row["pct_exact"] == pytest.approx(40.0)
    assert row["mae"] == pytest.approx(np.mean([0.005, 0.07, 0.1, 0.3, 1.0]))
    assert row["score"] == "dose_per_weight" and row["n"] == 5
    with pytest.raises(PetiqInputError, match="not one of its levels"):
        dose_metrics(df.assign(target_dose_per_kg=0.2), levels)
    with pytest.raises(PetiqInputError, match="no dose levels given for sub-01"):
        dose_metrics(df, {"sub-09": [1.0]})


def test_dose_metrics_default_levels_are_the_patients_targets(tmp_path):
    run = write_run(tmp_path, "pretext", "imagenet_last2", 2, np.random.default_rng(0), pretext=True)
    df = run_dose_metrics([run], set="val")
    assert list(df["repeat"]) == [0, 1]
    # noise SD 0.02 against level gaps of >= 0.045: nearly all exact, MAE about 0.016
    assert (df["pct_exact"] >= 70).all()
    assert df["mae"].between(0.002, 0.04).all()


# --- the comparison with the published numbers ---------------------------------------------------------------------------


def test_comparison_table_puts_every_published_number_next_to_ours(tmp_path):
    ref = read_reference()
    assert len(ref) > 100 and {"table_II", "table_III", "table_IV", "fig_10"} <= set(ref["table"])
    rng = np.random.default_rng(2)
    runs = [write_run(tmp_path, "pipelines", name, 2, rng) for name in ("b", "c")]
    summary = summarise(run_metrics(runs))
    ours = pd.concat(
        [
            for_comparison(summary, "table_IV", {"b": "b_imagenet_last2", "c": "c_pretext_random"}),
            for_comparison(summary[summary["score"] == "all"], "fig_10", {"b": "b_imagenet_last2"}),
        ]
    )
    out = comparison_table(ours)
    assert list(out.columns) == [
        "table",
        "row",
        "metric",
        "score",
        "paper",
        "paper_sd",
        "petiq",
        "petiq_sd",
        "n_repeats",
    ]
    assert len(out) == len(ref)  # every published number, once
    cell = out[
        (out["table"] == "table_IV")
        & (out["row"] == "b_imagenet_last2")
        & (out["metric"] == "mae")
        & (out["score"] == "GQR")
    ].iloc[0]
    assert (cell["paper"], cell["paper_sd"]) == (0.22, 0.06)
    expected = summary[(summary["run"] == "b") & (summary["metric"] == "mae") & (summary["score"] == "GQR")].iloc[0]
    assert cell["petiq"] == pytest.approx(expected["mean"]) and cell["petiq_sd"] == pytest.approx(expected["sd"])
    assert cell["n_repeats"] == 2
    fig = out[(out["table"] == "fig_10") & (out["row"] == "b_imagenet_last2")].iloc[0]
    assert fig["paper"] == 0.53 and np.isfinite(fig["petiq"])
    assert out[out["table"] == "table_II"]["petiq"].isna().all()  # not computed here: left empty
    with pytest.raises(PetiqInputError, match="two petiq values"):
        comparison_table(pd.concat([ours, ours]))


# --- figures ---------------------------------------------------------------------------------------------------------------


def is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_boxplots_from_arm_metrics(tmp_path):
    from types import SimpleNamespace

    from petiq.evaluation.metrics import arm_metrics
    from petiq.plots.experiments import plot_boxplots

    rng = np.random.default_rng(4)
    for k in (0, 2):
        write_run(tmp_path / "models", "x", f"k{k}", 3, rng)
    arms = [SimpleNamespace(label=str(k), run=f"x/k{k}", repeats=2) for k in (0, 2)]
    df = arm_metrics(arms, tmp_path / "models")
    assert df.groupby("arm")["repeat"].nunique().to_dict() == {"0": 2, "2": 2}  # an arm uses its first `repeats`
    out = tmp_path / "fig08.png"
    plot_boxplots(df, "arm", ["0", "2"], out, "convolutional blocks retrained")
    assert is_png(out)
    plot_boxplots(df, "arm", ["0", "2"], tmp_path / "fig10.png", "pipeline", panels=("mae",))  # Fig. 10: MAE only
    assert is_png(tmp_path / "fig10.png")
    with pytest.raises(PetiqInputError, match=r"values \['2'\] not in order"):
        plot_boxplots(df, "arm", ["0"], tmp_path / "bad.png", "k")
    with pytest.raises(PetiqInputError, match="3 repeat"):
        arm_metrics([SimpleNamespace(label="0", run="x/k0", repeats=5)], tmp_path / "models")


def test_backbones_ranked_by_validation_loss_and_random_weights_marked(tmp_path):
    from petiq.plots.experiments import plot_backbones

    rows = []
    for name, origin, loss in (
        ("vgg16", "keras_onnx", 0.30),
        ("resnet18", "torch_hub", 0.20),
        ("densenet121", "random", 0.25),
    ):
        for r in range(3):
            rows.append(
                {
                    "backbone": name,
                    "repeat": r,
                    "score": "all",
                    "mae": 0.5 + 0.01 * r,
                    "best_val_loss": loss + 0.001 * r,
                    "weights_origin": origin,
                }
            )
    out = tmp_path / "fig04.png"
    table = plot_backbones(pd.DataFrame(rows), out)
    assert is_png(out)
    assert list(table["backbone"]) == ["resnet18", "densenet121", "vgg16"]
    assert list(table["random"]) == [False, True, False]
    assert table["sd"].iloc[0] == pytest.approx(0.01)


@pytest.fixture(scope="module")
def vgg16():
    """torchvision's VGG16 convolutional part (its 'D' configuration), without the 102 M-parameter classifier."""
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    net = torch.nn.Module()
    net.features = make_layers(cfgs["D"])
    return net.eval()


def test_fig05_reads_the_network_from_the_model(vgg16, tmp_path):
    from petiq.plots.diagrams import describe_network, plot_fig05_vgg16, trained_blocks

    info = describe_network(vgg16, patch_size=80)
    blocks = info["blocks"]
    assert [b["out_shape"] for b in blocks] == [(64, 40, 40), (128, 20, 20), (256, 10, 10), (512, 5, 5), (512, 2, 2)]
    assert [b["layers"][0] for b in blocks] == [
        "2 × conv 3×3, 64",
        "2 × conv 3×3, 128",
        "3 × conv 3×3, 256",
        "3 × conv 3×3, 512",
        "3 × conv 3×3, 512",
    ]
    assert sum(b["n_params"] for b in blocks) == sum(p.numel() for p in vgg16.features.parameters())
    for k in range(6):
        assert trained_blocks(None, k) == [i >= 5 - k for i in range(5)]
    with pytest.raises(PetiqInputError, match="outside 0–5"):
        trained_blocks(None, 6)
    out = tmp_path / "fig05.png"
    plot_fig05_vgg16(vgg16, range(6), out)
    assert is_png(out)


def test_fig05_from_the_training_engines_model(tmp_path):
    from petiq.learning.models import build_model, describe_blocks
    from petiq.plots.diagrams import describe_network, plot_fig05_vgg16, trained_blocks

    model = build_model("vgg16", 3, head="relu", patch_size=32, device="meta")
    info = describe_network(model)
    assert [b["out_shape"] for b in info["blocks"]] == [
        (64, 16, 16),
        (128, 8, 8),
        (256, 4, 4),
        (512, 2, 2),
        (512, 1, 1),
    ]
    assert info["head"] == "flatten 512 → FC 3 + ReLU" and info["input"].startswith("32×32")
    for k in range(6):  # the engine's own freeze rule, read from its block descriptions
        assert trained_blocks(model, k) == [b["trained"] for b in describe_blocks(model, k)[:5]]
    plot_fig05_vgg16(describe_blocks(model, 2), 2, tmp_path / "fig05_k2.png", patch_size=32)  # from descriptions
    assert is_png(tmp_path / "fig05_k2.png")


def test_fig07_pipelines_from_the_configuration(tmp_path):
    from types import SimpleNamespace

    from petiq.plots.diagrams import pipeline_stages, plot_fig07_pipelines

    pretext = {"pre_rand": SimpleNamespace(init="random", freeze_level=5, learning_rate=1e-4, backbone="vgg16")}
    pipelines = {
        "a": {"init": "random", "freeze_level": 5, "learning_rate": 1e-3},
        "b": {"init": "imagenet", "freeze_level": 2, "learning_rate": 1e-4},
        "c": SimpleNamespace(init="pretext/pre_rand", freeze_level=0, learning_rate=1e-4, backbone="vgg16"),
        "d": {"init": "pretext", "freeze_level": 2, "pretext": {"init": "imagenet", "freeze_level": 2}},
    }
    stages = pipeline_stages(pipelines, runs=pretext)
    assert stages["a"]["pretext"] is None and stages["a"]["transfer"]["learning_rate"] == 1e-3
    assert (
        stages["c"]["init"] == "random"
        and stages["c"]["pretext"]["freeze_level"] == 5
        and stages["c"]["transfer"]["freeze_level"] == 0
    )
    assert stages["d"]["init"] == "imagenet"
    out = tmp_path / "fig07.png"
    plot_fig07_pipelines(pipelines, out, runs=pretext)
    assert is_png(out)
    with pytest.raises(PetiqInputError, match="not described"):
        pipeline_stages({"c": pipelines["c"]})
