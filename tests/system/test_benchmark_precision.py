"""The precision benchmark runs in seconds on a tiny model, so a refactor that breaks it fails here."""

from __future__ import annotations

from benchmarks.precision_step import measure
from tests.support.builders import save_tiny_bert


def test_precision_step_times_every_variant_and_precision(tmp_path):
    result = measure(str(save_tiny_bert(tmp_path / "tiny")), steps=1, batch=4, length=8)
    assert set(result["seconds"]) == {"full_fp32", "full_bf16", "lora_fp32", "lora_bf16"}
    assert all(v > 0 for v in result["seconds"].values())
    assert set(result["bf16_over_fp32"]) == {"full", "lora"} and all(v > 0 for v in result["bf16_over_fp32"].values())
