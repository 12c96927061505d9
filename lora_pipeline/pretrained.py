"""Locate a pretrained model (HF id, local directory, or a directory shipped in a Python package)
and load its tokenizer.

A Hugging Face id is passed to ``from_pretrained`` only when the hub answers. With ``HF_HUB_OFFLINE``
set, or when a short probe of the endpoint gets no answer, the id resolves to its snapshot in the
local cache, or fails at once with one message instead of a minute of retries by the hub client.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from .config import EMBEDDED_MODEL, ModelConfig
from .errors import PipelineError, excerpt

__all__ = ["resolve_model_path", "load_tokenizer", "hub_offline_reason", "PROBE_TIMEOUT_S"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0  # a reachable hub answers a HEAD request well within this
_TRUE = {"1", "true", "yes", "on"}
_PROBED: dict[str, Optional[str]] = {}  # endpoint -> why unreachable (None: it answered); once per process


def resolve_model_path(name: str) -> str:
    """What ``from_pretrained`` should load for ``model.name``.

    ``package:<pkg>/<dir>`` becomes the installed directory; an existing directory is itself; a
    Hugging Face id is itself when the hub answers, else the directory of its cached snapshot.

    Raises:
        PipelineError: the package is missing or lacks the directory; the name is neither a directory
            nor a valid model id; the hub is unreachable and the id is not in the local cache.
    """
    if name.startswith("package:"):
        return _package_dir(name)
    if Path(name).expanduser().is_dir():
        if not (Path(name).expanduser() / "config.json").is_file():
            raise PipelineError(f"model.name {excerpt(name)} is a directory but not a model: it has no config.json "
                                "(a directory saved with save_pretrained, or models/<variant>/<tag> of a train "
                                "stage). Point model.name at the model's own folder, or use a Hugging Face id.")
        return name
    return _hub_model(name)


def hub_offline_reason(endpoint: str) -> Optional[str]:
    """Why the hub at ``endpoint`` cannot be used now (``HF_HUB_OFFLINE``, or no answer to a probe of
    at most :data:`PROBE_TIMEOUT_S` s), or None when it answers. Probed once per endpoint and process."""
    import huggingface_hub.constants as hf

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    if hf.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if endpoint not in _PROBED:
        _PROBED[endpoint] = _probe(endpoint)
    return _PROBED[endpoint]


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _package_dir(name: str) -> str:
    """The directory ``<dir>`` of the installed package ``<pkg>`` of ``package:<pkg>/<dir>``, found without
    importing anything: ``<pkg>`` must be a plain module name (``find_spec`` of a dotted name imports its parents,
    and a model card names it)."""
    pkg, _, sub = name[len("package:"):].partition("/")
    if not _MODULE.fullmatch(pkg):
        raise PipelineError(f"model.name {excerpt(name)}: {excerpt(pkg)} is not a plain Python package name "
                            "(letters, digits and _; no dots); use package:<pkg>/<dir>, e.g. "
                            f"{EMBEDDED_MODEL}")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"model.name '{name}': Python package '{pkg}' is not installed "
                            f"(pip install {pkg.replace('_', '-')}) ")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (path / "config.json").is_file():
        raise PipelineError(f"model.name '{name}': no config.json in {path}")
    return str(path)


def _hub_model(name: str) -> str:
    import huggingface_hub.constants as hf
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise PipelineError(f"model.name {excerpt(name)} is neither an existing directory nor a valid Hugging Face "
                            f"model id ({excerpt(str(err), 200, quote=False)}). Set it to a local directory, "
                            f"package:<pkg>/<dir> or an id like 'org/model'.") from None
    reason = hub_offline_reason(hf.ENDPOINT)
    if reason is None:
        return name
    try:
        path = snapshot_download(name, cache_dir=hf.HF_HUB_CACHE, local_files_only=True)
    except LocalEntryNotFoundError:
        raise PipelineError(
            f"model.name {excerpt(name)} is not in the local Hugging Face cache ({hf.HF_HUB_CACHE}) and the hub "
            f"({hf.ENDPOINT}) is unreachable ({reason}). Set model.name to a local directory or "
            f"package:<pkg>/<dir> (the embedded model is {EMBEDDED_MODEL}), or connect to the network "
            "(HF_HUB_OFFLINE unset) and rerun to download it.") from None
    log.info("hub unreachable (%s): model.name '%s' loads from its cached snapshot %s", reason, name, path)
    return str(path)


def _probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None when ``url`` answers an HTTP HEAD (any status) within ``timeout`` s, else why not.

    The request runs in a daemon thread so that a hanging DNS lookup, which socket timeouts do not
    cover, cannot hold the caller longer than ``timeout``. Proxy variables apply as for the hub client.
    """
    outcome: list[Optional[str]] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # an HTTP status, even 4xx/5xx, is an answer
            outcome.append(None)
        except urllib.error.URLError as err:  # a TLS failure means a network: let the hub client judge it
            outcome.append(None if isinstance(err.reason, ssl.SSLError) else str(err.reason))
        except (OSError, ValueError) as err:
            outcome.append(str(err) or type(err).__name__)

    thread = threading.Thread(target=ask, name="hf-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer of ``cfg.name``; decoder tokenizers without a pad token pad with EOS."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.name), trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        detail = excerpt(str(err), 300, quote=False)
        raise PipelineError(f"model.name '{cfg.name}': cannot load its tokenizer ({detail}). Use a HF model id "
                            "(needs internet), a local directory, or package:<pkg>/<dir>.") from err
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise PipelineError(f"model.name '{cfg.name}': the tokenizer has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok
