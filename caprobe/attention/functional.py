"""The map-sized steps of the attention modules as autograd functions with hand-written backwards.

An attention module touches its N×C×H×W input three times in the paper's form: it pools it,
multiplies it by gates, and autograd then replays both backwards with map-sized temporaries
of its own (the product of every factor pair, a materialised expansion per pooling, one sum
per accumulation). These functions keep the math and cut the passes:

* every map-sized operation runs on the **NHWC view** of the map (``x.permute(0, 2, 3, 1)``),
  with the pooled vectors and gates laid out channel-innermost too. For a channels-last map
  (the training default) that view is contiguous, and a sum over W or a broadcast of an
  N×H×1×C gate is a run of contiguous vector adds. The same steps in NCHW index order write
  their output transposed: at 64×48×32×32, 2 threads, ``x.sum(3)`` took 1.28 ms against
  0.17 ms for the NHWC-view sum, and ``x * gate`` 1.61 ms against 0.42 ms
  (``benchmarks/train_throughput.py`` times the whole effect).
* nothing map-sized is saved for the backward beyond the input, which the layer before keeps
  anyway (ReLU6 saves its output); a mean's backward is an expanded view, not a map.
* max pooling routes its gradient to the one arg-max element (``max_pool2d``'s rule, which the
  official CBAM code uses).

On a channels-last float32/float64 CPU map, CA trains through :func:`strip_attention` and
CBAM through :func:`cbam_attention` instead: the native kernels of
:mod:`caprobe.attention.native` do each map-sized step in one pass (CA: four one-pass kernels,
forward and backward together, against about ten passes here; CBAM: six, seven passes,
against about fifteen), and the pooling's backward forms the input's whole gradient, so
autograd never sums two map-sized gradients.

Each eager function accepts any memory format (an NCHW map just has a strided NHWC view) and
any floating dtype, and returns NCHW-indexed tensors in its input's memory format. They are
traceable (traces and compiles take them, never the native path): ``torch.jit.trace`` records
each as one ``prim::PythonOp`` whose subgraph holds the forward's operators
(``caprobe.measure.counting`` counts that subgraph), ``torch.compile`` and ``torch.export``
trace through them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
from torch import nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from caprobe.attention.native import native_for


def nhwc(x: torch.Tensor) -> torch.Tensor:
    """The N×H×W×C view of an N×C×H×W map (contiguous for a channels-last map)."""
    return x.permute(0, 2, 3, 1)


def nchw(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`nhwc`."""
    return x.permute(0, 3, 1, 2)


class _GateProduct(Function):
    """``x · g1 [· g2]`` for gates in NHWC broadcast shapes (N×H|1×W|1×C|1)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, g1, g2)
        out = nhwc(x) * g1
        if g2 is not None:
            out.mul_(g2)
        return nchw(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, g1, g2 = ctx.saved_tensors
        dy = nhwc(grad)
        need_x, need_g1, need_g2 = ctx.needs_input_grad
        dg1 = dg2 = dx = None
        if need_g1 or need_g2:
            p = dy * nhwc(x)  # map-sized, shared by every gate's reduction
            if g2 is None:
                dg1 = _sum_to(p, g1)
            else:
                if need_g1:
                    dg1 = _sum_to(p * g2, g1)
                if need_g2:
                    dg2 = _sum_to(p.mul_(g1), g2)
            del p  # before the next map-sized tensor: lower peak memory
        if need_x:
            dx = dy * g1
            if g2 is not None:
                dx.mul_(g2)
            dx = nchw(dx)
        return dx, dg1, dg2


def _sum_to(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``p`` summed over the axes where ``like`` (same rank) has size 1 and ``p`` has not."""
    dims = tuple(i for i, (a, b) in enumerate(zip(like.shape, p.shape, strict=True))
                 if a == 1 and b != 1)
    return p.sum(dims, keepdim=True) if dims else p


def gate_product(x: torch.Tensor, *gates: torch.Tensor) -> torch.Tensor:
    """``x`` (N×C×H×W) times one or two gates given in NHWC broadcast shapes: N×1×1×C (a
    channel gate), N×H×1×C / N×1×W×C (CA's strips), N×H×W×1 (a spatial gate)."""
    if not 1 <= len(gates) <= 2:
        raise ValueError(f"gate_product takes one or two gates, got {len(gates)}")
    return _GateProduct.apply(x, gates[0], gates[1] if len(gates) == 2 else None)


class _StripMeans(Function):
    """Means over W (one per row) and over H (one per column), as (N·H + N·W)×C rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: bool, cols: bool) -> torch.Tensor:
        n, c, h, w = x.shape
        xm = nhwc(x)
        ctx.shape, ctx.rows, ctx.cols = x.shape, rows, cols
        strips = ([xm.mean(2).reshape(n * h, c)] if rows else []) + (
            [xm.mean(1).reshape(n * w, c)] if cols else [])
        return torch.cat(strips) if len(strips) > 1 else strips[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        n, c, h, w = ctx.shape
        if ctx.rows and ctx.cols:
            grad_h, grad_w = grad[:n * h].view(n, h, c), grad[n * h:].view(n, w, c)
            dx = (grad_h[:, :, None] / w) + (grad_w[:, None] / h)  # the one map this writes
        elif ctx.rows:
            dx = (grad.view(n, h, c) / w)[:, :, None].expand(n, h, w, c)
        else:
            dx = (grad.view(n, w, c) / h)[:, None].expand(n, h, w, c)
        return nchw(dx), None, None


def strip_means(x: torch.Tensor, rows: bool = True, cols: bool = True) -> torch.Tensor:
    """CA's pooled strips of an N×C×H×W map as one (N·H + N·W)×C tensor, channel-innermost:
    the rows of ``z^h`` (the mean of each row, sample by sample), then those of ``z^w`` (the
    mean of each column), or only the one asked for. Strip-major rows let the 1×1 convs that
    follow run as plain GEMMs on contiguous blocks (no copy of a strided slice)."""
    return _StripMeans.apply(x, rows, cols)


class _Deferred:
    """What a native backward hands on to backwards that autograd runs later: to the one
    that forms the input's whole gradient (CA's ``dy`` and gates; CBAM's ``dy``, gates and the
    spatial descriptor's gradient), so that the input's gradient is one pass once the pooled
    gradients are known, kept only when ``wanted`` (the input takes a gradient); and to CA's
    native gates, when ``strips`` (they asked), the strip means recomputed in the product's
    backward pass over the map instead of saved (14 MB less at the peak of a MobileNetV2-0.5
    CIFAR step at batch 64)."""

    __slots__ = ("wanted", "strips", "_kept")

    def __init__(self, wanted: bool) -> None:
        self.wanted, self.strips = wanted, False
        self._kept: dict[str, torch.Tensor | None] = {}

    def keep(self, **tensors: torch.Tensor | None) -> None:
        self._kept.update(tensors)

    def take(self, *names: str) -> list[torch.Tensor | None]:
        """The tensors kept under ``names``, released here (a retained graph's next backward
        keeps them anew)."""
        return [self._kept.pop(name) for name in names]


class _NativeStripMeans(Function):
    """The strips of a channels-last map in one read (:func:`strip_means`' layout). Backward:
    ``dx = dy · g^h · g^w + dz^h / W + dz^w / H`` in one pass, with ``dy`` and the gates that
    :class:`_NativeStripProduct`'s backward (which runs first) left in ``deferred``. With
    ``relu6``, the block's in-place ReLU6 before CA in the same passes: the map is clamped to
    [0, 6] in place while pooled (and returned, before the strips), and the gradient is the one
    at the ReLU6's input (zero where the output is 0 or 6, as autograd's ReLU6 has it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rows: bool, cols: bool, kernels, deferred: _Deferred,
                relu6: bool):
        ctx.shape, ctx.rows, ctx.cols = x.shape, rows, cols
        ctx.kernels, ctx.deferred = kernels, deferred
        z = kernels.strip_means(nhwc(x), rows, cols, relu6)
        if not relu6:
            ctx.relu6 = False
            return z
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.relu6 = True
        return x, z

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        n, c, h, w = ctx.shape
        dy, gh, gw = ctx.deferred.take("dy", "gh", "gw")
        grad = grads[-1].contiguous()  # the strips' (the map's goes through the product)
        eh = grad[:n * h].view(n, h, c) if ctx.rows else None
        ew = grad[n * h if ctx.rows else 0:].view(n, w, c) if ctx.cols else None
        dx = torch.empty(ctx.shape, dtype=grad.dtype, memory_format=torch.channels_last)
        relu6_out = nhwc(ctx.saved_tensors[0]) if ctx.relu6 else None
        ctx.kernels.combine_into(nhwc(dx), dy, gh, gw, eh, ew, 1.0 / w, 1.0 / h, relu6_out)
        return dx, None, None, None, None, None


class _NativeStripProduct(Function):
    """``x · g^h · g^w`` in one pass, the gates given as the rows of one R×C tensor (the N·H
    rows of ``g^h`` first, then the N·W of ``g^w``, or one of them); ``x`` comes detached (its
    gradient goes through :class:`_NativeStripMeans`). Backward: both gates' gradients in one
    pass over ``dy`` and ``x``, as one R×C tensor; ``dy`` and the gates are left in
    ``deferred`` for the input's gradient, and the strip means of ``x`` (same pass) for the
    gates' backward when it asked for them.

    Given ``weight`` (the C'×C×1×1 weight of a bias-free 1×1 conv that the product feeds, the
    block's projection), the output is that conv's, ``z Wᵀ`` on the NHWC rows, and the product
    ``z`` is not kept for the backward: it is remade there for the weight's gradient (one pass
    over ``x``, which is kept anyway) and freed at once. Saving it was CA's only map-sized
    tensor beyond the plain network's, 87 MB of a MobileNetV2-0.5 CIFAR step at batch 64 (peak
    1.215× of ``none``'s; 1.03× without it, 2026-12-05, ``benchmarks/train_throughput.py``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gates: torch.Tensor, weight: torch.Tensor | None,
                rows: bool, cols: bool, kernels, deferred: _Deferred) -> torch.Tensor:
        ctx.save_for_backward(x, gates, weight)
        ctx.rows, ctx.cols, ctx.kernels, ctx.deferred = rows, cols, kernels, deferred
        z = _strip_product(kernels, x, gates, rows, cols)
        if weight is None:
            return z
        n, c, h, w = x.shape
        out = torch.empty((n, weight.shape[0], h, w), dtype=x.dtype,
                          memory_format=torch.channels_last)
        torch.mm(nhwc(z).view(-1, c), weight.view(-1, c).t(),
                 out=nhwc(out).view(-1, weight.shape[0]))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, gates, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        dy = nhwc(grad).contiguous()
        dweight = None
        if weight is not None:
            dout = dy.view(-1, weight.shape[0])
            if ctx.needs_input_grad[2]:
                z = _strip_product(ctx.kernels, x, gates, ctx.rows, ctx.cols)
                dweight = torch.mm(dout.t(), nhwc(z).view(-1, c)).view(weight.shape)
                del z
            dy = torch.mm(dout, weight.view(-1, c)).view(n, h, w, c)
        gh, gw = _strip_views(gates, x, ctx.rows, ctx.cols)
        deferred = ctx.deferred
        dgates, *strips = ctx.kernels.gate_grads(dy, nhwc(x), gh, gw, deferred.strips)
        if deferred.strips:
            deferred.keep(z=strips[0])
        if deferred.wanted:
            deferred.keep(dy=dy, gh=gh, gw=gw)
        return None, dgates, dweight, None, None, None, None


def _strip_product(kernels, x: torch.Tensor, gates: torch.Tensor, rows: bool,
                   cols: bool) -> torch.Tensor:
    """``x · g^h · g^w`` (channels-last) in one native pass."""
    out = torch.empty_like(x, memory_format=torch.channels_last)
    kernels.combine_into(nhwc(out), nhwc(x), *_strip_views(gates, x, rows, cols), None, None,
                         1.0, 1.0)
    return out


def _strip_views(gates: torch.Tensor, x: torch.Tensor, rows: bool,
                 cols: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``g^h`` (N×H×C) and ``g^w`` (N×W×C) as views of the gates' rows (None where absent)."""
    n, c, h, w = x.shape
    gh = gates[:n * h].view(n, h, c) if rows else None
    gw = gates[n * h if rows else 0:].view(n, w, c) if cols else None
    return gh, gw


def strip_attention(x: torch.Tensor,
                    strip_gates: Callable[[torch.Tensor, int, int, int, _Deferred],
                                          torch.Tensor],
                    rows: bool, cols: bool, relu6: bool = False,
                    project: torch.Tensor | None = None) -> torch.Tensor | None:
    """``x`` times gates broadcast along its rows and/or columns, by the native kernels:
    ``strip_gates(z, N, H, W, deferred)`` maps the strip means ``z`` (:func:`strip_means`'
    layout) to the gates as the rows of one contiguous R×C tensor in the same layout (N·H rows,
    one per row of the map, broadcast over W; then N·W, one per column, broadcast over H);
    ``deferred`` is for :func:`native_ca_gates`. Four
    one-pass map kernels forward and backward together, besides the gates themselves (the
    eager functions take about ten passes). ``relu6``: ``x`` is the input of an in-place
    ReLU6 that these passes apply first (:class:`_NativeStripMeans`). ``project``: the weight
    of the bias-free 1×1 conv that the product feeds, whose output is then returned (the
    product not saved, :class:`_NativeStripProduct`). Returns None where the kernels cannot
    run (:func:`native_map_kernels`): the caller then takes the eager path."""
    kernels = native_map_kernels(x)
    if kernels is None:
        return None
    n, c, h, w = x.shape
    deferred = _Deferred(x.requires_grad and torch.is_grad_enabled())
    if relu6:
        x, z = _NativeStripMeans.apply(x, rows, cols, kernels, deferred, True)
    else:
        z = _NativeStripMeans.apply(x, rows, cols, kernels, deferred, False)
    gates = strip_gates(z, n, h, w, deferred)
    return _NativeStripProduct.apply(x.detach(), gates, project, rows, cols, kernels,
                                     deferred)


def native_map_kernels(x: torch.Tensor) -> ModuleType | None:
    """The native kernels for the map ``x``, or None where they cannot run (not
    channels-last, another dtype or device, no kernels, CPU autocast, or inside a trace or
    compile, which record the eager functions)."""
    return None if _eager_only() else native_for(nhwc(x))


def _eager_only() -> bool:
    """Inside a trace or a compile (they record the eager functions, never the native ones;
    ``torch.compiler.is_compiling`` from torch 2.3, torch._dynamo's before), or under CPU
    autocast (whose dtypes the eager functions follow)."""
    compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
    try:
        autocast = torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        autocast = torch.is_autocast_cpu_enabled()
    return torch.jit.is_tracing() or compiling() or autocast


class _NativeCAGates(Function):
    """CA's gates from its strip means ``z`` (R×C; the first ``rows_h`` rows are the row
    means) in one native call forward and one backward (:mod:`caprobe.attention.native`):
    F1, BN on batch statistics, the activation, the gate convs and the gate non-linearity,
    the papers' math. In eager operators these are about 22 operators per block, each a pass
    over a strip; here two passes forward and four backward. BN's running statistics are
    updated as :class:`torch.nn.BatchNorm2d` updates them. Given a ``deferred`` (the native
    map path), ``z`` is not saved: the product's backward recomputes it in its pass over the
    map (bit-identical) and leaves it there."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, bn_w: torch.Tensor,
                bn_b: torch.Tensor, wg_h: torch.Tensor | None, bg_h: torch.Tensor | None,
                wg_w: torch.Tensor | None, bg_w: torch.Tensor | None, spec) -> torch.Tensor:
        kernels, rows_h, bn, act, gate, deferred = spec
        r, c = z.shape
        convs = [(wg, bg) for wg, bg in ((wg_h, bg_h), (wg_w, bg_w)) if wg is not None]
        wg = torch.stack([w.reshape(c, -1).t() for w, _ in convs]).contiguous()  # k×mip×C
        bg = torch.stack([b for _, b in convs]).contiguous()
        w1m = w1.reshape(w1.shape[0], c).contiguous()
        gates, f, a, mean, invstd, var = kernels.ca_gates_forward(
            z, rows_h, w1m, b1, bn_w, bn_b, bn.eps, wg, bg, act, gate)
        _update_running_stats(bn, mean, var, r)
        if deferred is not None:
            deferred.strips = True
        ctx.save_for_backward(gates, None if deferred is not None else z, w1m, f, a, mean,
                              invstd, bn_w, bn_b, wg)
        ctx.spec = spec
        ctx.shapes = [None if t is None else t.shape for t in (w1, wg_h, wg_w)]
        return gates

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        gates, z, w1m, f, a, mean, invstd, bn_w, bn_b, wg = ctx.saved_tensors
        kernels, rows_h, _bn, act, gate, deferred = ctx.spec
        if deferred is not None:
            (z,) = deferred.take("z")
        dz, dw1, db1, dbn_w, dbn_b, dwg, dbg = kernels.ca_gates_backward(
            grad.contiguous(), gates, z, rows_h, w1m, f, a, mean, invstd, bn_w, bn_b, wg, act,
            gate)
        w1_shape, h_shape, w_shape = ctx.shapes
        out = [dz, dw1.view(w1_shape), db1, dbn_w, dbn_b]
        index = 0
        for shape in (h_shape, w_shape):
            if shape is None:
                out += [None, None]
            else:
                out += [dwg[index].t().reshape(shape), dbg[index]]
                index += 1
        return *out, None


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor,
                          count: int) -> None:
    """BN's running statistics after a training step on ``count`` values per channel with
    batch ``mean`` and biased ``var``, as :class:`torch.nn.BatchNorm2d` updates them
    (unbiased variance; momentum None: the cumulative average)."""
    if not bn.track_running_stats:
        return
    bn.num_batches_tracked.add_(1)
    factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
    bn.running_var.mul_(1 - factor).add_(var * (count / (count - 1)), alpha=factor)


def native_ca_gates(z: torch.Tensor, rows_h: int, conv1, bn, act: nn.Module, conv_h, conv_w,
                    gate: nn.Module, deferred: _Deferred | None = None) -> torch.Tensor | None:
    """CA's gates (R×C, the H gate's rows first) by :class:`_NativeCAGates`, or None where
    it does not apply (BN in eval mode or on one position, a non-linearity it does not know,
    no kernels, another dtype or device, a trace, compile or CPU autocast): the caller runs the
    module's operators. ``deferred``: :func:`strip_attention`'s, when ``z`` are the strip
    means of its map (then not saved, see :class:`_NativeCAGates`)."""
    act_id, gate_id = _ACT_IDS.get(type(act)), _GATE_IDS.get(type(gate))
    if act_id is None or gate_id is None or type(bn) is not nn.BatchNorm2d or \
            not bn.training or not bn.affine or z.shape[0] < 2 or _eager_only():
        return None
    kernels = native_for(z)
    if kernels is None:
        return None
    return _NativeCAGates.apply(
        z, conv1.weight, conv1.bias, bn.weight, bn.bias,
        *(None, None) if conv_h is None else (conv_h.weight, conv_h.bias),
        *(None, None) if conv_w is None else (conv_w.weight, conv_w.bias),
        (kernels, rows_h, bn, act_id, gate_id, deferred))


#: the non-linearities :class:`_NativeCAGates` knows (ids of ``csrc/strip_kernels.cpp``)
_ACT_IDS = {nn.ReLU: 0, nn.ReLU6: 1, nn.Hardswish: 2, nn.SiLU: 3}
_GATE_IDS = {nn.Sigmoid: 0, nn.Hardsigmoid: 1}


class _NativeChannelMean(Function):
    """A channel gate's pooled means (N×C) of a channels-last map. Backward: the input's whole
    gradient ``dy · gc + dmean / (H·W)`` in one pass, with ``dy`` and ``gc`` that
    :class:`_NativeChannelProduct`'s backward (which runs first) left in ``deferred``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernels, deferred: _Deferred) -> torch.Tensor:
        ctx.kernels, ctx.deferred = kernels, deferred
        return nhwc(x).mean((1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, dmean: torch.Tensor):
        dy, gc = ctx.deferred.take("dy", "gc")
        return nchw(ctx.kernels.channel_input_grad(dy, gc, dmean.contiguous())), None, None


class _NativeChannelProduct(Function):
    """``x · gc`` (gc N×C); ``x`` comes detached (its gradient goes through
    :class:`_NativeChannelMean`). Backward: ``gc``'s gradient in one read of ``dy`` and ``x``
    (eager autograd writes ``dy · x`` as a map first); ``dy`` and ``gc`` are left in
    ``deferred`` for the input's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gc: torch.Tensor, kernels,
                deferred: _Deferred) -> torch.Tensor:
        ctx.save_for_backward(x, gc)
        ctx.kernels, ctx.deferred = kernels, deferred
        return nchw(nhwc(x) * gc[:, None, None])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, gc = ctx.saved_tensors
        dy = nhwc(grad).contiguous()
        if ctx.deferred.wanted:
            ctx.deferred.keep(dy=dy, gc=gc)
        return None, ctx.kernels.channel_gate_grad(dy, nhwc(x)), None, None


def channel_attention(x: torch.Tensor,
                      channel_gate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """A channel gate ``x · channel_gate(mean_HW x)`` (SE, ECA) with the native backward: two
    map passes backward (the eager functions: five, and a map-sized temporary). Returns None
    where the kernels cannot run (:func:`native_map_kernels`)."""
    kernels = native_map_kernels(x)
    if kernels is None:
        return None
    deferred = _Deferred(x.requires_grad and torch.is_grad_enabled())
    gc = channel_gate(_NativeChannelMean.apply(x, kernels, deferred)).contiguous()
    return _NativeChannelProduct.apply(x.detach(), gc, kernels, deferred)


class _NativeChannelPool(Function):
    """CBAM's mean- and max-pooled vectors (N×C each) of a channels-last map in one read.
    Backward: the input's whole gradient in one pass (``cbam_input_grad``) from the pooled
    vectors' gradients and what the later steps' backwards (which run first) left in
    ``deferred``: ``dy``, both gates, the spatial descriptor's gradient and its arg-max
    channels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernels, deferred: _Deferred):
        mean, peak, index = kernels.cbam_channel_pool(nhwc(x))
        ctx.save_for_backward(index)
        ctx.kernels, ctx.deferred = kernels, deferred
        return mean, peak

    @staticmethod
    @once_differentiable
    def backward(ctx, dmean: torch.Tensor, dmax: torch.Tensor):
        (index,) = ctx.saved_tensors
        dy, gs, gc, ds, index_s = ctx.deferred.take("dy", "gs", "gc", "ds", "index_s")
        dx = ctx.kernels.cbam_input_grad(dy, gs, gc, ds, index_s, dmean.contiguous(),
                                         dmax.contiguous(), index)
        return nchw(dx), None, None


class _NativeSpatialPool(Function):
    """CBAM's spatial descriptor ``[max_C, mean_C]`` of ``x · gc`` without forming ``x · gc``,
    N×2×H×W planar (contiguous: :class:`_NativeSpatialGate`'s conv runs along its rows).
    ``x`` comes detached (its gradient goes through :class:`_NativeChannelPool`). Backward:
    ``gc``'s share through the descriptor in one read of ``x``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gc: torch.Tensor, kernels,
                deferred: _Deferred) -> torch.Tensor:
        descriptor, index = kernels.cbam_spatial_pool(nhwc(x), gc)
        ctx.save_for_backward(x, gc, index)
        ctx.kernels, ctx.deferred = kernels, deferred
        return descriptor

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, gc, index = ctx.saved_tensors
        grad = grad.contiguous()
        dgc = ctx.kernels.cbam_spatial_pool_grad(nhwc(x), grad, index)
        if ctx.deferred.wanted:
            ctx.deferred.keep(ds=grad, index_s=index, gc=gc)
        return None, dgc, None, None


class _NativeCBAMProduct(Function):
    """``x · gc · gs`` (gc N×C, gs N×1×H×W) in one pass; ``x`` comes detached. Backward: ``gs``'s
    gradient and ``gc``'s share through the product in one pass over ``dy`` and ``x``; ``dy``
    and ``gs`` are left in ``deferred`` for the input's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gc: torch.Tensor, gs: torch.Tensor, kernels,
                deferred: _Deferred) -> torch.Tensor:
        ctx.save_for_backward(x, gc, gs)
        ctx.kernels, ctx.deferred = kernels, deferred
        return nchw(kernels.cbam_product(nhwc(x), gc, gs))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, gc, gs = ctx.saved_tensors
        dy = nhwc(grad).contiguous()
        dgs, dgc = ctx.kernels.cbam_product_grads(dy, nhwc(x), gc, gs)
        if ctx.deferred.wanted:
            ctx.deferred.keep(dy=dy, gs=gs)
        return None, dgc, dgs, None, None


class _NativeSpatialGate(Function):
    """CBAM's spatial gate from its planar descriptor (N×2×H×W) in training, one native call
    each way: the k×k conv, BN on batch statistics (running statistics updated as
    :class:`torch.nn.BatchNorm2d` does), the gate. In eager operators: a conv on two channels
    whose backward alone took 2.9 ms at 64×2×32×32 (2 threads), BN and the gate on N×1×H×W."""

    @staticmethod
    def forward(ctx, descriptor: torch.Tensor, weight: torch.Tensor, bn_w: torch.Tensor,
                bn_b: torch.Tensor, spec) -> torch.Tensor:
        kernels, bn, gate = spec
        gs, t, mean, invstd, var = kernels.cbam_spatial_gate_forward(
            descriptor, weight.contiguous(), bn_w, bn_b, bn.eps, gate)
        _update_running_stats(bn, mean, var, t.numel())
        ctx.save_for_backward(gs, descriptor, t, weight, mean, invstd, bn_w)
        ctx.spec = spec
        return gs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        gs, descriptor, t, weight, mean, invstd, bn_w = ctx.saved_tensors
        kernels, _bn, gate = ctx.spec
        ds, dw, dbn_w, dbn_b = kernels.cbam_spatial_gate_backward(
            grad.contiguous(), gs, descriptor, t, weight.contiguous(), mean, invstd, bn_w, gate)
        return ds, dw, dbn_w, dbn_b, None


def native_spatial_gate(descriptor: torch.Tensor, conv: nn.Conv2d, bn,
                        gate: nn.Module) -> torch.Tensor | None:
    """CBAM's spatial gate ``gate(BN(conv(descriptor)))`` by :class:`_NativeSpatialGate`, or
    None where it does not apply (a descriptor that is not planar and contiguous, as the
    eager path's; BN in eval mode or on one position; a conv other than CBAM's k×k, odd k,
    zero padding k // 2, no bias; a gate it does not know; no kernels, another dtype or
    device, a trace, compile or CPU autocast): the caller runs the module's operators."""
    gate_id = _GATE_IDS.get(type(gate))
    k = conv.kernel_size[0]
    if gate_id is None or type(bn) is not nn.BatchNorm2d or not bn.training or \
            not bn.affine or conv.bias is not None or conv.kernel_size != (k, k) or \
            k % 2 == 0 or conv.padding != (k // 2, k // 2) or conv.stride != (1, 1) or \
            conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros" or \
            descriptor.numel() < 4 or _eager_only():
        return None
    kernels = native_for(descriptor)
    if kernels is None:
        return None
    return _NativeSpatialGate.apply(descriptor, conv.weight, bn.weight, bn.bias,
                                    (kernels, bn, gate_id))


def cbam_attention(x: torch.Tensor,
                   channel_gate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   spatial_gate: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """CBAM's ``y1 = x · gc``, ``out = y1 · gs`` by the native kernels, ``y1`` never formed:
    ``channel_gate(mean, max)`` maps the pooled N×C vectors to the channel gate ``gc`` (N×C),
    ``spatial_gate(s)`` the descriptor ``[max_C y1, mean_C y1]`` (N×2×H×W) to ``gs``
    (N×1×H×W). Three map passes forward and four backward (the eager functions take about
    fifteen), besides the gates themselves. Returns None where the kernels cannot run
    (:func:`native_map_kernels`): the caller then takes the eager path."""
    kernels = native_map_kernels(x)
    if kernels is None:
        return None
    deferred = _Deferred(x.requires_grad and torch.is_grad_enabled())
    mean, peak = _NativeChannelPool.apply(x, kernels, deferred)
    gc = channel_gate(mean, peak).contiguous()
    descriptor = _NativeSpatialPool.apply(x.detach(), gc, kernels, deferred)
    gs = spatial_gate(descriptor).contiguous()
    return _NativeCBAMProduct.apply(x.detach(), gc, gs, kernels, deferred)


class _ChannelMean(Function):
    """Global average pool, N×C."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.mean((2, 3))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        n, c, h, w = ctx.shape
        return nchw((grad / (h * w))[:, None, None].expand(n, h, w, c))


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over H and W: N×C. Its backward is an expanded view (nothing map-sized)."""
    return _ChannelMean.apply(x)


class _ChannelMax(Function):
    """Global max pool, N×C; the gradient goes to the arg-max element. An NCHW-contiguous map
    is reduced over its rows of H·W, any other over its NHWC view (no copy either way for
    those two layouts)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        ctx.shape, ctx.nchw = x.shape, x.is_contiguous()
        if ctx.nchw:
            values, index = x.reshape(n, c, h * w).max(2)
        else:
            values, index = nhwc(x).reshape(n, h * w, c).max(1)
        ctx.save_for_backward(index)
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        n, c, h, w = ctx.shape
        (index,) = ctx.saved_tensors
        if ctx.nchw:
            dx = grad.new_zeros(n, c, h * w).scatter_(2, index[..., None], grad[..., None])
            return dx.view(n, c, h, w)
        dx = grad.new_zeros(n, h * w, c).scatter_(1, index[:, None], grad[:, None])
        return nchw(dx.view(n, h, w, c))


def channel_max(x: torch.Tensor) -> torch.Tensor:
    """Max over H and W: N×C (CBAM's max-pooled descriptor)."""
    return _ChannelMax.apply(x)


class _SpatialMaxMean(Function):
    """Max and mean over the channels, N×2×H×W (CBAM's spatial descriptor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        xm = nhwc(x)
        values, index = xm.max(3, keepdim=True)
        ctx.shape = x.shape
        ctx.save_for_backward(index)
        return nchw(torch.cat([values, xm.mean(3, keepdim=True)], 3))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        n, c, h, w = ctx.shape
        (index,) = ctx.saved_tensors
        g = nhwc(grad)
        dx = (g[..., 1:] / c).expand(n, h, w, c).clone(memory_format=torch.contiguous_format)
        return nchw(dx.scatter_add_(3, index, g[..., :1]))


def spatial_max_mean(x: torch.Tensor) -> torch.Tensor:
    """``[max over C, mean over C]`` of an N×C×H×W map: N×2×H×W."""
    return _SpatialMaxMean.apply(x)
