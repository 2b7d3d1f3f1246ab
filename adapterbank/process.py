"""Process-wide state a command changes, each kind behind one explicit context.

`training_process` gives DeepSpeed what it needs for the inside of its block: a DeepSpeed job's environment
(`training.distributed`), quieter loggers, a process group and the CUDA device; training seeds the global random
generators in it. On exit it puts back the environment, the logger levels, every global random generator and the
CUDA device, and destroys a process group it started, so that a library call (or a test) leaves its process as it
found it. Modules imported on the way stay imported, DeepSpeed with the accelerator it picked among them.

`kept_heap` keeps freed memory in the heap (glibc mallopt, `allocator`) for commands that run the same shapes batch
after batch (serving, training). glibc has no way back, so only CLI commands that own their process enter it; the
library never does.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator

import torch

from adapterbank.allocator import keep_freed_memory
from adapterbank.training.distributed import (
    ProcessInfo,
    end_process_group,
    job_environment,
    process_info,
    start_process_group,
)
from adapterbank.training.random_state import rng_state, set_rng_state

QUIET_LOGGERS = {
    "DeepSpeed": logging.WARNING,
    "deepspeed": logging.WARNING,
    "torch.utils.cpp_extension": logging.ERROR,  # "No CUDA runtime" on CPU machines
}


@contextlib.contextmanager
def training_process() -> Iterator[ProcessInfo]:
    """This process as a DeepSpeed job (one process unless a launcher made it a rank of more) inside the block;
    as it was before, on exit."""
    environ = dict(os.environ)
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    cuda_ready = torch.cuda.is_initialized()  # read first: capturing CUDA's generators would initialize it
    device = torch.cuda.current_device() if cuda_ready else None
    generators = rng_state(cuda=cuda_ready)
    started = False
    try:
        os.environ.update(job_environment())
        _quiet_loggers()
        importlib.import_module("deepspeed")  # after DS_ACCELERATOR: DeepSpeed picks its accelerator on import
        _quiet_loggers()  # importing DeepSpeed sets its logger to INFO
        started = start_process_group()
        info = process_info()
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        yield info
    finally:
        try:
            if started:
                end_process_group()
        finally:  # the rest is put back even when the process group fails to end
            if device is not None:
                torch.cuda.set_device(device)
            set_rng_state(*generators)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            _restore_environ(environ)


@contextlib.contextmanager
def kept_heap() -> Iterator[bool]:
    """Freed memory kept in the heap for repeated batches of one shape (inference, training steps); yields whether it
    took (False without glibc). Not undone on exit: enter it only in a command that owns its process."""
    yield keep_freed_memory()


def _quiet_loggers() -> None:
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def _restore_environ(saved: dict[str, str]) -> None:
    for name in [name for name in os.environ if name not in saved]:
        del os.environ[name]
    os.environ.update({name: value for name, value in saved.items() if os.environ.get(name) != value})
