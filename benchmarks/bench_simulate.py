"""Benchmark and count-level check of the list-mode simulation.

Simulates one cohort patient's 100 % acquisition with a scanner preset and reports the time, peak
memory, prompts, delayeds and the randoms and scatter fractions. At mMR scale a typical patient
should give of the order of 10^8 prompts (PET.md: a clinical mMR brain FDG scan).

    python benchmarks/bench_simulate.py --scanner mmr --subject sub-01
    python benchmarks/bench_simulate.py --scanner demo --cohort results/cohort

The cohort (truth and μ-map NIfTI, participants.tsv) comes from the workflow's cohort stage.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from petiq.cohort.patients import read_participants
from petiq.listmode.simulate import simulate_patient
from petiq.scanner.geometry import Scanner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scanner", default="mmr")
    parser.add_argument("--cohort", default="results/cohort")
    parser.add_argument("--subject", default="sub-01")
    parser.add_argument("--duration", type=float, default=900.0)
    args = parser.parse_args()
    cohort = Path(args.cohort)
    participants = read_participants(cohort / "participants.tsv").set_index("participant_id", drop=False)
    row = participants.loc[args.subject].to_dict()
    scanner = Scanner.from_name(args.scanner)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = simulate_patient(
            truth_path=cohort / args.subject / f"{args.subject}_pet-truth.nii.gz",
            mumap_path=cohort / args.subject / f"{args.subject}_mumap.nii.gz",
            participant=row,
            scanner=scanner,
            scanner_seed=1,
            seed=2,
            out_path=Path(tmp) / "acq.l",
            duration_s=args.duration,
            progress=False,
        )
        seconds = time.perf_counter() - start
        size_mb = (Path(tmp) / "acq.l").stat().st_size / 2**20
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "scanner": scanner.name,
                "seconds": round(seconds, 1),
                "peak_rss_mb": round(peak_mb),
                "file_mb": round(size_mb),
                **{
                    k: summary[k]
                    for k in (
                        "prompts",
                        "delayeds",
                        "randoms_fraction_of_prompts",
                        "scatter_fraction",
                        "activity_in_fov_mbq",
                        "mean_attenuation_factor",
                    )
                },
            },
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
