"""Issue 14: prediction throughput of the trained models, and the latency of one served REST request.

What ``lora-pipeline predict`` runs (tokenise, length-grouped batches, forward, softmax), timed end to end on
texts of the test split, for: full fine-tuning, LoRA merged in memory (what ``load_classifier`` serves) and LoRA
unmerged (adapters evaluated beside the frozen weights). Batch 1 and 64; variants round-robin, median of repeats.
With ``--serve URI`` it also starts ``mlflow models serve -m URI --env-manager local`` on 127.0.0.1 and times
single-text POSTs to ``/invocations`` (median).

    python -m benchmarks.predict_throughput --full models/full/s42-lr5e-05 --lora models/lora/r8-s42-lr0.002 \
        --split data/split --serve models:/lora-pipeline-classifier@champion
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import torch

from lora_pipeline.inference import Classifier, load_classifier, read_card
from lora_pipeline.lora import load_adapter
from lora_pipeline.models import _pretrained

from ._common import interleaved_medians, machine, ratio


def _unmerged(directory: Path) -> Classifier:
    """The LoRA model with its adapters left beside the frozen weights (what training evaluates)."""
    merged = load_classifier(directory)
    card = read_card(directory)
    from lora_pipeline.config import ModelConfig

    model = _pretrained(ModelConfig(name=card.base_model, max_length=card.max_length), list(card.labels),
                        merged.tokenizer.pad_token_id)
    load_adapter(model, directory)
    return Classifier(model, merged.tokenizer, card, merged.device, merged.bf16)


def throughput(full: Path, lora: Path, texts: list[str], repeats: int) -> dict:
    models = {"full": load_classifier(full), "lora_merged": load_classifier(lora), "lora_unmerged": _unmerged(lora)}
    out: dict = {}
    for batch, n in ((1, min(64, len(texts))), (64, len(texts))):
        chunk = texts[:n]
        fns = {name: (lambda c=c: c.predict_proba(chunk, batch_size=batch)) for name, c in models.items()}
        seconds = interleaved_medians(fns, repeats, torch.device("cpu"), warmup=1)
        rate = {name: round(n / s, 1) for name, s in seconds.items()}
        out[f"batch_{batch}"] = {"texts": n, "texts_per_s": rate,
                                 "merged_over_unmerged": ratio(rate["lora_merged"], rate["lora_unmerged"]),
                                 "merged_over_full": ratio(rate["lora_merged"], rate["full"])}
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_latency(uri: str, texts: list[str], repeats: int) -> dict:
    port = _free_port()
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() - started > 300:
                    raise RuntimeError(f"mlflow models serve -m {uri} did not start")
                time.sleep(0.5)
        ready = time.monotonic() - started
        times = []
        for i in range(repeats + 2):
            body = json.dumps({"dataframe_records": [{"text": texts[i % len(texts)]}]}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
            if i >= 2:  # the first requests warm the server up
                times.append(time.perf_counter() - start)
        return {"uri": uri, "startup_s": round(ready, 1), "requests": repeats,
                "median_ms": round(1000 * statistics.median(times), 1)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", type=Path, required=True, help="a full fine-tuning model directory")
    parser.add_argument("--lora", type=Path, required=True, help="a LoRA model directory")
    parser.add_argument("--split", type=Path, required=True, help="the split stage's folder (texts of test)")
    parser.add_argument("--texts", type=int, default=512, help="test texts for the batch-64 figure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", help="an MLflow model URI to serve and time (e.g. models:/<name>@champion)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    texts = pd.read_parquet(args.split / "test.parquet", columns=["text"])["text"].astype(str).tolist()[:args.texts]
    result = {"machine": machine(torch.device("cpu")), "throughput": throughput(args.full, args.lora, texts,
                                                                               args.repeats)}
    if args.serve:
        result["serve"] = serve_latency(args.serve, texts, 20)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
