"""What every attention module shares: the base class, activation and gate factories, BN folding."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "silu": nn.SiLU,
}
GATES: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "hsigmoid": nn.Hardsigmoid,
}


def make_act(name: str) -> nn.Module:
    """A fresh activation module by name (validated by the spec parser)."""
    return ACTIVATIONS[name]()


def make_gate(name: str) -> nn.Module:
    """A fresh gate non-linearity (maps to [0, 1]) by name."""
    return GATES[name]()


class AttentionModule(nn.Module):
    """Base of caprobe's attention blocks: ``y = x * gates`` with the same shape as ``x``.

    Subclasses implement :meth:`gates`, which returns the named multiplicative gates for an
    input, broadcastable against it (the report draws them as attention maps). ``spec`` is the
    canonical spec string the module was built from.
    """

    spec: str = ""
    #: May the inference path overwrite the input tensor? Off by default (a caller's tensor
    #: must not change); backbones turn it on where the input is a temporary, like
    #: ``nn.ReLU(inplace=True)``.
    inplace: bool = False

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_gates(self, x, self.gates(x).values())

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"


def apply_gates(module: AttentionModule, x: torch.Tensor, gates) -> torch.Tensor:
    """``x`` times every gate (broadcast). Where nothing needs the intermediates for a backward
    pass, products after the first run in place, and the first too if the module may
    overwrite its input (``module.inplace``, set by backbones whose input is a temporary)."""
    gates = list(gates)
    in_place = inference_fast_path(module)
    out = x.mul_(gates[0]) if in_place and module.inplace else x * gates[0]
    for gate in gates[1:]:
        out = out.mul_(gate) if in_place else out * gate
    return out


def batch_norm(bn: nn.BatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    """``bn(y)``, except that with one value per channel in training (batch 1, a 1×1 strip)
    the running statistics are used: batch statistics are undefined there and PyTorch
    would raise. A documented choice so that any map size trains at batch 1."""
    if bn.training and y.numel() == y.shape[1]:
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                            bn.eps)
    return bn(y)


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of one conv equal to ``bn(conv(x))`` with BN's running statistics."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return weight, (bias - bn.running_mean) * scale + bn.bias


class FoldedConvBN:
    """Caches :func:`fold_bn` of a (conv, bn) pair until any of their tensors changes.

    The inference path uses it so frozen weights are folded once, not on every call.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        if building_graph():  # fold inside the graph so exported weights stay live
            return fold_bn(conv, bn)
        tensors = [t for t in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean,
                               bn.running_var) if t is not None]
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if key != self._key or self._value is None:
            with torch.no_grad():
                self._value = fold_bn(conv, bn)
            self._key = key
        return self._value


def building_graph() -> bool:
    """True while tracing, scripting, exporting or compiling (shape-specialised tricks off)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def inference_fast_path(module: nn.Module) -> bool:
    """True where the inference path (same output, less work) may replace the paper's form.

    That is eval mode with autograd off: BN then uses running statistics, so folding it into
    the preceding conv is exact, and nothing needs the intermediate tensors for a backward.
    """
    return not (module.training or torch.is_grad_enabled())
