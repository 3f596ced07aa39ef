"""Coordinate Attention (Hou, Zhou, Feng, CVPR 2021) and its one-direction ablations.

The paper's form (:mod:`caprobe.attention.reference` writes it out in plain operators)::

    z^h = mean over W  (N×C×H×1)        z^w = mean over H  (N×C×1×W)
    f   = δ(BN(F1([z^h, z^w])))          shared 1×1 conv C→mip over the concatenated strips
    g^h = σ(F_h(f^h))   g^w = σ(F_w(f^w))  1×1 convs mip→C
    y   = x · g^h · g^w

Means replace the official code's ``AdaptiveAvgPool2d((None, 1))`` (identical values).
:class:`CoordAttention` computes that math in every mode through
:mod:`caprobe.attention.functional`: the strips pooled on the map's NHWC view, the 1×1 convs
as GEMMs on the strips, one product with both gates and a hand-written backward (no map-sized
intermediate saved). Its deployed form (:meth:`CoordAttention.fuse`,
:class:`DeployedCoordAttention`) gives the same output in eval mode with less work: BN folded
into F1 once, both strips pooled by one small matrix product on small maps (sums elsewhere),
the 1×1 convs as two batched GEMMs on the strips, both gates read as views of one buffer, on
small maps the two gates multiplied together first (one map-sized product, then one pass over
the map), no copy of the feature map.

Inside a network every kernel launch and Python step of the deployed path costs several
times its stand-alone time (cold caches after the big convolutions), so the path is kept
short: measured in ``benchmarks/attention_latency.py``.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from caprobe.attention.base import (
    COMBINE_GATES_MAX,
    AttentionModule,
    DeployedAttention,
    GraphAttention,
    batch_norm,
    conv_from,
    fold_bn,
    graph_nonlinearity,
    inplace_form,
    linear,
    make_act,
    make_gate,
    multiply_gates,
    pad_hidden,
)
from caprobe.attention.functional import (
    gate_product,
    native_ca_gates,
    native_map_kernels,
    nchw,
    strip_attention,
    strip_means,
)

#: Up to this H + W, pooling both strips as one (C, H·W) × (H·W, H+W) product beats sums (a
#: reduction over a short axis is slow on CPU): inside MobileNetV2 at 224, 2 threads, 40 vs
#: 108 µs per block at 14×14; at 28×28 the H+W multiply-adds per element lose (161 vs 90 µs).
MATMUL_POOL_MAX = 32


def _strip_factors(height: int, width: int, branches: str) -> tuple[float, float]:
    """``(w_factor, scale)`` that turn strip sums (or 0/1 pooling products) into the means:
    the W strip is weighted by ``w_factor`` against the H strip, and then both by ``scale``,
    which rides free on the next GEMM's ``alpha`` (a mean is a sum plus a division kernel)."""
    if branches == "w":
        return 1.0, 1.0 / height
    return width / height, 1.0 / width


@lru_cache(maxsize=32)
def _pooling_matrix(height: int, width: int, branches: str, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
    """(H·W, H+W) matrix whose product with a flattened map gives [z^h, z^w] (or one of them)
    up to :func:`_strip_factors`: 0/1 entries (exact in any dtype), the W strip's factor on
    its columns."""
    w_factor, _ = _strip_factors(height, width, branches)
    with torch.inference_mode(False), torch.no_grad():
        rows = torch.arange(height * width, device=device)
        cols = []
        if "h" in branches:
            cols.append(torch.nn.functional.one_hot(rows // width, height).double())
        if "w" in branches:
            cols.append(torch.nn.functional.one_hot(rows % width, width).double() * w_factor)
        return torch.cat(cols, dim=1).to(dtype)


def _fusable_projection(conv: nn.Module | None, x: torch.Tensor) -> bool:
    """``conv`` is a plain bias-free 1×1 conv (stride 1, no padding, one group) whose weight
    has ``x``'s dtype and device: one matrix product on the NHWC rows of the map."""
    return type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1) \
        and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1 and \
        conv.bias is None and conv.weight.dtype == x.dtype and conv.weight.device == x.device


class CoordAttention(AttentionModule):
    """CA with both gates (``branches="hw"``) or only the height (``"h"``) or width (``"w"``) gate.

    ``mip = max(min_mip, channels // reduction)``; official defaults r=32, floor 8, h-swish.
    """

    gate_layers = ("conv_h", "conv_w")

    def __init__(self, channels: int, reduction: int = 32, min_mip: int = 8,
                 act: str = "hswish", gate: str = "sigmoid", branches: str = "hw",
                 inplace: bool = False) -> None:
        super().__init__(inplace)
        self.branches = branches
        mip = max(min_mip, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mip, 1, bias=True)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = make_act(act)
        self.conv_h = nn.Conv2d(mip, channels, 1, bias=True) if "h" in branches else None
        self.conv_w = nn.Conv2d(mip, channels, 1, bias=True) if "w" in branches else None
        self.gate = make_gate(gate)

    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"h": N×C×H×1, "w": N×C×1×W}`` (only the branches this module has)."""
        return {name: nchw(g) for name, g in zip(self.branches, self._gates_nhwc(x),
                                                  strict=True)}

    def forward(self, x: torch.Tensor, relu6: bool = False,
                project: nn.Conv2d | None = None) -> torch.Tensor:
        """``relu6``: ``x`` is the input of the block's in-place ReLU6, applied here first;
        ``project``: a bias-free 1×1 conv applied to the output (:meth:`forward_after`)."""
        rows, cols = self.conv_h is not None, self.conv_w is not None
        out = strip_attention(x, self._strip_gates, rows, cols, relu6,
                              None if project is None else project.weight)
        if out is not None:  # the native kernels (channels-last CPU maps, float32/64)
            return out
        if relu6:
            x = F.relu6(x, inplace=True)
        out = gate_product(x, *self._gates_nhwc(x))
        return out if project is None else project(out)

    def forward_after(self, act: nn.Module, x: torch.Tensor,
                      conv: nn.Module | None = None) -> torch.Tensor:
        """``conv(self(act(x)))`` (``conv`` optional), with the neighbours inside CA's native
        passes in training. An in-place ReLU6 before CA: clamped while the strips are pooled,
        its backward inside the input's gradient (two passes over the map fewer, the same
        values and gradients; on the largest map of MobileNetV2-0.5 CIFAR at batch 64,
        64×96×32×32, 2 threads, 2026-12-04, 0.44 ms forward and 0.94 ms backward saved). A
        bias-free 1×1 ``conv`` after CA (the block's projection): applied to the product as one
        matrix product, the product not saved but remade in the backward
        (:class:`caprobe.attention.functional._NativeStripProduct`): the step's peak memory
        1.215 → 1.03× of ``none``'s at the same step time
        (``benchmarks/train_throughput.py``, 2026-12-05). The fused conv's own hooks do not
        run; traces and compiles call it as a module, outside CA."""
        if not (x.requires_grad and torch.is_grad_enabled() and
                native_map_kernels(x) is not None):
            return super().forward_after(act, x, conv)
        relu6 = isinstance(act, nn.ReLU6) and act.inplace
        if not relu6:
            x = act(x)
        if not _fusable_projection(conv, x):
            out = self(x, relu6=relu6)
            return out if conv is None else conv(out)
        return self(x, relu6=relu6, project=conv)

    def _gates_nhwc(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gates in NHWC broadcast shapes (N×H×1×C, N×1×W×C), ``branches`` order, from
        the strips pooled as one (N·H + N·W)×C tensor (:func:`strip_means`)."""
        n, channels, height, width = x.shape
        rows, cols = self.conv_h is not None, self.conv_w is not None
        gates = self._strip_gates(strip_means(x, rows, cols), n, height, width)
        out = [gates[:n * height].view(n, height, 1, channels)] if rows else []
        if cols:
            out.append(gates[n * height if rows else 0:].view(n, 1, width, channels))
        return out

    def _strip_gates(self, z: torch.Tensor, n: int, height: int, width: int,
                     deferred=None) -> torch.Tensor:
        """The gates of the strip means ``z`` of an N×C×H×W map ((N·H + N·W)×C, the row means
        first; or one strip), as the rows of one tensor in the same layout. In training, on
        the CPU, one native call each way (:func:`caprobe.attention.functional.
        native_ca_gates`); else F1 and each gate conv as one GEMM on contiguous rows (1×1
        convs on strips, channel-innermost like the map) and BN over the mip channels of
        every strip position. ``deferred``: from :func:`caprobe.attention.functional.
        strip_attention`, which then recomputes ``z`` for the native gates' backward."""
        rows_h = n * height if self.conv_h is not None else 0
        native = native_ca_gates(z, rows_h, self.conv1, self.bn1, self.act, self.conv_h,
                                 self.conv_w, self.gate, deferred)
        if native is not None:
            return native
        f = linear(self.conv1, z)  # (N·H + N·W)×mip
        count, mip = f.shape
        f = self.act(batch_norm(self.bn1, f.view(count, mip, 1, 1))).view(count, mip)
        parts = f.split([rows_h, count - rows_h]) if self.branches == "hw" else [f]
        gates = []
        if self.conv_h is not None:
            gates.append(self.gate(linear(self.conv_h, parts[0])))
        if self.conv_w is not None:
            gates.append(self.gate(linear(self.conv_w, parts[-1])))
        return torch.cat(gates) if len(gates) == 2 else gates[0]

    def fuse(self) -> DeployedCoordAttention:
        """F1 with BN folded in as (mip×C, mip×1); the gate convs stacked as (kC×mip, kC×1);
        the activation and the gate as in-place functions."""
        with torch.no_grad():
            weight, bias = fold_bn(self.conv1, self.bn1)
            convs = [conv for conv in (self.conv_h, self.conv_w) if conv is not None]
            gate_weight = torch.cat([conv.weight.flatten(1) for conv in convs])
            gate_bias = torch.cat([conv.bias for conv in convs])
        return DeployedCoordAttention(
            weight.flatten(1), bias[:, None], gate_weight, gate_bias[:, None],
            act=inplace_form(self.act), gate=inplace_form(self.gate), branches=self.branches,
            spec=self.spec, overwrite=self.inplace)

    def graph_form(self) -> GraphCoordAttention:
        """F1 with BN folded in as one constant 1×1 conv; the gate convs and non-linearities
        as copies."""
        with torch.no_grad():
            weight, bias = fold_bn(self.conv1, self.bn1)
        convs = [None if conv is None else conv_from(conv.weight, conv.bias)
                 for conv in (self.conv_h, self.conv_w)]
        return GraphCoordAttention(conv_from(weight, bias), *convs,
                                   act=graph_nonlinearity(self.act),
                                   gate=graph_nonlinearity(self.gate), spec=self.spec)

    def nchwc_form(self) -> GraphCoordAttention:
        """The graph form kept in ONNX Runtime's blocked NCHWc layout: mip padded to whole
        blocks (:func:`caprobe.attention.base.pad_hidden`; mip = 8, 18 or 30 in MobileNetV2
        otherwise sends the strips out of the layout and back), and each gate expanded to the
        map's size by a nearest upsample, so that its products are same-shape products, which
        the layout keeps (a broadcast product is not: the map is reordered out and back around
        every block). In MobileNetV2 at 224 no reorder is left inside the network, against 84
        with the graph form, and CA's overhead over MobileNetV2 in ONNX Runtime fell from
        +86 % to +72 % (2026-12-03, 2 threads, the two forms side by side in one process; the
        README has the whole table); XNNPACK and OpenVINO broadcast natively and keep the
        graph form (OpenVINO: +61 % with this form against +42 % with the graph form)."""
        graph = self.graph_form()
        for branch in graph.gates:
            first, second = pad_hidden(getattr(graph, f"conv1_{branch}"),
                                       getattr(graph, f"conv_{branch}"))
            setattr(graph, f"conv1_{branch}", first)
            setattr(graph, f"conv_{branch}", second)
        graph.expand_gates = True
        return graph


class GraphCoordAttention(GraphAttention):
    """CA's graph form (made by :meth:`CoordAttention.graph_form`): each strip pooled by an
    average pool along whole rows or columns (kernel = stride = (1, W) or (H, 1), so it is the
    mean exactly), F1 with BN folded and applied to each strip (a 1×1 conv acts on every
    position alone, so this equals F1 on the concatenated strips), each gate conv on its own
    strip, ``x · (g^h · g^w)`` by broadcasting. No concatenation, transpose or slice: in
    ExecuTorch every op lands in one XNNPACK partition (a mean over one axis does not, and it
    splits the graph around every CA block)."""

    def __init__(self, conv1: nn.Conv2d, conv_h: nn.Conv2d | None, conv_w: nn.Conv2d | None,
                 act: nn.Module, gate: nn.Module, spec: str = "ca") -> None:
        super().__init__(spec)
        # F1 once per strip, each its own copy: a weight shared by two convs does not compile
        # in XNNPACK once quantised (pt2e int8: "XNNCompiler::compileModel failed")
        self.conv1_h = conv1 if conv_h is not None else None
        self.conv1_w = copy.deepcopy(conv1) if conv_w is not None else None
        self.conv_h, self.conv_w, self.act, self.gate = conv_h, conv_w, act, gate
        self.gates = tuple(name for name, conv in (("h", conv_h), ("w", conv_w))
                           if conv is not None)
        #: each gate upsampled to the map's size before the product (set by
        #: :meth:`CoordAttention.nchwc_form`)
        self.expand_gates = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        gates = []
        if self.conv_h is not None:  # z^h: N×C×H×1
            z = F.avg_pool2d(x, (1, width), (1, width), count_include_pad=False)
            gates.append(self.gate(self.conv_h(self.act(self.conv1_h(z)))))
        if self.conv_w is not None:  # z^w: N×C×1×W
            z = F.avg_pool2d(x, (height, 1), (height, 1), count_include_pad=False)
            gates.append(self.gate(self.conv_w(self.act(self.conv1_w(z)))))
        if self.expand_gates:  # nearest upsample by whole factors: each value repeated
            gates = [F.interpolate(g, scale_factor=(height // g.shape[2], width // g.shape[3]),
                                   mode="nearest") for g in gates]
        # both gates multiplied together first: ONNX Runtime then leaves one map-sized product
        # outside its blocked layout instead of two (+81 % vs +103 % over MobileNetV2 at 224);
        # the same in XNNPACK and OpenVINO (benchmarks/runtime_latency.py)
        return x * (gates[0] * gates[1] if len(gates) == 2 else gates[0])


class DeployedCoordAttention(DeployedAttention):
    """CA's deployed form (eval mode only; made by :meth:`CoordAttention.fuse`).

    ``w1``/``b1``: F1 with BN folded (mip×C, mip×1); ``wg``/``bg``: the gate convs stacked
    (kC×mip, kC×1), k = number of branches; ``act``/``gate``: in-place functions.
    ``matmul_pool_max``: up to this H + W the strips are pooled as one matrix product
    (:data:`MATMUL_POOL_MAX`); ``combine_gates_max``: up to this H + W the two gates are
    multiplied together before the map (:data:`caprobe.attention.base.COMBINE_GATES_MAX`).
    ``overwrite``: write the output into the input (a temporary).
    """

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, wg: torch.Tensor, bg: torch.Tensor,
                 *, act, gate, branches: str = "hw", spec: str = "ca", overwrite: bool = False,
                 matmul_pool_max: int = MATMUL_POOL_MAX,
                 combine_gates_max: int = COMBINE_GATES_MAX) -> None:
        super().__init__(spec, overwrite)
        for name, value in (("w1", w1), ("b1", b1), ("wg", wg), ("bg", bg)):
            self.register_buffer(name, value.detach().clone())
        self.act, self.gate_fn, self.branches = act, gate, branches
        self.matmul_pool_max, self.combine_gates_max = matmul_pool_max, combine_gates_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return multiply_gates(x, self._gates(x), overwrite=self.overwrite,
                              combine_max=self.combine_gates_max)

    def _strip_sums(self, x: torch.Tensor, w_factor: float) -> torch.Tensor:
        """[z^h, z^w] as N×C×(H+W) (or the one strip this module uses) from sums, up to
        :func:`_strip_factors`."""
        if self.branches == "h":
            return x.sum(dim=3)
        if self.branches == "w":
            return x.sum(dim=2)
        z = torch.cat([x.sum(dim=3), x.sum(dim=2)], dim=2)
        if w_factor != 1.0:
            z[:, :, x.shape[2]:] *= w_factor
        return z

    def _gates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The gates in ``branches`` order. F1 (BN folded) and both gate convs run as two
        batched GEMMs on the strips; the gate GEMM covers all H+W positions for both convs and
        each gate reads its own block (the unused blocks cost less than a second GEMM call).
        GEMMs, not conv1d: a 1×1 conv1d on strips takes a slow im2col path on CPU."""
        n, channels, height, width = x.shape
        w_factor, scale = _strip_factors(height, width, self.branches)
        if height + width <= self.matmul_pool_max and x.is_contiguous():
            pool = _pooling_matrix(height, width, self.branches, x.dtype, x.device)
            z = torch.mm(x.view(n * channels, height * width), pool)
            z = z.view(n, channels, pool.shape[1])
        else:
            z = self._strip_sums(x, w_factor)
        f = self.act(torch.baddbmm(self.b1, self.w1.expand(n, -1, -1), z, alpha=scale))
        g = self.gate_fn(torch.baddbmm(self.bg, self.wg.expand(n, -1, -1), f))  # N×kC×L
        if self.branches == "h":
            return [g.view(n, channels, height, 1)]
        if self.branches == "w":
            return [g.view(n, channels, 1, width)]
        # the blocks [:C, :H] and [C:, H:] as N×C×H×1 and N×C×1×W views (slices export to
        # ONNX; as_strided would not)
        return [g[:, :channels, :height, None], g[:, channels:, None, height:]]
