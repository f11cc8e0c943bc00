"""Benchmark: training throughput (patches per second) of the plain loop versus petiq's engine.

    /tmp/venv/bin/python benchmarks/bench_train.py                       # CPU, freeze levels 0, 2, 5
    /tmp/venv/bin/python benchmarks/bench_train.py --steps 8 --rounds 5  # steadier numbers
    /tmp/venv/bin/python benchmarks/bench_train.py --device cuda --stack 7   # a GPU, 7 repeats stacked

VGG16 with random weights (no download), 80 × 80 patches, batch 10, MSE, Adam.

* **plain**: the textbook fp32 loop — every step runs the whole network (frozen blocks included) on the
  batch, backpropagates and takes an Adam step over the trainable parameters.
* **engine**: what :func:`petiq.learning.train.train_repeats` runs per step — frozen blocks read from the
  feature cache (computed once per patch; its cost is printed separately: a paper run has 1000 epochs to
  amortise it), the trainable part in bf16 + channels-last where ``precision="auto"`` chooses it, fused
  Adam; with ``--stack R``, R repeats stacked in one step (patches/s counts all R × batch patches).

Plain and engine steps alternate in ``--rounds`` rounds (the machine's load changes under us); each
number is the median over rounds of the round's throughput, after warm-up steps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from petiq.learning.data import apply_preprocessing
from petiq.learning.models import N_BLOCKS, build_model, set_freeze_level
from petiq.learning.precision import Compute, cpu_has_native_bf16, resolve_precision
from petiq.learning.stack import Front, Inputs, Stack, Tail, compute_features
from petiq.learning.weights import TORCHVISION_RGB

TARGETS = {0: 20.0, 2: 3.0, 5: 1.8}
PAPER_PATCH_STEPS = 950e6


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "native bf16 (AVX512-BF16/AMX)" if cpu_has_native_bf16() else "no native bf16"
    return f"{model}, {torch.get_num_threads()} torch threads, {bf16}, torch {torch.__version__}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Plain:
    """The textbook loop: whole network every step, fp32, contiguous memory, Adam over trainable parameters."""

    def __init__(self, k: int, patches: torch.Tensor, targets: torch.Tensor, device: torch.device, batch: int):
        self.model = set_freeze_level(build_model("vgg16", 3, patch_size=patches.shape[-1], seed=1), k).to(device)
        self.model.train()
        self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.patches, self.targets, self.batch, self.device = patches, targets, batch, device
        self.rng = np.random.default_rng(0)

    def step(self) -> None:
        idx = torch.from_numpy(self.rng.integers(0, len(self.patches), self.batch)).to(self.device)
        x = apply_preprocessing(TORCHVISION_RGB, self.patches[idx])
        loss = torch.nn.functional.mse_loss(self.model(x), self.targets[idx])
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    patches_per_step = property(lambda self: self.batch)


class Engine:
    """petiq's step: cached frozen blocks, bf16/channels-last when chosen, R repeats stacked."""

    def __init__(
        self, k: int, patches: torch.Tensor, targets: torch.Tensor, device: torch.device, batch: int, stack: int
    ):
        self.precision = resolve_precision("auto", device, k)
        compute = Compute.make(device, self.precision, k)
        models = [
            set_freeze_level(build_model("vgg16", 3, patch_size=patches.shape[-1], seed=1 + r), k).to(device)
            for r in range(stack)
        ]
        cut = N_BLOCKS - k
        self.cache_s_per_patch = 0.0
        if cut:
            front = Front(models[0], cut)  # frozen blocks shared by the repeats, as with ImageNet weights
            sync(device)
            t = time.perf_counter()
            cache = compute_features(front, patches, TORCHVISION_RGB, torch.float32, 64, False, "cache")
            sync(device)
            self.cache_s_per_patch = (time.perf_counter() - t) / len(patches)
            self.inputs = Inputs(cache=cache)
        else:
            self.inputs = Inputs(raw=patches, prep=TORCHVISION_RGB, compute=compute)
        self.stack = Stack([Tail(m, cut) for m in models], compute, 1e-4, 1e-7)
        self.targets, self.batch, self.R, self.device = targets, batch, stack, device
        self.rng = np.random.default_rng(0)
        self.config = (
            f"{self.precision}{', channels-last' if compute.channels_last else ''}"
            + (f", cache of blocks 1–{cut}" if cut else "")
            + (f", {stack} stacked" if stack > 1 else "")
        )

    def step(self) -> None:
        idx = torch.from_numpy(self.rng.integers(0, len(self.targets), (self.R, self.batch))).to(self.device)
        self.stack.step(self.inputs.batch(idx), self.targets[idx])

    patches_per_step = property(lambda self: self.R * self.batch)


def throughput(runner, steps: int, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        runner.step()
    sync(device)
    return steps * runner.patches_per_step / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--levels", type=int, nargs="+", default=[0, 2, 5])
    ap.add_argument("--patch", type=int, default=80)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--pool", type=int, default=200, help="patches in the data pool (the cache covers them)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stack", type=int, default=1, help="repeats stacked in the engine")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--skip-plain", action="store_true", help="engine only (e.g. large stacks on a GPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    patches = torch.from_numpy(rng.random((args.pool, args.patch, args.patch), dtype=np.float32).astype(np.float16)).to(
        device
    )
    targets = torch.from_numpy(rng.uniform(0, 3, (args.pool, 3)).astype(np.float32)).to(device)
    print(f"machine: {machine(device)}")
    rows = []
    t_all = time.perf_counter()
    for k in args.levels:
        torch.manual_seed(0)
        plain = None if args.skip_plain else Plain(k, patches, targets, device, args.batch)
        engine = Engine(k, patches, targets, device, args.batch, args.stack)
        for runner in (plain, engine):
            if runner is not None:
                throughput(runner, args.warmup, device)
        p_rates, e_rates = [], []
        for _ in range(args.rounds):
            if plain is not None:
                p_rates.append(throughput(plain, args.steps, device))
            e_rates.append(throughput(engine, args.steps, device))
        p = statistics.median(p_rates) if p_rates else float("nan")
        e = statistics.median(e_rates)
        rows.append((k, p, e, engine.config, engine.cache_s_per_patch))
        print(
            f"  level {k}: plain {p:.1f}/s {[f'{v:.1f}' for v in p_rates]}, engine {e:.1f}/s "
            f"{[f'{v:.1f}' for v in e_rates]}",
            flush=True,
        )
        del plain, engine
    print(
        f"\n{args.patch}×{args.patch} VGG16, batch {args.batch}, random weights; median of {args.rounds} rounds × "
        f"{args.steps} steps; {time.perf_counter() - t_all:.0f} s in all\n"
    )
    print(
        "| freeze level | plain fp32 (patches/s) | engine (patches/s) | speed-up | target | engine | cache (ms/patch, once) |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, p, e, config, cache in rows:
        target = f"≥ {TARGETS[k]:g}×" if k in TARGETS else ""
        plain, ratio = ("–", "–") if p != p else (f"{p:.1f}", f"{e / p:.1f}×")
        print(f"| {k} | {plain} | {e:.1f} | {ratio} | {target} | {config} | {cache * 1e3:.1f} |")
    for k, _, e, _, _ in rows:
        if k == 2:
            print(
                f"\nThe paper's grid (~{PAPER_PATCH_STEPS / 1e6:.0f} M patch-steps) at the level-2 rate: "
                f"{PAPER_PATCH_STEPS / e / 3600:.0f} h on this device."
            )


if __name__ == "__main__":
    main()
