"""Prediction throughput of the trained models, and the latency of one served REST request.

What ``lora-pipeline predict`` runs (tokenise, length-grouped batches, forward, softmax), timed end to end on
texts of the test split, for: full fine-tuning, LoRA merged in memory (what ``load_classifier`` serves) and LoRA
unmerged (adapters evaluated beside the frozen weights). Batch 1 and 64; variants round-robin, median of repeats.
With ``--serve URI`` it also starts ``mlflow models serve -m URI --env-manager local`` on 127.0.0.1 and times
single-text POSTs to ``/invocations`` (median). Prints one JSON object (one line).

    python benchmarks/predict_throughput.py --full models/full/s42-lr5e-05 --lora models/lora/r8-s42-lr0.002 \
        --split data/split --serve models:/lora-pipeline-classifier@champion
    python benchmarks/predict_throughput.py --smoke

``--smoke`` times the same three loaders on a toy split and on untrained toy models written by the train stages'
own ``save_trained`` (``_common.smoke_fixture``), one repeat, in seconds; it starts no server (``--serve`` needs
a registered MLflow model).
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
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` puts benchmarks/ there

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import BENCH_RANK, Smoke, interleaved_medians, machine, ratio, smoke_fixture  # noqa: E402
from lora_pipeline.inference import Classifier, load_classifier  # noqa: E402
from lora_pipeline.records import read_card  # noqa: E402
from lora_pipeline.lora import load_adapter  # noqa: E402
from lora_pipeline.variants import pretrained_with_head  # noqa: E402


def _unmerged(directory: Path) -> Classifier:
    """The LoRA model with its adapters left beside the frozen weights (what training evaluates)."""
    merged = load_classifier(directory)
    card = read_card(directory)
    from lora_pipeline.config import ModelConfig

    model = pretrained_with_head(ModelConfig(name=card.base_model, max_length=card.max_length), list(card.labels),
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


def smoke_models(fixture: Smoke, directory: Path) -> tuple[Path, Path]:
    """Untrained full and LoRA (rank 8) model directories of the fixture's model, as the train stages save them."""
    from lora_pipeline.config import load_params
    from lora_pipeline.files import read_json
    from lora_pipeline.records import ModelCard
    from lora_pipeline.models import build_model, save_trained
    from lora_pipeline.pretrained import load_tokenizer

    params = load_params(fixture.params)
    labels = read_json(fixture.split / "labels.json")
    tokenizer = load_tokenizer(params.model)
    out = []
    for variant in ("full", "lora"):
        torch.manual_seed(0)
        model = build_model(variant, params.model, labels, tokenizer, lora=params.lora,
                            rank=BENCH_RANK if variant == "lora" else None)
        card = ModelCard(variant=variant, labels=tuple(labels), max_length=params.model.max_length, text_pair=False,
                         precision=params.train.precision, base_model=params.model.name if variant == "lora" else None)
        save_trained(variant, model, tokenizer, directory / variant, card=card, lora=params.lora)
        out.append(directory / variant)
    return out[0], out[1]


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
    parser.add_argument("--full", type=Path, help="a full fine-tuning model directory")
    parser.add_argument("--lora", type=Path, help="a LoRA model directory")
    parser.add_argument("--split", type=Path, help="the split stage's folder (texts of test)")
    parser.add_argument("--texts", type=int, default=512, help="test texts for the batch-64 figure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", help="an MLflow model URI to serve and time (e.g. models:/<name>@champion)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--smoke", action="store_true", help="toy models and split, one repeat, no server")
    args = parser.parse_args(argv)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
            fixture = smoke_fixture(Path(tmp))
            full, lora = smoke_models(fixture, Path(tmp) / "models")
            result = measure(full, lora, fixture.split, args.texts, 1, None)
    else:
        missing = [f"--{name}" for name in ("full", "lora", "split") if getattr(args, name) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)} (or --smoke)")
        result = measure(args.full, args.lora, args.split, args.texts, args.repeats, args.serve)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def measure(full: Path, lora: Path, split: Path, n_texts: int, repeats: int, serve: str | None) -> dict:
    """Throughput of the three loaders on the first ``n_texts`` test texts, and (``serve``) the REST latency."""
    texts = pd.read_parquet(split / "test.parquet", columns=["text"])["text"].astype(str).tolist()[:n_texts]
    result = {"machine": machine(torch.device("cpu")), "throughput": throughput(full, lora, texts, repeats)}
    if serve:
        result["serve"] = serve_latency(serve, texts, 20)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
