"""Trained models in MLflow: a ``pyfunc`` model logged by every train stage, and the registry entry of the study's pick.

Why ``pyfunc`` and not MLflow's ``transformers`` flavor: that flavor stores a whole transformers model, so a LoRA
run would log a copy of its base (≈ 87 MB instead of < 1 MB) and could not take the adapter as trained. The
pyfunc logs the model directory exactly as the train stage wrote it (for LoRA: the adapter, its peft export and
the tokenizer; the base is resolved where the model is loaded), loads it with
:func:`~lora_pipeline.inference.load_classifier` (LoRA merged in memory: no added latency), takes single texts or
sentence pairs, and answers with the label and every class probability. The package's code travels with the
model (``code_paths``), so ``mlflow models serve`` needs only the dependencies, not a checkout; the model itself is
logged as code (MLflow's "models from code"), never as a pickle.

The functions here take the ``mlflow`` module; stages call them through ``tracker.use(...)``
(:class:`~lora_pipeline.tracking.MlflowTracker`), under its never-fail rules.
"""

from __future__ import annotations

import os
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional

import mlflow.pyfunc
import pandas as pd

from mlflow.exceptions import MlflowException

from .config import VARIANTS
from .errors import PipelineError
from .inference import load_classifier, predict_frame
from .records import ModelCard, read_card

__all__ = ["ARTIFACT", "MODEL_NAME", "model_name", "TextClassifierModel", "log_classifier", "log_trained", "find_logged_model",
           "register_classifier", "register_pick", "promote",
           "committed_version", "STUDY_TAG"]

ARTIFACT = "classifier"  # the pyfunc's artifact key: the model directory
MODEL_NAME = "model"  # name of a logged model whose directory does not say its variant and instance
DIGEST_TAG = "model_digest"  # train runs carry the digest of what they logged; evaluate finds them by it
URI_TAG = "model_uri"
# "models from code": MLflow stores this file, not a pickle of the model object, and runs it when loading
MODEL_CODE = ("classifier_model.py", "import mlflow.models\n\nfrom lora_pipeline.mlflow_model import TextClassifierModel\n\n"
              "mlflow.models.set_model(TextClassifierModel())\n")
EVALUATE_RUN_TAG = "evaluate_run_id"  # a registered version names the evaluate run that registered it
STUDY_TAG = "study_md5"  # ... and the md5 of the study file it wrote, which dvc.lock records once committed


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with ``text`` (and ``text_pair`` for pair models). Output: ``label``, ``prob_<label>``…

    ``LORA_PIPELINE_DEVICE`` (auto | cpu | cuda[:N]) picks the device of a served model; ``LORA_PIPELINE_BATCH``
    its batch size (default 64).
    """

    def load_context(self, context: Any) -> None:
        self._classifier = load_classifier(context.artifacts[ARTIFACT],
                                           device=os.environ.get("LORA_PIPELINE_DEVICE", "auto"))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Optional[dict] = None) -> pd.DataFrame:
        """Bad input (a missing column, an empty or non-string text) is a 400 whose message says what to fix,
        without a server-side stack trace."""
        try:
            return predict_frame(self._classifier, model_input,
                                 batch_size=int(os.environ.get("LORA_PIPELINE_BATCH", "64")))
        except PipelineError as err:
            raise MlflowException.invalid_parameter_value(str(err)) from None


def model_name(variant: str, tag: str) -> str:
    """A logged model's name: variant and instance tag, ``lora-r8-s42-lr0_002`` (MLflow refuses ``.``, ``/``, ``:``,
    ``%`` and quotes in the name, so each becomes ``_``)."""
    return re.sub(r"[./:%\"']", "_", f"{variant}-{tag}")


def _directory_name(directory: str | Path) -> str:
    """The name of the model in ``<variant>/<tag>/`` (the train stages' layout), else :data:`MODEL_NAME`."""
    path = Path(directory).resolve()
    return model_name(path.parent.name, path.name) if path.parent.name in VARIANTS else MODEL_NAME


def _signature(card: ModelCard):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("string", "text")] + ([ColSpec("string", "text_pair")] if card.text_pair else [])
    outputs = [ColSpec("string", "label")] + [ColSpec("double", f"prob_{name}") for name in card.labels]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def _requirements(card: ModelCard) -> list[str]:
    """Pinned to what this environment runs; the embedded base model's package when a LoRA adapter needs it."""
    names = ["torch", "transformers", "safetensors", "tokenizers", "pandas", "numpy", "scikit-learn", "pyyaml"]
    if card.base_model and card.base_model.startswith("package:"):
        names.append(card.base_model[len("package:"):].partition("/")[0].replace("_", "-"))
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def log_classifier(mlflow: Any, directory: str | Path, name: Optional[str] = None) -> Any:
    """Log the model directory as a pyfunc model of the active run, with its signature and an input example.

    ``name`` defaults to the variant and instance of a ``<variant>/<tag>/`` directory (:func:`model_name`).

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is what :func:`register_classifier` takes).
    """
    card = read_card(directory)
    example = pd.DataFrame({"text": ["a funny, moving and well acted film"]}
                           | ({"text_pair": ["the film is worth seeing"]} if card.text_pair else {}))
    package = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="lora-pipeline-pyfunc-") as tmp:
        code = Path(tmp) / MODEL_CODE[0]
        code.write_text(MODEL_CODE[1], encoding="utf-8")
        return mlflow.pyfunc.log_model(name=name or _directory_name(directory), python_model=str(code), artifacts={ARTIFACT: str(directory)},
                                       signature=_signature(card), input_example=example, code_paths=[str(package)],
                                       pip_requirements=_requirements(card))


def find_logged_model(mlflow: Any, experiment_id: str, digest: str) -> Optional[str]:
    """The ``model_uri`` of the newest finished run that logged the model with ``digest``, or None."""
    runs = mlflow.search_runs([experiment_id], filter_string=f"tags.{DIGEST_TAG} = '{digest}' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              output_format="list") or []
    for run in runs:
        if run.data.tags.get(URI_TAG):
            return run.data.tags[URI_TAG]
    return None


def register_classifier(mlflow: Any, model_uri: str, name: str, tags: Mapping[str, Any]) -> str:
    """Register ``model_uri`` as a new version of ``name`` with ``tags``. No alias moves: that is
    :func:`promote`'s, a deliberate act.

    Returns:
        The version number.
    """
    clean = {k: str(v) for k, v in tags.items() if v is not None}
    return str(mlflow.register_model(model_uri, name, tags=clean).version)


def promote(client: Any, name: str, alias: str, version: str) -> Optional[str]:
    """Point ``alias`` of the registered model ``name`` at ``version``.

    Returns:
        The version the alias pointed at before, or None when it was not set.
    """
    try:
        before: Optional[str] = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        before = None
    client.set_registered_model_alias(name, alias, version)
    return before


def committed_version(client: Any, name: str, outputs: set[str], commit: str, version: Optional[str] = None) -> Any:
    """The version of ``name`` an evaluate run registered whose study file is among ``outputs`` (the md5s a
    committed ``dvc.lock`` records): ``version``, else the newest such.

    Raises:
        PipelineError: no such version; ``version`` missing, or not from the committed run (an experiment's, or
            a run of uncommitted changes).
    """
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise PipelineError(f"registered model {name!r} has no versions in this MLflow store; run the pipeline "
                            "(`dvc repro`) and commit its dvc.lock, or set MLFLOW_TRACKING_URI to the store it used")
    if version is not None:
        chosen = [v for v in versions if str(v.version) == str(version)]
        if not chosen:
            raise PipelineError(f"registered model {name!r} has no version {version} (it has "
                                f"{', '.join(sorted((str(v.version) for v in versions), key=int))})")
        if chosen[0].tags.get(STUDY_TAG) not in outputs:
            raise PipelineError(f"{name} version {version} is not from the run committed at {commit} (dvc.lock does "
                                "not record its study): an experiment's or an uncommitted run's; `dvc exp apply` "
                                "the experiment and commit it, or check out the commit of that run")
        return chosen[0]
    ours = [v for v in versions if v.tags.get(STUDY_TAG) in outputs]
    if not ours:
        raise PipelineError(f"no version of {name!r} comes from the run committed at {commit} (dvc.lock records no "
                            "study any version was registered with): run `dvc repro`, commit dvc.lock, then promote")
    return max(ours, key=lambda v: int(v.version))


def log_trained(mlflow: Any, directory: str | Path, digest: str, name: Optional[str] = None) -> str:
    """A train stage's model: logged to the active run as ``name`` (see :func:`log_classifier`), the run tagged
    with its digest and model URI."""
    info = log_classifier(mlflow, directory, name)
    mlflow.set_tags({DIGEST_TAG: digest, URI_TAG: info.model_uri})
    return info.model_uri


def register_pick(mlflow: Any, directory: str | Path, digest: str, name: str, tags: Mapping[str, Any]) -> str:
    """Register the model with ``digest``: the one its train run logged, or, when no run of this experiment
    logged it (training restored from DVC's cache, or tracking was down then), ``directory`` logged now into the
    active run. The version is tagged with ``tags``, the digest and the active (evaluate) run; no alias moves.
    Returns the new version."""
    run = mlflow.active_run()
    uri = find_logged_model(mlflow, run.info.experiment_id, digest) or log_classifier(mlflow, directory).model_uri
    version = register_classifier(mlflow, uri, name, {**tags, DIGEST_TAG: digest, EVALUATE_RUN_TAG: run.info.run_id})
    mlflow.set_tags({"registered_model": f"{name} v{version}"})
    return version
