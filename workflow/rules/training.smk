# Stage 6 — training (petiq.learning.train): the pretext dose models (Table II), the transfer runs of
# Figs. 8–10, the backbone survey (Fig. 4) and the dose-only baseline (Table III). Each job trains
# every repeat of one configuration together (stacked models: one launch per step on a GPU).
import re

RUN_FILES = ("model.pt", "card.json", "curve.tsv", "curve.png", "predictions_images.tsv", "predictions_patches.tsv")

for _stage in ("pretext", "transfer", "survey", "baseline"):
    if not PLAN.runs_of(_stage):
        continue

    rule:
        name:
            f"train_{_stage}"
        input:
            patches=ALL_PATCHES,
            splits=rules.splits.output.tsv,
            participants=rules.participants.output.tsv,
            ratings=[] if _stage == "pretext" else RATINGS,
            init=init_checkpoint,
        output:
            **{
                name.replace(".", "_"): expand(
                    f"{MODELS}/{_stage}/{{{{run}}}}/rep-{{rep}}/{name}", rep=range(STAGE_REPEATS[_stage])
                )
                for name in RUN_FILES
            },
        log:
            log_path("training", f"{_stage}_{{run}}"),
        benchmark:
            benchmark_path("training", f"{_stage}_{{run}}")
        wildcard_constraints:
            run="|".join(re.escape(r) for r in PLAN.runs_of(_stage)),
        conda:
            ENV
        threads: 2
        resources:
            mem_mb=mem_mb(16000),
            runtime=24 * 60,
            gpu=0 if _stage == "baseline" else GPU_PER_TRAIN,
        params:
            **training_params(_stage),
            stage=_stage,
            device=config["device"],
            repeats=STAGE_REPEATS[_stage],
            recon=RECON,
        script:
            "../scripts/train.py"


rule training:
    """Every repeat of every planned model (pretext, transfer, survey, baseline): ``snakemake training``."""
    input:
        [
            run_files(run, name)
            for stage in ("pretext", "transfer", "survey", "baseline")
            for run in PLAN.runs_of(stage)
            for name in RUN_FILES
        ],
