"""Benchmark of `petiq recon` on a full mMR acquisition as a site exports it, per step.

Makes the export itself (no workflow run needed): a head-sized activity phantom (an ellipsoid of
"white matter" with a "grey matter" shell, 8 / 32 kBq/mL) on the mMR's 344×344×127 grid, simulated
as PETLINK list-mode (15 min), the simulated scanner's component norm as `.n` + `.n.hdr`, the
μ-map as e7 Interfile; then reconstructs it with `petiq.recon.chain.reconstruct_acquisition` (what
`petiq recon` runs: histogram, norm from the `.n`, randoms, attenuation, scatter, OP-OSEM) and
reports every step's seconds, the peak memory and the activity recovered in the white matter.

    python benchmarks/bench_recon_chain.py                       # mMR, 2 x 21
    python benchmarks/bench_recon_chain.py --scanner demo        # a quick look
    python benchmarks/bench_recon_chain.py --iterations 1 --subsets 21 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from petiq.listmode.simulate import scanner_component_norm, simulate_patient
from petiq.recon.chain import reconstruct_acquisition
from petiq.recon.norm_writer import write_component_norm
from petiq.scanner.frame import scanner_grid_affine
from petiq.scanner.geometry import Scanner

WM, GM = 8.0, 32.0  # kBq/mL


def _phantom(sc: Scanner):
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(sc.image_shape, sc.voxel_size_mm)]
    r = np.sqrt(
        (axes[0][:, None, None] / 70) ** 2 + (axes[1][None, :, None] / 85) ** 2 + (axes[2][None, None, :] / 60) ** 2
    )
    head = r < 1.0
    activity = np.where(r < 0.8, WM, np.where(head, GM, 0.0)).astype(np.float32)
    return activity, (0.096 * head).astype(np.float32), r < 0.6


def _write_e7(path: Path, mu_xyz: np.ndarray, voxel_mm) -> Path:
    """e7 Interfile μ-map: float32 [z][row v][column u], rows along −y (docs/mumaps.md)."""
    e7 = np.transpose(mu_xyz[:, ::-1, :], (2, 1, 0))
    path.write_bytes(np.ascontiguousarray(e7, dtype="<f4").tobytes())
    nz, ny, nx = e7.shape
    hdr = path.with_name(path.name + ".hdr")
    hdr.write_text(
        "!INTERFILE :=\n!name of data file := " + path.name + "\nnumber format := float\n"
        "!number of bytes per pixel := 4\nimagedata byte order := LITTLEENDIAN\nnumber of dimensions := 3\n"
        f"matrix size [1] := {nx}\nmatrix size [2] := {ny}\nmatrix size [3] := {nz}\n"
        + "".join(f"scale factor (mm/pixel) [{i}] := {v:.5f}\n" for i, v in zip((1, 2, 3), voxel_mm))
        + "!END OF INTERFILE :=\n"
    )
    return hdr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scanner", default="mmr")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--subsets", type=int, default=21)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--duration", type=float, default=900.0)
    args = parser.parse_args()
    sc = Scanner.from_name(args.scanner)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        activity, mu, wm = _phantom(sc)
        affine = scanner_grid_affine(sc.image_shape, sc.voxel_size_mm)
        for name, data in (("truth", activity), ("mu", mu)):
            nib.save(nib.Nifti1Image(data, affine), d / f"{name}.nii.gz")
        t0 = time.perf_counter()
        sim = simulate_patient(
            truth_path=d / "truth.nii.gz",
            mumap_path=d / "mu.nii.gz",
            participant={"participant_id": "sub-01", "injected_mbq": 200.0, "weight_kg": 70.0, "uptake_min": 40.0},
            scanner=sc,
            scanner_seed=1,
            seed=2,
            out_path=d / "acq.l",
            duration_s=args.duration,
            progress=False,
        )
        simulate_s = time.perf_counter() - t0
        write_component_norm(d / "norm.n", scanner_component_norm(sc, 1, 11), sc)
        mumap = _write_e7(d / "umap.v", mu, sc.voxel_size_mm)
        (d / "truth.nii.gz").unlink()
        (d / "mu.nii.gz").unlink()
        done = reconstruct_acquisition(
            d / "acq.l",
            norm=d / "norm.n",
            mumap=mumap,
            out_nii=d / "sub-01_pet.nii.gz",
            scanner=sc,
            span=11,
            n_iterations=args.iterations,
            n_subsets=args.subsets,
            backend="cpu",
            threads=args.threads,
            progress=False,
        )
        image = np.asarray(nib.load(d / "sub-01_pet.nii.gz").dataobj)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "scanner": sc.name,
                "iterations x subsets": f"{args.iterations} x {args.subsets}",
                "prompts": sim["prompts"],
                "simulate_s": round(simulate_s, 1),
                "recon_steps_s": done["timings_s"],
                "peak_rss_mb": round(peak_mb),
                "white_matter_kBq_per_mL": round(float(image[wm].mean()), 3),
                "white_matter_truth": WM,
            },
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
