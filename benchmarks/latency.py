"""Prediction latency of the base model, our LoRA model unmerged and merged, and peft's.

Forward passes in ``eval()`` + ``torch.inference_mode()`` (as ``evaluation.predict``), round-robin, median
per variant, for a batch of 32 and a single row of 64 tokens. The adapters get non-zero weights first (B is
zero at initialisation, which would make "merged" trivially equal to the base). "Merged" is what
``load_trained`` serves: ``merge_and_unload`` puts the plain ``nn.Linear`` modules back.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from lora_pipeline.lora import lora_layers, merge_and_unload

from ._common import STEP_LENGTH, Models, fixed_batch, interleaved_medians, ratio


def _trained_like(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every LoRA matrix small random values, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_b.copy_(torch.randn(layer.lora_b.shape, generator=gen) * 0.02)
    return model


def _forward(model: nn.Module, batch: dict):
    @torch.inference_mode()
    def run():
        return model(**batch).logits  # (B, C)

    return run


def measure(split: Path, models: Models, device: torch.device, repeats: int, batch_sizes=(32, 1)) -> dict:
    """Median forward latency per variant and batch size; merged/base ratios; logit agreement."""
    ours = _trained_like(models.ours())
    variants = {"base": models.full(), "ours_unmerged": ours, "ours_merged": merge_and_unload(copy.deepcopy(ours)),
                "peft_unmerged": models.peft(like=ours)}
    variants["peft_merged"] = copy.deepcopy(variants["peft_unmerged"]).merge_and_unload()
    for model in variants.values():
        model.to(device).eval()
    result: dict = {"length": STEP_LENGTH, "repeats": repeats}
    for bs in batch_sizes:
        batch = fixed_batch(split, models.tokenizer, max(bs, 1), STEP_LENGTH, device)
        batch.pop("labels")
        fns = {name: _forward(model, batch) for name, model in variants.items()}
        ms = {name: round(s * 1000, 2) for name, s in interleaved_medians(fns, repeats, device).items()}
        result[f"batch_{bs}"] = {
            "median_ms": ms, "merged_over_base": ratio(ms["ours_merged"], ms["base"]),
            "unmerged_over_base": ratio(ms["ours_unmerged"], ms["base"]),
            "peft_merged_over_base": ratio(ms["peft_merged"], ms["base"]),
            "peft_unmerged_over_base": ratio(ms["peft_unmerged"], ms["base"])}
        if bs == batch_sizes[0]:
            logits = {name: fn().float() for name, fn in fns.items()}
            result["max_logit_diff_merged_vs_unmerged"] = float(
                (logits["ours_merged"] - logits["ours_unmerged"]).abs().max())
            result["max_logit_diff_ours_vs_peft"] = float(
                (logits["ours_unmerged"] - logits["peft_unmerged"]).abs().max())
    result["merged_over_base_latency"] = result[f"batch_{batch_sizes[0]}"]["merged_over_base"]
    return result
