"""A two-rank gloo run of ``training.fit`` in spawned processes, for what a torchrun stage cannot show from the
outside: the dropout masks each rank draws, and a resume that has to restore every rank's random stream.

:func:`dropout_run` is the spawned worker: each rank trains the tiny dropout BERT three times in one process
group — uninterrupted, interrupted after a checkpoint, resumed from it — recording the embedding dropout mask of
every training forward, and writes ``masks<rank>.pt`` (and rank 0 the final weights) into the work folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

SEED, STEPS, INTERRUPT_AT = 7, 8, 6  # checkpoints every 2 steps: the interrupted run resumes from step 4


class _Interrupt(Exception):
    pass


class _StopAt:
    """A tracker that raises at the loss row of ``step``: the run dies after the checkpoint before it."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def log_metrics(self, metrics, step=None):
        if step == self.step:
            raise _Interrupt(step)


def _split(rows: int, offset: int):
    from lora_pipeline.data.loaders import EncodedSplit

    g = torch.Generator().manual_seed(offset)
    ids = torch.randint(1, 99, (rows, 12), generator=g).tolist()  # one length: every shard has one shape
    return EncodedSplit(ids, [i % 3 for i in range(rows)])


def _train_once(work: Path, world, stop: int | None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    from lora_pipeline.checkpoint import DirCheckpointer
    from lora_pipeline.runtime import seed_everything
    from lora_pipeline.training import FitConfig, fit
    from tests.support.tiny_models import dropout_model

    seed_everything(SEED)
    model = dropout_model("bert", attn="eager")
    masks: list[torch.Tensor] = []
    dropout = model.bert.embeddings.dropout
    dropout.register_forward_hook(lambda m, i, out: masks.append((out == 0).clone()) if m.training else None)
    cfg = FitConfig(lr=1e-3, epochs=1, batch_size=8, eval_batch_size=8, seed=SEED, checkpoint_every=2,
                    min_steps=STEPS, max_steps=STEPS, patience=0, eval_every=4, log_every=2)
    ckpt = DirCheckpointer(work, "key")
    try:
        fit(model, _split(64, 0), _split(16, 1), cfg, pad_id=0, device=torch.device("cpu"), tracker=_StopAt(stop),
            checkpointer=ckpt, progress=False, world=world)
    except _Interrupt:
        pass
    return masks, {n: p.detach().clone() for n, p in model.named_parameters()}


def dropout_run(rank: int, size: int, port: int, work: str) -> None:
    """Spawned worker (``torch.multiprocessing.spawn``): see the module docstring."""
    from lora_pipeline.distributed import World, destroy_process_group, init_process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # this worker process's own environment
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size))
    torch.set_num_threads(1)
    world, work = World(rank, size, rank), Path(work)
    init_process_group(world, torch.device("cpu"), 60)
    try:
        whole, final = _train_once(work / "whole", world, None)
        cut, _ = _train_once(work / "cut", world, INTERRUPT_AT)
        resumed, final_resumed = _train_once(work / "cut", world, None)
    finally:
        destroy_process_group()
    torch.save({"whole": whole, "cut": cut, "resumed": resumed}, work / f"masks{rank}.pt")
    if rank == 0:
        torch.save({"whole": final, "resumed": final_resumed}, work / "weights.pt")
