"""A checkpoint that cannot be written for want of space is one error naming the folder, not a traceback."""

from __future__ import annotations

import errno

import pytest
import torch

from lora_pipeline import checkpoint
from lora_pipeline.checkpoint import DirCheckpointer
from lora_pipeline.errors import PipelineError


def _torch_error_after(err: OSError) -> RuntimeError:
    """torch's writer raises its own RuntimeError while handling the OSError of the file write."""
    try:
        try:
            raise err
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError as wrapped:
        return wrapped


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     _torch_error_after(OSError(errno.EDQUOT, "Disk quota exceeded"))])
def test_a_full_disk_while_saving_a_checkpoint_names_the_folder(monkeypatch, tmp_path, failure):
    def save(obj, fh):
        fh.write(b"partial")
        raise failure
    monkeypatch.setattr(checkpoint.torch, "save", save)
    folder = tmp_path / "checkpoints" / "lora" / "r8"
    with pytest.raises(PipelineError, match="no space left on device") as caught:
        DirCheckpointer(folder, "key").save({"step": 3, "w": torch.zeros(4)})
    assert str(folder) in str(caught.value) and "MB free" in str(caught.value)
    assert [p.name for p in folder.iterdir()] == []  # no partial state.pt, no key


def test_other_write_errors_keep_their_traceback(monkeypatch, tmp_path):
    def save(obj, fh):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(PermissionError):
        DirCheckpointer(tmp_path / "c", "key").save({"step": 3})
