"""What the benchmark scripts share: device, the split, one fixed batch, the models, a robust timer.

The three training variants are built exactly as the pipeline builds them (``build_model``) from the
repository's ``params.yaml``; the peft reference gets the same rank, alpha, targets and head, and is then
given our initial adapter and head weights, so both LoRA models start from the same numbers.

Every script's ``--smoke`` runs its own measuring code at toy sizes on :func:`smoke_fixture`: a random BERT
(hidden 32, 2 layers) with the embedded MiniLM tokenizer, a split of generated texts, and the repository's
``params.yaml`` pointed at both — so a script that no longer fits the library fails in seconds, not in a long run.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` puts benchmarks/, not the repo, on sys.path
    sys.path.insert(0, str(ROOT))

from lora_pipeline.config import DEFAULT_TARGET_SET, EMBEDDED_MODEL, LoraConfig, ModelConfig, Params, SplitConfig, load_params  # noqa: E402
from lora_pipeline.files import LABELS_FILE, read_json, read_split, split_part_file, write_split  # noqa: E402
from lora_pipeline.models import HEAD_MODULES, build_model  # noqa: E402
from lora_pipeline.pretrained import load_tokenizer, resolve_model_path  # noqa: E402

DEFAULT_SPLIT = Path("/tmp/bench/split")
# the LoRA rank every benchmark builds and trains (params.yaml lists the study's ranks, one train instance each)
BENCH_RANK = 8
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
    """The sections the benchmarks read from ``params.yaml`` (``study``: the seed and learning rates)."""
    return load_params(path, sections=["model", "train", "full", "lora", "study"])


@dataclass(frozen=True)
class Smoke:
    """What :func:`smoke_fixture` built: a tiny model directory, a split made with it, and params naming both."""

    model: Path
    split: Path
    params: Path


SMOKE_WORDS = {"neg": "awful boring dull clumsy tedious bland", "plot": "detective village sister journey heist",
               "pos": "great wonderful superb moving charming funny"}
SMOKE_FILLER = "the a film story it was and with this of".split()


def smoke_texts(per_class: int = 40, seed: int = 0) -> pd.DataFrame:
    """Short generated texts (columns text, label) whose class shows in their words, as the clean data."""
    rng = random.Random(seed)
    rows = [{"text": " ".join(rng.sample(words.split(), 3) + rng.choices(SMOKE_FILLER, k=rng.randint(2, 12)))
             + f" {i}", "label": label}
            for label, words in SMOKE_WORDS.items() for i in range(per_class)]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def smoke_model(directory: Path, num_labels: int = 3) -> Path:
    """A random BERT classifier (hidden 32, 2 layers, 2 heads) with the embedded MiniLM tokenizer, saved."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" on every smoke run
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=STEP_LENGTH, num_labels=num_labels)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def smoke_params(path: Path, model: Path, **sections: dict) -> Path:
    """The repository's ``params.yaml`` at toy sizes on ``model``, with ``{section: {key: value}}`` overrides.

    One thread (a hidden-32 model gains nothing from more), MLflow off, exact epochs (no step floor or cap).
    """
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["model"].update(name=str(model), max_length=32)
    raw["scratch"].update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, epochs=1)
    raw["train"].update(batch_size=16, eval_batch_size=64, checkpoint_every=0, num_threads=1, min_steps=0,
                        max_steps=0)
    raw["mlflow"]["enabled"] = False
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def smoke_fixture(directory: Path, per_class: int = 40) -> Smoke:
    """Build a tiny model, a split of ``3 x per_class`` generated texts (as the split stage writes it) and params.

    Args:
        directory: an empty or new folder; gets ``model/``, ``split/`` and ``params.yaml``.
    """
    from lora_pipeline.data.splitting import label_map, split_frame
    from lora_pipeline.data.tokenization import tokenize_frame

    directory.mkdir(parents=True, exist_ok=True)
    model = smoke_model(directory / "model")
    params = smoke_params(directory / "params.yaml", model)
    df = smoke_texts(per_class)
    labels = label_map(df["label"])
    tokenizer = load_tokenizer(ModelConfig(name=str(model), max_length=32))
    split = directory / "split"
    split.mkdir()
    parts = split_frame(df, SplitConfig(seed=0, val_size=0.15, test_size=0.2))
    write_split(split, labels, {name: tokenize_frame(part, tokenizer, 32, labels) for name, part in parts.items()})
    return Smoke(model, split, params)


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
        return build_model("lora", self.params.model, self.labels, self.tokenizer, lora=self.params.lora,
                           rank=BENCH_RANK)

    def ours_dora(self) -> nn.Module:
        """Ours with DoRA layers (``apply_lora(..., use_dora=True)``), otherwise built as :meth:`ours`: the same
        seed, base, head, targets and trainable set (the pipeline's params have no DoRA switch)."""
        from lora_pipeline.lora import apply_lora, mark_only_lora_as_trainable

        model = self.full()  # seeded as ours(): the same base and head weights
        lora = self.params.lora
        apply_lora(model, peft_target_modules(lora), rank=BENCH_RANK, alpha=lora.alpha, dropout=lora.dropout,
                   rslora=lora.rslora, bias=lora.bias, modules_to_save=tuple(lora.modules_to_save), use_dora=True)
        mark_only_lora_as_trainable(model, bias=lora.bias, also=HEAD_MODULES + tuple(lora.modules_to_save))
        return model

    def peft(self, like: Optional[nn.Module] = None, use_dora: bool = False) -> nn.Module:
        """peft's LoRA (DoRA with ``use_dora``) with our settings; with ``like`` (one of ours), its adapter
        (magnitudes included) and head weights too."""
        from peft import LoraConfig, get_peft_model

        lora = self.params.lora
        config = LoraConfig(task_type="SEQ_CLS", r=BENCH_RANK, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=peft_target_modules(lora), use_rslora=lora.rslora, bias=lora.bias,
                            use_dora=use_dora)
        base = self.full()
        config.modules_to_save = [h for h in HEAD_MODULES if hasattr(base, h)] + list(lora.modules_to_save)
        model = get_peft_model(base, config)
        if like is not None:
            copy_adapter(like, model, tuple(lora.modules_to_save))
        return model


def peft_target_modules(lora: LoraConfig, target_set: str = DEFAULT_TARGET_SET):
    """The modules of ``lora.target_sets[target_set]`` for peft's ``LoraConfig``: a string (regex, all-linear) as
    is, names as a list, None for the architecture's default."""
    targets = lora.targets(target_set)
    return targets if targets is None or isinstance(targets, str) else list(targets)


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
