"""Process-group setup so that a plain `adapterbank train` is a valid one-process DeepSpeed job.

The deepspeed launcher (or torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain run
gets the one-process values. Without CUDA, DeepSpeed must use its CPU accelerator, chosen before it is imported.
"""

from __future__ import annotations

import contextlib
import io
import logging
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


def setup_process() -> ProcessInfo:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
        )
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU machines
    import deepspeed

    deepspeed.utils.logger.setLevel(logging.WARNING)
    if not torch.distributed.is_initialized():
        with contextlib.redirect_stdout(io.StringIO()):  # its op loader prints "... built successfully" every run
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    info = ProcessInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
    return info


def barrier() -> None:
    import torch

    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
