"""Attention modules against the paper's equations, their gate semantics, specs and errors."""

import pytest
import torch
from torch import nn

import caprobe
from caprobe import attention
from caprobe.attention import CoordAttention

ALL_SPECS = ["none", "se", "cbam", "eca", "ca", "ca_h", "ca_w", "ca:act=relu,reduction=16",
             "se:reduction=4,act=relu,gate=hsigmoid", "cbam:kernel=3", "ca:gate=hsigmoid,act=silu"]


class PaperCA(nn.Module):
    """Coordinate attention written from the paper's equations and the official code:
    adaptive pooling, concatenate, shared F1 + BN + h-swish, split, F_h / F_w, sigmoid."""

    def __init__(self, c, mip):
        super().__init__()
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.f1 = nn.Conv2d(c, mip, 1)
        self.bn = nn.BatchNorm2d(mip)
        self.fh = nn.Conv2d(mip, c, 1)
        self.fw = nn.Conv2d(mip, c, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        z_h = self.pool_h(x)  # z^h_c(h) = 1/W sum_i x_c(h, i)
        z_w = self.pool_w(x).permute(0, 1, 3, 2)  # z^w_c(w) = 1/H sum_j x_c(j, w)
        f = self.bn(self.f1(torch.cat([z_h, z_w], dim=2)))
        f = f * torch.clamp(f + 3, 0, 6) / 6  # h-swish
        f_h, f_w = torch.split(f, [h, w], dim=2)
        g_h = torch.sigmoid(self.fh(f_h))
        g_w = torch.sigmoid(self.fw(f_w.permute(0, 1, 3, 2)))
        return x * g_h * g_w


def _randomize_bn(module):
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)


def _paper_twin(ca: CoordAttention) -> PaperCA:
    ref = PaperCA(ca.conv1.in_channels, ca.conv1.out_channels)
    ref.f1.load_state_dict(ca.conv1.state_dict())
    ref.bn.load_state_dict(ca.bn1.state_dict())
    ref.fh.load_state_dict(ca.conv_h.state_dict())
    ref.fw.load_state_dict(ca.conv_w.state_dict())
    return ref


@pytest.mark.parametrize("channels,mip", [(96, 8), (320, 10), (960, 30)])
def test_ca_defaults_follow_official_code(channels, mip):
    ca = attention.build("ca", channels)
    assert ca.conv1.out_channels == mip  # mip = max(8, C // 32)
    assert isinstance(ca.act, nn.Hardswish) and isinstance(ca.gate, nn.Sigmoid)
    assert all(c.bias is not None for c in (ca.conv1, ca.conv_h, ca.conv_w))


@pytest.mark.parametrize("shape", [(2, 32, 7, 9), (1, 16, 1, 1), (3, 48, 13, 5), (1, 8, 40, 33)])
def test_ca_equals_paper_equations_in_every_mode(shape):
    ca = attention.build("ca", shape[1])
    _randomize_bn(ca)
    ref = _paper_twin(ca)
    x = torch.randn(shape)
    ca.train(), ref.train()
    torch.testing.assert_close(ca(x), ref(x), atol=1e-5, rtol=1e-5)  # batch statistics
    ca.eval(), ref.eval()
    expected = ref(x)
    torch.testing.assert_close(ca(x), expected, atol=1e-5, rtol=1e-5)  # trainable form, eval
    with torch.inference_mode():
        torch.testing.assert_close(ca(x), expected, atol=1e-5, rtol=1e-5)  # same, no autograd
        torch.testing.assert_close(caprobe.deploy(ca)(x), expected, atol=1e-5, rtol=1e-5)


def _ratio(spec, h=6, w=8, c=48):
    module = attention.build(spec, c).eval()
    _randomize_bn(module)
    x = torch.rand(2, c, h, w) + 0.5
    with torch.no_grad():
        return module(x) / x


def test_ca_gate_is_rank_one_per_channel():
    r = _ratio("ca").double()
    for n in range(r.shape[0]):
        for c in range(r.shape[1]):
            s = torch.linalg.svdvals(r[n, c])
            assert s[1] < 1e-5 * s[0]


def test_ca_h_is_constant_along_each_row_and_ca_w_along_each_column():
    r_h, r_w = _ratio("ca_h"), _ratio("ca_w")
    torch.testing.assert_close(r_h, r_h[..., :1].expand_as(r_h))
    torch.testing.assert_close(r_w, r_w[..., :1, :].expand_as(r_w))
    assert (r_h.std(dim=2) > 1e-4).any(), "ca_h must vary from row to row"
    assert (r_w.std(dim=3) > 1e-4).any(), "ca_w must vary from column to column"


def test_se_is_constant_over_the_map():
    r = _ratio("se")
    torch.testing.assert_close(r, r[..., :1, :1].expand_as(r))


def test_permuting_rows_permutes_ca_output():
    ca = attention.build("ca", 16).eval()
    x = torch.randn(2, 16, 7, 5)
    perm = torch.randperm(7)
    with torch.no_grad():
        torch.testing.assert_close(ca(x[:, :, perm]), ca(x)[:, :, perm])


def test_gates_have_documented_shapes():
    x = torch.randn(2, 24, 5, 7)
    assert {k: tuple(v.shape) for k, v in attention.build("ca", 24).gates(x).items()} == {
        "h": (2, 24, 5, 1), "w": (2, 24, 1, 7)}
    assert set(attention.build("ca_h", 24).gates(x)) == {"h"}
    assert set(attention.build("ca_w", 24).gates(x)) == {"w"}
    assert tuple(attention.build("se", 24).gates(x)["channel"].shape) == (2, 24, 1, 1)
    gates = attention.build("cbam", 24).gates(x)
    assert tuple(gates["spatial"].shape) == (2, 1, 5, 7)


@pytest.mark.parametrize("spec", ALL_SPECS)
@pytest.mark.parametrize("shape", [(2, 48, 97, 131), (2, 48, 1, 1), (1, 48, 5, 3), (1, 48, 1, 1)])
def test_any_map_size_and_batch_one_in_training(spec, shape):
    module = attention.build(spec, 48).train()
    x = torch.randn(shape, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, name


@pytest.mark.parametrize("spec,expected", [
    ("CA", "ca"), ("ca:reduction=32", "ca"), ("ca:branches=h", "ca_h"),
    ("ca:branches=w,act=relu", "ca_w:act=relu"), ("ca:branches=hw", "ca"),
    ("ca:reduction=16,act=relu", "ca:act=relu,reduction=16"), ("", "none"), (None, "none"),
    ("se:act=relu6", "se"), ("cbam:kernel=7", "cbam"),
])
def test_specs_have_one_canonical_form(spec, expected):
    assert attention.canonical(spec) == expected


def test_reduction_and_activation_options_reach_the_module():
    ca = attention.build("ca:reduction=16,act=relu,min_mip=4", 96)
    assert ca.conv1.out_channels == 6 and isinstance(ca.act, nn.ReLU)
    se = attention.build("se:reduction=4,gate=hsigmoid", 96)
    assert se.fc1.out_channels == 24 and isinstance(se.gate, nn.Hardsigmoid)
    assert attention.build("se", 16).fc1.out_channels == 1  # floored: 16 // 24 == 0
    assert attention.build("cbam:min_hidden=4", 16).mlp[0].out_channels == 4
    assert attention.build("eca", 96).conv.kernel_size == (3,)
    assert attention.build("eca:kernel=5", 96).conv.kernel_size == (5,)


@pytest.mark.parametrize("spec,channels,fragment", [
    ("bogus", 16, "valid names: none, se, cbam, eca, ca, ca_h, ca_w"),
    ("ca:colour=red", 16, "valid options: reduction, min_mip, act, gate, branches"),
    ("ca:reduction=0", 16, "integer >= 1"),
    ("ca:reduction=-2", 16, "integer >= 1"),
    ("se:act=tanh", 16, "relu, relu6, hswish, silu"),
    ("ca:gate=tanh", 16, "sigmoid, hsigmoid"),
    ("cbam:kernel=4", 16, "odd integer"),
    ("ca:reduction", 16, "NAME:key=value"),
    ("ca_h:branches=w", 16, "valid options: reduction, min_mip, act, gate"),
    ("se:min_hidden=0", 16, "integer >= 1"),
    ("ca:min_mip=0", 16, "integer >= 1"),
    ("ca", 0, "channels >= 1"),
])
def test_bad_specs_raise_value_error_naming_valid_choices(spec, channels, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        attention.build(spec, channels)
