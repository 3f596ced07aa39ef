"""Parameters and multiply-adds with fvcore, total, per stage and per module.

Two totals, both in multiply-adds:

* ``madds``: convolutions and linear layers only (fvcore's one count per multiply-add for
  conv / linear / matmul). This is the papers' "M-Adds": MobileNetV2-1.0 at 224 → 300.8M.
* ``madds_total``: ``madds`` plus a documented cost for everything else, so the overhead of an
  attention module's cheap-but-many operations is visible. Costs, per element:
  norms (BN: scale and shift) 1 per output element; activations and gates (ReLU, ReLU6,
  h-swish, SiLU, sigmoid, h-sigmoid) 1 per output element; element-wise products, sums and
  residual adds 1 per output element; pooling and reductions (mean, adaptive average pool,
  max) 1 per input element. Pure data movement (cat, split, views, transposes, dropout at
  inference) costs 0.

Any operator outside these lists is reported in ``uncounted_ops`` rather than silently
dropped; caprobe's own models have none.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from caprobe.errors import CaprobeError, input_hw

_MADD_OPS = ("aten::_convolution", "aten::addmm", "aten::linear", "aten::matmul", "aten::mm",
             "aten::bmm", "aten::einsum")
_PER_OUTPUT_OPS = (
    "aten::batch_norm", "aten::relu", "aten::relu_", "aten::hardtanh", "aten::hardtanh_",
    "aten::hardswish", "aten::hardswish_", "aten::silu", "aten::silu_", "aten::sigmoid",
    "aten::sigmoid_", "aten::hardsigmoid", "aten::hardsigmoid_", "aten::mul", "aten::mul_",
    "aten::add", "aten::add_", "aten::sub", "aten::div", "aten::clamp", "aten::clamp_",
)
_PER_INPUT_OPS = ("aten::mean", "aten::adaptive_avg_pool2d", "aten::amax", "aten::max",
                  "aten::avg_pool2d", "aten::max_pool2d", "aten::sum")
_FREE_OPS = ("aten::cat", "aten::split", "aten::split_with_sizes", "aten::slice", "aten::transpose",
             "aten::permute", "aten::view", "aten::reshape", "aten::flatten", "aten::unsqueeze",
             "aten::squeeze", "aten::dropout", "aten::contiguous", "aten::size", "aten::select",
             "aten::expand", "aten::t", "aten::narrow", "aten::chunk", "aten::Int",
             "aten::feature_dropout")
#: fvcore's short operator names that count as multiply-adds proper.
_MADD_KEYS = frozenset({"conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum"})


def _numel(value) -> int:
    from fvcore.nn.jit_handles import get_shape

    shape = get_shape(value)
    return math.prod(shape) if shape else 1


def _per_output(inputs, outputs) -> int:
    return _numel(outputs[0])


def _per_input(inputs, outputs) -> int:
    return _numel(inputs[0])


def _free(inputs, outputs) -> int:
    return 0


#: caprobe's autograd functions (:mod:`caprobe.attention.functional`), which a trace records as
#: one ``prim::PythonOp`` each; their cost is that of the operators in the recorded subgraph.
_PYTHON_OPS = ("_GateProduct", "_StripMeans", "_ChannelMean", "_ChannelMax", "_SpatialMaxMean")


def _python_op(inputs, outputs) -> int:
    """Cost of a traced autograd function: the sum over its subgraph by the tables above
    (``prim::`` nodes and sizes are bookkeeping)."""
    handles = {**dict.fromkeys(_PER_OUTPUT_OPS, _per_output),
               **dict.fromkeys(_PER_INPUT_OPS, _per_input), **dict.fromkeys(_FREE_OPS, _free)}
    total = 0
    for node in outputs[0].node().g("Subgraph").nodes():
        kind = node.kind()
        if kind.startswith("prim::") or kind == "aten::size":
            continue
        if kind not in handles:
            raise CaprobeError(f"no cost rule for {kind} inside an attention function")
        total += handles[kind](list(node.inputs()), list(node.outputs()))
    return total


@dataclass
class StageCount:
    stage: str
    params: int
    madds: int
    madds_total: int
    attention_params: int
    attention_madds: int


@dataclass
class ModuleCount:
    name: str
    type: str
    params: int
    madds: int
    madds_total: int
    attention: bool


@dataclass
class Counts:
    """What a model costs at one input size (batch 1). Plain record, saved as JSON."""

    model: str
    attn: str
    input_size: tuple[int, int]
    params: int
    madds: int
    madds_total: int
    attention_params: int
    attention_madds: int
    attention_madds_total: int
    by_stage: list[StageCount] = field(default_factory=list)
    by_module: list[ModuleCount] = field(default_factory=list)
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    #: the form counted: the trainable one (the papers' math, what the paper tables count);
    #: caprobe.deploy folds BN and pools small maps by a matrix product, a different tally
    form: str = "paper"

    @property
    def attention_share(self) -> float:
        """Fraction of conv+linear multiply-adds spent inside attention modules."""
        return self.attention_madds / self.madds if self.madds else 0.0


def count(model: nn.Module, input_size: int | tuple[int, int] = 224) -> Counts:
    """Count parameters and multiply-adds of ``model`` for one image of ``input_size``.

    The model is traced in eval mode as built: its attention modules in their trainable form,
    the papers' math (``form="paper"`` in the record); pass a trainable model, not a deployed
    one.
    """
    from fvcore.nn import FlopCountAnalysis

    from caprobe.attention import AttentionModule

    height, width = input_hw(input_size)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x = torch.zeros(1, 3, height, width)
            analysis = FlopCountAnalysis(model, x)
            for op in _PER_OUTPUT_OPS:
                analysis.set_op_handle(op, _per_output)
            for op in _PER_INPUT_OPS:
                analysis.set_op_handle(op, _per_input)
            for op in _FREE_OPS:
                analysis.set_op_handle(op, _free)
            for name in _PYTHON_OPS:
                analysis.set_op_handle(f"prim::PythonOp.{name}", _python_op)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_op = analysis.by_module_and_operator()
            uncounted = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)

    def madds_of(name: str) -> tuple[int, int]:
        ops = by_op.get(name, Counter())
        return sum(v for k, v in ops.items() if k in _MADD_KEYS), sum(ops.values())

    modules = dict(model.named_modules())
    attention_names = [n for n, m in modules.items() if isinstance(m, AttentionModule)]

    def params_of(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    def attention_under(prefix: str) -> tuple[int, int, int]:
        inside = [n for n in attention_names
                  if not prefix or n == prefix or n.startswith(prefix + ".")]
        totals = [madds_of(n) for n in inside]
        return (sum(params_of(modules[n]) for n in inside), sum(t[0] for t in totals),
                sum(t[1] for t in totals))

    stages = [f"features.{n}" for n, _ in model.features.named_children()] + ["classifier"] \
        if hasattr(model, "features") else [n for n, _ in model.named_children()]
    by_stage = []
    for name in stages:
        madds, total = madds_of(name)
        attn_params, attn_madds, _ = attention_under(name)
        by_stage.append(StageCount(name.removeprefix("features."), params_of(modules[name]),
                                   madds, total, attn_params, attn_madds))
    by_module = []
    for name, module in modules.items():
        if name:
            madds, total = madds_of(name)
            by_module.append(ModuleCount(name, type(module).__name__, params_of(module), madds,
                                         total, isinstance(module, AttentionModule)))
    madds, total = madds_of("")
    attn_params, attn_madds, attn_total = attention_under("")
    return Counts(
        model=getattr(model, "name", type(model).__name__),
        attn=getattr(model, "attn_spec", "none"),
        input_size=(height, width),
        params=params_of(model),
        madds=madds,
        madds_total=total,
        attention_params=attn_params,
        attention_madds=attn_madds,
        attention_madds_total=attn_total,
        by_stage=by_stage,
        by_module=by_module,
        uncounted_ops=uncounted,
    )
