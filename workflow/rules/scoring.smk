# Stage 4 — clinical scores (petiq.scoring.sessions, petiq.scoring.ratings, petiq.scoring.reader with truth, measures and calibrate, petiq.scoring.agreement):
# blinded reading sessions for real clinicians, and the calibrated virtual reader that scores the
# synthetic cohort in their place. With config scoring.ratings set, real ratings replace it.


rule sessions_plan:
    """Which image each rated patient is read at, in which blinded session (integer programme)."""
    input:
        splits=rules.splits.output.tsv,
        participants=rules.participants.output.tsv,
    output:
        key=f"{SCORES}/sessions/private/unblinding_key.tsv",
    log:
        log_path("scoring", "sessions_plan"),
    benchmark:
        benchmark_path("scoring", "sessions_plan")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        seed=derive_seed(config["seed"], "sessions"),
        doses=config["doses"],
        design=config["scoring"]["design"],
        rated_roles=config["scoring"]["rated_roles"],
        rereads=config["scoring"]["rereads"],
        sessions=config["scoring"]["sessions"],
    script:
        "../scripts/sessions_plan.py"


rule reading_sheets:
    """Per session: a PDF of blinded reading sheets (greyscale and the 20-colour scale) and a blank form."""
    input:
        key=rules.sessions_plan.output.key,
        images=[norm01_image(s, d) for s in SUBJECTS for d in DOSES],
    output:
        pdfs=expand(f"{SCORES}/sessions/session-{{session}}/session-{{session}}.pdf", session=SESSIONS),
        forms=expand(f"{SCORES}/sessions/session-{{session}}/session-{{session}}_ratings-form.tsv", session=SESSIONS),
    log:
        log_path("scoring", "reading_sheets"),
    benchmark:
        benchmark_path("scoring", "reading_sheets")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=30,
    script:
        "../scripts/reading_sheets.py"


rule reader_truth:
    """What a reader's experience stands for: tissue and disease-pattern masks on the recon grid."""
    input:
        sidecar=f"{COHORT}/{{subject}}/{{subject}}.json",
        anatomy=ANATOMY_FILES,
        reference=lambda wildcards: recon_image(wildcards.subject, DOSES[-1]),
        truth=f"{COHORT}/{{subject}}/{{subject}}_pet-truth.nii.gz",
    output:
        npz=f"{SCORES}/truth/{{subject}}_reader-truth.npz",
    log:
        log_path("scoring", "reader_truth_{subject}"),
    benchmark:
        benchmark_path("scoring", "reader_truth_{subject}")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=10,
    script:
        "../scripts/reader_truth.py"


rule virtual_reader:
    """Measure every planned image, calibrate the reader to the paper, then let each rater read."""
    input:
        key=rules.sessions_plan.output.key,
        participants=rules.participants.output.tsv,
        truths=[f"{SCORES}/truth/{s}_reader-truth.npz" for s in SYNTHETIC],
        images=[recon_image(s, d) for s in SYNTHETIC for d in DOSES],
    output:
        ratings=f"{SCORES}/ratings.tsv",
        measures=f"{SCORES}/image_measures.tsv",
        params=f"{SCORES}/reader_params.json",
    log:
        log_path("scoring", "virtual_reader"),
    benchmark:
        benchmark_path("scoring", "virtual_reader")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=30,
    params:
        raters=config["scoring"]["raters"],
        seed=derive_seed(config["seed"], "reader"),
    script:
        "../scripts/virtual_reader.py"


rule reader_calibration:
    """The readers' agreement and score ranges next to the paper's numbers."""
    input:
        ratings=RATINGS,
        participants=rules.participants.output.tsv,
    output:
        tsv=report(f"{TABLES}/reader_calibration.tsv", caption="../report/reader_calibration.rst", category="Scores"),
    log:
        log_path("scoring", "reader_calibration"),
    benchmark:
        benchmark_path("scoring", "reader_calibration")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=5,
    script:
        "../scripts/reader_calibration.py"


rule scoring_figures:
    """Figs. 2, 3 and 6 and Table I from the ratings (real or virtual)."""
    input:
        ratings=RATINGS,
        participants=rules.participants.output.tsv,
        images=[norm01_image(s, d) for s in SUBJECTS for d in DOSES],
    output:
        fig02=report(f"{FIGURES}/fig02_intersession.png", caption="../report/fig02_intersession.rst", category="Scores"),
        fig03=report(f"{FIGURES}/fig03_colour_scale.png", caption="../report/fig03_colour_scale.rst", category="Scores"),
        fig06=report(
            f"{FIGURES}/fig06_scores_vs_dose.png", caption="../report/fig06_scores_vs_dose.rst", category="Scores"
        ),
        table1=report(
            f"{TABLES}/table1_metric_correlations.tsv",
            caption="../report/table1_metric_correlations.rst",
            category="Scores",
        ),
    log:
        log_path("scoring", "scoring_figures"),
    benchmark:
        benchmark_path("scoring", "scoring_figures")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    script:
        "../scripts/scoring_figures.py"


SCORING_TARGETS = [
    *rules.scoring_figures.output,
    rules.reader_calibration.output.tsv,
    *rules.reading_sheets.output.pdfs,
]


rule scoring:
    """The reading sheets, the virtual reader's calibration and the scoring figures: ``snakemake scoring``."""
    input:
        SCORING_TARGETS,
