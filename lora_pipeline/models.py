"""Build, save and load the three variants: a small BERT from scratch, the full encoder, the encoder with LoRA.

Each function names its variant (``"scratch" | "full" | "lora"``) and hands the work to that variant's object in
:mod:`lora_pipeline.variants`; what every variant shares (atomic writes, the tokenizer and card, one-line errors
for corrupt weights, the digest) stays here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from torch import nn

from .config import DEFAULT_TARGET_SET, VARIANTS, LoraConfig, ModelConfig, ScratchConfig, Variant
from .errors import PipelineError, excerpt
from .files import atomic_dir
from .lora.surgery import HEAD_NAMES
from .records import ModelCard
from .variants import MERGED_DIR, PEFT_DIR, model_variant, peft_base_reference

__all__ = ["Variant", "VARIANTS", "HEAD_MODULES", "PEFT_DIR", "MERGED_DIR", "build_model", "save_trained",
           "load_trained", "model_digest", "peft_base_reference", "weights_files"]

# Freshly initialised classification heads: one list for the whole project, owned by the LoRA package
# (kept under this name because stages import it from here).
HEAD_MODULES: tuple[str, ...] = HEAD_NAMES


def build_model(variant: Variant, model_cfg: ModelConfig, labels: list[str], tokenizer, *,
                scratch: Optional[ScratchConfig] = None, lora: Optional[LoraConfig] = None,
                rank: Optional[int] = None, target_set: str = DEFAULT_TARGET_SET, adapter: str = "lora") -> nn.Module:
    """Build one variant; the caller seeds torch first so initialisation is reproducible.

    Args:
        variant: "scratch" (random small BERT, same tokenizer), "full" (all weights train),
            or "lora" (frozen encoder + adapters + head).
        model_cfg: the pretrained encoder.
        labels: class names; index = class id.
        tokenizer: from :func:`lora_pipeline.pretrained.load_tokenizer`.
        scratch, lora: the variant's own section.
        rank, target_set, adapter: a LoRA run's rank, target set (a name of ``lora.target_sets``) and adapter
            (lora or dora): its run spec's.

    Raises:
        PipelineError: unknown variant, missing section or rank, unloadable model, or LoRA settings the model refuses
            (the message starts with the `lora.*` key).
    """
    return model_variant(variant).build(model_cfg, labels, tokenizer, scratch=scratch, lora=lora, rank=rank,
                                        target_set=target_set, adapter=adapter)


def save_trained(variant: Variant, model: nn.Module, tokenizer, directory: str | Path, *, card: ModelCard,
                 lora: Optional[LoraConfig] = None, save_merged: bool = False) -> None:
    """Write a self-contained model directory, atomically: everything :func:`lora_pipeline.inference.load_classifier`
    needs, with the label names (``classifier.json``, and ``id2label`` in every ``config.json``).

    - scratch / full: ``model.safetensors`` + ``config.json`` + the tokenizer (``transformers.pipeline`` loads it).
    - lora: our adapter (``adapter.safetensors`` + ``adapter_config.json``: adapters, head, ``modules_to_save``,
      a fingerprint of the base), the tokenizer, ``peft/`` (``PeftModel.from_pretrained(base, dir/peft)``), and
      with ``save_merged`` ``merged/``: a plain model with the adapter merged in (a full model's size).

    Args:
        card: the variant, labels, tokenisation and (LoRA) base model reference.
        lora: the ``lora`` section the model was built with (required for the lora variant).
    """
    kind = model_variant(variant)
    with atomic_dir(directory) as tmp:
        kind.save(model, tokenizer, tmp, card=card, lora=lora, save_merged=save_merged)
        tokenizer.save_pretrained(tmp)
        card.write(tmp)


def weights_files(variant: Variant, directory: str | Path) -> list[Path]:
    """The files that hold what was trained (weights + their config; not the tokenizer, card or exports):
    what ``size_on_disk_mb`` counts and what identifies the model in the MLflow registry."""
    return model_variant(variant).weight_files(directory)


def model_digest(files: list[Path]) -> str:
    """sha256 over the weights files of a model directory (names and bytes): the same trained model, the same
    digest, whichever run or clone produced the directory."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_trained(variant: Variant, directory: str | Path, model_cfg: ModelConfig, labels: list[str],
                 tokenizer) -> nn.Module:
    """Load what a train stage saved; a LoRA adapter is put on a fresh base and merged for inference.

    Raises:
        PipelineError: an unknown variant, the directory is missing, its weights are truncated or corrupt, it
            does not match the configured base model, or its merged weights would not be finite.
    """
    kind = model_variant(variant)
    directory = Path(directory)
    if not directory.is_dir():
        raise PipelineError(f"no trained {variant} model in {directory}; run `dvc repro train_{variant}`")
    from safetensors import SafetensorError

    try:
        return kind.load(directory, model_cfg, labels, tokenizer)
    except SafetensorError as err:  # a truncated or corrupt copy: one line that names the files and the fix
        files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*.safetensors"))
        raise PipelineError(f"model {excerpt(str(directory))}: its weights ({', '.join(files) or 'safetensors'}) "
                            f"are truncated or corrupt ({excerpt(str(err), 120, quote=False)}); copy the directory "
                            f"again, or rerun its train stage (`dvc repro -f train_{variant}`)") from None
