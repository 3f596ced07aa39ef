"""The fast training forms (caprobe.attention.functional) against the papers' equations
(caprobe.attention.reference): outputs and gradients, float64 gradcheck and float32 on real
block shapes, every spec, both memory formats, and a short training curve."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from caprobe import attention, build_model
from caprobe.attention import functional, reference

SPECS = ["se", "eca", "cbam", "ca", "ca_h", "ca_w", "ca:act=relu,gate=hsigmoid",
         "ca:act=silu", "se:reduction=4,act=relu,gate=hsigmoid", "cbam:kernel=3", "eca:kernel=5"]


def _module(spec: str, channels: int, dtype=torch.float32, seed: int = 0) -> torch.nn.Module:
    """A module in training mode with every parameter random (zero-initialised gate layers
    would hide the gates' gradients)."""
    torch.manual_seed(seed)
    module = attention.build(spec, channels).to(dtype).train()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)
    return module


def _grads(fn, module, x, grad):
    params = dict(module.named_parameters())
    out = fn(x)
    return out, torch.autograd.grad(out, [x, *params.values()], grad)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(spec, channels_last):
    """Batch 1 and 3, non-square maps: the hand-written backwards pass gradcheck with respect
    to the input and every parameter."""
    module = _module(spec, 12, torch.float64)
    names = [n for n, _ in module.named_parameters()]
    for shape in [(3, 12, 5, 7), (1, 12, 4, 3)]:
        x = torch.randn(shape, dtype=torch.float64)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        params = [p.detach().clone().requires_grad_() for p in module.parameters()]

        def fn(x, *ps):
            return functional_call(module, dict(zip(names, ps, strict=True)), (x,))
        assert torch.autograd.gradcheck(fn, (x, *params))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(4, 96, 32, 32), (4, 144, 16, 16), (2, 960, 7, 7),
                                   (1, 48, 20, 9), (3, 64, 1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_equals_autograd_through_the_paper_form(spec, shape, channels_last):
    module = _module(spec, shape[1])
    x = torch.rand(shape) * 6  # ReLU6 range, as after a MobileNet depthwise block
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn(shape)
    if channels_last:  # as a conv's backward hands it over
        grad = grad.contiguous(memory_format=torch.channels_last)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    out, grads = _grads(module, module, x, grad)
    fast_state = module.state_dict()
    module.load_state_dict(state)  # the reference updates the BN statistics again from here
    ref, ref_grads = _grads(lambda t: reference.forward(module, t), module, x, grad)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # float32 sums over up to 4·32·32 terms. A bias before a training-mode BN has a zero
    # gradient, computed as rounding noise of the size of the BN's own gradients: parameter
    # gradients are judged against a tenth of the largest one at least.
    floor = 0.1 * max(float(g.abs().max()) for g in ref_grads[1:])
    for i, (got, want) in enumerate(zip(grads, ref_grads, strict=True)):
        scale = max(float(want.abs().max()), 1.0, floor if i else 0.0)
        torch.testing.assert_close(got / scale, want / scale, atol=1e-4, rtol=1e-3)
    for name, value in module.state_dict().items():  # same running statistics
        torch.testing.assert_close(fast_state[name], value)
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last) or shape[2:] == (1, 1)


@pytest.mark.parametrize("spec", ["se", "cbam", "ca", "ca_w"])
def test_training_curve_equals_the_paper_form(spec):
    """Six SGD steps of a whole network: the same losses and weights through the fast forms
    as through the papers' equations, to float tolerance (float64: in float32 a short
    training amplifies 1e-7 rounding differences to 1e-2 within six steps)."""
    model = build_model("mobilenetv2", attn=spec, width=0.35, num_classes=5, profile="cifar",
                        seed=3).double().to(memory_format=torch.channels_last)
    twin = reference.reference_form(model)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 16, 16, generator=gen, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last), torch.randint(0, 5, (8,), generator=gen))
        for _ in range(6)]
    curves = []
    for net in (model, twin):
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for step, (x, y) in enumerate(batches):
            torch.manual_seed(step)  # the same dropout masks in both
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0] == pytest.approx(curves[1], rel=1e-7)
    assert curves[0][-1] != curves[0][0]  # it did train
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_gate_product_gradients_for_every_gate_shape():
    """Channel, row strip, column strip and spatial gates, one or two at a time, in NHWC
    broadcast shapes; the input gradient is the plain product rule."""
    n, c, h, w = 2, 5, 4, 3
    x = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
    shapes = [(n, 1, 1, c), (n, h, 1, c), (n, 1, w, c), (n, h, w, 1)]
    for i, first in enumerate(shapes):
        for second in [None, *shapes[i + 1:]]:
            g1 = torch.rand(first, dtype=torch.float64, requires_grad=True)
            gates = [g1] + ([torch.rand(second, dtype=torch.float64, requires_grad=True)]
                            if second else [])
            assert torch.autograd.gradcheck(functional.gate_product, (x, *gates))
            want = x.permute(0, 2, 3, 1)
            for g in gates:
                want = want * g
            torch.testing.assert_close(functional.gate_product(x, *gates),
                                       want.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="one or two gates"):
        functional.gate_product(x)


def test_max_pooling_routes_the_gradient_to_the_argmax_only():
    x = torch.zeros(1, 2, 3, 3, requires_grad=True)
    with torch.no_grad():
        x[0, 0, 1, 2] = 5.0
        x[0, 1, 0, 0] = 7.0
    functional.channel_max(x).sum().backward()
    expected = torch.zeros(1, 2, 3, 3)
    expected[0, 0, 1, 2] = expected[0, 1, 0, 0] = 1.0
    torch.testing.assert_close(x.grad, expected)
    y = torch.tensor([[[[1.0]], [[4.0]], [[2.0]]]], requires_grad=True)  # 1×3×1×1
    pooled = functional.spatial_max_mean(y)
    torch.testing.assert_close(pooled.flatten(), torch.tensor([4.0, 7.0 / 3]))
    (pooled[:, 0].sum() + 3 * pooled[:, 1].sum()).backward()
    torch.testing.assert_close(y.grad.flatten(), torch.tensor([1.0, 2.0, 1.0]))


@pytest.mark.parametrize("rows,cols", [(True, True), (True, False), (False, True)])
def test_strip_means(rows, cols):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    z = functional.strip_means(x, rows, cols)
    # strip-major rows: every sample's H strip (2 x 4 rows), then every sample's W strip (2 x 5)
    parts = ([x.mean(3).transpose(1, 2).reshape(8, 3)] if rows else []) + (
        [x.mean(2).transpose(1, 2).reshape(10, 3)] if cols else [])
    torch.testing.assert_close(z, torch.cat(parts))
    assert torch.autograd.gradcheck(lambda t: functional.strip_means(t, rows, cols), (x,))


def test_compiled_training_step_equals_eager():
    """torch.compile traces the autograd functions (forward and backward)."""
    module = _module("cbam", 16)
    x = torch.randn(2, 16, 6, 5, requires_grad=True)
    eager = torch.autograd.grad(module(x).square().sum(), x)[0]
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    got = torch.autograd.grad(compiled(x).square().sum(), x)[0]
    torch.testing.assert_close(got, eager)
