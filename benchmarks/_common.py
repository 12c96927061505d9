"""What the benchmark scripts share: device, the split, one fixed batch, the models, a robust timer.

The three training variants are built exactly as the pipeline builds them (``build_model``) from the
repository's ``params.yaml``; the peft reference gets the same rank, alpha, targets and head, and is then
given our initial adapter and head weights, so both LoRA models start from the same numbers.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` puts benchmarks/, not the repo, on sys.path
    sys.path.insert(0, str(ROOT))

from lora_pipeline.config import Params, load_params  # noqa: E402
from lora_pipeline.files import LABELS_FILE, read_json, read_split, split_part_file  # noqa: E402
from lora_pipeline.models import HEAD_MODULES, build_model  # noqa: E402
from lora_pipeline.pretrained import load_tokenizer  # noqa: E402

DEFAULT_SPLIT = Path("/tmp/bench/split")
STEP_BATCH, STEP_LENGTH = 32, 64


def split_command(split: Path) -> str:
    """The commands that make ``split`` from the project's own stages (outside the repo's ``data/``)."""
    work = split.parent
    return (f"cd {ROOT} && export MLFLOW_TRACKING_URI=sqlite:///{work}/mlflow.db && "
            f"{sys.executable} -m stages.ingest --out {work}/raw && "
            f"{sys.executable} -m stages.validate --raw {work}/raw --out {work}/clean --metrics {work}/v.json "
            f"--report {work}/rep && "
            f"{sys.executable} -m stages.split --clean {work}/clean --out {work}/split --metrics {work}/s.json")


def ensure_split(split: Path, build: bool) -> Path:
    """Return ``split`` when it holds train/val parquet files; otherwise build it or exit with the command.

    The split must be named ``split`` (its siblings hold the raw and clean data while building).
    """
    if all((split / split_part_file(p)).is_file() for p in ("train", "val")):
        return split
    command = split_command(split)
    if not build or split.name != "split":
        raise SystemExit(f"no split data in {split}; make it with:\n  {command}\n(or pass --build-split)")
    print(f"building the default data into {split.parent} ...", file=sys.stderr, flush=True)
    subprocess.run(["bash", "-c", command], check=True)
    return split


def load_bench_params(path: Path) -> Params:
    """The sections the benchmarks read from ``params.yaml``."""
    return load_params(path, sections=["model", "train", "full", "lora"])


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def machine(device: torch.device) -> dict:
    """Where the numbers come from."""
    info = {"device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import peft
        import transformers

        info.update(transformers=transformers.__version__, peft=peft.__version__)
    except ImportError:
        pass
    return info


def fixed_batch(split: Path, tokenizer, batch_size: int, length: int, device: torch.device,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """``batch_size`` random training rows, cut or padded to exactly ``length`` tokens (a fixed shape)."""
    df = read_split(split, ("train",), columns=["input_ids", "label_id"])[1]["train"]
    rows = df.sample(n=batch_size, random_state=seed)
    ids = torch.full((batch_size, length), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((batch_size, length), dtype=torch.long)  # (B, T)
    for j, seq in enumerate(rows["input_ids"]):
        seq = list(seq)[:length]
        ids[j, : len(seq)] = torch.tensor(seq)
        mask[j, : len(seq)] = 1
    labels = torch.tensor(rows["label_id"].to_numpy(), dtype=torch.long)
    return {k: v.to(device) for k, v in {"input_ids": ids, "attention_mask": mask, "labels": labels}.items()}


@dataclass
class Models:
    """Everything needed to build the variants the same way."""

    params: Params
    labels: list[str]
    tokenizer: object

    @classmethod
    def load(cls, params: Params, split: Path) -> "Models":
        return cls(params, read_json(split / LABELS_FILE), load_tokenizer(params.model))

    def full(self) -> nn.Module:
        torch.manual_seed(self.params.study.seeds[0])
        return build_model("full", self.params.model, self.labels, self.tokenizer)

    def ours(self) -> nn.Module:
        torch.manual_seed(self.params.study.seeds[0])
        return build_model("lora", self.params.model, self.labels, self.tokenizer, lora=self.params.lora)

    def peft(self, like: Optional[nn.Module] = None) -> nn.Module:
        """peft's LoRA with our settings; with ``like`` (one of ours), its adapter and head weights too."""
        from peft import LoraConfig, get_peft_model

        lora = self.params.lora
        config = LoraConfig(task_type="SEQ_CLS", r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(lora.target_modules) if lora.target_modules else None,
                            use_rslora=lora.rslora, bias=lora.bias)
        base = self.full()
        config.modules_to_save = [h for h in HEAD_MODULES if hasattr(base, h)] + list(lora.modules_to_save)
        model = get_peft_model(base, config)
        if like is not None:
            copy_adapter(like, model, tuple(lora.modules_to_save))
        return model


def copy_adapter(ours: nn.Module, peft_model: nn.Module, extra: tuple[str, ...] = ()) -> None:
    """Give a peft model the LoRA matrices, head and ``extra`` module weights of one of ours (peft format)."""
    import tempfile

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from lora_pipeline.lora import export_peft
    from lora_pipeline.lora.peft_compat import PEFT_WEIGHTS

    with tempfile.TemporaryDirectory() as tmp:
        heads = [h for h in HEAD_MODULES if hasattr(ours, h)] + list(extra)
        export_peft(ours, tmp, base_model_name="bench", modules_to_save=heads)
        result = set_peft_model_state_dict(peft_model, load_file(str(Path(tmp) / PEFT_WEIGHTS)))
    if result.unexpected_keys:
        raise RuntimeError(f"peft did not take our adapter keys: {result.unexpected_keys[:5]}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                        warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, called round-robin so drift hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")
