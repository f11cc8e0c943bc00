"""Rules train_pretext, train_transfer, train_survey, train_baseline: every repeat of one run
(petiq.learning.runs.train_planned_run)."""

from pathlib import Path

import torch

from petiq.core.logs import log_to
from petiq.learning.runs import train_planned_run

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, p = snakemake.input, snakemake.params  # every config value arrives as a param (training_params in common.smk)
train_planned_run(
    p.run,
    p.stage,
    [Path(f).parent for f in snakemake.output.card_json],  # rep-0, rep-1, … in order
    patches_dir=Path(i.patches[0]).parents[1],
    splits_tsv=i.splits,
    participants_tsv=i.participants,
    ratings_tsv=i.ratings or None,
    init_checkpoint=i.init[0] if len(i.init) else None,
    recon_dir=p.recon,
    training=p.training,
    patches=p.patches,
    doses=p.doses,
    seed=p.seed,
    repeats=p.repeats,
    label_rater=p.label_rater,
    ratings_setting=p.ratings,
    device=p.device,
)
