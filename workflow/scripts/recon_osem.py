"""Rule osem: OP-OSEM of one patient and dose (petiq.recon.pipeline.reconstruct_file)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from petiq.cohort import read_participants  # noqa: E402
from petiq.logs import log_to  # noqa: E402
from petiq.recon.pipeline import reconstruct_file  # noqa: E402
from petiq.scanner import Scanner  # noqa: E402

log = log_to(snakemake.log[0])
i, p, o, w = snakemake.input, snakemake.params, snakemake.output, snakemake.wildcards
row = read_participants(i.participants).set_index("participant_id").loc[w.subject]
metadata = {
    "participant_id": w.subject,
    "DoseFractionPercent": float(w.dose),
    "InjectedRadioactivity": float(row["injected_mbq"]) * float(w.dose) / 100.0,
    "InjectedRadioactivityUnits": "MBq",
    "FullInjectedRadioactivity": float(row["injected_mbq"]),
    "BodyWeight": float(row["weight_kg"]),
    "BodyWeightUnits": "kg",
}
reconstruct_file(
    i.sinograms, i.norm, i.randoms, i.attenuation, i.scatter, o.image, o.sidecar, o.norm01,
    scanner=Scanner.from_name(p.scanner), span=p.span, n_iterations=p.iterations, n_subsets=p.subsets,
    post_filter_fwhm_mm=p.post_filter_fwhm_mm, backend=p.device, metadata=metadata,
)
log.info("wrote %s", o.image)
