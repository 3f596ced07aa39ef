"""caprobe's native attention kernels (caprobe/attention/native.py, csrc/): each kernel
against its formula, CA's and CBAM's native training paths against the eager functions
(outputs, every gradient, BN's running statistics), and the settings."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from caprobe.attention import build, native
from caprobe.attention.functional import nhwc
from caprobe.errors import CaprobeError

#: N, H, W, C: batch 1, one row, one column, non-square, a channel count off the vector width
SHAPES = [(3, 5, 7, 19), (1, 4, 4, 8), (2, 1, 6, 24), (2, 6, 1, 24)]
SPECS = ["ca", "ca_h", "ca_w", "ca:act=relu,gate=hsigmoid", "ca:act=silu,reduction=8"]


@pytest.fixture(scope="module")
def kernels():
    built = native.attention_kernels()
    assert built is not None, "the native kernels did not build (g++, ninja and Python's " \
                              "headers are needed)"
    return built


@pytest.fixture
def fresh_kernels():
    """Forget the loaded kernels around a test that changes how they load."""
    native.attention_kernels.cache_clear()
    yield
    native.attention_kernels.cache_clear()


def _randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_equal_their_formulas(kernels, shape, dtype):
    n, h, w, c = shape
    x, dy = _randn(*shape, dtype=dtype, seed=1), _randn(*shape, dtype=dtype, seed=2)
    gh, eh = _randn(n, h, c, dtype=dtype, seed=3), _randn(n, h, c, dtype=dtype, seed=4)
    gw, ew = _randn(n, w, c, dtype=dtype, seed=5), _randn(n, w, c, dtype=dtype, seed=6)
    means_h, means_w = x.mean(2).reshape(n * h, c), x.mean(1).reshape(n * w, c)
    torch.testing.assert_close(kernels.strip_means(x, True, True), torch.cat([means_h, means_w]))
    torch.testing.assert_close(kernels.strip_means(x, True, False), means_h)
    torch.testing.assert_close(kernels.strip_means(x, False, True), means_w)

    out = torch.empty_like(x)
    kernels.combine_into(out, x, gh, gw, eh, ew, 0.5, 0.25)
    torch.testing.assert_close(out, x * gh[:, :, None] * gw[:, None] + 0.5 * eh[:, :, None]
                               + 0.25 * ew[:, None])
    kernels.combine_into(out, x, gh, None, None, None, 1.0, 1.0)
    torch.testing.assert_close(out, x * gh[:, :, None])
    kernels.combine_into(out, x, None, gw, None, ew, 1.0, 2.0)
    torch.testing.assert_close(out, x * gw[:, None] + 2 * ew[:, None])

    p = dy * x  # the gates' gradients come as one tensor of rows, like the gates
    both = torch.cat([(p * gw[:, None]).sum(2).reshape(n * h, c),
                      (p * gh[:, :, None]).sum(1).reshape(n * w, c)])
    (grads,) = kernels.gate_grads(dy, x, gh, gw, False)
    torch.testing.assert_close(grads, both)
    grads, means = kernels.gate_grads(dy, x, gh, gw, True)  # the strip means, bit for bit
    assert torch.equal(grads, kernels.gate_grads(dy, x, gh, gw, False)[0])
    assert torch.equal(means, kernels.strip_means(x, True, True))
    grads, means = kernels.gate_grads(dy, x, gh, None, True)
    torch.testing.assert_close(grads, p.sum(2).reshape(n * h, c))
    assert torch.equal(means, kernels.strip_means(x, True, False))
    grads, means = kernels.gate_grads(dy, x, None, gw, True)
    torch.testing.assert_close(grads, p.sum(1).reshape(n * w, c))
    assert torch.equal(means, kernels.strip_means(x, False, True))


def test_kernels_do_not_depend_on_the_thread_count(kernels):
    """Each sample's sums run on one thread in a fixed order: bit-identical at 1 and 2."""
    n, h, w, c = 4, 8, 8, 40
    x, dy = _randn(n, h, w, c, dtype=torch.float32), _randn(n, h, w, c, dtype=torch.float32,
                                                            seed=1)
    gh, gw = torch.rand(n, h, c), torch.rand(n, w, c)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append((kernels.strip_means(x, True, True),
                            *kernels.gate_grads(dy, x, gh, gw, True)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_native_gates_do_not_depend_on_the_thread_count(kernels):
    """Rows run in fixed blocks whose partial sums are added in order: bit-identical."""
    module = build("ca", 40).train()
    z = _randn(600, 40, dtype=torch.float32).requires_grad_()
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            module.zero_grad(set_to_none=True)
            z.grad = None
            gates = module._strip_gates(z, 30, 10, 10)
            gates.backward(torch.ones_like(gates))
            results.append([gates.detach(), z.grad, *(p.grad for p in module.parameters())])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


def test_kernels_reject_what_they_cannot_read(kernels):
    x = torch.zeros(2, 4, 5, 8)
    with pytest.raises(RuntimeError, match="gh must be a contiguous strip of shape"):
        kernels.combine_into(torch.empty_like(x), x, torch.zeros(2, 5, 8), None, None, None,
                             1.0, 1.0)
    with pytest.raises(RuntimeError, match="x must be a contiguous NHWC map"):
        kernels.strip_means(x.transpose(1, 2), True, True)
    with pytest.raises(RuntimeError, match="needs a gate"):
        kernels.combine_into(torch.empty_like(x), x, None, None, None, None, 1.0, 1.0)


def _train_step(module, x, grad):
    out = module(x)
    out.backward(grad)
    return out


def _assert_same_step(out, out_eager, x, x_eager, module, eager, tol=1e-12):
    """A native training step against the eager one: the output, channels-last output and
    input gradient, the input's and every parameter's gradient (to ``tol``), BN's statistics."""
    torch.testing.assert_close(out, out_eager, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.grad, x_eager.grad, rtol=tol, atol=tol)
    for p, q in zip(module.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol)
    for b, b_eager in zip(module.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(b, b_eager, rtol=1e-12, atol=1e-12)


#: N, C, H, W; not ReLU on one row: that row's strip mean is the mean of the column strips,
#: so after F1 and BN it is 0 up to rounding (1e-16), where ReLU has no single derivative
CASES = [(spec, shape) for spec in SPECS for shape in [(2, 24, 7, 5), (1, 16, 3, 6), (2, 16, 1, 6)]
         if not ("relu" in spec and shape[2] == 1)]


@pytest.mark.parametrize(("spec", "shape"), CASES)
def test_native_training_path_equals_the_eager_functions(kernels, monkeypatch, spec, shape):
    """Same output, input gradient, parameter gradients and BN statistics as the eager
    functions, in float64, and the native path is the one taken."""
    module = build(spec, shape[1]).double().train()
    eager = copy.deepcopy(module)
    x = _randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_eager = x.detach().clone().requires_grad_()
    grad = _randn(*shape, seed=7).contiguous(memory_format=torch.channels_last)

    out = _train_step(module, x, grad)
    assert type(out.grad_fn).__name__ == "_NativeStripProductBackward"
    monkeypatch.setattr(native, "attention_kernels", lambda: None)
    out_eager = _train_step(eager, x_eager, grad)
    assert type(out_eager.grad_fn).__name__ != "_NativeStripProductBackward"

    # PyTorch's hardsigmoid backward multiplies by 1/6 rounded to float32 in every dtype
    # (0.1666666716...): 3e-8 apart from the native gates' exact 1/6
    tol = 1e-7 if "hsigmoid" in spec else 1e-12
    _assert_same_step(out, out_eager, x, x_eager, module, eager, tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_relu6_kernels_equal_clamp_and_its_backward(kernels, shape, dtype):
    """strip_means with clamp6 clamps the map in place (NaN kept, as torch.clamp) and pools the
    clamped map; combine_into with relu6_out is hardtanh_backward of the unmasked sum."""
    n, h, w, c = shape
    x = _randn(*shape, dtype=dtype, seed=1) * 5
    x.view(-1)[::11] = 6.0
    x.view(-1)[::13] = 0.0
    x.view(-1)[5] = float("nan")
    clamped = x.clamp(0, 6)
    fused = x.clone()
    exact = {"rtol": 0, "atol": 0, "equal_nan": True}
    torch.testing.assert_close(kernels.strip_means(fused, True, True, True),
                               kernels.strip_means(clamped, True, True), **exact)
    torch.testing.assert_close(fused, clamped, **exact)
    dy, gh, gw = (_randn(*s, dtype=dtype, seed=k) for k, s in ((2, shape), (3, (n, h, c)),
                                                                (5, (n, w, c))))
    plain, masked = torch.empty_like(x), torch.empty_like(x)
    kernels.combine_into(plain, dy, gh, gw, gh, gw, 0.5, 0.25)
    kernels.combine_into(masked, dy, gh, gw, gh, gw, 0.5, 0.25, clamped)
    assert torch.equal(masked, torch.ops.aten.hardtanh_backward(plain, clamped, 0.0, 6.0))


@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenext"])
@pytest.mark.parametrize("attn", ["ca", "ca_h", "ca_w"])
def test_a_backbone_with_the_relu6_fused_into_ca_trains_bit_identically(kernels, backbone,
                                                                         attn):
    """The block's ReLU6 run inside CA's native passes: the same loss, every gradient and BN
    statistic bit for bit as the ReLU6 module and then CA, and the ReLU6 module not called
    (the projection conv run apart in both, as a module)."""
    from caprobe.attention import coord
    from caprobe.attention.base import AttentionModule
    from caprobe.attention.coord import CoordAttention

    model, apart, x = _varied_backbones(backbone, attn, torch.float32)
    acts_run = []
    for ca in model.modules():
        if isinstance(ca, CoordAttention):
            owner = next(m for m in model.modules() if any(c is ca for c in m.children()))
            unit = getattr(owner, "dw", None) or owner.dw1
            unit[2].register_forward_hook(lambda *_: acts_run.append(1))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coord, "_fusable_projection", lambda conv, x: False)
        loss = model(x).square().sum()
        loss.backward()
    assert acts_run == []  # fused: the ReLU6 before each CA ran inside CA
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CoordAttention, "forward_after", AttentionModule.forward_after)
        loss_apart = apart(x).square().sum()
        loss_apart.backward()
    assert torch.equal(loss, loss_apart)
    for p, q in zip(model.parameters(), apart.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    for b, c in zip(model.buffers(), apart.buffers(), strict=True):
        assert torch.equal(b, c)


def _varied_backbones(backbone: str, attn: str, dtype: torch.dtype):
    """A channels-last training ``backbone`` (width 0.25, CIFAR profile) with varied weights
    (the models start the gates constant) and no dropout, a copy, and a 4×3×32×32 input."""
    from caprobe.models import build_model

    model = build_model(backbone, attn=attn, width=0.25, num_classes=10, profile="cifar",
                        seed=0).to(dtype=dtype, memory_format=torch.channels_last).train()
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(_randn(*p.shape, dtype=p.dtype, seed=i) * 0.05)
    model.classifier[0].p = 0.0  # no dropout draws to pair
    x = _randn(4, 3, 32, 32, dtype=dtype, seed=9).contiguous(
        memory_format=torch.channels_last) * 3
    return model, copy.deepcopy(model), x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenext"])
@pytest.mark.parametrize("attn", ["ca", "ca_h", "ca_w", "ca:act=relu"])
def test_a_backbone_with_the_projection_fused_into_ca_trains_as_with_the_conv_apart(
        kernels, backbone, attn, dtype):
    """The block's 1×1 projection conv applied inside CA's product (the product not saved):
    the same loss, every gradient and BN statistic as the conv module after CA (float64 to
    1e-10, float32 to GEMM rounding), and the conv module never called in training."""
    from caprobe.attention import coord

    model, apart, x = _varied_backbones(backbone, attn, dtype)
    convs_run = []
    fused = 0
    for block in model.modules():
        if isinstance(getattr(block, "attn", None), coord.CoordAttention):
            project = getattr(block, "project", None) or block.reduce
            project[0].register_forward_hook(lambda *_: convs_run.append(1))
            fused += 1
    assert fused > 0
    loss = model(x).square().sum()
    loss.backward()
    assert convs_run == []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(coord, "_fusable_projection", lambda conv, x: False)
        loss_apart = apart(x).square().sum()
        loss_apart.backward()
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else \
        {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(loss, loss_apart, **tol)
    for (name, p), q in zip(model.named_parameters(), apart.parameters(), strict=True):
        scale = q.grad.abs().max().item()  # a BN bias before BN is 0 up to rounding
        torch.testing.assert_close(p.grad, q.grad, rtol=tol["rtol"],
                                   atol=tol["atol"] * max(scale, 1e-3), msg=name)
    for b, c in zip(model.buffers(), apart.buffers(), strict=True):
        torch.testing.assert_close(b, c, **tol)


@pytest.mark.parametrize("spec", ["ca", "ca_h", "ca_w"])
@pytest.mark.parametrize("shape", [(2, 8, 3, 5), (1, 8, 4, 4)])
def test_the_fused_projection_gradchecks(kernels, spec, shape):
    """CA's product with a 1×1 conv applied (:class:`_NativeStripProduct` given a weight):
    gradcheck in float64 for the input, the conv weight and every CA parameter."""
    from types import SimpleNamespace

    ca = build(spec, shape[1]).double().train()
    with torch.no_grad():
        for i, p in enumerate(ca.parameters()):
            p.add_(_randn(*p.shape, seed=i) * 0.3)
    params = list(ca.parameters())
    names = [name for name, _ in ca.named_parameters()]
    x = _randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = _randn(5, shape[1], 1, 1, seed=11).requires_grad_()

    def fused(x, weight, *values):
        out = torch.func.functional_call(ca, dict(zip(names, values, strict=True)), (x,),
                                         {"project": SimpleNamespace(weight=weight)})
        assert type(out.grad_fn).__name__ == "_NativeStripProductBackward"
        return out

    assert torch.autograd.gradcheck(fused, (x, weight, *params))
    torch.testing.assert_close(fused(x, weight, *params),
                               torch.nn.functional.conv2d(ca(x), weight), rtol=1e-12, atol=1e-12)


def test_the_relu6_runs_apart_where_the_kernels_cannot(kernels):
    """An NCHW map or no gradient: the ReLU6 module runs, then CA."""
    from caprobe.models.common import ReLU6

    ca = build("ca", 16).train()
    act = ReLU6(inplace=True)
    runs = []
    act.register_forward_hook(lambda *_: runs.append(1))
    u = _randn(2, 16, 5, 6, dtype=torch.float32) * 4
    expected = ca(u.clamp(0, 6))
    for leaf in (u.clone().requires_grad_(),  # NCHW
                 u.clone().contiguous(memory_format=torch.channels_last)):  # no gradient
        torch.testing.assert_close(ca.forward_after(act, leaf * 1.0), expected)
    assert runs == [1, 1]


GATE_SPECS = ["ca", "ca_h", "ca_w", "ca:act=relu", "ca:act=relu6,gate=hsigmoid", "ca:act=silu"]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("spec", GATE_SPECS)
def test_native_gates_equal_the_modules_operators(kernels, monkeypatch, spec, momentum):
    """F1, BN (batch statistics, running statistics updated alike, momentum None: the
    cumulative average), the activation, the gate convs and the gate, in one native call
    each way: the same gates, strip gradient, parameter gradients and statistics."""
    from caprobe.attention import coord

    module = build(spec, 40).double().train()
    for p in module.parameters():  # away from the zero-gate initialisation
        torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(3))
    module.bn1.momentum = momentum
    eager = copy.deepcopy(module)
    n, h, w = 3, 5, 7
    count = n * h * (module.conv_h is not None) + n * w * (module.conv_w is not None)
    z = _randn(count, 40).requires_grad_()
    z_eager = z.detach().clone().requires_grad_()
    grad = _randn(count, 40, seed=9)
    for _ in range(2):  # twice: the running statistics' second update
        gates = module._strip_gates(z, n, h, w)
        assert type(gates.grad_fn).__name__ == "_NativeCAGatesBackward"
        gates.backward(grad)
    monkeypatch.setattr(coord, "native_ca_gates", lambda *args: None)
    for _ in range(2):
        gates_eager = eager._strip_gates(z_eager, n, h, w)
        gates_eager.backward(grad)
    tol = 1e-7 if "hsigmoid" in spec else 1e-12  # PyTorch's float32 1/6 (see above)
    torch.testing.assert_close(gates, gates_eager, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z.grad, z_eager.grad, rtol=tol, atol=tol)
    for p, q in zip(module.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol)
    for b, b_eager in zip(module.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(b, b_eager, rtol=1e-12, atol=1e-12)


def test_native_gates_apply_to_training_batch_statistics_only(kernels):
    from caprobe.attention.functional import native_ca_gates

    module = build("ca", 8).train()
    parts = (module.conv1, module.bn1, module.act, module.conv_h, module.conv_w, module.gate)
    assert native_ca_gates(torch.randn(6, 8), 3, *parts) is not None
    assert native_ca_gates(torch.randn(1, 8), 1, *parts) is None  # one position: running stats
    module.eval()
    assert native_ca_gates(torch.randn(6, 8), 3, *parts) is None


@pytest.mark.parametrize("spec", ["ca", "ca_w", "cbam", "se", "eca"])
def test_native_backward_runs_twice_on_a_retained_graph(kernels, spec):
    module, _ = _module_pair(spec, 16)
    x = _randn(2, 16, 6, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = module(x)
    grad = torch.ones_like(out)
    out.backward(grad, retain_graph=True)
    first = [x.grad.clone(), *(p.grad.clone() for p in module.parameters())]
    x.grad = None
    module.zero_grad(set_to_none=True)
    out.backward(grad)
    for a, b in zip(first, [x.grad, *(p.grad for p in module.parameters())], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_native_path_without_an_input_gradient(kernels):
    """A map that takes no gradient (a frozen stem): the parameters still get theirs."""
    module = build("ca", 16).double().train()
    eager = copy.deepcopy(module)
    x = _randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    module(x).sum().backward()
    from caprobe.attention.functional import gate_product

    gate_product(x, *eager._gates_nhwc(x)).sum().backward()
    for p, q in zip(module.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)


def test_maps_the_kernels_cannot_read_take_the_eager_path(kernels):
    module = build("ca", 16).train()
    for x in (torch.randn(2, 16, 5, 5),  # NCHW
              torch.randn(2, 16, 5, 5, dtype=torch.bfloat16).contiguous(
                  memory_format=torch.channels_last)):
        out = module.to(x.dtype)(x.requires_grad_())
        assert type(out.grad_fn).__name__ == "_GateProductBackward"
    assert nhwc(torch.randn(1, 2, 3, 4)).shape == (1, 3, 4, 2)


def test_eager_setting_leaves_the_kernels_unused(fresh_kernels, monkeypatch):
    monkeypatch.setenv("CAPROBE_KERNELS", "eager")
    assert native.attention_kernels() is None
    assert native.kernels_state() == "eager"
    module = build("ca", 8).train()
    out = module(torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last))
    assert type(out.grad_fn).__name__ == "_GateProductBackward"


def test_prepared_kernels_are_recorded_in_the_environment(kernels):
    from caprobe.measure.environment import collect_env

    assert native.prepare("cpu") == "native"
    assert collect_env()["kernels"] == "native"


def test_a_failed_build_warns_once_and_trains_eagerly(fresh_kernels, monkeypatch):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: g++: not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match=r"did not build \(Error building extension: g\+\+: "
                                            r"not found\); training runs the eager functions"):
        assert native.attention_kernels() is None
    assert native.attention_kernels() is None  # cached: no second warning, no second try
    assert native.kernels_state() == "eager"


def test_unknown_kernel_setting_is_an_error(monkeypatch):
    from caprobe.runtime import kernel_setting

    monkeypatch.setenv("CAPROBE_KERNELS", "fast")
    with pytest.raises(CaprobeError, match="CAPROBE_KERNELS='fast' is not a kernel choice"):
        kernel_setting()


def test_unknown_kernel_setting_stops_every_command(tmp_path):
    args = ["compare", "--attn", "ca", "--seeds", "1", "--epochs", "1", "--out",
            str(tmp_path / "cmp")]
    code = f"import sys; from caprobe.cli import main; sys.argv = ['caprobe', *{args!r}]; main()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "CAPROBE_KERNELS": "Native2"})
    assert out.returncode == 2, out.stderr
    assert out.stderr == ("caprobe: error: CAPROBE_KERNELS='Native2' is not a kernel choice; "
                          "set it to 'native' (the default) or 'eager', or unset it\n")
    assert not (tmp_path / "cmp").exists()


# --- CBAM ---------------------------------------------------------------------------------

def _cbam_inputs(shape, dtype, ties=False):
    n, h, w, c = shape
    x = _randn(*shape, dtype=dtype, seed=11)
    if ties:  # a ReLU6 map: zeros and sixes tie in every max
        x = (3 * x).clamp(0, 6)
    gc, gs = torch.rand(n, c, dtype=dtype), torch.rand(n, 1, h, w, dtype=dtype)
    return x, gc, gs


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES + [(2, 1, 1, 33)])
def test_cbam_kernels_equal_their_formulas(kernels, shape, dtype, ties):
    n, h, w, c = shape
    x, gc, gs = _cbam_inputs(shape, dtype, ties)
    dy = _randn(*shape, dtype=dtype, seed=12)
    flat = x.reshape(n, h * w, c)
    mean, peak, index_c = kernels.cbam_channel_pool(x)
    values, first = flat.max(1)
    torch.testing.assert_close(mean, flat.mean(1))
    assert torch.equal(peak, values) and torch.equal(index_c, first)

    y1 = x * gc[:, None, None]
    s, index_s = kernels.cbam_spatial_pool(x, gc)
    values, first = y1.max(3)
    assert s.shape == (n, 2, h, w) and s.is_contiguous()  # planar: the max, then the mean
    assert torch.equal(s[:, 0], values) and torch.equal(index_s, first)
    torch.testing.assert_close(s[:, 1], y1.mean(3))

    gs_nhwc = gs[:, 0, :, :, None]
    assert torch.equal(kernels.cbam_product(x, gc, gs), y1 * gs_nhwc)
    dgs, dgc = kernels.cbam_product_grads(dy, x, gc, gs)
    torch.testing.assert_close(dgs, (dy * y1).sum(3)[:, None])
    torch.testing.assert_close(dgc, (dy * x * gs_nhwc).sum((1, 2)))

    ds = _randn(n, 2, h, w, dtype=dtype, seed=13)
    ds_max, ds_mean = ds[:, 0, :, :, None], ds[:, 1, :, :, None]
    at_max = torch.zeros_like(x).scatter_(3, index_s[..., None], 1.0)  # one-hot arg-max channel
    dy1 = dy * gs_nhwc + ds_mean / c + at_max * ds_max
    torch.testing.assert_close(kernels.cbam_spatial_pool_grad(x, ds, index_s),
                               ((ds_mean / c + at_max * ds_max) * x).sum((1, 2)))
    dmean, dmax = _randn(n, c, dtype=dtype, seed=14), _randn(n, c, dtype=dtype, seed=15)
    dx = dy1 * gc[:, None, None] + dmean[:, None, None] / (h * w)
    dx = dx.reshape(n, h * w, c).scatter_add_(1, index_c[:, None], dmax[:, None]).view(n, h, w, c)
    torch.testing.assert_close(kernels.cbam_input_grad(dy, gs, gc, ds, index_s, dmean, dmax,
                                                       index_c), dx)


def test_cbam_kernels_do_not_depend_on_the_thread_count(kernels):
    n, h, w, c = 5, 6, 7, 40
    x, gc, gs = _cbam_inputs((n, h, w, c), torch.float32)
    dy, ds = _randn(n, h, w, c, dtype=torch.float32, seed=1), torch.rand(n, 2, h, w)
    dmean, dmax = torch.rand(n, c), torch.rand(n, c)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            pooled = kernels.cbam_channel_pool(x)
            s, index_s = kernels.cbam_spatial_pool(x, gc)
            results.append([*pooled, s, index_s, kernels.cbam_product(x, gc, gs),
                            *kernels.cbam_product_grads(dy, x, gc, gs),
                            kernels.cbam_spatial_pool_grad(x, ds, index_s),
                            kernels.cbam_input_grad(dy, gs, gc, ds, index_s, dmean, dmax,
                                                    pooled[2])])
    finally:
        torch.set_num_threads(threads)
    for one, other in zip(results[0], results[1], strict=True):
        assert torch.equal(one, other)
    for one, other in zip(results[0], results[2], strict=True):
        assert torch.equal(one, other)


def test_cbam_kernels_reject_what_they_cannot_read(kernels):
    x, gc, gs = _cbam_inputs((2, 4, 5, 8), torch.float32)
    with pytest.raises(RuntimeError, match=r"gc must be a contiguous Float tensor of shape "
                                           r"\[2, 8\]"):
        kernels.cbam_spatial_pool(x, gc[:, :4])
    with pytest.raises(RuntimeError, match="gs must be a contiguous Float tensor"):
        kernels.cbam_product(x, gc, gs.double())
    with pytest.raises(RuntimeError, match="x must be a contiguous NHWC map"):
        kernels.cbam_channel_pool(x.transpose(1, 2))
    with pytest.raises(RuntimeError, match="index_s must be a contiguous int64 tensor"):
        kernels.cbam_spatial_pool_grad(x, torch.zeros(2, 2, 4, 5), torch.zeros(2, 4, 5))


CBAM_SPECS = ["cbam", "cbam:gate=hsigmoid", "cbam:act=silu,kernel=3,reduction=4"]
#: N, C, H, W: non-square, batch 1, one row, a 1×1 map at batch 1 (BN on running statistics)
CBAM_CASES = [(spec, shape) for spec in CBAM_SPECS
              for shape in [(3, 24, 7, 5), (1, 16, 3, 6), (2, 16, 1, 6), (1, 8, 1, 1)]]


def _module_pair(spec, channels):
    module = build(spec, channels).double().train()
    for p in module.parameters():  # away from the zero-gate initialisation
        torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(3))
    return module, copy.deepcopy(module)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("spec", "shape"), CBAM_CASES)
def test_native_cbam_equals_the_eager_functions(kernels, monkeypatch, spec, shape, ties):
    """Same output, input gradient, parameter gradients and BN statistics as the eager
    functions in float64, over two steps, ties (a ReLU6 map) included, and the native path is
    the one taken."""
    module, eager = _module_pair(spec, shape[1])
    x = _randn(*shape)
    if ties:
        x = (3 * x).clamp(0, 6)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x_eager = x.detach().clone().requires_grad_()
    grad = _randn(*shape, seed=7).contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        out = _train_step(module, x, grad)
        assert type(out.grad_fn).__name__ == "_NativeCBAMProductBackward"
        one_position = shape[0] * shape[2] * shape[3] == 1  # BN on running statistics
        assert (_node(out.grad_fn, "_NativeSpatialGateBackward") is None) == one_position
    monkeypatch.setattr(native, "attention_kernels", lambda: None)
    for _ in range(2):
        out_eager = _train_step(eager, x_eager, grad)
        assert type(out_eager.grad_fn).__name__ == "_GateProductBackward"
    tol = 1e-7 if "hsigmoid" in spec else 1e-12  # PyTorch's float32 1/6 (see above)
    _assert_same_step(out, out_eager, x, x_eager, module, eager, tol)


def test_native_cbam_gradcheck(kernels):
    """The input's gradient against finite differences, in eval mode (BN on running
    statistics: gradcheck's repeated forwards must see one function)."""
    module, _ = _module_pair("cbam", 6)
    module.eval()
    x = _randn(2, 6, 3, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert type(module(x).grad_fn).__name__ == "_NativeCBAMProductBackward"
    assert torch.autograd.gradcheck(module, (x,))


def test_native_cbam_without_an_input_gradient(kernels, monkeypatch):
    """A map that takes no gradient: the parameters still get theirs; and evaluation (no
    gradient at all) gives the eager output."""
    module, eager = _module_pair("cbam", 16)
    x = _randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    module(x).sum().backward()
    monkeypatch.setattr(native, "attention_kernels", lambda: None)
    eager(x).sum().backward()
    for p, q in zip(module.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)
    module.eval(), eager.eval()
    with torch.no_grad():
        expected = eager(x)
        monkeypatch.undo()
        torch.testing.assert_close(module(x), expected, rtol=1e-12, atol=1e-12)


def _node(fn, name):
    """The first autograd node called ``name`` upstream of ``fn``."""
    if fn is None or type(fn).__name__ == name:
        return fn
    for upstream, _ in fn.next_functions:
        found = _node(upstream, name)
        if found is not None:
            return found
    return None


def test_native_gates_keep_the_strips_only_off_the_native_map_path(kernels):
    """On the native map path the gates' backward takes the strip means from the product's
    backward (recomputed in its pass over the map) instead of keeping them; an NCHW map
    (eager map functions, native gates) keeps them. Same gradients either way."""
    grads = []
    built = build("ca", 16).double().train()
    for fmt in (torch.channels_last, torch.contiguous_format):
        module = copy.deepcopy(built)
        x = _randn(2, 16, 5, 3).contiguous(memory_format=fmt).requires_grad_()
        out = module(x)
        saved = _node(out.grad_fn, "_NativeCAGatesBackward").saved_tensors
        assert (saved[1] is None) == (fmt == torch.channels_last)
        out.backward(_randn(2, 16, 5, 3, seed=4))
        grads.append([x.grad, *(p.grad for p in module.parameters())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --- channel gates (SE, ECA) --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_channel_gate_kernels_equal_their_formulas(kernels, shape, dtype):
    n, h, w, c = shape
    x, dy = _randn(*shape, dtype=dtype, seed=21), _randn(*shape, dtype=dtype, seed=22)
    gc, dmean = torch.rand(n, c, dtype=dtype), _randn(n, c, dtype=dtype, seed=23)
    torch.testing.assert_close(kernels.channel_gate_grad(dy, x), (dy * x).sum((1, 2)))
    torch.testing.assert_close(kernels.channel_input_grad(dy, gc, dmean),
                               dy * gc[:, None, None] + dmean[:, None, None] / (h * w))
    with pytest.raises(RuntimeError, match="dmean must be a contiguous"):
        kernels.channel_input_grad(dy, gc, dmean[:, :1])


def test_channel_gate_kernels_do_not_depend_on_the_thread_count(kernels):
    x, dy = _randn(5, 6, 7, 40, dtype=torch.float32), _randn(5, 6, 7, 40, dtype=torch.float32,
                                                             seed=1)
    gc, dmean = torch.rand(5, 40), torch.rand(5, 40)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append([kernels.channel_gate_grad(dy, x),
                            kernels.channel_input_grad(dy, gc, dmean)])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


CHANNEL_CASES = [(spec, shape) for spec in ["se", "se:act=relu,gate=hsigmoid,reduction=4", "eca",
                                            "eca:kernel=5"]
                 for shape in [(3, 24, 7, 5), (1, 16, 3, 6), (2, 16, 1, 6), (1, 8, 1, 1)]]


@pytest.mark.parametrize(("spec", "shape"), CHANNEL_CASES)
def test_native_channel_gates_equal_the_eager_functions(kernels, monkeypatch, spec, shape):
    module, eager = _module_pair(spec, shape[1])  # random gate weights, a deep copy
    x = _randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_eager = x.detach().clone().requires_grad_()
    grad = _randn(*shape, seed=7).contiguous(memory_format=torch.channels_last)
    out = _train_step(module, x, grad)
    assert type(out.grad_fn).__name__ == "_NativeChannelProductBackward"
    monkeypatch.setattr(native, "attention_kernels", lambda: None)
    out_eager = _train_step(eager, x_eager, grad)
    assert type(out_eager.grad_fn).__name__ == "_GateProductBackward"
    _assert_same_step(out, out_eager, x, x_eager, module, eager)


@pytest.mark.parametrize("spec", ["se", "eca"])
def test_native_channel_gate_gradcheck_and_no_input_gradient(kernels, spec):
    module, eager = _module_pair(spec, 6)
    x = _randn(2, 6, 3, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(module, (x,))
    frozen = x.detach()
    module(frozen).sum().backward()  # a map that takes no gradient: the weights get theirs
    from caprobe.attention.functional import channel_mean, gate_product

    gate_product(frozen, eager._channel_gate(channel_mean(frozen))[:, None, None]).sum().backward()
    for p, q in zip(module.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)


def test_a_build_is_announced_when_the_library_is_missing_or_older_than_its_sources(
        fresh_kernels, monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: tmp_path)
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: "loaded")
    name = f"caprobe_attention_kernels_{torch.backends.cpu.get_cpu_capability().lower()}"
    newest = max(path.stat().st_mtime for path in native._CSRC.iterdir())
    library = tmp_path / f"{name}.so"
    for exists, mtime, announced in ((False, None, True), (True, newest - 10, True),
                                     (True, newest + 10, False)):
        if exists:
            library.write_bytes(b"")
            os.utime(library, (mtime, mtime))
        native.attention_kernels.cache_clear()
        assert native.attention_kernels() == "loaded"
        note = "compiling the native attention kernels for this machine"
        assert (note in capsys.readouterr().err) == announced


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("spec", ["cbam", "cbam:gate=hsigmoid", "cbam:kernel=3"])
def test_native_spatial_gate_equals_the_modules_operators(kernels, monkeypatch, spec, momentum):
    """The k×k conv, BN on batch statistics (running statistics updated alike) and the gate
    in one native call each way: the same gate, descriptor gradient, parameter gradients and
    statistics, over two steps."""
    from caprobe.attention import cbam

    module, eager = _module_pair(spec, 8)
    module.spatial_bn.momentum = eager.spatial_bn.momentum = momentum
    s = _randn(3, 2, 5, 7).requires_grad_()
    s_eager = s.detach().clone().requires_grad_()
    grad = _randn(3, 1, 5, 7, seed=9)
    for _ in range(2):
        gs = module._spatial_gate(s)
        assert type(gs.grad_fn).__name__ == "_NativeSpatialGateBackward"
        gs.backward(grad)
    monkeypatch.setattr(cbam, "native_spatial_gate", lambda *args: None)
    for _ in range(2):
        gs_eager = eager._spatial_gate(s_eager)
        gs_eager.backward(grad)
    tol = 1e-7 if "hsigmoid" in spec else 1e-12  # PyTorch's float32 1/6 (see above)
    torch.testing.assert_close(gs, gs_eager, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.grad, s_eager.grad, rtol=tol, atol=tol)
    for p, q in zip(module.parameters(), eager.parameters(), strict=True):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol)
    for b, b_eager in zip(module.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(b, b_eager, rtol=1e-12, atol=1e-12)


def test_native_spatial_gate_applies_to_planar_training_descriptors_only(kernels):
    from caprobe.attention.functional import native_spatial_gate

    module = build("cbam", 8).train()
    parts = (module.spatial, module.spatial_bn, module.gate)
    s = torch.randn(2, 2, 4, 4)
    assert native_spatial_gate(s, *parts) is not None
    assert native_spatial_gate(s.contiguous(memory_format=torch.channels_last), *parts) is None
    assert native_spatial_gate(torch.randn(1, 2, 1, 1), *parts) is None  # one position
    module.eval()
    assert native_spatial_gate(s, *parts) is None


def test_native_spatial_gate_does_not_depend_on_the_thread_count(kernels):
    module = build("cbam", 8).train()
    torch.nn.init.normal_(module.spatial_bn.weight)
    s = _randn(6, 2, 9, 11, dtype=torch.float32).requires_grad_()
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            module.zero_grad(set_to_none=True)
            s.grad = None
            gs = module._spatial_gate(s)
            gs.backward(torch.ones_like(gs))
            results.append([gs.detach(), s.grad, module.spatial.weight.grad,
                            module.spatial_bn.weight.grad])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)
