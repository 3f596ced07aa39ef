"""What every attention module shares: the base class, the non-linearities (module and in-place
forms), gate multiplication, BN folding and the cache of weights derived for inference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import chain
from operator import attrgetter, is_
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Nonlinearity:
    """A named non-linearity: a module for the paper's form, and an in-place function for the
    inference paths (no autograd there; on tiny strips the module call costs more than the math)."""

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
    """Base of caprobe's attention blocks: ``y = x * gates`` with the same shape as ``x``.

    Subclasses implement :meth:`gates`, which returns the named multiplicative gates for an
    input, broadcastable against it (the report draws them as attention maps). ``spec`` is the
    canonical spec string the module was built from.
    """

    spec: str = ""
    #: Submodules whose output goes straight into the gate non-linearity. The models'
    #: initialisation zeroes their weights (a BN: its scale), so every gate starts at the
    #: constant gate(0) and the module starts as a uniform scaling that the next BN undoes:
    #: each variant starts as the plain network. Measured on a positional-probe prototype:
    #: CBAM seed 0 stayed at chance with Kaiming-initialised gate layers, 99.1 % with these.
    gate_layers: tuple[str, ...] = ()
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

    def _apply(self, fn, recurse=True):  # .to(), .half(), .cuda(), ...: weights get new storage
        self._clear_weight_caches()
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        """As :meth:`nn.Module.train`; also drops cached inference weights, so ``.eval()``
        re-derives them (the one way to refresh after writes through ``.data``, which no
        version counter sees)."""
        self._clear_weight_caches()
        return super().train(mode)

    def _clear_weight_caches(self) -> None:
        for value in vars(self).values():
            if isinstance(value, WeightCache):
                value.clear()


#: Up to this H + W, two gates are multiplied together first and the map once: one pass over
#: a map-sized product beats a second pass over the map when broadcasting along short rows is
#: slow (measured in MobileNetV2+CA at 224, 2 threads; 28×28 maps still gain).
COMBINE_GATES_MAX = 56


def apply_gates(module: AttentionModule, x: torch.Tensor, gates) -> torch.Tensor:
    """``x`` times every gate (broadcast), in place where ``module`` is on its inference path
    (see :func:`multiply_gates`)."""
    return multiply_gates(x, list(gates), inference=inference_fast_path(module),
                          overwrite=module.inplace)


def multiply_gates(x: torch.Tensor, gates: list[torch.Tensor], *, inference: bool,
                   overwrite: bool) -> torch.Tensor:
    """``x`` times every gate (broadcast). On an inference path (nothing needs the
    intermediates for a backward pass) products after the first run in place, the first too
    with ``overwrite`` (a module whose input is a temporary, set by backbones), and two gates
    on a small map are multiplied together first (one pass over ``x``)."""
    first, *rest = gates
    if inference and len(rest) == 1 and x.shape[-2] + x.shape[-1] <= COMBINE_GATES_MAX:
        product = first * rest[0]
        if overwrite:
            return x.mul_(product)
        return product.mul_(x) if product.shape == x.shape else x * product  # no second map
    out = x.mul_(first) if inference and overwrite else x * first
    for gate in rest:
        out = out.mul_(gate) if inference else out * gate
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


#: Bumped whenever any module anywhere gets a parameter, buffer or submodule assigned, so that
#: a :class:`WeightCache` notices a changed module tree (say ``ca.bn1 = nn.BatchNorm2d(8)``)
#: without walking it on every call. Process-wide: importing caprobe's attention modules
#: installs these three registration hooks, each an integer increment; a module built
#: anywhere makes every cache re-derive once.
_registrations = 0


def _count_registration(*_: object) -> None:
    global _registrations
    _registrations += 1


for _register in (nn.modules.module.register_module_parameter_registration_hook,
                  nn.modules.module.register_module_buffer_registration_hook,
                  nn.modules.module.register_module_module_registration_hook):
    _register(_count_registration)


class _CacheEntry(NamedTuple):
    generation: int
    holders: tuple[dict, ...]  # the parameter and buffer dicts of the module tree
    members: list[torch.Tensor | None]  # their values when ``value`` was derived
    sources: list[torch.Tensor]  # the tensors among them
    versions: list[int]
    value: tuple


class WeightCache:
    """Holds values derived from a module's weights (BN folded, reshaped) until one of them
    changes. Seen: in-place updates (optimizer steps, ``load_state_dict``, ``copy_`` under
    ``no_grad``: a version counter moves), tensors swapped into the module's dicts
    (``torch.func.functional_call``: a different object), new tensors or submodules assigned
    (:data:`_registrations` moves) and ``.to()``/``.half()`` (the owning
    :class:`AttentionModule` clears its caches in ``_apply``). Not seen: writes through
    ``.data``, which bypass version counters; ``.eval()`` clears the cache after those.

    The inference paths use it so frozen weights are prepared once, not on every call; the
    check reads each tensor's identity and version counter, as it runs on every forward. The
    entry is one immutable record, so a concurrent ``clear()`` or update is seen whole or not
    at all. Inference tensors carry no version counter and are never cached.
    """

    def __init__(self) -> None:
        self._entry: _CacheEntry | None = None

    def clear(self) -> None:
        self._entry = None

    def get(self, module: nn.Module, derive: Callable[[], tuple]) -> tuple:
        """``derive()`` (which may read any parameter or buffer of ``module``), computed again
        only when one of them has changed since the last call. Eager mode only: graphs being
        built (trace, export, compile) must derive their weights inside the graph."""
        entry = self._entry
        if (entry is not None and entry.generation == _registrations  # same names in the dicts
                and all(map(is_, chain.from_iterable(map(dict.values, entry.holders)),
                            entry.members))
                and list(map(_VERSION, entry.sources)) == entry.versions):
            return entry.value
        generation = _registrations  # before reading the tensors: a racing assignment re-derives
        holders = tuple(d for m in module.modules() for d in (m._parameters, m._buffers) if d)
        members = list(chain.from_iterable(map(dict.values, holders)))
        sources = [t for t in members if t is not None]
        with torch.no_grad():
            value = derive()
        if not any(t.is_inference() for t in sources):
            self._entry = _CacheEntry(generation, holders, members, sources,
                                      list(map(_VERSION, sources)), value)
        return value


_VERSION = attrgetter("_version")


def building_graph() -> bool:
    """True while tracing, exporting or compiling (ONNX export traces with the TorchScript
    exporter and compiles with the dynamo exporter). caprobe's modules are not scriptable.
    Runs on every inference call, hence ``torch._C._is_tracing`` rather than
    ``torch.jit.is_tracing``, which wraps it in two more Python calls; it comes second, as
    dynamo cannot trace it (``is_compiling`` answers first there)."""
    return torch.compiler.is_compiling() or torch._C._is_tracing()


def inference_fast_path(module: nn.Module) -> bool:
    """True where the inference path (same output, less work) may replace the paper's form.

    That is eval mode with autograd off: BN then uses running statistics, so folding it into
    the preceding conv is exact, and nothing needs the intermediate tensors for a backward.
    Not while a graph is built (trace, export, compile): the paper's form is the one to
    record, with its weights live and no shape-specific tricks or in-place writes.
    """
    return not (module.training or torch.is_grad_enabled() or building_graph())
