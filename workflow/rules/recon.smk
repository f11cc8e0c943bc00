# Stage 3 — e7-style reconstruction (petiq.recon: corrections, osem): normalisation from the norm
# scan, randoms from the delayeds, attenuation from the μ-map, scatter scaled to the tails, then
# OP-OSEM (2 iterations × 21 subsets by default) for every patient and dose, written as a BIDS
# dataset (RECON, common.smk) with the 0-1 images as its derivatives.


rule norm:
    """The simulated scanner's normalisation sinograms: from its component norm file (config
    recon.norm: component) or estimated from its norm scan (norm_scan)."""
    input:
        src=synthetic_norm_source,
    output:
        npz=f"{SINOGRAMS}/norm.npz",
    log:
        log_path("recon", "norm"),
    benchmark:
        benchmark_path("recon", "norm")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=mem_mb(8000),
        runtime=30,
    params:
        scanner=config["scanner"],
        span=config["span"],
    script:
        "../scripts/recon_norm.py"


rule site_norm:
    """A real patient's normalisation sinograms from the site's component norm (.n + .n.hdr, or
    the norm DICOM) named in the patient sheet."""
    input:
        src=site_norm_source,
        pair=site_norm_pair,
    output:
        npz=f"{SINOGRAMS}/{{subject}}/{{subject}}_norm.npz",
    log:
        log_path("recon", "site_norm_{subject}"),
    benchmark:
        benchmark_path("recon", "site_norm_{subject}")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=mem_mb(8000),
        runtime=30,
    params:
        scanner=config["scanner"],
        span=config["span"],
    script:
        "../scripts/recon_norm.py"


rule randoms:
    """Expected randoms from the delayeds: singles from fan sums (variance-reduced)."""
    input:
        sinograms=rules.histogram.output.npz,
    output:
        npz=f"{SINOGRAMS}/{{subject}}/{{subject}}_dose-{{dose}}_randoms.npz",
    log:
        log_path("recon", "randoms_{subject}_dose-{dose}"),
    benchmark:
        benchmark_path("recon", "randoms_{subject}_dose-{dose}")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=20,
    params:
        scanner=config["scanner"],
        span=config["span"],
    script:
        "../scripts/recon_randoms.py"


rule attenuation:
    """Attenuation factors exp(−P μ) from the patient's μ-map [+ the site's hardware μ-maps, placed
    by the list-mode's bed position] (the same for every dose)."""
    input:
        mumap=patient_mumap,
        hardware=patient_hardware_mumaps,
        listmode=hardware_listmode,
    output:
        npz=f"{SINOGRAMS}/{{subject}}/{{subject}}_attenuation.npz",
    log:
        log_path("recon", "attenuation_{subject}"),
    benchmark:
        benchmark_path("recon", "attenuation_{subject}")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=20,
    params:
        scanner=config["scanner"],
        span=config["span"],
    script:
        "../scripts/recon_attenuation.py"


rule scatter:
    """Scatter estimate: smoothed emission inside the head, scaled to the emission tails."""
    input:
        sinograms=rules.histogram.output.npz,
        norm=subject_norm,
        randoms=rules.randoms.output.npz,
        attenuation=rules.attenuation.output.npz,
    output:
        npz=f"{SINOGRAMS}/{{subject}}/{{subject}}_dose-{{dose}}_scatter.npz",
    log:
        log_path("recon", "scatter_{subject}_dose-{dose}"),
    benchmark:
        benchmark_path("recon", "scatter_{subject}_dose-{dose}")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=mem_mb(6000),
        runtime=30,
    params:
        scanner=config["scanner"],
        span=config["span"],
    script:
        "../scripts/recon_scatter.py"


rule osem:
    """OP-OSEM with every correction in the system model; image in kBq/mL and normalised 0–1."""
    input:
        sinograms=at_rec_dose(rules.histogram.output.npz),
        norm=subject_norm,
        randoms=at_rec_dose(rules.randoms.output.npz),
        attenuation=rules.attenuation.output.npz,
        scatter=at_rec_dose(rules.scatter.output.npz),
        participants=rules.participants.output.tsv,
    output:
        image=RECON_PATHS["image"],
        sidecar=RECON_PATHS["sidecar"],
        norm01=RECON_PATHS["norm01"],
    log:
        log_path("recon", "osem_{subject}_rec-{rec}"),
    benchmark:
        benchmark_path("recon", "osem_{subject}_rec-{rec}")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=mem_mb(8000),
        runtime=60,
        gpu=GPU_PER_RECON,
    params:
        scanner=config["scanner"],
        span=config["span"],
        iterations=config["recon"]["iterations"],
        subsets=config["recon"]["subsets"],
        post_filter_fwhm_mm=config["recon"]["post_filter_fwhm_mm"],
        device=config["device"],
    script:
        "../scripts/recon_osem.py"


rule fig01_dose_examples:
    """Fig. 1 of the paper: cropped transverse slices at low, medium and high dose for two patients."""
    input:
        unpack(fig01_inputs),
    output:
        png=report(
            f"{FIGURES}/fig01_dose_examples.png",
            caption="../report/fig01.rst",
            category="Reconstruction",
        ),
    log:
        log_path("figures", "fig01_dose_examples"),
    benchmark:
        benchmark_path("figures", "fig01_dose_examples")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=10,
    params:
        examples=fig01_examples,
    script:
        "../scripts/fig01_dose_examples.py"


rule bids_dataset:
    """The BIDS dataset's own files: dataset_description.json, README, participants.tsv/.json, and
    the derivatives' dataset_description.json and shared 0-1 sidecar."""
    input:
        participants=rules.participants.output.tsv,
    output:
        description=f"{RECON}/dataset_description.json",
        readme=f"{RECON}/README",
        participants=f"{RECON}/participants.tsv",
        participants_json=f"{RECON}/participants.json",
        derivatives=f"{RECON}/{bids.DERIVATIVES.as_posix()}/dataset_description.json",
        norm01_json=f"{RECON}/{bids.DERIVATIVES.as_posix()}/desc-norm01_pet.json",
    log:
        log_path("recon", "bids_dataset"),
    benchmark:
        benchmark_path("recon", "bids_dataset")
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=5,
    script:
        "../scripts/bids_dataset.py"


rule recon:
    """Every reconstruction of every patient and dose as a BIDS dataset, and Fig. 1."""
    input:
        [recon_image(s, d) for s in SUBJECTS for d in DOSES],
        rules.bids_dataset.output,
        rules.fig01_dose_examples.output,
