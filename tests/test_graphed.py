"""When the training step is captured in a CUDA graph, and when it stays eager (and says why).

The capture itself needs a CUDA device: it is exercised by benchmarks/gpu.py on the
lent GPU machine (results in benchmarks/results/), not here.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from gan.accelerators import Accelerator
from gan.distributed import World
from gan.trainer import TrainConfig, graph_plan

CUDA = Accelerator(torch.device("cuda"), "cuda", torch.bfloat16, True)
CPU = Accelerator(torch.device("cpu"), "cpu", None, True)


def test_a_plain_cuda_run_is_graphed_and_a_cpu_run_is_not_mentioned():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert graph_plan(TrainConfig(), CUDA, World(), needs_gp=False)
        assert not graph_plan(TrainConfig(), CPU, World(), needs_gp=False)
        assert not graph_plan(TrainConfig(cuda_graph=False), CUDA, World(), needs_gp=False)


@pytest.mark.parametrize(
    ("config", "world", "needs_gp", "reason"),
    [
        (TrainConfig(r1_gamma=1.0), World(), False, "R1"),
        (TrainConfig(loss="wgan-gp"), World(), True, "WGAN-GP"),
        (TrainConfig(), World(rank=0, size=2, local_rank=0), False, "nproc > 1"),
        (TrainConfig(compile="inductor"), World(), False, "compile"),
    ],
)
def test_what_a_graph_cannot_replay_stays_eager_with_one_warning(config, world, needs_gp, reason):
    with pytest.warns(UserWarning, match=f"CUDA graph off \\({reason}"):
        assert not graph_plan(config, CUDA, world, needs_gp)
