# Stage 5 — training patches (petiq.learning.patches): the paper's 80×80 patches from transverse, coronal
# and sagittal planes of every normalised reconstruction, background rejected at 1/8 of the mean.


rule extract_patches:
    """Random in-brain patches of one reconstruction, with the coordinates of every patch kept."""
    input:
        image=lambda wildcards: norm01_image(wildcards.subject, wildcards.dose),
    output:
        npy=f"{PATCHES}/{{subject}}/{{subject}}_dose-{{dose}}_patches.npy",
        tsv=f"{PATCHES}/{{subject}}/{{subject}}_dose-{{dose}}_patches.tsv",
    log:
        log_path("patches", "{subject}_dose-{dose}"),
    benchmark:
        benchmark_path("patches", "{subject}_dose-{dose}")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        petiq=PETIQ,
        size=config["patches"]["size"],
        candidates=config["patches"]["candidates"],
        per_plane=config["patches"]["per_plane"],
        threshold=config["patches"]["threshold"],
        dtype=config["patches"]["dtype"],
        seed=lambda wildcards: derive_seed(config["seed"], "patches", wildcards.subject, wildcards.dose),
    shell:
        "{params.petiq} --log {log} patches {input.image} --npy {output.npy} --tsv {output.tsv} --size {params.size}"
        " --candidates {params.candidates} --per-plane {params.per_plane} --threshold {params.threshold}"
        " --dtype {params.dtype} --seed {params.seed}"


rule patches:
    """Every patch table of every patient and dose: the patch stage (``snakemake patches``)."""
    input:
        ALL_PATCHES,
