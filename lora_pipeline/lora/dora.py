"""DoRA layers: LoRA's low-rank direction update plus a trained magnitude per output unit.

DoRA (Liu et al., 2024, arXiv:2402.09353) splits the adapted weight into a magnitude ``m`` (one value per output
unit) and a direction: ``W' = m · (W0 + s·B·A) / ||W0 + s·B·A||_c``, where ``||·||_c`` is the norm of each output
row over the input dimension. ``m`` starts at ``||W0||_c`` and B at zero, so the model is unchanged at step 0.
The numerics follow peft's ``use_dora`` (``peft/tuners/lora/dora.py``) so that results are comparable:

- the norm is treated as a constant in backward (detached, section 4.3 of the paper);
- the output is ``base(x) + (g - 1)·(W0·x̃) + g·s·B·A·x̃`` with ``g = m / ||W0 + s·B·A||_c`` and
  ``x̃ = dropout(x)``: without active dropout ``W0·x̃`` is the base output minus its bias (no second matmul),
  with it ``W0·x̃`` is computed again on the dropped-out input (and the bias is not rescaled either way);
- merging writes ``g·(W0 + ΔW)`` with ``g`` taken from the unmerged weights.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LoRAConv1D, LoRALayer, LoRALinear

__all__ = ["DoRAConv1D", "DoRALayer", "DoRALinear"]


class DoRALayer(LoRALayer):
    """LoRA with a trainable magnitude vector ``lora_magnitude`` (``(out,)``; arXiv:2402.09353).

    ``h = W0·x + (g - 1)·W0·x̃ + g·s·B·A·x̃`` with ``g = m / ||W0 + s·B·A||_c`` (the norm detached) and
    ``x̃ = dropout(x)``; in eval mode (or without dropout) this is ``g·(W0 + s·B·A)·x + b``. Arguments are
    those of :class:`~lora_pipeline.lora.layers.LoRALayer`; use ``wrap_layer(..., use_dora=True)``.
    """

    use_dora = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # ||W0||_c: with B = 0, g is exactly 1 at step 0 (the same norm is computed in forward).
        self.lora_magnitude = nn.Parameter(self.weight_norm())  # (out,)
        # g at merge time, so that unmerge without a copy of W0 can divide it out again; None while unmerged.
        self.register_buffer("merge_factor", None, persistent=False)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {**super().adapter_parameters(), "lora_magnitude": self.lora_magnitude}

    def reset_lora_parameters(self) -> None:
        """A Kaiming-uniform, B zeros, the magnitude ``||W0||_c`` (set in ``__init__`` on the first call)."""
        super().reset_lora_parameters()
        if "lora_magnitude" in self._parameters:
            with torch.no_grad():
                self.lora_magnitude.copy_(self.weight_norm())

    def _out_in(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` laid out ``(out, in)``; the base layout's transposition (if any) is its own inverse."""
        return self._to_base_layout(weight)

    @torch.no_grad()
    def weight_norm(self, dtype: Optional[torch.dtype] = None, scaled_update: Optional[torch.Tensor] = None
                    ) -> torch.Tensor:
        """``||W0 + s·B·A||_c``: the L2 norm of each output row over the input dimension, without gradient.

        Args:
            dtype: compute in this dtype (forward passes the input's, as peft does); None: the weight's.
            scaled_update: ``s·B·A`` laid out ``(out, in)``; None computes it from the current factors.

        Returns:
            ``(out,)`` tensor.
        """
        weight = self._out_in(self.base.weight)  # (out, in)
        dtype = dtype or weight.dtype
        if scaled_update is None:
            scaled_update = self.scaling * (self.lora_b.to(dtype) @ self.lora_a.to(dtype))  # (out, in)
        return torch.linalg.norm(weight.to(dtype) + scaled_update, dim=1).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)  # (..., out)
        if self.merged:
            return result
        scale = self.lora_magnitude / self.weight_norm(x.dtype)  # g: (out,), broadcast over (..., out)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            bias = self.base.bias
            base_out = result if bias is None else result - bias  # W0·x, reused
        else:  # peft's order: the adapter and the rescaled base path both see dropout(x)
            x = self.dropout(x)
            base_out = F.linear(x, self._out_in(self.base.weight).to(x.dtype))  # W0·x̃: (..., out), no bias
        lora_out = F.linear(F.linear(x, self.lora_a), self.lora_b)  # (..., in) -> (..., r) -> (..., out)
        return result + ((scale - 1) * base_out + scale * lora_out * self.scaling)

    def _factor_in_base_layout(self, factor: torch.Tensor) -> torch.Tensor:
        """``(out,)`` -> a row scale broadcastable over ``base.weight`` ((out, 1), or (1, out) for Conv1D)."""
        return self._to_base_layout(factor.view(-1, 1))

    @torch.no_grad()
    def dora_factor(self) -> torch.Tensor:
        """``g = m / ||W0 + ΔW||_c`` from the unmerged weights (``(out,)``, no gradient)."""
        delta = self._out_in(self.delta_weight())  # (out, in), s·B·A
        return self.lora_magnitude / self.weight_norm(scaled_update=delta)

    def merged_weight(self) -> torch.Tensor:
        """``g·(W0 + ΔW)`` in the layout of ``base.weight``: what :meth:`merge` writes."""
        factor = self._factor_in_base_layout(self.dora_factor())
        return (factor * (self.base.weight + self.delta_weight())).to(self.base.weight.dtype)

    @torch.no_grad()
    def merge(self, safe: bool = True, keep_original: bool = True) -> None:
        """Fold ``g·(W0 + ΔW)`` into the base weight (see :meth:`LoRALayer.merge`)."""
        factor = None if self.merged else self.dora_factor()
        super().merge(safe=safe, keep_original=keep_original)
        self.merge_factor = factor

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`: ``W0`` bit for bit from the kept copy (else ``W/g - ΔW``, to rounding)."""
        super().unmerge()
        self.merge_factor = None

    def _unmerged_weight(self) -> torch.Tensor:
        return self.base.weight / self._factor_in_base_layout(self.merge_factor) - self.delta_weight()


class DoRALinear(DoRALayer, LoRALinear):
    """DoRA around an ``nn.Linear``. See :class:`DoRALayer`."""


class DoRAConv1D(DoRALayer, LoRAConv1D):
    """DoRA around GPT-2's ``Conv1D`` (weight stored ``(in, out)``; the norm is still per output unit)."""
