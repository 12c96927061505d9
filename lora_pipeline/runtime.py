"""Where and how a stage runs: device and precision resolution, seeding, and peak-memory probes.

Training and evaluation both resolve ``train.device`` / ``train.precision`` here, so evaluate needs none of
the training loop.
"""

from __future__ import annotations

import random
import resource
import sys

import numpy as np
import torch

from .errors import PipelineError

__all__ = ["resolve_device", "resolve_bf16", "seed_everything", "seed_rank_stream", "peak_memory_mb", "peak_rss_mb"]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu`` and ``cuda[:N]`` as given.

    Raises:
        PipelineError: CUDA is asked for where torch has none, or ``cuda:N`` names a GPU that is not visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        why = f"this torch build ({torch.__version__}) has no CUDA" if torch.version.cuda is None \
            else "no CUDA GPU is visible (driver, CUDA_VISIBLE_DEVICES)"
        raise PipelineError(f"params: 'train.device' is '{name}' but {why}; set train.device to auto or cpu, "
                            "or install a CUDA build of torch")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise PipelineError(f"params: 'train.device' is '{name}' but only {count} CUDA devices are visible "
                            f"(cuda:0..cuda:{count - 1}); pick one of those or auto")
    return device


def resolve_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` (auto | fp32 | bf16) means bf16 autocast on ``device``.

    ``auto`` picks bf16 on a CUDA GPU that supports it and fp32 on every CPU. On CPU the gain depends on the chip,
    not on its flags: bf16 autocast made train stages ~1.5× faster on a Zen 4 EPYC but a training step 1.34× slower
    on an AVX-512-bf16 Xeon without AMX (BENCHMARKS.md), and a choice made per chip would change a run's numbers
    from one machine to the next. fp32 keeps CPU runs comparable everywhere; ``bf16`` is honoured everywhere.
    """
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def seed_everything(seed: int) -> None:
    """Seed every RNG and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_rank_stream(seed: int, rank: int, step: int = 0) -> None:
    """Give data-parallel rank ``rank`` a torch random stream of its own (dropout masks), derived from the run's
    seed, the rank and the step it starts at with numpy's ``SeedSequence``: ranks seeded alike would drop the
    same units in corresponding rows of their shards."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1))


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB.

    On Linux from ``VmHWM`` in ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` of a child started by
    fork + exec also counts the parent's resident size at the fork (the kernel folds the forked copy's
    high-water mark in at exec), so every child of a big parent would report at least the parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on GPU; peak resident set size of this process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()
