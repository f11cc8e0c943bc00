"""Where and in what precision a run computes: device, bf16 or fp32, deterministic algorithms."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .models import (
    N_BLOCKS,
)

log = logging.getLogger("petiq.learning.precision")


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present; ``cuda`` without a GPU falls back to the CPU with a log line."""
    if device in ("auto", "cuda"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if device == "cuda":
            log.warning("device cuda requested but torch %s sees no GPU: training on the CPU", torch.__version__)
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 on this CPU (Linux: from /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device, freeze_level: int) -> str:
    """``fp32`` or ``bf16``; ``auto`` picks bf16 where the hardware computes it natively and a block is retrained."""
    if precision != "auto":
        return precision
    if freeze_level == 0:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


@contextlib.contextmanager
def deterministic(device: torch.device, seed: int) -> Iterator[None]:
    """Deterministic algorithms and a seeded torch RNG inside the block; the caller's settings come back after."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(old[0], warn_only=old[1])
            torch.backends.cudnn.benchmark = old[2]


@dataclass(frozen=True)
class Compute:
    device: torch.device
    dtype: torch.dtype
    channels_last: bool

    @classmethod
    def make(cls, device: torch.device, precision: str, freeze_level: int = N_BLOCKS) -> Compute:
        """bf16 with channels-last activations on CUDA, and on the CPU when block 1 or 2 is retrained (there the
        large activations gain; for the deep blocks alone the weight-gradient layout copies cost more)."""
        bf16 = precision == "bf16"
        channels_last = bf16 and (device.type == "cuda" or freeze_level >= N_BLOCKS - 1)
        return cls(device, torch.bfloat16 if bf16 else torch.float32, channels_last)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
