"""The training engine: one loop for every experiment (transfer, pretext, backbone survey, dose baseline).

The paper's recipe: MSE loss, Adam (learning rate 1e-4, or 1e-3 for one baseline), batch size 10,
1000 epochs, validation every epoch, and the checkpoint with the lowest validation loss kept.
:func:`train_repeats` trains the repeats of one configuration (each with its own seed: head
initialisation and per-epoch shuffling) and writes, per repeat folder, ``model.pt``, ``curve.tsv``,
``curve.png``, ``predictions_patches.tsv``, ``predictions_images.tsv`` and ``card.json``.

How it is fast without changing the numbers:

* **Frozen blocks run once.** At freeze level ``k < 5`` the first ``5 - k`` blocks never change, so their
  output for every training and validation patch is computed once (fp32, in chunks, no autograd) and
  each step runs only the retrained blocks and the head. The result equals the plain loop's (tested).
  The cache is stored in fp32, in bf16 when fp32 would exceed ``cache_max_gb`` (logged: then the numbers
  differ slightly), and not at all when even bf16 would not fit (logged; the plain loop runs).
* **bf16 where the hardware has it** (``precision="auto"``: CUDA with bf16, CPUs with AVX512-BF16 or AMX):
  convolution and linear weights and activations in bf16, batch norms, loss and Adam in fp32;
  channels-last activations where they help (CUDA; CPU when block 1 or 2 is retrained). Not used for ``k = 0`` (a single linear layer gains nothing).
* **Repeats stacked.** The repeats' trainable parameters are stacked (``torch.func.stack_module_state``)
  and run with ``vmap`` + ``functional_call``: one launch per layer for all repeats, one fused Adam
  step for all (Adam is element-wise, so stacked Adam equals separate Adams). By default all repeats
  are stacked on CUDA and trained one after another on the CPU (stacking does not help there).
  Stacked runs equal separate ones up to rounding (grouped convolutions round differently). One
  exception, harmless: a parameter whose gradient is zero up to rounding — a convolution bias right
  before a batch norm — moves by Adam steps of the learning rate's size driven by that rounding noise, so
  such biases (and the running means after them) differ between stacked and separate runs. VGG16 has
  no batch norm. Models with stochastic depth (EfficientNet) share its masks between stacked repeats.

Same seed, same device, same thread count → the same numbers (deterministic algorithms are switched on
while training). An interrupted run resumes from ``last.pt`` (written every ``checkpoint_every_s`` and
after the last epoch) and gives the numbers of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.errors import PetiqInputError
from ..core.seeding import derive_seed, rng_for
from .checkpoints import Repeat, drop_resume_states, read_resume, repeat_fingerprint, save_resume, to_cpu
from .data import PatchSet
from .initialisation import init_identity, initial_model, resolve_init
from .models import (
    N_BLOCKS,
    build_model,
)
from .outputs import check_extra_card, finish_patch_run
from .precision import Compute, deterministic, device_name, resolve_device, resolve_precision
from .spec import RESUME_FORMAT, RESUME_FREE, TrainSpec
from .stack import Front, Inputs, Stack, Tail, compute_features, plan_cache

log = logging.getLogger("petiq.learning.train")


def fit(
    stack: Stack,
    repeats: list[Repeat],
    train_in: Inputs,
    y_train: torch.Tensor,
    val_in: Inputs,
    y_val: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    resume: list[dict] | None,
    checkpoint_every_s: float,
    progress: bool,
    label: str,
    callback: Callable[[int, list[list[dict]]], None] | None,
) -> None:
    """Train the stack for ``epochs`` epochs (from a resume state when given), keeping each repeat's best."""
    from tqdm import tqdm

    device = stack.compute.device
    n, R = len(y_train), stack.R
    start_epoch, elapsed = 0, 0.0
    if resume:
        stack.restore(resume)
        start_epoch = int(resume[0]["epoch"])
        elapsed = float(resume[0]["elapsed_s"])
        for rep, state in zip(repeats, resume):
            rep.curve = list(state["curve"])
            rep.best = state["best"]
            rep.resumed_from = start_epoch
        torch.set_rng_state(resume[0]["rng"])
        if device.type == "cuda" and "cuda_rng" in resume[0]:
            torch.cuda.set_rng_state(resume[0]["cuda_rng"])
        log.info("%s: resuming after epoch %d of %d", label, start_epoch, epochs)
    y_train, y_val = y_train.to(device), y_val.to(device)
    t0 = time.perf_counter() - elapsed
    last_save = time.perf_counter()
    bar = tqdm(range(start_epoch, epochs), desc=label, disable=not progress, initial=start_epoch, total=epochs)
    for epoch in bar:
        order = np.stack([rng_for(rep.seed, "shuffle", epoch).permutation(n) for rep in repeats])
        order = torch.from_numpy(order).to(device)
        train_sum = torch.zeros(R, dtype=torch.float64, device=device)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            losses = stack.step(train_in.batch(idx), y_train[idx])
            train_sum += losses.double() * idx.shape[1]
        train_loss = (train_sum / n).tolist()
        val_loss = (stack.sq_error(val_in, y_val, eval_batch_size) / y_val.numel()).tolist()
        seconds = time.perf_counter() - t0
        for r, rep in enumerate(repeats):
            rep.curve.append(
                {"epoch": epoch + 1, "train_loss": train_loss[r], "val_loss": val_loss[r], "seconds": round(seconds, 3)}
            )
            if rep.best is None or val_loss[r] < rep.best["val_loss"]:
                rep.best = {"epoch": epoch + 1, "val_loss": val_loss[r], **stack.slice(r)}  # stays on the device
        if progress:
            bar.set_postfix(train=f"{train_loss[0]:.4g}", val=f"{val_loss[0]:.4g}")
        if epoch == start_epoch or (epoch + 1) % max(1, epochs // 20) == 0 or epoch + 1 == epochs:
            log.info(
                "%s: epoch %d/%d train %s val %s (%.1f s)",
                label,
                epoch + 1,
                epochs,
                " ".join(f"{v:.4g}" for v in train_loss),
                " ".join(f"{v:.4g}" for v in val_loss),
                seconds,
            )
        if epoch + 1 == epochs or time.perf_counter() - last_save >= checkpoint_every_s:
            rng = torch.get_rng_state()
            cuda_rng = {"cuda_rng": torch.cuda.get_rng_state()} if device.type == "cuda" else {}
            for r, rep in enumerate(repeats):
                save_resume(
                    rep.out_dir / "last.pt",
                    {
                        "format": RESUME_FORMAT,
                        "fingerprint": rep.fingerprint,
                        "seed": rep.seed,
                        "epoch": epoch + 1,
                        "elapsed_s": seconds,
                        **to_cpu(stack.slice(r)),
                        "adam": stack.adam_slice(r),
                        "best": to_cpu(rep.best),
                        "curve": rep.curve,
                        "rng": rng,
                        **cuda_rng,
                    },
                )
            last_save = time.perf_counter()
        if callback is not None:
            callback(epoch + 1, [rep.curve for rep in repeats])
    bar.close()


def check_sets(spec: TrainSpec, sets: Mapping[str, PatchSet], seeds: Sequence[int], out_dirs: Sequence) -> int:
    if len(seeds) == 0 or len(seeds) != len(out_dirs):
        raise PetiqInputError(
            None, f"{len(seeds)} seeds for {len(out_dirs)} output folders", "give one seed per repeat folder"
        )
    if len({str(Path(d).resolve()) for d in out_dirs}) != len(out_dirs):
        raise PetiqInputError(None, "two repeats share an output folder", "give each repeat its own folder")
    sizes = {name: ps.patch_size for name, ps in sets.items()}
    for name, ps in sets.items():
        if len(ps) == 0:
            raise PetiqInputError(None, f"the {name} set has no patches", f"give the {name} role at least one image")
        if ps.target_names != spec.targets:
            raise PetiqInputError(
                None,
                f"the {name} set has targets {ps.target_names}, the run wants {spec.targets}",
                "load the patch sets with the run's targets",
            )
        if not np.isfinite(ps.targets).all() or not np.isfinite(ps.patches).all():
            raise PetiqInputError(None, f"the {name} set holds NaN or infinite values", "check the patches and scores")
    if len(set(sizes.values())) > 1:
        raise PetiqInputError(None, f"patch sizes differ between sets: {sizes}", "use one patch size for a run")
    return next(iter(sizes.values()))


def train_repeats(
    spec: TrainSpec,
    train: PatchSet,
    val: PatchSet,
    evaluate_sets: Mapping[str, PatchSet],
    seeds: Sequence[int],
    out_dirs: Sequence[str | Path],
    extra_card: Mapping | None = None,
    progress: bool = True,
    callback: Callable[[int, list[list[dict]]], None] | None = None,
) -> list[dict]:
    """Train one configuration's repeats (one seed and output folder each); return their model cards.

    ``callback(epoch, curves)`` is called after every epoch (after any resume state is written).
    """
    evaluate_sets = dict(evaluate_sets)
    if "val" in evaluate_sets:
        raise PetiqInputError(
            None, "an evaluation set is called 'val'", "the validation set is always written; rename it"
        )
    patch_size = check_sets(spec, {"train": train, "val": val, **evaluate_sets}, seeds, out_dirs)
    check_extra_card(extra_card)
    out_dirs = [Path(d) for d in out_dirs]
    progress = progress and sys.stderr.isatty()
    init = resolve_init(spec, patch_size)  # missing weights: the error comes before any work
    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device, spec.freeze_level)
    compute = Compute.make(device, precision, spec.freeze_level)
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "spec": {k: v for k, v in spec.as_dict().items() if k not in RESUME_FREE},
                "init": init_identity(init),
                "train": train.fingerprint(),
                "val": val.fingerprint(),
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    resume = []
    for seed, out_dir in zip(seeds, out_dirs):
        out_dir.mkdir(parents=True, exist_ok=True)
        state = read_resume(out_dir / "last.pt", repeat_fingerprint(fingerprint, seed))
        resume.append(state)
    stack_size = spec.stack or (len(seeds) if device.type == "cuda" else 1)
    # repeats at different resume epochs (a crash between two last.pt writes) train in separate stacks
    by_epoch: dict[int, list[int]] = {}
    for i, state in enumerate(resume):
        by_epoch.setdefault(0 if state is None else int(state["epoch"]), []).append(i)
    chunks = [ids[j : j + stack_size] for ids in by_epoch.values() for j in range(0, len(ids), stack_size)]

    cut = N_BLOCKS - spec.freeze_level
    shared_front = init.kind != "random"
    probe = build_model(spec.backbone, len(spec.targets), spec.head, patch_size, device="meta")
    feat_numel = 0
    if cut > 0:
        x = torch.zeros(1, 3, patch_size, patch_size, device="meta")
        for block in probe.blocks[:cut]:
            x = block(x)
        feat_numel = int(x[0].numel())
    copies = 1 if shared_front else min(stack_size, len(seeds))
    cache_mode = plan_cache(spec, feat_numel, len(train) + len(val), copies)
    log.info(
        "%d repeat(s) of %s, init %s, freeze level %d (%d frozen blocks), %s head, targets %s on %s, %s, "
        "frozen-block cache %s, stacks of %d; %d train / %d val patches of %d px, %d epochs",
        len(seeds),
        spec.backbone,
        init.kind,
        spec.freeze_level,
        cut,
        spec.head,
        ",".join(spec.targets),
        device_name(device),
        precision,
        cache_mode,
        stack_size,
        len(train),
        len(val),
        patch_size,
        spec.epochs,
    )

    raw_train = torch.from_numpy(np.ascontiguousarray(train.patches)).to(device)
    raw_val = torch.from_numpy(np.ascontiguousarray(val.patches)).to(device)
    y_train = torch.from_numpy(train.targets).to(device)
    y_val = torch.from_numpy(val.targets).to(device)
    cache_dtype = torch.bfloat16 if cache_mode == "bf16" else torch.float32
    shared_cache: dict[str, torch.Tensor] = {}
    cards: list[dict | None] = [None] * len(seeds)
    with deterministic(device, derive_seed(seeds[0], "torch")):
        for chunk in chunks:
            t_start = time.perf_counter()
            torch.manual_seed(derive_seed(seeds[chunk[0]], "torch"))  # dropout-like randomness, per stack
            models = [initial_model(spec, init, seeds[i], patch_size).to(device) for i in chunk]
            fronts = [Front(m, cut).eval() for m in models]
            if cache_mode == "off":
                use = [] if cut == 0 else fronts[:1] if shared_front else fronts
                train_in, val_in = (
                    Inputs(raw=raw, prep=init.preprocessing, fronts=use, compute=compute)
                    for raw in (raw_train, raw_val)
                )
            elif shared_front:  # one cache for all repeats, kept for the next stacks
                for name, raw in (("train", raw_train), ("val", raw_val)):
                    if name not in shared_cache:
                        shared_cache[name] = compute_features(
                            fronts[0], raw, init.preprocessing, cache_dtype, 64, progress, f"frozen blocks ({name})"
                        )
                train_in, val_in = Inputs(cache=shared_cache["train"]), Inputs(cache=shared_cache["val"])
            else:  # random frozen blocks differ between repeats: one cache each
                train_in, val_in = (
                    Inputs(
                        cache=torch.stack(
                            [
                                compute_features(f, raw, init.preprocessing, cache_dtype, 64, progress, "frozen blocks")
                                for f in fronts
                            ]
                        ),
                        per_repeat=True,
                    )
                    for raw in (raw_train, raw_val)
                )
            stack = Stack([Tail(m, cut) for m in models], compute, spec.learning_rate, spec.adam_eps)
            repeats = [Repeat(seeds[i], out_dirs[i], repeat_fingerprint(fingerprint, seeds[i])) for i in chunk]
            label = f"{spec.backbone} k={spec.freeze_level} seed(s) {','.join(str(seeds[i]) for i in chunk)}"
            states = [resume[i] for i in chunk]
            fit(
                stack,
                repeats,
                train_in,
                y_train,
                val_in,
                y_val,
                epochs=spec.epochs,
                batch_size=spec.batch_size,
                eval_batch_size=spec.eval_batch_size,
                resume=states if states[0] is not None else None,
                checkpoint_every_s=spec.checkpoint_every_s,
                progress=progress,
                label=label,
                callback=callback,
            )
            train_seconds = time.perf_counter() - t_start
            engine = {
                "device": str(device),
                "device_name": device_name(device),
                "precision": precision,
                "memory_format": "channels_last" if compute.channels_last and len(chunk) == 1 else "contiguous",
                "frozen_cache": cache_mode,
                "stacked_repeats": len(chunk),
                "deterministic": True,
                "stacked_randomness": stack.randomness if len(chunk) > 1 else None,
                "session_seconds": round(train_seconds, 2),
            }
            for r, i in enumerate(chunk):
                cards[i] = finish_patch_run(
                    spec, init, models[r], cut, repeats[r], i, val, evaluate_sets, train, engine, extra_card, device
                )
            del stack, train_in, val_in, models, fronts
    drop_resume_states(spec, out_dirs)
    return cards
