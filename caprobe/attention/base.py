"""What every attention module shares: the base classes of the trainable and the deployed
forms, the non-linearities (module and in-place forms), gate multiplication and BN folding."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from caprobe.attention.functional import channel_attention, channel_mean, gate_product


@dataclass(frozen=True)
class Nonlinearity:
    """A named non-linearity: a module for the trainable form, and an in-place function for the
    deployed forms (no autograd there; on tiny strips the module call costs more than the math)."""

    module: Callable[[], nn.Module]
    inplace: Callable[[torch.Tensor], torch.Tensor]


ACTIVATIONS: dict[str, Nonlinearity] = {
    "relu": Nonlinearity(nn.ReLU, torch.relu_),
    "relu6": Nonlinearity(nn.ReLU6, partial(F.relu6, inplace=True)),
    "hswish": Nonlinearity(nn.Hardswish, partial(F.hardswish, inplace=True)),
    "silu": Nonlinearity(nn.SiLU, partial(F.silu, inplace=True)),
}
#: Gate non-linearities map to [0, 1].
GATES: dict[str, Nonlinearity] = {
    "sigmoid": Nonlinearity(nn.Sigmoid, torch.sigmoid_),
    "hsigmoid": Nonlinearity(nn.Hardsigmoid, partial(F.hardsigmoid, inplace=True)),
}


_INPLACE_BY_TYPE: dict[type, Callable[[torch.Tensor], torch.Tensor]] = {
    nl.module: nl.inplace for nl in (*ACTIVATIONS.values(), *GATES.values())}


def inplace_form(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The in-place function equal to ``module`` (one of the non-linearities above), or the
    module itself when it is anything else (say, swapped in by hand)."""
    return _INPLACE_BY_TYPE.get(type(module), module)


def make_act(name: str) -> nn.Module:
    """A fresh activation module by name (validated by the spec parser)."""
    return ACTIVATIONS[name].module()


def make_gate(name: str) -> nn.Module:
    """A fresh gate non-linearity (maps to [0, 1]) by name."""
    return GATES[name].module()


class AttentionModule(nn.Module):
    """Base of caprobe's trainable attention blocks: ``y = x * gates``, same shape as ``x``.

    One ``forward``, the paper's math (through :mod:`caprobe.attention.functional`), whatever
    the mode; :meth:`gates` returns the named multiplicative gates for an input, broadcastable
    against it (the report draws them as attention maps); :meth:`fuse` returns the deployed
    form. ``spec`` is the canonical spec string the module was built from.

    ``inplace`` (a constructor argument) says that the module's input is a temporary, as
    backbones know it is after a depthwise block: the deployed form may then write its output
    into it, like ``nn.ReLU(inplace=True)``. The trainable form never does.
    """

    spec: str = ""
    #: Submodules whose output goes straight into the gate non-linearity. The models'
    #: initialisation zeroes their weights (a BN: its scale), so every gate starts at the
    #: constant gate(0) and the module starts as a uniform scaling that the next BN undoes:
    #: each variant starts as the plain network. Measured on a positional-probe prototype:
    #: CBAM seed 0 stayed at chance with Kaiming-initialised gate layers, 99.1 % with these.
    gate_layers: tuple[str, ...] = ()

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward_after(self, act: nn.Module, x: torch.Tensor,
                      conv: nn.Module | None = None) -> torch.Tensor:
        """``self(act(x))``: the block's activation, then this module, then ``conv`` when
        given (the block's next layer, which the caller would apply). Modules with native
        kernels override it to fuse an in-place ReLU6 into their map passes (the same values
        and gradients, fewer passes over the map) or, in CA, the next 1×1 conv into the
        product (:meth:`caprobe.attention.coord.CoordAttention.forward_after`)."""
        out = self(act(x))
        return out if conv is None else conv(out)

    def fuse(self) -> nn.Module:
        """The deployed form: the same output in eval mode (BN folded into the preceding
        layer, in-place non-linearities, no autograd bookkeeping), as a new module that
        holds copies of the derived weights. Made once, by :func:`caprobe.deploy`."""
        raise NotImplementedError

    def graph_form(self) -> nn.Module:
        """The deployed form for exported graphs (ONNX Runtime, ExecuTorch, OpenVINO): the same
        output in eval mode, spelled in ops every runtime runs as fused kernels (BN folded into
        constant 1×1 convs, poolings over H and W together or along whole rows, no in-place
        writes, no branches on tensor properties). Made once, by
        ``caprobe.deploy(model, target="graph")``."""
        raise NotImplementedError

    def nchwc_form(self) -> nn.Module:
        """The graph form for a runtime that runs convolutions in a channel-blocked layout
        (ONNX Runtime's NCHWc on x86, ``caprobe.deploy(model, target="nchwc")``): the same
        output, spelled so that the blocked layout is kept through the module. By default
        the graph form: SE's gate expanded to the map measured no faster (+40 % against
        +39 % over MobileNetV2 in ONNX Runtime, 2026-12-03), and CBAM's spatial gate cannot
        be expanded over channels by an upsample."""
        return self.graph_form()

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"


class GraphAttention(nn.Module):
    """Base of the graph forms :meth:`AttentionModule.graph_form` returns: inference only,
    weights as constant modules, so an exporter sees a static graph. Each calls its
    non-linearity module ``self.gate`` once per gate, in the order :attr:`gates` names them
    (what :func:`caprobe.runtimes.gate_error.gate_sqnr` taps)."""

    #: the gates' names, in the order ``forward`` calls ``self.gate``
    gates: tuple[str, ...] = ()

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"


class GraphHardsigmoid(nn.Module):
    """``hardsigmoid`` spelled ``relu6(x + 3) / 6`` for the graph forms: PyTorch's own
    decomposition of it leaves dim-order copies outside the XNNPACK delegate (4 per CA block
    with ``gate=hsigmoid``, measured); this spelling is delegated whole."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


def graph_nonlinearity(module: nn.Module) -> nn.Module:
    """A graph form's copy of a non-linearity module (see :class:`GraphHardsigmoid`)."""
    return GraphHardsigmoid() if type(module) is nn.Hardsigmoid else copy.deepcopy(module)


#: channel block of ONNX Runtime's NCHWc layout: 16 with AVX-512, 8 with AVX2 (16 serves both)
NCHWC_BLOCK = 16


def pad_hidden(first: nn.Conv2d, second: nn.Conv2d, multiple: int = NCHWC_BLOCK
               ) -> tuple[nn.Conv2d, nn.Conv2d]:
    """Copies of a pair of 1×1 convs ``first`` (C→k) → elementwise non-linearity → ``second``
    (k→C'), ungrouped, with k rounded up to ``multiple``: the added outputs of ``first`` are
    zero and ``second`` gives them zero weight, so the pair's output is unchanged for any
    non-linearity finite at 0 (the added terms are 0 · a). A blocked layout keeps a conv only
    when its channel counts are whole blocks (or fewer than one block of inputs)."""
    for conv in (first, second):
        if conv.kernel_size != (1, 1) or conv.groups != 1:
            raise ValueError(f"pad_hidden takes ungrouped 1×1 convs, got {conv}")
    hidden = first.out_channels
    padded = -(-hidden // multiple) * multiple
    w1 = first.weight.new_zeros(padded, *first.weight.shape[1:])
    w1[:hidden] = first.weight.detach()
    b1 = None
    if first.bias is not None:
        b1 = first.bias.new_zeros(padded)
        b1[:hidden] = first.bias.detach()
    w2 = second.weight.new_zeros(second.out_channels, padded, *second.weight.shape[2:])
    w2[:, :hidden] = second.weight.detach()
    return conv_from(w1, b1), conv_from(w2, second.bias)


def conv_from(weight: torch.Tensor, bias: torch.Tensor | None, padding: int | tuple = 0
              ) -> nn.Conv2d:
    """A frozen ``nn.Conv2d`` holding copies of ``weight`` (O×I×kh×kw, or O×I for a 1×1 conv)
    and ``bias`` (O or O×1): the graph forms' constant layers."""
    weight = weight.detach()
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), padding=padding,
                     bias=bias is not None, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias.detach().reshape(-1))
    return conv.requires_grad_(False)


class ChannelGateAttention(AttentionModule):
    """An attention module with one channel gate of the mean-pooled map, ``y = x · gc`` (SE,
    ECA): subclasses give :meth:`_channel_gate`. On a channels-last CPU map the map-sized
    steps run in caprobe's native kernels (:func:`caprobe.attention.functional.
    channel_attention`), elsewhere the eager functions."""

    def _channel_gate(self, mean: torch.Tensor) -> torch.Tensor:
        """N×C gate from the N×C pooled means."""
        raise NotImplementedError

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"channel": N×C×1×1}``."""
        return {"channel": self._channel_gate(channel_mean(x))[:, :, None, None]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_attention(x, self._channel_gate)
        if out is not None:
            return out
        return gate_product(x, self._channel_gate(channel_mean(x))[:, None, None])


class DeployedAttention(nn.Module):
    """Base of the deployed forms :meth:`AttentionModule.fuse` returns: inference only, weights
    as buffers (``.to()`` and ``state_dict`` carry them), ``overwrite`` fixed at construction."""

    def __init__(self, spec: str, overwrite: bool) -> None:
        super().__init__()
        self.spec = spec
        self.overwrite = overwrite

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, overwrite={self.overwrite}"


#: Up to this H + W, two gates are multiplied together first and the map once: one pass over
#: a map-sized product beats a second pass over the map when broadcasting along short rows is
#: slow (measured in MobileNetV2+CA at 224, 2 threads; 28×28 maps still gain).
COMBINE_GATES_MAX = 56


def multiply_gates(x: torch.Tensor, gates: list[torch.Tensor], *, overwrite: bool,
                   combine_max: int = COMBINE_GATES_MAX) -> torch.Tensor:
    """``x`` times every gate (broadcast), for the deployed forms (no autograd): products
    after the first run in place, the first too with ``overwrite`` (the input is a
    temporary), and two gates on a map with H + W <= ``combine_max`` are multiplied together
    first (one pass over ``x``)."""
    first, *rest = gates
    if len(rest) == 1 and x.shape[-2] + x.shape[-1] <= combine_max:
        product = first * rest[0]
        if overwrite:
            return x.mul_(product)
        return product.mul_(x) if product.shape == x.shape else x * product  # no second map
    out = x.mul_(first) if overwrite else x * first
    for gate in rest:
        out = out.mul_(gate)
    return out


def batch_norm(bn: nn.BatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    """``bn(y)``, except that with one value per channel in training (batch 1, a 1×1 strip)
    the running statistics are used: batch statistics are undefined there and PyTorch
    would raise. A documented choice so that any map size trains at batch 1."""
    if bn.training and y.numel() == y.shape[1]:
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                            bn.eps)
    return bn(y)


def linear(conv: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
    """A 1×1 ``conv`` applied to channel-innermost vectors (…×C): one GEMM, no im2col."""
    return F.linear(z, conv.weight.flatten(1), conv.bias)


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of one conv equal to ``bn(conv(x))`` with BN's running statistics."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return weight, (bias - bn.running_mean) * scale + bn.bias


def after_activation(attn: nn.Module, act: nn.Module, x: torch.Tensor,
                     conv: nn.Module | None = None) -> torch.Tensor:
    """``attn(act(x))``, then ``conv`` when given, for any attention a backbone holds (an
    :class:`AttentionModule` may fuse them: :meth:`AttentionModule.forward_after`; a deployed
    form or ``nn.Identity`` runs them apart)."""
    if isinstance(attn, AttentionModule):
        return attn.forward_after(act, x, conv)
    out = attn(act(x))
    return out if conv is None else conv(out)
