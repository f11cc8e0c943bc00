# Stage 7 — evaluation (petiq.evaluation.metrics) and the paper's figures and tables. Each is its own
# target: `snakemake --cores 2 results/figures/fig08_freeze_levels.png` trains only its runs.

BOXPLOT_FIGURES = {
    "fig08": ("fig08_freeze_levels", "convolutional blocks retrained"),
    "fig09": ("fig09_patients", "patients in the transfer set"),
    "fig10": ("fig10_pipelines", "pipeline"),
}

for _experiment, (_name, _xlabel) in BOXPLOT_FIGURES.items():

    rule:
        name:
            _name
        input:
            arm_inputs(_experiment),
        output:
            png=report(f"{FIGURES}/{_name}.png", caption=f"../report/{_name}.rst", category="Experiments"),
            tsv=f"{TABLES}/{_name}.tsv",
        log:
            log_path("figures", _name),
        benchmark:
            benchmark_path("figures", _name)
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=mem_mb(2000),
            runtime=10,
        params:
            arms=arm_predictions(_experiment),
            xlabel=_xlabel,
        script:
            "../scripts/experiment_figure.py"


rule table4_pipelines:
    """Table IV: MAE, % exact, % close (mean ± SD over repeats) and Spearman per pipeline and metric."""
    input:
        arm_inputs("fig10"),
    output:
        tsv=report(f"{TABLES}/table4_pipelines.tsv", caption="../report/table4_pipelines.rst", category="Tables"),
    log:
        log_path("figures", "table4_pipelines"),
    benchmark:
        benchmark_path("figures", "table4_pipelines")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        arms=arm_predictions("fig10"),
    script:
        "../scripts/summary_table.py"


rule table3_dose_baseline:
    """Table III: the dose-per-weight-only model against the pre-trained network (pipeline b)."""
    input:
        arm_inputs("table3"),
    output:
        tsv=report(
            f"{TABLES}/table3_dose_baseline.tsv", caption="../report/table3_dose_baseline.rst", category="Tables"
        ),
    log:
        log_path("figures", "table3_dose_baseline"),
    benchmark:
        benchmark_path("figures", "table3_dose_baseline")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        arms=arm_predictions("table3"),
    script:
        "../scripts/summary_table.py"


rule table2_pretext:
    """Table II: the pretext models' dose-per-weight error on the validation patient's doses."""
    input:
        arm_inputs("table2"),
    output:
        tsv=report(f"{TABLES}/table2_pretext.tsv", caption="../report/table2_pretext.rst", category="Tables"),
    log:
        log_path("figures", "table2_pretext"),
    benchmark:
        benchmark_path("figures", "table2_pretext")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        arms=arm_predictions("table2"),
    script:
        "../scripts/table2_pretext.py"


rule fig04_backbones:
    """Fig. 4: test MAE per backbone, ranked by validation loss; random-weight backbones marked."""
    input:
        predictions=arm_inputs("fig04"),
        cards=[f for a in PLAN.arms["fig04"] for f in run_files(a.run, "card.json", a.repeats)],
    output:
        png=report(f"{FIGURES}/fig04_backbones.png", caption="../report/fig04_backbones.rst", category="Experiments"),
        tsv=f"{TABLES}/fig04_backbones.tsv",
    log:
        log_path("figures", "fig04_backbones"),
    benchmark:
        benchmark_path("figures", "fig04_backbones")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        arms=arm_predictions("fig04"),
    script:
        "../scripts/fig04_backbones.py"


rule diagrams:
    """Figs. 5 and 7 drawn from the model code and the experiment plan (not by hand)."""
    output:
        fig05=report(f"{FIGURES}/fig05_vgg16.png", caption="../report/fig05_vgg16.rst", category="Methods"),
        fig07=report(f"{FIGURES}/fig07_pipelines.png", caption="../report/fig07_pipelines.rst", category="Methods"),
    log:
        log_path("figures", "diagrams"),
    benchmark:
        benchmark_path("figures", "diagrams")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        patch_size=config["patches"]["size"],
        backbone=config["training"]["backbone"],
        head=config["training"]["head"],
        pipelines={arm.label: PLAN.runs[arm.run].as_dict() for arm in PLAN.arms["fig10"]},
        runs={name: run.as_dict() for name, run in PLAN.runs.items()},
    script:
        "../scripts/diagrams.py"


rule paper_comparison:
    """Every published number next to this run's (shared/paper reference_results.tsv)."""
    input:
        table2=rules.table2_pretext.output.tsv,
        table3=rules.table3_dose_baseline.output.tsv,
        table4=rules.table4_pipelines.output.tsv,
        fig10=f"{TABLES}/fig10_pipelines.tsv",
        calibration=f"{TABLES}/reader_calibration.tsv",
    output:
        tsv=report(f"{TABLES}/paper_comparison.tsv", caption="../report/paper_comparison.rst", category="Tables"),
    log:
        log_path("figures", "paper_comparison"),
    benchmark:
        benchmark_path("figures", "paper_comparison")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=5,
    script:
        "../scripts/paper_comparison.py"


rule score_images:
    """Score a folder of new reconstructions with pipeline (b)'s first model (config score_images)."""
    input:
        model=lambda wildcards: run_files(PLAN.arms["fig10"][2].run, "model.pt", 1),
        folder=config["score_images"] or [],
    output:
        tsv=f"{TABLES}/scored_images.tsv",
    log:
        log_path("figures", "score_images"),
    benchmark:
        benchmark_path("figures", "score_images")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    params:
        petiq=PETIQ,
    shell:
        "{params.petiq} --log {log} predict --model $(dirname {input.model}) {input.folder} --tsv {output.tsv} --force --quiet"


FIGURE_TARGETS = [
    *(f"{FIGURES}/{name}.png" for name, _ in BOXPLOT_FIGURES.values()),
    f"{FIGURES}/fig04_backbones.png",
    f"{FIGURES}/fig05_vgg16.png",
    f"{FIGURES}/fig07_pipelines.png",
    f"{TABLES}/table2_pretext.tsv",
    f"{TABLES}/table3_dose_baseline.tsv",
    f"{TABLES}/table4_pipelines.tsv",
    f"{TABLES}/paper_comparison.tsv",
    *([f"{TABLES}/scored_images.tsv"] if config["score_images"] else []),
]


rule figures:
    """Every figure and table of the paper: ``snakemake figures``."""
    input:
        FIGURE_TARGETS,
