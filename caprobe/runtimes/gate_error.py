"""How much static int8 disturbs each attention gate: the SQNR of every gate (CA's g^h and
g^w, SE's and ECA's channel gate, CBAM's channel and spatial gates), int8 against fp32.

The int8 model is the one ExecuTorch-XNNPACK runs, simulated in PyTorch: pt2e with the
XNNPACK quantizer (:func:`caprobe.runtimes.executorch_xnnpack.quantize`), whose quantize /
dequantize pairs carry XNNPACK's int8 numerics. Each gate is tapped at the output of the
graph form's ``self.gate`` call (a forward hook, so the tap is part of the exported graph);
in the int8 graph it is read after its own quantize / dequantize pair, i.e. the 8-bit value
the multiply by the map receives. SQNR = 10·log10(Σ g² / Σ (g − ĝ)²) in dB over the given
images: every 6 dB is one bit; a sigmoid gate held in 8 bits over [0, 1] cannot exceed
about 58 dB (uniform error of step 1/255 on values near 0.5).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

#: the fx targets of a quantize / dequantize pair in a pt2e-converted graph
_QUANTIZE = "quantize_per_tensor"
_DEQUANTIZE = "dequantize_per_tensor"


class _Tapped(nn.Module):
    """A graph form that also returns each gate, in model order (block, then gate)."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        from caprobe.attention.base import GraphAttention

        self.net = graph
        self.blocks = [(name, m) for name, m in graph.named_modules()
                       if isinstance(m, GraphAttention) and m.gates]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found: list[torch.Tensor] = []
        hooks = [m.gate.register_forward_hook(lambda _m, _a, out: found.append(out))
                 for _, m in self.blocks]
        try:
            y = self.net(x)
        finally:
            for hook in hooks:
                hook.remove()
        return (y, *found)

    def names(self) -> list[tuple[str, str]]:
        return [(block, gate) for block, m in self.blocks for gate in m.gates]


def _target_name(node: torch.fx.Node) -> str:
    return str(getattr(node.target, "__name__", node.target)).split(".")[0]


def _read_quantized(converted: torch.fx.GraphModule) -> list[bool]:
    """Point every gate output of ``converted`` at the dequantized value its consumer reads;
    per gate, whether it is quantized at all."""
    output = next(n for n in converted.graph.nodes if n.op == "output")
    values = list(output.args[0])
    quantized = []
    for i, node in enumerate(values[1:], 1):
        q = next((u for u in node.users if _target_name(u) == _QUANTIZE), None)
        dq = next((u for u in q.users if _target_name(u) == _DEQUANTIZE), None) if q else None
        quantized.append(dq is not None)
        if dq is not None:
            values[i] = dq
    output.args = (tuple(values),)
    converted.recompile()
    return quantized


def sqnr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """10·log10(Σ ref² / Σ (ref − other)²); inf when they are equal."""
    noise = float((reference.double() - other.double()).pow(2).sum())
    signal = float(reference.double().pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def gate_sqnr(model: nn.Module, calibration: list[torch.Tensor],
              inputs: list[torch.Tensor]) -> list[dict[str, Any]]:
    """``[{block, gate, sqnr_db, quantized}]`` for every gate of ``model`` (trained, any
    form: its graph form is quantised), calibrated on ``calibration`` and measured on
    ``inputs`` (batches of the calibration's shape)."""
    from caprobe.deployment import deploy
    from caprobe.runtimes import backend

    xnnpack = backend("executorch")  # one line naming the extra when it is missing
    tapped = _Tapped(deploy(model.eval(), target="graph")).eval()
    names = tapped.names()
    if not names:
        return []
    with torch.no_grad():
        converted = xnnpack.quantize(tapped, calibration[0], calibration)
        quantized = _read_quantized(converted)
        ref: list[list[torch.Tensor]] = [[] for _ in names]
        got: list[list[torch.Tensor]] = [[] for _ in names]
        for x in inputs:
            for store, outs in ((ref, tapped(x)), (got, converted(x))):
                for i, gate in enumerate(outs[1:]):
                    store[i].append(gate)
    return [{"block": block, "gate": gate, "quantized": q,
             "sqnr_db": sqnr_db(torch.cat(r), torch.cat(g))}
            for (block, gate), q, r, g in zip(names, quantized, ref, got, strict=True)]
