"""The fast path of the engine: frozen blocks computed once (the feature cache) and the repeats'
trainable parts stacked into one vmapped module with one fused Adam step."""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .data import apply_preprocessing
from .models import (
    N_BLOCKS,
    PatchRegressor,
)
from .precision import Compute
from .spec import ADAM_BETAS, TrainSpec

log = logging.getLogger("petiq.learning.stack")


class Front(nn.Module):
    """The frozen blocks of a model (no parameters of their own)."""

    def __init__(self, model: PatchRegressor, cut: int):
        super().__init__()
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(cut)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x


class Tail(nn.Module):
    """The retrained blocks and the head, with the model's own parameter names."""

    def __init__(self, model: PatchRegressor, cut: int):
        super().__init__()
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(cut, N_BLOCKS)})
        self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return self.head(x)


class Inputs:
    """What the trainable part takes for given patches.

    ``cache``: precomputed (N, ...) shared by all repeats, or (R, N, ...) per repeat. Otherwise raw
    patches go through ``prep`` and the frozen ``fronts`` (one shared module, or one per repeat) each time.
    """

    def __init__(
        self,
        *,
        cache: torch.Tensor | None = None,
        per_repeat: bool = False,
        raw: torch.Tensor | None = None,
        prep=None,
        fronts: Sequence[nn.Module] = (),
        compute: Compute | None = None,
    ):
        self.cache, self.per_repeat, self.raw, self.prep = cache, per_repeat, raw, prep
        self.fronts, self.compute = list(fronts), compute

    def _through(self, front: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        x = apply_preprocessing(self.prep, x)
        if front is None:
            return x
        with torch.no_grad(), self.compute.autocast():
            return front(self.compute.layout(x))

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Inputs for index rows ``idx`` (R, B) → (R, B, ...)."""
        r, b = idx.shape
        if self.cache is not None:
            if self.per_repeat:
                return self.cache[torch.arange(r, device=idx.device)[:, None], idx]
            return self.cache[idx]
        if len(self.fronts) > 1:
            return torch.stack([self._through(front, self.raw[idx[i]]) for i, front in enumerate(self.fronts)])
        x = self._through(self.fronts[0] if self.fronts else None, self.raw[idx.reshape(-1)])
        return x.reshape(r, b, *x.shape[1:])

    def span(self, start: int, stop: int) -> tuple[torch.Tensor, bool]:
        """Inputs of patches ``start:stop`` for evaluation: (n, ...) shared (False) or (R, n, ...) per repeat (True)."""
        if self.cache is not None:
            return (self.cache[:, start:stop], True) if self.per_repeat else (self.cache[start:stop], False)
        if len(self.fronts) > 1:
            return torch.stack([self._through(front, self.raw[start:stop]) for front in self.fronts]), True
        return self._through(self.fronts[0] if self.fronts else None, self.raw[start:stop]), False


def compute_features(
    front: nn.Module, raw: torch.Tensor, prep, dtype: torch.dtype, chunk: int, progress: bool, label: str
) -> torch.Tensor:
    """Run the frozen blocks once over all patches (fp32, no autograd) into a (N, ...) tensor of ``dtype``."""
    from tqdm import tqdm

    out = None
    front.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(raw), chunk), desc=label, disable=not progress, leave=False):
            y = front(apply_preprocessing(prep, raw[start : start + chunk]))
            if out is None:
                out = torch.empty((len(raw), *y.shape[1:]), dtype=dtype, device=raw.device)
            out[start : start + len(y)] = y
    return out


def _float_norms_hooks(module: nn.Module, dtype: torch.dtype) -> None:
    """Batch/group/layer norms compute in fp32 inside a bf16 network (their outputs go back to bf16)."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    for m in module.modules():
        if isinstance(m, norms):
            m.register_forward_pre_hook(lambda _m, args: tuple(a.float() for a in args))
            m.register_forward_hook(lambda _m, _args, out: out.to(dtype))


class Stack:
    """R copies of one trainable module, stacked: parameters (R, ...), one Adam for all."""

    def __init__(self, tails: Sequence[nn.Module], compute: Compute, learning_rate: float, eps: float):
        self.R = len(tails)
        self.compute = compute
        params, buffers = stack_module_state(list(tails))
        self.params = {k: v.detach().to(compute.device).requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach().to(compute.device) for k, v in buffers.items()}
        self.base = copy.deepcopy(tails[0]).to("meta")
        self.low = set()
        if compute.dtype != torch.float32:
            for name, m in self.base.named_modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    self.low.update(f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False))
            _float_norms_hooks(self.base, compute.dtype)
        # torchvision's stochastic depth draws its mask in place on an unbatched tensor, which vmap allows only
        # with one draw for all repeats; everything else gets its own draw per repeat
        self.randomness = (
            "same" if any(type(m).__name__ == "StochasticDepth" for m in self.base.modules()) else "different"
        )
        if self.R > 1 and self.randomness == "same":
            log.info("stacked repeats share their stochastic-depth masks (vmap cannot draw them per repeat)")
        fused = compute.device.type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(
            list(self.params.values()), lr=learning_rate, betas=ADAM_BETAS, eps=eps, fused=fused
        )

    def _call(self, p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute.dtype
        if self.low:
            p = {k: (v.to(dtype) if k in self.low else v) for k, v in p.items()}
        return functional_call(self.base, (p, b), (x.to(dtype),)).float()

    def forward(self, x: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """Outputs (R, B, T) for inputs (R, B, ...) (``batched``) or one input (B, ...) shared by all repeats."""
        if self.R == 1:
            x = self.compute.layout(x[0] if batched else x)
            p = {k: v.squeeze(0) for k, v in self.params.items()}  # a view: no zero-filled (1, ...) gradient
            b = {k: v.squeeze(0) for k, v in self.buffers.items()}
            return self._call(p, b, x).unsqueeze(0)
        return vmap(self._call, in_dims=(0, 0, 0 if batched else None), randomness=self.randomness)(
            self.params, self.buffers, x
        )

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One Adam step on MSE for a batch (R, B, ...) → the R losses."""
        self.base.train()
        out = self.forward(x)
        losses = (out - y).pow(2).mean(dim=(1, 2))
        losses.sum().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return losses.detach()

    def sq_error(self, inputs: Inputs, y: torch.Tensor, chunk: int) -> torch.Tensor:
        """Summed squared error (R,) over a whole set, in eval mode."""
        self.base.eval()
        total = torch.zeros(self.R, dtype=torch.float64, device=self.compute.device)
        with torch.no_grad():
            for start in range(0, len(y), chunk):
                x, batched = inputs.span(start, start + chunk)
                out = self.forward(x, batched)
                total += (out - y[start : start + chunk]).pow(2).sum(dim=(1, 2)).double()
        return total

    def slice(self, r: int) -> dict[str, dict[str, torch.Tensor]]:
        """Repeat ``r``'s parameters and buffers (detached copies)."""
        return {
            "params": {k: v.detach()[r].clone() for k, v in self.params.items()},
            "buffers": {k: v[r].clone() for k, v in self.buffers.items()},
        }

    def adam_slice(self, r: int) -> dict:
        names = list(self.params)
        state = [self.opt.state.get(self.params[k], {}) for k in names]
        if not state or "step" not in state[0]:
            return {"step": 0.0}
        return {
            "step": float(state[0]["step"]),
            "exp_avg": {k: s["exp_avg"][r].cpu().clone() for k, s in zip(names, state)},
            "exp_avg_sq": {k: s["exp_avg_sq"][r].cpu().clone() for k, s in zip(names, state)},
        }

    def restore(self, saved: Sequence[dict]) -> None:
        """Load each repeat's parameters, buffers and Adam state from its resume state."""
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(torch.stack([s["params"][k] for s in saved]).to(v.device))
            for k, v in self.buffers.items():
                v.copy_(torch.stack([s["buffers"][k] for s in saved]).to(v.device))
        step = saved[0]["adam"]["step"]
        if step:
            sd = self.opt.state_dict()
            sd["state"] = {
                i: {
                    "step": torch.tensor(step, dtype=torch.float32),
                    "exp_avg": torch.stack([s["adam"]["exp_avg"][k] for s in saved]),
                    "exp_avg_sq": torch.stack([s["adam"]["exp_avg_sq"][k] for s in saved]),
                }
                for i, k in enumerate(self.params)
            }
            self.opt.load_state_dict(sd)


def plan_cache(spec: TrainSpec, feature_numel: int, n_patches: int, copies: int) -> str:
    """``fp32``, ``bf16`` or ``off`` for the frozen-block cache, within ``spec.cache_max_gb``."""
    if spec.freeze_level == N_BLOCKS or not spec.cache_frozen:
        return "off"
    need = feature_numel * n_patches * copies * 4 / 1e9
    if need <= spec.cache_max_gb:
        return "fp32"
    if need / 2 <= spec.cache_max_gb:
        log.warning(
            "the frozen-block cache needs %.2f GB in fp32, over cache_max_gb = %.2f: storing it in bf16 "
            "(%.2f GB); results differ slightly from the fp32 plain loop",
            need,
            spec.cache_max_gb,
            need / 2,
        )
        return "bf16"
    log.warning(
        "the frozen-block cache would need %.2f GB even in bf16, over cache_max_gb = %.2f: recomputing the "
        "frozen blocks every step (slower; raise cache_max_gb to cache)",
        need / 2,
        spec.cache_max_gb,
    )
    return "off"
