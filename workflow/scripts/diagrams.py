"""Rule diagrams: Fig. 5 from the model code (petiq.learning.models) and Fig. 7 from the experiment plan
(petiq.learning.experiments) — petiq.plots.diagrams."""

from petiq.core.logs import log_to
from petiq.learning.experiments import Run
from petiq.learning.models import build_model
from petiq.plots.diagrams import plot_fig05_vgg16, plot_fig07_pipelines

log = log_to(snakemake.log[0])
p = snakemake.params
model = build_model(p.backbone, 3, p.head, p.patch_size, device="meta")
plot_fig05_vgg16(model, range(6), snakemake.output.fig05, patch_size=p.patch_size)
runs = {name: Run(**run) for name, run in p.runs.items()}
plot_fig07_pipelines({label: Run(**run) for label, run in p.pipelines.items()}, snakemake.output.fig07, runs=runs)
log.info("drew %s and %s", snakemake.output.fig05, snakemake.output.fig07)
