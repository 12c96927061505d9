"""Where one LoRA training step goes: ours (as ``fit`` runs it) and peft's, op by op, side by side.

    python benchmarks/step_profile.py [--steps 3] [--repeats 10] [--smoke] [--out profile.json]

Both models are built as the pipeline builds them (``benchmarks._common.Models``: ``build_model`` from
``params.yaml``; peft with the same rank, alpha, targets and head, and our initial weights). The batch is
synthetic (no split needed): ``--batch`` rows of random token ids, lengths uniform in [8, ``--length``],
padded to ``--length``. Each step is the loop's ``train_step`` split into phases (forward, backward, clipping,
AdamW, schedule, zero_grad) under ``torch.profiler``. Every top-level forward op is put in one part by the module it
runs in (forward hooks open a profiler range around frozen ``nn.Linear`` layers, the LoRA wrappers and the head) or
by its kind (attention, dropout, LayerNorm/GELU/residual, embeddings, loss, reshapes); every backward node goes to
the part of the forward op that made it (autograd sequence numbers; ``benchmarks/_attribution.py``). What no op
accounts for is Python and dispatch. The profiler's own overhead inflates the small ops, so the step times and the
ratio come from a separate round-robin timing without the profiler (medians).

``--smoke`` runs the same on a tiny random BERT (saved with the real tokenizer into a temporary directory and
built through the same code path) in seconds. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd.profiler import record_function  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from transformers import get_linear_schedule_with_warmup  # noqa: E402

from benchmarks.step_time import measure_levers  # noqa: E402
from benchmarks._attribution import attribute, module_ranges  # noqa: E402
from benchmarks._common import ROOT, Models, load_bench_params, machine, ratio  # noqa: E402
from lora_pipeline.pretrained import load_tokenizer  # noqa: E402
from lora_pipeline.runtime import seed_everything  # noqa: E402
from lora_pipeline.speedups import first_token_last_layer  # noqa: E402
from lora_pipeline.training import FitConfig, make_optimizer, train_step  # noqa: E402

LABELS = ["fresh", "rotten", "plot"]


# --------------------------------------------------------------------------------------------- models, batch
def tiny_model_dir(tmp: Path, tokenizer) -> Path:
    """A tiny random BERT classifier with the real tokenizer, saved where ``model.name`` can point."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(LABELS))
    BertForSequenceClassification(config).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return tmp


def load_models(smoke: bool, tmp: Path) -> Models:
    """``Models`` from ``params.yaml`` (the real base model), or for ``smoke`` a tiny random one."""
    params = load_bench_params(ROOT / "params.yaml")
    tokenizer = load_tokenizer(params.model)
    if smoke:
        model_cfg = dataclasses.replace(params.model, name=str(tiny_model_dir(tmp, tokenizer)))
        params = dataclasses.replace(params, model=model_cfg)
        tokenizer = load_tokenizer(model_cfg)
    return Models(params, LABELS, tokenizer)


def synthetic_batch(tokenizer, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids between [CLS] and [SEP], lengths uniform in [8, length], padded to ``length``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, length), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((batch, length), dtype=torch.long)  # (B, T)
    lengths = torch.randint(min(8, length), length + 1, (batch,), generator=gen)
    for j, n in enumerate(lengths.tolist()):
        ids[j, :n] = torch.randint(1000, tokenizer.vocab_size, (n,), generator=gen)
        ids[j, 0], ids[j, n - 1] = tokenizer.cls_token_id, tokenizer.sep_token_id
        mask[j, :n] = 1
    labels = torch.randint(0, len(LABELS), (batch,), generator=gen)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ----------------------------------------------------------------------------------------------- stepping
@dataclasses.dataclass
class Variant:
    """One model with its optimizer, schedule and the step function that trains it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: list[torch.Tensor]
    max_grad_norm: float
    losses: list[torch.Tensor] = dataclasses.field(default_factory=list)


def make_variant(model: nn.Module, models: Models,
                 optimizer_factory: Callable[..., torch.optim.Optimizer] = make_optimizer) -> Variant:
    t = models.params.train
    cfg = FitConfig(lr=models.params.study.lora_lrs[0], epochs=1, weight_decay=t.weight_decay,
                    max_grad_norm=t.max_grad_norm)
    model.train()
    optimizer = optimizer_factory(model, cfg, torch.device("cpu"))
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10**9)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return Variant(model, optimizer, scheduler, params, cfg.max_grad_norm)


def plain_step(v: Variant, batch: dict) -> None:
    """The loop's own ``train_step``, seeded with the step number (same dropout masks for every variant)."""
    torch.manual_seed(len(v.losses))
    v.losses.append(train_step(v.model, batch, v.optimizer, v.scheduler, v.params, v.max_grad_norm,
                               torch.device("cpu")))


def phased_step(v: Variant, batch: dict) -> None:
    """``train_step`` (fp32, weight 1) line by line, each phase in a profiler range."""
    torch.manual_seed(len(v.losses))
    with record_function("phase:forward"):
        loss = v.model(**batch).loss
    with record_function("phase:backward"):
        loss.backward()
    with record_function("phase:clip"):
        torch.nn.utils.clip_grad_norm_(v.params, v.max_grad_norm)
    with record_function("phase:optimizer"):
        v.optimizer.step()
    with record_function("phase:scheduler"):
        v.scheduler.step()
    with record_function("phase:zero_grad"):
        v.optimizer.zero_grad(set_to_none=True)
    v.losses.append(loss.detach())


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, round-robin so that load on the machine hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------- profiling
def profile_steps(variants: dict[str, Variant], batch: dict, steps: int) -> tuple[dict, dict]:
    """Per variant, the median over ``steps`` profiled steps (round-robin) of the ms of each part and place."""
    samples = {name: (defaultdict(list), defaultdict(list)) for name in variants}
    for _ in range(steps):
        for name, v in variants.items():
            with module_ranges(v.model), profile(activities=[ProfilerActivity.CPU]) as prof:
                phased_step(v, batch)
            for found, into in zip(attribute(prof.profiler.function_events), samples[name]):
                for key in set(found) | set(into):
                    into[key].append(found.get(key, 0.0))

    def medians(by: dict[str, list[float]]) -> dict[str, float]:
        return {k: round(statistics.median(us) / 1000, 2) for k, us in sorted(by.items())}

    return ({n: medians(s[0]) for n, s in samples.items()}, {n: medians(s[1]) for n, s in samples.items()})


# -------------------------------------------------------------------------------------------------- report
def table(profiles: dict[str, dict[str, float]], what: str = "part") -> str:
    """Parts as rows, ms and share of the profiled step per variant as columns."""
    names = list(profiles)
    parts = sorted({p for prof in profiles.values() for p in prof},
                   key=lambda p: -max(prof.get(p, 0.0) for prof in profiles.values()))
    totals = {n: sum(profiles[n].values()) for n in names}
    head = f"{what:40s}" + "".join(f"{n + ' ms':>14s}{'share':>8s}" for n in names)
    lines = [head, "-" * len(head)]
    for part in parts:
        lines.append(f"{part:40s}" + "".join(
            f"{profiles[n].get(part, 0.0):14.1f}{100 * profiles[n].get(part, 0.0) / totals[n]:7.1f}%" for n in names))
    lines.append(f"{'total (profiled)':40s}" + "".join(f"{totals[n]:14.1f}{'':8s}" for n in names))
    return "\n".join(lines)


def shared_share(places: dict[str, dict[str, float]]) -> Optional[float]:
    """The share of peft's profiled step spent where ours does the very same work (every encoder layer but the
    last, which ours trims; outside the encoder; clip, AdamW, schedule): a lower bound on ours/peft for any
    change that keeps ours' numbers (it ignores the last layer's keys and values, which ours computes too)."""
    peft = places.get("peft")
    if not peft:
        return None
    layers = sorted(k for k in peft if k.startswith("encoder layer "))
    shared = sum(ms for k, ms in peft.items() if k != layers[-1]) if layers else None
    return round(shared / sum(peft.values()), 3) if shared is not None else None


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="profile one LoRA training step, ours vs peft")
    parser.add_argument("--smoke", action="store_true", help="tiny random BERT, a few seconds")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per variant")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant (no profiler)")
    parser.add_argument("--levers", action="store_true",
                        help="instead: time ours with each lever (benchmarks.step_time.measure_levers) vs peft")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    seed_everything(42)  # as the train stages: deterministic kernels
    if args.smoke:
        args.batch, args.length, args.steps, args.repeats = 4, 16, 1, 2
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        models = load_models(args.smoke, Path(tmp))
        batch = synthetic_batch(models.tokenizer, args.batch, args.length)
        if args.levers:
            return _report(measure_levers(models, batch, torch.device("cpu"), args.repeats, warmup=1), args)
        ours_model = models.ours()
        peft_model = models.peft(like=ours_model)
        stack.enter_context(first_token_last_layer(ours_model))  # as fit: trimmed, torch's dropout
        variants = {"ours": make_variant(ours_model, models), "peft": make_variant(peft_model, models)}
        times = interleaved({n: (lambda v=v: plain_step(v, batch)) for n, v in variants.items()}, args.repeats)
        for v in variants.values():  # the profiler's first start costs extra: not counted
            with module_ranges(v.model), profile(activities=[ProfilerActivity.CPU]):
                phased_step(v, batch)
        profiles, places = profile_steps(variants, batch, args.steps)
    ms = {n: round(statistics.median(ts) * 1000, 1) for n, ts in times.items()}
    print(table(profiles))
    print()
    print(table(places, "place"))
    losses = {n: torch.stack(v.losses) for n, v in variants.items()}
    result = {"repeats": args.repeats, "profiled_steps": args.steps, "median_ms": ms,
              "ours_over_peft_step": ratio(ms["ours"], ms["peft"]),
              "max_loss_diff_ours_vs_peft": float((losses["ours"] - losses["peft"]).abs().max()),
              "profile_ms": profiles, "place_ms": places,
              "shared_share_of_peft": shared_share(places)}
    return _report(result, args)


def _report(result: dict, args: argparse.Namespace) -> int:
    result = {"smoke": args.smoke, "batch": args.batch, "length": args.length, **result,
              "machine": machine(torch.device("cpu"))}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
