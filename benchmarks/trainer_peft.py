"""Reference for the end-to-end benchmark: Hugging Face ``Trainer`` + ``peft.get_peft_model``, the usual recipe.

Same model, splits, max length and hyper-parameters as the ``train_lora`` stage (read from the same params file):
LoRA rank/alpha/dropout/targets/bias, the head in ``modules_to_save``, learning rate, batch sizes, warm-up ratio,
weight decay, gradient clipping, epochs and seed. Everything else is the Trainer's default: random batches padded
per batch by ``DataCollatorWithPadding``, its default AdamW and linear schedule. The split's ``text`` column is
tokenised here with the same tokenizer and ``max_length`` (that is part of the recipe, so it is timed).

    python benchmarks/trainer_peft.py --params P --split DIR --out DIR --metrics FILE [--threads N]

Writes ``{"val_macro_f1", "train_seconds", "eval_seconds", "wall_seconds", "steps", ...}`` to ``--metrics``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

START = time.perf_counter()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lora_pipeline.config import load_params  # noqa: E402
from lora_pipeline.files import read_split  # noqa: E402
from lora_pipeline.pretrained import load_tokenizer, resolve_model_path  # noqa: E402
from lora_pipeline.runtime import resolve_bf16  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True)
    parser.add_argument("--split", required=True, help="directory from the split stage")
    parser.add_argument("--out", required=True, help="Trainer output_dir (nothing is saved there)")
    parser.add_argument("--metrics", required=True, help="JSON file for the results")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--group-by-length", action="store_true",
                        help="use the Trainer's length-grouped sampler instead of its random default")
    return parser.parse_args(argv)


class Encoded(torch.utils.data.Dataset):
    """Tokenised rows for the Trainer (unpadded; the collator pads each batch)."""

    def __init__(self, df: pd.DataFrame, tokenizer, max_length: int):
        enc = tokenizer(df["text"].astype(str).tolist(), truncation=True, max_length=max_length)
        self.rows = [{"input_ids": ids, "attention_mask": mask, "labels": int(label)}
                     for ids, mask, label in zip(enc["input_ids"], enc["attention_mask"], df["label_id"])]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def build(params, labels: list[str], tokenizer):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from benchmarks._common import BENCH_RANK, peft_target_modules

    torch.manual_seed(params.study.seeds[0])
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(params.model.name), num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)}, use_safetensors=True)
    lora = params.lora
    config = LoraConfig(task_type="SEQ_CLS", r=BENCH_RANK, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=peft_target_modules(lora), use_rslora=lora.rslora, bias=lora.bias,
                        modules_to_save=["classifier", *lora.modules_to_save])
    return get_peft_model(model, config)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    params = load_params(args.params, sections=["model", "train", "lora", "study"])
    seed, lr = params.study.seeds[0], params.study.lora_lrs[0]  # the grid's first point, as end_to_end's stage run
    labels, frames = read_split(args.split, ("train", "val"), columns=["text", "label_id"])
    tokenizer = load_tokenizer(params.model)
    train = Encoded(frames["train"], tokenizer, params.model.max_length)
    val_df = frames["val"]
    val = Encoded(val_df, tokenizer, params.model.max_length)
    t = params.train
    cuda = torch.cuda.is_available() and t.device != "cpu"
    bf16 = resolve_bf16(t.precision, torch.device("cuda" if cuda else "cpu"))  # as the stage resolves it
    targs = TrainingArguments(
        output_dir=args.out, learning_rate=lr, num_train_epochs=params.lora.epochs,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a share of the steps (transformers >= 5)
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        lr_scheduler_type="linear", seed=seed, eval_strategy="no", save_strategy="no",
        logging_strategy="no", report_to="none", disable_tqdm=True, use_cpu=not cuda, bf16=bf16,
        train_sampling_strategy="group_by_length" if args.group_by_length else "random")
    trainer = Trainer(model=build(params, labels, tokenizer), args=targs, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tokenizer))
    output = trainer.train()
    t0 = time.perf_counter()
    logits = trainer.predict(val).predictions  # (N, C)
    eval_seconds = time.perf_counter() - t0
    from sklearn.metrics import f1_score

    f1 = float(f1_score(val_df["label_id"].to_numpy(), np.argmax(logits, axis=-1), average="macro",
                        zero_division=0))
    result = {"val_macro_f1": f1, "train_seconds": round(output.metrics["train_runtime"], 2),
              "eval_seconds": round(eval_seconds, 2), "steps": output.global_step,
              "threads": torch.get_num_threads(), "device": "cuda" if cuda else "cpu", "precision": "bf16" if bf16 else "fp32",
              "sampler": "group_by_length" if args.group_by_length else "random",
              "wall_seconds": round(time.perf_counter() - START, 2)}
    Path(args.metrics).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
