"""The MLflow UI, opened in headless Chromium: a training run shows its logged model, and the Model Registry shows the
registered version with its alias. Reads the rendered page (``--dump-dom`` after the page's scripts ran).

Needs Debian's Chromium (``apt-get install chromium``; ``CHROMIUM`` names another binary); skipped without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest

from tests.support.servers import start_mlflow_server
from tests.support.training import nonzero_lora_model

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium (or set CHROMIUM)")


def _text(html: str) -> str:
    """The visible text of a rendered page, whitespace collapsed."""
    html = re.sub(r"(?s)<script.*?</script>|<style.*?</style>", " ", html)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def _render(url: str, profile: Path) -> str:
    """The page's DOM after its scripts had 25 s of (virtual) time, as headless Chromium renders it."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=25000", "--dump-dom", url]
    done = subprocess.run([CHROMIUM, *flags], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_ui_shows_the_logged_model_and_the_registered_version_with_its_alias(tiny_model_dir, tiny_tokenizer,
                                                                                 tmp_path):
    import mlflow

    from lora_pipeline import mlflow_model
    from lora_pipeline.models import model_digest, save_trained, weights_files

    model, lora, card = nonzero_lora_model(tiny_model_dir, tiny_tokenizer)
    save_trained("lora", model, tiny_tokenizer, tmp_path / "m", card=card, lora=lora)
    digest = model_digest(weights_files("lora", tmp_path / "m"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    # not mlflow.set_experiment: it would leave this process's active experiment set for later tests
    experiment = mlflow.MlflowClient().get_experiment(mlflow.MlflowClient().create_experiment("ui-check"))
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="train_lora r4 s42") as run:
        mlflow_model.log_trained(mlflow, tmp_path / "m", digest)
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="evaluate"):
        version = mlflow_model.register_pick(mlflow, tmp_path / "m", digest, "ui-check-classifier",
                                             {"variant": "lora", "rank": 4})
    mlflow_model.promote(mlflow.MlflowClient(), "ui-check-classifier", "champion", version)
    server = start_mlflow_server(tmp_path, backend=uri)
    try:
        base = f"{server.url}/#"
        run_page = _render(f"{base}/experiments/{experiment.experiment_id}/runs/{run.info.run_id}", tmp_path / "p1")
        registry_page = _render(f"{base}/models/ui-check-classifier", tmp_path / "p2")
    finally:
        server.stop()
    run_text, registry_text = _text(run_page), _text(registry_page)
    assert "train_lora r4 s42" in run_text and "Logged models (1)" in run_text
    assert re.search(rf"Logged models \(1\).*\b{mlflow_model.MODEL_NAME} Ready\b", run_text)
    assert f"Registered models ui-check-classifier v{version}" in run_text
    assert re.search(rf"Version {version} .*variant : lora rank : 4 .*@ champion", registry_text)
