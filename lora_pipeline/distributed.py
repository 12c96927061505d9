"""Data-parallel training with ``torch.distributed``: who this process is, the launch under ``torchrun``, and the
few collectives the training loop needs.

A train stage with ``train.processes`` > 1 (or ``train.nnodes`` > 1) re-executes itself under ``torchrun``
(:func:`torchrun_argv`); each worker then joins the process group (:func:`init_process_group`: NCCL on CUDA,
gloo on CPU, with a timeout so a dead peer ends in an error, not a hang). ``train.batch_size`` stays the
*global* batch: every rank trains on the disjoint shard ``rows[rank::world]`` of each length-grouped batch, and
the loss is scaled so that DDP's gradient average equals the gradient of the whole batch's mean loss
(:func:`shard_weight`). So the optimizer sees the same gradients whatever the world size, and a checkpoint written
by one world size resumes under another. Rank 0 alone writes outputs, checkpoints and the MLflow run.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from .config import TrainConfig
from .errors import PipelineError

__all__ = ["World", "SINGLE", "current_world", "torchrun_argv", "torchrun_env", "wants_launch", "run_torchrun",
           "mark_started",
           "die_with_parent", "init_process_group",
           "destroy_process_group", "shard", "shard_weight", "all_sum", "broadcast_object", "gather_objects"]

#: environment variables torchrun sets in every worker
_WORKER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: a file the launcher watches: workers (who only start once the rendezvous is complete) create it
_STARTED_ENV = "LORA_PIPELINE_WORKERS_STARTED"


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``rank`` 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and tracks."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def current_world() -> World:
    """The :class:`World` torchrun describes in the environment, or :data:`SINGLE` outside torchrun."""
    if not all(k in os.environ for k in _WORKER_ENV):
        return SINGLE
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def wants_launch(train: TrainConfig) -> bool:
    """Whether this stage process should re-execute itself under torchrun (asked for, and not a worker yet)."""
    return (train.processes > 1 or train.nnodes > 1) and current_world() is SINGLE


def torchrun_argv(train: TrainConfig, module: str, args: Sequence[str], run_id: str) -> list[str]:
    """The command that runs ``python -m module args`` as ``train.processes`` workers per node under torchrun.

    One node: ``--standalone`` (a local rendezvous on a free port, so no port can clash). Several nodes: the
    static rendezvous at ``train.rdzv_endpoint`` (job id ``run_id``, the stage instance): each machine runs the
    same stage; the one whose torchrun node rank is 0 (the default; the others set ``PET_NODE_RANK=1..nnodes-1``,
    torchrun's own variable) hosts the rendezvous and holds rank 0, so the outputs land where ``dvc repro`` runs.
    Each waits ``train.dist_timeout_s`` for the others. ``--max-restarts 0``: a worker that fails ends the
    launch (torchrun stops the others) instead of retrying.
    """
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(train.processes),
            "--max-restarts", "0"]
    if train.nnodes == 1:  # workers reach rank 0 over loopback (see torchrun_env for the rest)
        argv += ["--standalone", "--local-addr", "127.0.0.1"]
    else:
        argv += ["--nnodes", str(train.nnodes), "--rdzv-backend", "static", "--rdzv-endpoint", str(train.rdzv_endpoint),
                 "--rdzv-id", run_id, "--rdzv-conf", f"timeout={train.dist_timeout_s}"]
    return argv + ["--module", module, *args]


def torchrun_env(train: TrainConfig) -> dict[str, str]:
    """Environment for the torchrun launch: on one machine, gloo's and NCCL's sockets on the loopback interface
    (unless the user chose one), so the processes' traffic never leaves the host.

    torch's own key-value store (the rendezvous torchrun hosts) still listens on every interface: ``TCPStore``
    binds the wildcard address whatever host it is given (torch 2.x, both of its backends), so that port — random,
    open for the launch only — is the one a firewall must cover.
    """
    env = dict(os.environ)
    if train.nnodes == 1:
        loopback = "lo0" if sys.platform == "darwin" else "lo"
        for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            env.setdefault(name, loopback)
    return env


def run_torchrun(command: Sequence[str], timeout_s: int, grace_s: int = 30,
                 env: Optional[dict[str, str]] = None) -> int:
    """Run a :func:`torchrun_argv` command and return its exit code; stop it if no worker started in time.

    torchrun gives up on a rendezvous the other machines never join (its ``timeout``), but a machine whose
    rendezvous endpoint is a port held by an unrelated program waits forever for a reply. So the launch must see a worker (workers
    start only after the rendezvous) within ``timeout_s`` + ``grace_s`` (``train.dist_start_grace_s``), or it is
    killed with an error.

    Raises:
        PipelineError: no worker started in time.
    """
    with tempfile.TemporaryDirectory(prefix="torchrun-") as tmp:
        started = Path(tmp) / "started"
        env = {**(os.environ if env is None else env), _STARTED_ENV: str(started)}
        proc = subprocess.Popen(list(command), env=env,
                                preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout_s + grace_s
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if not started.exists() and time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise PipelineError(f"torchrun: no training process started within {timeout_s + grace_s} s "
                                    "(train.dist_timeout_s + train.dist_start_grace_s): the rendezvous never "
                                    "completed. Check "
                                    "train.rdzv_endpoint (a port held by another program never answers), that "
                                    "every machine runs the stage, and the firewall; or set train.nnodes: 1")


def mark_started() -> None:
    """Tell :func:`run_torchrun` on this machine that the workers are up (call in every worker)."""
    if os.environ.get(_STARTED_ENV):
        Path(os.environ[_STARTED_ENV]).touch()


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (a no-op elsewhere).

    torchrun starts each worker in a session of its own, so killing a stage's process group (a SIGKILLed
    `dvc repro`, a job scheduler) would leave the workers training, holding the checkpoint lock and writing
    outputs. The launcher passes this as torchrun's ``preexec_fn``; each worker calls it first thing.
    """
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() == 1:  # the parent died before the call: nobody would deliver the signal
        os._exit(1)


def init_process_group(world: World, device: torch.device, timeout_s: int) -> None:
    """Join the process group of a torchrun launch: NCCL on CUDA, gloo on CPU; collectives time out after
    ``timeout_s`` (a rank that died or hangs then ends the others with an error)."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if device.type == "cuda" else {}))
    except (RuntimeError, ValueError) as err:
        raise PipelineError(f"torch.distributed: rank {world.rank} of {world.size} could not join the {backend} "
                            f"process group within train.dist_timeout_s ({timeout_s} s): {err}") from err


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: Sequence[int], world: World) -> tuple[list[int], float]:
    """This rank's rows of a global batch and the weight of its loss (:func:`shard_weight`).

    A batch with fewer rows than ranks leaves some ranks without a row: they run the batch's first row with
    weight 0, so every rank still takes part in DDP's gradient all-reduce and adds nothing to it.
    """
    mine = list(rows[world.rank::world.size])
    if not mine:
        return list(rows[:1]), 0.0
    return mine, shard_weight(len(mine), len(rows), world)


def shard_weight(n_mine: int, n_global: int, world: World) -> float:
    """Factor that turns this rank's *mean* loss into its part of the global mean, after DDP's average.

    DDP averages gradients over ``world.size`` ranks, so rank r must contribute ``size · sum_r / n_global``;
    as a multiple of its mean loss (``sum_r / n_mine``) that is ``size · n_mine / n_global``.
    """
    return world.size * n_mine / n_global


def all_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    """``value`` summed over all ranks (returned as is by a single process)."""
    if world.distributed:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(obj: Optional[Any], world: World, device: torch.device) -> Any:
    """Rank 0's ``obj`` on every rank (a checkpoint: tensors, numbers, strings, containers)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
