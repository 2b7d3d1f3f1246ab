"""Process-wide changes last as long as their context: training leaves its process (here: the test session) as it
found it."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest
import torch

from adapterbank.process import QUIET_LOGGERS, training_process

JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")


def test_training_process_puts_back_environment_loggers_generators_and_process_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in JOB_VARIABLES:
        monkeypatch.delenv(name, raising=False)  # a plain process, not a launcher's rank
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.DEBUG)
        environ = dict(os.environ)
        generators = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        assert not torch.distributed.is_initialized()
        for _ in range(2):  # a second run in the same process starts from the same state (the quickstart trains two)
            with training_process() as info:
                assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
                assert os.environ["RANK"] == "0" and torch.distributed.is_initialized()
                assert all(logger.level > logging.DEBUG for logger in loggers)
                torch.manual_seed(7), random.seed(7), np.random.seed(7)  # as training seeds them
                torch.rand(3), random.random(), np.random.rand()
            assert dict(os.environ) == environ
            assert [logger.level for logger in loggers] == [logging.DEBUG] * len(loggers)
            assert torch.equal(torch.get_rng_state(), generators[0]) and random.getstate() == generators[1]
            numpy_state = np.random.get_state()
            assert numpy_state[0] == generators[2][0] and np.array_equal(numpy_state[1], generators[2][1])
            assert numpy_state[2:] == generators[2][2:]
            assert not torch.distributed.is_initialized()
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
