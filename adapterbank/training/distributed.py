"""What DeepSpeed needs of a process: a place in a job and a process group.

The deepspeed launcher (or torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain run
gets the one-process values. Without CUDA, DeepSpeed must use its CPU accelerator, chosen before it is imported.
These change the whole process: `adapterbank.process.training_process` makes them and undoes them.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_environment() -> dict[str, str]:
    """The variables this process lacks to be a DeepSpeed job: the CPU accelerator without CUDA, and the
    one-process job's rank, size and address when no launcher set them."""
    import torch

    missing = {}
    if not torch.cuda.is_available() and "DS_ACCELERATOR" not in os.environ:
        missing["DS_ACCELERATOR"] = "cpu"
    if "RANK" not in os.environ:
        missing.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    return missing


def process_info() -> ProcessInfo:
    return ProcessInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def start_process_group() -> bool:
    """Join the job's process group unless this process already is in one; whether it was started here."""
    import deepspeed
    import torch

    if torch.distributed.is_initialized():
        return False
    with contextlib.redirect_stdout(io.StringIO()):  # its op loader prints "... built successfully" every run
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def end_process_group() -> None:
    """Destroy the process group through DeepSpeed, which also drops the groups it derived from it."""
    import deepspeed

    deepspeed.comm.destroy_process_group()


def barrier() -> None:
    import torch

    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
