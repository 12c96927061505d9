"""Data-parallel dropout: every rank draws its own masks, and a resumed two-rank run continues each rank's stream
exactly (spawned gloo processes running ``training.fit``, see tests/support/ddp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.support.ddp import INTERRUPT_AT, STEPS, dropout_run
from tests.support.servers import free_port


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ddp_dropout")
    mp.spawn(dropout_run, args=(2, free_port(), str(work)), nprocs=2, join=True)
    return work


def _masks(work: Path, rank: int) -> dict[str, list[torch.Tensor]]:
    return torch.load(work / f"masks{rank}.pt", weights_only=True)


def test_ranks_draw_different_dropout_masks(two_ranks):
    """Rank 0 and rank 1 see shards of one shape; with one random stream per rank their masks differ at every
    step (with a shared stream, corresponding rows would drop the same units)."""
    zero, one = _masks(two_ranks, 0)["whole"], _masks(two_ranks, 1)["whole"]
    assert len(zero) == len(one) == STEPS
    for step, (a, b) in enumerate(zip(zero, one), 1):
        assert a.shape == b.shape, step
        assert not torch.equal(a, b), f"step {step}: both ranks drew the same dropout mask"
        assert 0.05 < a.float().mean().item() < 0.15  # dropout 0.1 really drops


def test_a_resumed_two_rank_run_continues_every_ranks_masks_and_ends_with_the_same_weights(two_ranks):
    resume_from = INTERRUPT_AT - 2  # the last checkpoint before the interruption
    for rank in (0, 1):
        masks = _masks(two_ranks, rank)
        assert len(masks["cut"]) == INTERRUPT_AT and len(masks["resumed"]) == STEPS - resume_from
        for step, (a, b) in enumerate(zip(masks["whole"][resume_from:], masks["resumed"]), resume_from + 1):
            assert torch.equal(a, b), f"rank {rank}, step {step}: the resumed run drew another mask"
    weights = torch.load(two_ranks / "weights.pt", weights_only=True)
    for name, value in weights["whole"].items():
        assert torch.equal(weights["resumed"][name], value), name
