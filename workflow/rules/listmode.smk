# Stage 2 — list-mode (petiq.scanner.geometry, petiq.listmode.simulate, petiq.listmode): a 100 % PETLINK acquisition
# per synthetic patient (real patients bring theirs), thinning to every dose fraction, histogramming.
rule norm_scan:
    """The scanner's normalisation acquisition: a uniform water cylinder (fan sums + sinogram)."""
    output:
        npz=f"{LISTMODE}/norm_scan.npz",
    log:
        log_path("listmode", "norm_scan"),
    benchmark:
        benchmark_path("listmode", "norm_scan")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
    params:
        scanner=config["scanner"],
        span=config["span"],
        seed=derive_seed(config["seed"], "norm_scan", config["scanner"]),
        scanner_seed=SCANNER_SEED,
        counts_per_bin=config["listmode"]["norm_counts_per_bin"],
        petiq=PETIQ,
    shell:
        "NUMBA_NUM_THREADS={threads} {params.petiq} --log {log} simulate --norm --scanner {params.scanner} --span {params.span}"
        " --seed {params.seed} --scanner-seed {params.scanner_seed} --norm-counts-per-bin {params.counts_per_bin} --out {output.npz}"


rule scanner_norm:
    """The simulated scanner's normalisation truth as the mMR writes its norm: a component norm
    file (.n + .n.hdr), read by rule norm as a site's own .n is."""
    output:
        n=f"{LISTMODE}/scanner_norm.n",
        hdr=f"{LISTMODE}/scanner_norm.n.hdr",
    log:
        log_path("listmode", "scanner_norm"),
    benchmark:
        benchmark_path("listmode", "scanner_norm")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        scanner=config["scanner"],
        span=config["span"],
        scanner_seed=SCANNER_SEED,
        petiq=PETIQ,
    shell:
        "{params.petiq} --log {log} simulate --norm --scanner {params.scanner} --span {params.span}"
        " --seed 0 --scanner-seed {params.scanner_seed} --out {output.n}"


rule simulate:
    """A synthetic patient's 100 % acquisition: trues, scatter and randoms as PETLINK list-mode
    (an Interfile or a DICOM export, config listmode.form)."""
    input:
        truth=rules.phantom.output.truth,
        mumap=rules.phantom.output.mumap,
        participants=rules.participants.output.tsv,
    output:
        listmode=f"{LISTMODE}/{{subject}}/{{subject}}_acq-full{LM_EXT}",
        pair=f"{LISTMODE}/{{subject}}/{{subject}}_acq-full{LM_PAIR}",
        summary=f"{LISTMODE}/{{subject}}/{{subject}}_acq-full_simulation.json",
    log:
        log_path("listmode", "simulate_{subject}"),
    benchmark:
        benchmark_path("listmode", "simulate_{subject}")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=mem_mb(6000),
        runtime=60,
    params:
        scanner=config["scanner"],
        span=config["span"],
        duration=config["listmode"]["duration_s"],
        seed=lambda wildcards: derive_seed(config["seed"], wildcards.subject, "simulate"),
        scanner_seed=SCANNER_SEED,
        petiq=PETIQ,
    shell:
        "NUMBA_NUM_THREADS={threads} {params.petiq} --log {log} simulate --scanner {params.scanner} --span {params.span}"
        " --seed {params.seed} --scanner-seed {params.scanner_seed} --duration {params.duration}"
        " --truth {input.truth} --mumap {input.mumap} --participants {input.participants}"
        " --subject {wildcards.subject} --out {output.listmode} --summary {output.summary}"


rule thin:
    """A lower dose: each prompt and delayed kept with probability dose/100 (seeded per patient and dose)."""
    input:
        listmode=source_listmode,
        pair=listmode_pair(source_listmode),
    output:
        listmode=f"{LISTMODE}/{{subject}}/{{subject}}_dose-{{dose}}{LM_EXT}",
        pair=f"{LISTMODE}/{{subject}}/{{subject}}_dose-{{dose}}{LM_PAIR}",
    log:
        log_path("listmode", "thin_{subject}_dose-{dose}"),
    benchmark:
        benchmark_path("listmode", "thin_{subject}_dose-{dose}")
    wildcard_constraints:
        dose=r"(?!100\.0)\d{3}\.\d",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(1500),
        runtime=30,
    params:
        petiq=PETIQ,
        fraction=lambda wildcards: float(wildcards.dose) / 100.0,
        seed=lambda wildcards: derive_seed(config["seed"], wildcards.subject, wildcards.dose, "thin"),
    shell:
        "{params.petiq} --log {log} thin {input.listmode} {output.listmode} --fraction {params.fraction} --seed {params.seed}"


rule histogram:
    """Prompts and delayeds sinograms (span from the config) and delayed fan sums of one dose."""
    input:
        listmode=dose_listmode,
        pair=listmode_pair(dose_listmode),
    output:
        npz=f"{SINOGRAMS}/{{subject}}/{{subject}}_dose-{{dose}}_sinograms.npz",
    log:
        log_path("listmode", "histogram_{subject}_dose-{dose}"),
    benchmark:
        benchmark_path("listmode", "histogram_{subject}_dose-{dose}")
    conda:
        ENV
    threads: 2  # the histogram pass adds on 2 threads (petiq.listmode.histogram)
    resources:
        mem_mb=mem_mb(3000),
        runtime=30,
    params:
        petiq=PETIQ,
        scanner=config["scanner"],
        span=config["span"],
    shell:
        "{params.petiq} --log {log} histogram {input.listmode} {output.npz} --scanner {params.scanner} --span {params.span} --threads {threads}"


rule listmode:
    """Every sinogram of every patient and dose, and the simulated scanner's norm."""
    input:
        synthetic_norm_source,
        expand(rules.histogram.output.npz, subject=SUBJECTS, dose=DOSES),
