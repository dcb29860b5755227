"""Device resolution and per-device settings; Gaudi through a fake `habana_frameworks`.

No test skips: where a device is absent (here: all but the CPU) the test checks the
error message, and where it is present, that it resolves.
"""

from __future__ import annotations

import contextlib
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from gan import hpu
from gan.accelerators import (
    Accelerator,
    AcceleratorError,
    available_kinds,
    ddp_backend,
    resolve_accelerator,
)

MPS = torch.backends.mps.is_available()


def params() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(2, 2).parameters())


def test_auto_prefers_accelerators_and_falls_back_to_cpu():
    acc = resolve_accelerator("auto")
    assert acc.kind == available_kinds()[0]
    assert available_kinds()[-1] == "cpu"
    if not (torch.cuda.is_available() or MPS or hpu.is_available()):
        assert acc == Accelerator(torch.device("cpu"), "cpu", None, channels_last=True)


def test_explicit_cuda():
    if torch.cuda.is_available():
        acc = resolve_accelerator("cuda")
        assert (acc.kind, acc.autocast_dtype, acc.channels_last) == ("cuda", torch.bfloat16, True)
    else:
        with pytest.raises(AcceleratorError) as err:
            resolve_accelerator("cuda")
        assert str(err.value) == (
            "--device cuda: no CUDA device is visible (torch.cuda.is_available() is False); "
            "use --device cpu or auto"
        )


def test_explicit_mps():
    if MPS:
        acc = resolve_accelerator("mps")
        assert (acc.kind, acc.autocast_dtype, acc.channels_last) == ("mps", None, False)
    else:
        with pytest.raises(AcceleratorError, match=r"^--device mps: no Apple MPS device .*"):
            resolve_accelerator("mps")


def test_unknown_device():
    with pytest.raises(AcceleratorError) as err:
        resolve_accelerator("tpu")
    assert str(err.value) == "unknown device 'tpu': choose auto, cpu, cuda, mps or hpu"


def test_cpu_runs_fp32_in_channels_last():
    acc = resolve_accelerator("cpu")
    assert acc.autocast_dtype is None and acc.channels_last
    context = acc.autocast()
    assert isinstance(context, contextlib.nullcontext)
    with context:
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    acc.mark_step()
    acc.synchronize()
    assert acc.memory_bytes() is None


def test_optimizer_per_kind():
    # fused Adam also runs on CPU tensors, so the cuda choice is checkable here
    cuda = Accelerator(torch.device("cuda"), "cuda", torch.bfloat16, True)
    fused = cuda.optimizer(params(), 2e-4, (0.5, 0.999))
    assert type(fused) is torch.optim.Adam and fused.defaults["fused"] is True
    assert not fused.defaults["capturable"]
    graphed = cuda.optimizer(params(), 2e-4, (0.5, 0.999), capturable=True)
    assert graphed.defaults["capturable"] and graphed.defaults["fused"]  # for CUDA graphs
    for kind in ("cpu", "mps"):
        acc = Accelerator(torch.device("cpu"), kind, None, True)
        opt = acc.optimizer(params(), 2e-4, (0.5, 0.999))
        assert type(opt) is torch.optim.Adam and not opt.defaults["fused"]
        assert opt.defaults["betas"] == (0.5, 0.999) and opt.defaults["weight_decay"] == 0


def test_ddp_backends():
    assert [ddp_backend(k) for k in ("cpu", "cuda", "mps")] == ["gloo", "nccl", "gloo"]
    with pytest.raises(AcceleratorError, match="no DDP backend for device kind 'tpu'"):
        ddp_backend("tpu")


# --- Gaudi, faked -------------------------------------------------------------------


class FakeFusedAdamW(torch.optim.AdamW):
    pass


def _module(name: str, **attrs) -> ModuleType:
    module = ModuleType(name)
    module.__dict__.update(attrs)
    return module


@pytest.fixture
def habana(monkeypatch):
    """A fake `habana_frameworks` in sys.modules; returns its call record and switches."""
    state = SimpleNamespace(mark_steps=0, synchronized=0, available=True, bridge_lazy=True)

    def mark_step() -> None:
        state.mark_steps += 1

    def synchronize() -> None:
        state.synchronized += 1

    modules = {
        "habana_frameworks": _module("habana_frameworks"),
        "habana_frameworks.torch": _module("habana_frameworks.torch"),
        "habana_frameworks.torch.core": _module("core", mark_step=mark_step),
        "habana_frameworks.torch.hpu": _module(
            "hpu",
            is_available=lambda: state.available,
            synchronize=synchronize,
            memory_allocated=lambda: 1234,
        ),
        "habana_frameworks.torch.hpex": _module("hpex"),
        "habana_frameworks.torch.hpex.optimizers": _module("optimizers", FusedAdamW=FakeFusedAdamW),
        "habana_frameworks.torch.distributed": _module("distributed"),
        "habana_frameworks.torch.distributed.hccl": _module("hccl"),
        "habana_frameworks.torch.utils": _module("utils"),
        "habana_frameworks.torch.utils.internal": _module(
            "internal", is_lazy=lambda: state.bridge_lazy
        ),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("PT_HPU_LAZY_MODE", raising=False)
    return state


def test_hpu_resolves_to_bf16_without_channels_last(habana):
    acc = resolve_accelerator("hpu", local_rank=3)
    assert acc == Accelerator(torch.device("hpu"), "hpu", torch.bfloat16, channels_last=False)
    assert "hpu" in available_kinds()
    if not torch.cuda.is_available():
        assert resolve_accelerator("auto").kind == "hpu"  # cuda > hpu > mps > cpu
    acc.synchronize()
    assert habana.synchronized == 1 and acc.memory_bytes() == 1234


@pytest.mark.parametrize(
    ("env", "bridge_lazy", "steps"),
    [("1", False, 2), ("0", True, 0), (None, True, 2), (None, False, 0)],
)
def test_hpu_mark_step_only_in_lazy_mode(habana, monkeypatch, env, bridge_lazy, steps):
    if env is not None:
        monkeypatch.setenv("PT_HPU_LAZY_MODE", env)
    habana.bridge_lazy = bridge_lazy  # consulted only when the variable is unset
    acc = resolve_accelerator("hpu")
    acc.mark_step()
    acc.mark_step()
    assert habana.mark_steps == steps


def test_hpu_uses_habana_fused_adamw(habana):
    opt = resolve_accelerator("hpu").optimizer(params(), 2e-4, (0.5, 0.999))
    assert type(opt) is FakeFusedAdamW
    assert opt.defaults["eps"] == 1e-8  # torch Adam's, not FusedAdamW's 1e-6
    assert opt.defaults["betas"] == (0.5, 0.999) and opt.defaults["weight_decay"] == 0.0


def test_hpu_eager_mode_without_hpex_optimizers_falls_back_to_adamw(habana, monkeypatch):
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "0")
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch.hpex.optimizers", None)
    opt = resolve_accelerator("hpu").optimizer(params(), 2e-4, (0.5, 0.999))
    assert type(opt) is torch.optim.AdamW


def test_hpu_ddp_registers_hccl(habana, monkeypatch):
    assert ddp_backend("hpu") == "hccl"
    monkeypatch.setitem(sys.modules, "habana_frameworks.torch.distributed.hccl", None)
    with pytest.raises(AcceleratorError, match="not installed"):
        ddp_backend("hpu")


def test_hpu_bridge_without_a_card(habana):
    habana.available = False
    assert "hpu" not in available_kinds()
    with pytest.raises(AcceleratorError) as err:
        resolve_accelerator("hpu")
    assert str(err.value) == hpu.NO_DEVICE


def test_hpu_missing_bridge_says_where_to_get_it(monkeypatch):
    for name in (
        "habana_frameworks",
        "habana_frameworks.torch.core",
        "habana_frameworks.torch.hpu",
    ):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError, even on Gaudi
    assert "hpu" not in available_kinds()
    with pytest.raises(AcceleratorError) as err:
        resolve_accelerator("hpu")
    assert str(err.value) == (
        "--device hpu: habana_frameworks.torch is not installed; it is not on PyPI: install "
        "Habana's PyTorch bridge from the Intel Gaudi software stack (docker image or "
        "installer), see https://docs.habana.ai"
    )
