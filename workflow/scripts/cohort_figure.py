"""Rule cohort_figure: mid-brain slices of every synthetic patient (petiq.plots.plot_cohort)."""

from petiq.cohort.patients import read_participants
from petiq.core.logs import log_to
from petiq.plots import plot_cohort

log = log_to(snakemake.log[0])
inputs = snakemake.input
images = {
    subject: {"truth": t, "mumap": m, "t1w": r, "brainmask": b}
    for subject, t, m, r, b in zip(snakemake.params.subjects, inputs.truth, inputs.mumap, inputs.t1w, inputs.brainmask)
}
plot_cohort(read_participants(inputs.participants), images, snakemake.output.png)
log.info("wrote %s", snakemake.output.png)
