"""An unknown Hugging Face model id without network fails in seconds with one clear message, and a cached
one loads offline. The hub endpoint is a closed or silent local port, so these tests
behave the same with or without internet."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from lora_pipeline import pretrained
from lora_pipeline.config import ModelConfig
from lora_pipeline.errors import PipelineError
from lora_pipeline.pretrained import load_tokenizer, resolve_model_path
from tests.support.builders import EMBEDDED_MODEL
from tests.support.servers import free_port, silent_server

UNKNOWN = "someorg/no-such-model"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Point the hub client at ``endpoint(port)`` with an empty cache in tmp_path; returns the setter."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(pretrained, "_PROBED", {})  # each test probes its own endpoint afresh
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    def endpoint(port: int) -> Path:
        url = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setattr(hf, "ENDPOINT", url)
        return cache
    return endpoint


def test_unknown_model_without_network_fails_fast_with_one_clear_message(hub):
    from transformers import AutoTokenizer  # noqa: F401 -- importing it (seconds) is not what is timed here

    hub(free_port())
    start = time.monotonic()
    with pytest.raises(PipelineError) as err:
        load_tokenizer(ModelConfig(name=UNKNOWN))
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert elapsed < 3, f"took {elapsed:.1f} s"  # was ~55 s of retries
    assert f"model.name '{UNKNOWN}' is not in the local Hugging Face cache" in message
    assert "the hub (http://127.0.0.1:" in message and "is unreachable" in message
    assert "a local directory or package:<pkg>/<dir>" in message and "\n" not in message


def test_a_hub_that_never_answers_is_given_up_after_the_probe_timeout(hub):
    with silent_server() as port:
        hub(port)
        start = time.monotonic()
        with pytest.raises(PipelineError, match="is unreachable"):
            resolve_model_path(UNKNOWN)
        assert time.monotonic() - start < pretrained.PROBE_TIMEOUT_S + 2


def test_hf_hub_offline_skips_the_probe(hub, monkeypatch):
    hub(free_port())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pretrained, "_probe", lambda url: pytest.fail("probed the hub although HF_HUB_OFFLINE=1"))
    with pytest.raises(PipelineError, match=r"is unreachable \(HF_HUB_OFFLINE is set\)"):
        resolve_model_path(UNKNOWN)


def test_cached_model_loads_offline_from_its_snapshot(hub):
    cache = hub(free_port())
    repo = cache / "models--someorg--cached-model"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(resolve_model_path(EMBEDDED_MODEL), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert resolve_model_path("someorg/cached-model") == str(snapshot)
    tok = load_tokenizer(ModelConfig(name="someorg/cached-model"))
    assert tok("hello world")["input_ids"][:2] == [101, 7592]


def test_reachable_hub_passes_the_id_through(hub, monkeypatch):
    hub(free_port())
    monkeypatch.setattr(pretrained, "_probe", lambda url: None)
    assert resolve_model_path(UNKNOWN) == UNKNOWN  # transformers downloads (and caches) it


@pytest.mark.parametrize("name", ["./models/missing", "a/b/c", "no such dir"])
def test_a_name_that_is_neither_a_directory_nor_an_id_is_refused_at_once(hub, name):
    hub(free_port())
    with pytest.raises(PipelineError, match="is neither an existing directory nor a valid Hugging Face model id"):
        resolve_model_path(name)


def test_split_stage_exits_2_within_seconds(hub, tmp_path, capsys):
    from stages import split as split_stage
    from tests.support.builders import make_frame, write_params

    hub(free_port())
    (tmp_path / "clean").mkdir()
    make_frame(20).to_parquet(tmp_path / "clean" / "data.parquet")
    write_params(tmp_path / "params.yaml", Path(UNKNOWN))
    start = time.monotonic()
    code = split_stage.main(["--params", str(tmp_path / "params.yaml"), "--clean", str(tmp_path / "clean"),
                             "--out", str(tmp_path / "split"), "--metrics", str(tmp_path / "split.json")])
    assert code == 2 and time.monotonic() - start < 10
    assert "is not in the local Hugging Face cache" in capsys.readouterr().err
    assert not (tmp_path / "split").exists()
