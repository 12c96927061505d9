"""LoRA adapter layers: a frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) plus a trainable low-rank update.

LoRA (Hu et al., 2021, arXiv:2106.09685) keeps the pretrained weight ``W0`` frozen and learns
``ΔW = (α/r)·B·A`` with ``A ∈ R^{r×in}`` and ``B ∈ R^{out×r}``. The layers here wrap the original module
(composition, as torchtune's ``LoRALinear`` and peft's ``lora.Linear``) so that unloading gives back the
very same module object, and follow peft's numerics (init, scaling, merge) so results are comparable.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["BIAS_MODES", "BiasMode", "LoRALayer", "LoRALinear", "LoRAConv1D"]

BiasMode = Literal["none", "all", "lora_only"]
BIAS_MODES: tuple[str, ...] = ("none", "all", "lora_only")


def check_bias_mode(bias: str) -> None:
    """Raise ValueError unless ``bias`` is one of :data:`BIAS_MODES`."""
    if bias not in BIAS_MODES:
        raise ValueError(f"bias must be one of {list(BIAS_MODES)}, got {bias!r}")


class LoRALayer(nn.Module):
    """A frozen linear map plus a trainable low-rank update (arXiv:2106.09685).

    ``h = W0·x + s·B·A·dropout(x)`` with ``s = alpha / rank`` (or ``alpha / sqrt(rank)`` with rsLoRA,
    arXiv:2312.03732). ``A`` is Kaiming-uniform (``a=sqrt(5)``, as peft and loralib) and ``B`` is zero, so the
    wrapped model computes exactly what the base model does until the first optimiser step.

    The update is applied as two thin matmuls, ``(dropout(x) @ A.T) @ B.T``, and never as a dense
    ``(out, in)`` matrix while training. ``merge()`` folds ``ΔW`` into ``W0`` for inference; nothing merges
    implicitly (loralib merges on ``eval()``, which surprises people).

    Subclasses only say how the base weight is laid out; use :func:`wrap_layer` to pick one. The DoRA variants
    (:mod:`.dora`, ``use_dora=True``) subclass these and add a magnitude vector.

    Args:
        base: the layer to wrap; its weight is frozen here.
        rank: ``r``, the rank of the update (>= 1).
        alpha: ``α``, the scale numerator (> 0).
        dropout: dropout probability on the adapter input; 0 uses ``nn.Identity`` (no kernel launch).
        rslora: scale by ``alpha / sqrt(rank)`` instead of ``alpha / rank``.
        bias: ``"none"`` freezes the base bias; ``"lora_only"`` and ``"all"`` train it (``"all"`` also
            trains every other bias of the model, which :func:`mark_only_lora_as_trainable` handles).

    Raises:
        ValueError: on a bad ``rank``, ``alpha``, ``dropout`` or ``bias``.
    """

    use_dora: bool = False  # DoRA layers (:mod:`.dora`) say True

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 rslora: bool = False, bias: BiasMode = "none") -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_bias_mode(bias)
        self.base = base
        self.in_features, self.out_features = self._features(base)
        self.rank, self.alpha, self.rslora, self.bias_mode = rank, float(alpha), rslora, bias
        self.dropout_p = float(dropout)
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        factory = {"dtype": weight.dtype, "device": weight.device}
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, **factory))  # (r, in)
        self.lora_b = nn.Parameter(torch.empty(self.out_features, rank, **factory))  # (out, r)
        self.merged = False
        # W0 as it was before merge(): a non-persistent buffer, so it moves with .to()/.cuda() but never enters
        # state_dict or adapter files; None while unmerged.
        self.register_buffer("original_weight", None, persistent=False)
        weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(bias != "none")
        self.reset_lora_parameters()

    @staticmethod
    def _features(base: nn.Module) -> tuple[int, int]:
        """(in_features, out_features) of ``base``."""
        raise NotImplementedError

    def _to_base_layout(self, delta: torch.Tensor) -> torch.Tensor:
        """Turn an ``(out, in)`` matrix into the layout of ``base.weight``."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """The base weight, so code that reads ``layer.weight`` (dtype, device) keeps working."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base bias (trained or not according to ``bias_mode``)."""
        return self.base.bias

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The trainable tensors this layer adds, by attribute name (``lora_a``, ``lora_b``; DoRA adds more)."""
        return {"lora_a": self.lora_a, "lora_b": self.lora_b}

    def reset_lora_parameters(self) -> None:
        """A as ``nn.Linear(in, r)`` initialises its weight (peft's default), B zeros."""
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)  # (..., out)
        if self.merged:
            return result  # ΔW already lives in W0: zero added latency
        # F.linear(x, A) is x @ A.T on a transposed view (no copy): (..., in) -> (..., r) -> (..., out).
        update = F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b)
        return torch.add(result, update, alpha=self.scaling)  # one fused kernel, no scaled temporary

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = s·B·A`` in the layout of ``base.weight`` (computed in fp32, returned in its dtype).

        Returns:
            A new tensor shaped like ``base.weight``; differentiable w.r.t. ``lora_a``/``lora_b``.
        """
        delta = (self.lora_b.float() @ self.lora_a.float()) * self.scaling  # (out, r) @ (r, in) -> (out, in)
        return self._to_base_layout(delta).to(self.base.weight.dtype)

    def merged_weight(self) -> torch.Tensor:
        """What :meth:`merge` writes into the base weight: ``W0 + ΔW`` (a new tensor, layout of ``base.weight``)."""
        return self.base.weight + self.delta_weight()

    @torch.no_grad()
    def merge(self, safe: bool = True, keep_original: bool = True) -> None:
        """Fold ``ΔW`` into the base weight; forward then skips the adapter path.

        Args:
            safe: refuse a merged weight that is not finite (the weight is left untouched).
            keep_original: keep a copy of ``W0`` so that :meth:`unmerge` restores it bit for bit
                (``W0 + ΔW - ΔW`` is not ``W0`` in floating point); ``merge_and_unload`` passes False.

        Raises:
            RuntimeError: if already merged.
            ValueError: with ``safe=True``, if the merged weight has NaN/inf.
        """
        if self.merged:
            raise RuntimeError("LoRA layer is already merged; call unmerge() first")
        weight = self.base.weight
        merged = self.merged_weight()  # out of place: W0 stays intact until the check passed
        if safe and not torch.isfinite(merged).all():
            raise ValueError(f"merge refused: W0 + ΔW is not finite (NaN/inf; {self.extra_repr()}): the adapter "
                             "is broken (diverged training?); pass safe=False to merge anyway")
        self.original_weight = weight.detach().clone() if keep_original else None
        weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: restore the ``W0`` kept at merge time exactly (else subtract ``ΔW``).

        Raises:
            RuntimeError: if not merged.
        """
        if not self.merged:
            raise RuntimeError("LoRA layer is not merged")
        if self.original_weight is not None:
            self.base.weight.copy_(self.original_weight)
        else:  # merged with keep_original=False: only equal up to float rounding
            self.base.weight.copy_(self._unmerged_weight())
        self.original_weight = None
        self.merged = False

    def _unmerged_weight(self) -> torch.Tensor:
        """``W0`` recomputed from the merged weight (``W - ΔW``), when no copy was kept."""
        return self.base.weight - self.delta_weight()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha:g}, scaling={self.scaling:g}, bias={self.bias_mode!r}, merged={self.merged}")


class LoRALinear(LoRALayer):
    """LoRA around an ``nn.Linear`` (weight stored ``(out, in)``). See :class:`LoRALayer`."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 rslora: bool = False, bias: BiasMode = "none") -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        super().__init__(base, rank, alpha, dropout, rslora, bias)

    @staticmethod
    def _features(base: nn.Module) -> tuple[int, int]:
        return base.in_features, base.out_features

    def _to_base_layout(self, delta: torch.Tensor) -> torch.Tensor:
        return delta


class LoRAConv1D(LoRALayer):
    """LoRA around Hugging Face's GPT-2 ``Conv1D`` (weight stored transposed, ``(in, out)``).

    The adapter path is the same as :class:`LoRALinear`'s; only ``delta_weight`` is transposed.
    """

    def __init__(self, base: Conv1D, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 rslora: bool = False, bias: BiasMode = "none") -> None:
        if not isinstance(base, Conv1D):
            raise TypeError(f"LoRAConv1D wraps transformers Conv1D, got {type(base).__name__}")
        super().__init__(base, rank, alpha, dropout, rslora, bias)

    @staticmethod
    def _features(base: nn.Module) -> tuple[int, int]:
        in_features, out_features = base.weight.shape  # Conv1D stores (in, out)
        return in_features, out_features

    def _to_base_layout(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.T  # (out, in) -> (in, out)
