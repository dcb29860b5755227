"""The whole training step as one CUDA graph: GAN-sized batches without launch overhead.

At batch 256 the eager step is launch-bound (~20k images/s on an H100 that could do
~300k): every conv, norm, augmentation and optimizer kernel is a separate launch from
Python. Captured once with `torch.cuda.CUDAGraph` and replayed per batch, the step's
hundreds of launches become one. What capture needs, and how the trainer gives it:
- static shapes and addresses: batches are copied into fixed input buffers;
- no host syncs inside the step: metrics stay on the device, and values that change
  per step (the EMA decay) live in device tensors filled before each replay;
- capturable optimizers: Adam(capturable=True) keeps its step count on the device;
- random numbers from generators registered with the graph: their Philox offsets
  advance on every replay, so each replay draws new noise, windows and augmentations.

Warm-up before capture runs real steps on a side stream (CUDA's rule); their effect on
weights, optimizer state, EMA and random streams is undone afterwards, so a graphed
run trains exactly the steps it counts and resumes exactly. Where capture fails (an op
that syncs, a backend without graphs), training continues eagerly after one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import torch

WARMUP_STEPS = 3  # side-stream iterations before capture (cuDNN/cuBLAS pick kernels)


class GraphedStep:
    """Replays `body(strips)` (one training step, returning device metrics) from a graph.

    `body` must read its inputs only from `strips`, draw random numbers only from the
    `generators` given (and torch's default CUDA generator), and keep every other
    changing value in device tensors. `state()` yields every tensor a step changes
    (parameters, buffers, optimizer state), so warm-up can be undone.
    """

    def __init__(
        self,
        body: Callable[[list[torch.Tensor]], torch.Tensor],
        state: Callable[[], Iterator[torch.Tensor]],
        generators: list[torch.Generator],
    ) -> None:
        self.body, self.state, self.generators = body, state, generators
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: list[torch.Tensor] = []
        self.output: torch.Tensor | None = None
        self.failed = False

    def __call__(self, strips: list[torch.Tensor]) -> torch.Tensor:
        if self.graph is None and not self.failed:
            self._capture(strips)
        if self.graph is None or [s.shape for s in strips] != [s.shape for s in self.inputs]:
            return self.body(strips)  # eager: capture failed, or a batch of another shape
        for buffer, batch in zip(self.inputs, strips, strict=True):
            buffer.copy_(batch, non_blocking=True)
        self.graph.replay()
        return self.output.clone()  # the next replay overwrites the static output

    def _capture(self, strips: list[torch.Tensor]) -> None:
        device = strips[0].device if strips[0].is_cuda else torch.device("cuda")
        self.inputs = [s.to(device).clone() for s in strips]
        saved = _Snapshot(self.state, self.generators)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.body(self.inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            for generator in self.generators:
                graph.register_generator_state(generator)
            with torch.cuda.graph(graph):
                output = self.body(self.inputs)
        except Exception as exc:  # any failure to capture costs speed, never the run
            torch.cuda.synchronize(device)
            warnings.warn(
                f"CUDA graph capture of the training step failed, training eagerly: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                stacklevel=3,
            )
            self.failed = True
            saved.restore()
            return
        saved.restore()
        self.graph, self.output = graph, output


class _Snapshot:
    """Every tensor a step changes, and the random streams, as they were; `restore()`
    writes them back in place (a captured graph keeps pointing at the same memory).

    Optimizer state born during warm-up (Adam's moments and step on a fresh run) did not
    exist before: restoring zeroes it, which is what a fresh Adam state is.
    """

    def __init__(
        self, state: Callable[[], Iterator[torch.Tensor]], generators: list[torch.Generator]
    ) -> None:
        self.state = state
        self.values = {id(t): t.detach().clone() for t in state()}
        self.generators = [(g, g.get_state()) for g in generators]
        self.default = torch.cuda.get_rng_state()

    @torch.no_grad()
    def restore(self) -> None:
        for tensor in self.state():
            saved = self.values.get(id(tensor))
            if saved is None:
                tensor.zero_()
            else:
                tensor.copy_(saved)
        for generator, value in self.generators:
            generator.set_state(value)
        torch.cuda.set_rng_state(self.default)
