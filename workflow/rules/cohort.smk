# Stage 1 — the digital memory-clinic cohort (petiq.cohort.anatomy, petiq.cohort.phantom, petiq.cohort.patients,
# petiq.learning.splits): synthetic patients, their metadata, the data splits and the cohort figure.


# The atlas download needs PyPI: run it where the workflow is launched, not on a compute node.
localrules:
    anatomy,


rule anatomy:
    """Hammers atlas and CSF map from the t1prep wheel on PyPI (the only download; see README)."""
    output:
        ANATOMY_FILES,
    log:
        log_path("cohort", "anatomy"),
    benchmark:
        benchmark_path("cohort", "anatomy")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=10,
    params:
        petiq=PETIQ,
        folder=lambda wildcards, output: Path(output[0]).parent,
    shell:
        "{params.petiq} --log {log} resources fetch --dest {params.folder}"


rule participants:
    """One row per patient: diagnosis, severity, age, sex, weight, injected activity, uptake time."""
    input:
        sheet=config["patients"],
    output:
        tsv=f"{COHORT}/participants.tsv",
    log:
        log_path("cohort", "participants"),
    benchmark:
        benchmark_path("cohort", "participants")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(500),
        runtime=5,
    params:
        seed=config["seed"],
        mix=config["cohort"]["diagnosis_mix"],
        clinic=config["cohort"]["clinic"],
    script:
        "../scripts/participants.py"


rule phantom:
    """A synthetic patient: true FDG activity, μ-map, T1w, brain mask and a JSON sidecar."""
    input:
        participants=rules.participants.output.tsv,
        anatomy=ANATOMY_FILES,
    output:
        truth=f"{COHORT}/{{subject}}/{{subject}}_pet-truth.nii.gz",
        mumap=f"{COHORT}/{{subject}}/{{subject}}_mumap.nii.gz",
        t1w=f"{COHORT}/{{subject}}/{{subject}}_T1w.nii.gz",
        brainmask=f"{COHORT}/{{subject}}/{{subject}}_brainmask.nii.gz",
        json=f"{COHORT}/{{subject}}/{{subject}}.json",
    log:
        log_path("cohort", "phantom_{subject}"),
    benchmark:
        benchmark_path("cohort", "phantom_{subject}")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(3000),
        runtime=10,
    params:
        seed=config["seed"],
        anatomy_dir=lambda wildcards, input: Path(input.anatomy[0]).parent,
        shape=config["cohort"]["shape"],
        voxel_size_mm=config["cohort"]["voxel_size_mm"],
    script:
        "../scripts/phantom.py"


rule splits:
    """Roles (pretext / transfer / test) by a balancing integer programme, or the user's own file."""
    input:
        participants=rules.participants.output.tsv,
        user_file=config["splits"]["file"] or [],
    output:
        tsv=f"{COHORT}/splits.tsv",
    log:
        log_path("cohort", "splits"),
    benchmark:
        benchmark_path("cohort", "splits")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=5,
    params:
        seed=config["seed"],
        counts=config["splits"]["counts"],
        unrated=unrated_patients(),
    script:
        "../scripts/splits.py"


rule cohort_figure:
    """Mid-brain slices of activity, μ-map and T1w for every synthetic patient."""
    input:
        participants=rules.participants.output.tsv,
        truth=expand(rules.phantom.output.truth, subject=SYNTHETIC),
        mumap=expand(rules.phantom.output.mumap, subject=SYNTHETIC),
        t1w=expand(rules.phantom.output.t1w, subject=SYNTHETIC),
        brainmask=expand(rules.phantom.output.brainmask, subject=SYNTHETIC),
    output:
        png=report(
            f"{FIGURES}/cohort.png",
            caption="../report/cohort.rst",
            category="Cohort",
        ),
    log:
        log_path("figures", "cohort"),
    benchmark:
        benchmark_path("figures", "cohort")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(3000),
        runtime=10,
    params:
        subjects=SYNTHETIC,
    script:
        "../scripts/cohort_figure.py"


rule cohort_table:
    """Demographics per role."""
    input:
        participants=rules.participants.output.tsv,
        splits=rules.splits.output.tsv,
    output:
        tsv=report(
            f"{TABLES}/cohort.tsv",
            caption="../report/cohort_table.rst",
            category="Cohort",
        ),
    log:
        log_path("tables", "cohort"),
    benchmark:
        benchmark_path("tables", "cohort")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(500),
        runtime=5,
    script:
        "../scripts/cohort_table.py"


rule cohort:
    """Every output of the cohort stage."""
    input:
        rules.cohort_figure.output,
        rules.cohort_table.output,
        expand(rules.phantom.output.json, subject=SYNTHETIC),
