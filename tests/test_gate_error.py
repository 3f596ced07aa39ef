"""Per-gate int8 error (caprobe.runtimes.gate_error): the taps are exactly the trainable
modules' gates, in their names' order; SQNR is the textbook formula; the int8 gates are read
after their own quantize / dequantize pair (XNNPACK's pt2e quantizer)."""

from __future__ import annotations

import math

import pytest
import torch
from test_deploy import _randomize
from test_runtimes import _available
from torch import nn

from caprobe import attention
from caprobe.deployment import deploy
from caprobe.runtimes.gate_error import _Tapped, gate_sqnr, sqnr_db


class _Net(nn.Module):
    """A stem conv, then one attention module: the smallest model with a gate to quantise."""

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.attn = attention.build(spec, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.stem(x))


SPECS = ["ca", "ca_h", "ca_w", "se", "cbam", "eca"]


def test_sqnr_is_signal_over_noise_in_decibels():
    ref = torch.ones(100)
    assert sqnr_db(ref, ref * 1.01) == pytest.approx(40.0)  # noise 1e-4 of the signal
    assert sqnr_db(ref, ref + 0.1) == pytest.approx(20.0)
    assert sqnr_db(ref, ref.clone()) == math.inf


@pytest.mark.parametrize("spec", SPECS)
def test_the_taps_are_the_trainable_modules_gates_in_order(spec):
    net = _randomize(_Net(spec)).eval()
    x = torch.randn(2, 3, 9, 13)
    tapped = _Tapped(deploy(net, target="graph")).eval()
    with torch.no_grad():
        outs = tapped(x)
        expected = net.attn.gates(net.stem(x))
        torch.testing.assert_close(outs[0], net(x), rtol=1e-5, atol=1e-6)
    assert tapped.names() == [("attn", name) for name in expected]
    assert len(outs) == 1 + len(expected)
    for got, want in zip(outs[1:], expected.values(), strict=True):
        # (ECA lays its channel gate along W: N×1×1×C holds the same values as N×C×1×1)
        torch.testing.assert_close(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not _available("executorch"), reason="the executorch extra is not installed")
@pytest.mark.parametrize("spec", ["ca", "cbam"])
def test_int8_gates_are_read_after_their_quantisation(spec):
    net = _randomize(_Net(spec)).eval()
    gen = torch.Generator().manual_seed(0)
    calibration = [torch.randn(4, 3, 12, 12, generator=gen) for _ in range(2)]
    rows = gate_sqnr(net, calibration, calibration)
    assert [(r["block"], r["gate"]) for r in rows] == \
        [("attn", g) for g in net.attn.gates(torch.zeros(1, 32, 4, 4))]
    for r in rows:
        assert r["quantized"] is True
        # 8 bits over a gate's range: a finite error, well under 1 % of the signal
        assert 20.0 < r["sqnr_db"] < 60.0, r
