"""Does bf16 autocast pay on this CPU? One training step (the loop's own ``train_step``) of full fine-tuning and of
LoRA, fp32 against bf16 autocast, round-robin on the same fixed batch; the median of each and bf16/fp32.

``train.precision: auto`` runs fp32 on every CPU (``runtime.resolve_bf16``): this script is how a user checks
whether forcing ``bf16`` pays on theirs. It needs no data: a seeded random batch of token ids stands in for text
(the cost of a step depends on shapes, not on which tokens).

    python benchmarks/precision_step.py [--steps 10] [--batch 32] [--length 40] [--model package:...] [--smoke]

Prints one JSON object (one line). ``--smoke``: the same steps on a toy random BERT (``_common.smoke_model``),
one timed step of batch 4 x 8 tokens, in seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` puts benchmarks/ there

import torch  # noqa: E402
from transformers import get_linear_schedule_with_warmup  # noqa: E402

from benchmarks._common import BENCH_RANK, interleaved_medians, ratio, smoke_model  # noqa: E402
from lora_pipeline.config import EMBEDDED_MODEL, LoraConfig, ModelConfig  # noqa: E402
from lora_pipeline.models import build_model  # noqa: E402
from lora_pipeline.pretrained import load_tokenizer  # noqa: E402
from lora_pipeline.training import FitConfig, make_optimizer, train_step  # noqa: E402

CPU = torch.device("cpu")


def _stepper(model: torch.nn.Module, batch: dict, bf16: bool):
    cfg = FitConfig(lr=1e-5, epochs=1)
    optimizer = make_optimizer(model, cfg, CPU)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10_000)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return lambda: train_step(model, batch, optimizer, scheduler, params, 1.0, CPU, bf16=bf16)


def measure(model_name: str = EMBEDDED_MODEL, steps: int = 10, batch: int = 32, length: int = 40) -> dict:
    """Median seconds per step of full and LoRA (rank 8) in fp32 and bf16, and the bf16/fp32 ratios."""
    cfg = ModelConfig(name=model_name, max_length=length)
    tokenizer = load_tokenizer(cfg)
    labels = ["a", "b", "c"]
    gen = torch.Generator().manual_seed(0)
    data = {"input_ids": torch.randint(1000, tokenizer.vocab_size, (batch, length), generator=gen),  # (B, T)
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
            "labels": torch.randint(0, len(labels), (batch,), generator=gen)}
    fns = {}
    for variant in ("full", "lora"):
        for precision, bf16 in (("fp32", False), ("bf16", True)):
            torch.manual_seed(0)
            model = build_model(variant, cfg, labels, tokenizer, lora=LoraConfig(), rank=BENCH_RANK).train()
            fns[f"{variant}_{precision}"] = _stepper(model, data, bf16)
    med = interleaved_medians(fns, steps, CPU)
    return {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "batch": batch, "length": length, "steps": steps, "seconds": {k: round(v, 4) for k, v in med.items()},
            "bf16_over_fp32": {v: ratio(med[f"{v}_bf16"], med[f"{v}_fp32"]) for v in ("full", "lora")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=40, help="tokens per row (the default corpus: median 28)")
    parser.add_argument("--smoke", action="store_true", help="toy model, 1 step of 4 x 8 tokens")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
            print(json.dumps(measure(str(smoke_model(Path(tmp) / "model")), steps=1, batch=4, length=8)))
    else:
        print(json.dumps(measure(args.model, args.steps, args.batch, args.length)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
