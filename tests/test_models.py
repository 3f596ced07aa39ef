"""Backbones: exact parameter counts, the papers' MAdds, layout, shapes, gradients, paired init."""

import pytest
import torch
from torch import nn

import caprobe
from caprobe.attention import AttentionModule
from caprobe.models import list_models, resolve_name

ATTENTIONS = ["none", "se", "cbam", "eca", "ca", "ca_h", "ca_w"]


@pytest.mark.parametrize("name,params", [
    ("mobilenetv2", 3_504_872),
    ("mobilenetv2_ca", 3_950_648),
    ("mobilenetv2_se", 3_888_208),
    ("mobilenetv2_cbam", 3_889_808),
    ("mobilenext", 3_535_416),
    ("mobilenext_ca", 3_971_626),
    ("mobilenext_se", 3_913_557),
])
def test_parameter_counts_match_the_official_layouts(name, params):
    model = caprobe.build_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert caprobe.count(model, 224).params == params


@pytest.mark.parametrize("name,madds", [
    ("mobilenetv2", 300.8e6), ("mobilenetv2_ca", 306.7e6), ("mobilenext", 311.3e6)])
def test_conv_and_linear_madds_match_the_papers(name, madds):
    counts = caprobe.count(caprobe.build_model(name), 224)
    assert abs(counts.madds - madds) <= 0.1e6
    assert counts.uncounted_ops == {}
    assert counts.madds_total > counts.madds


def test_attention_sits_where_the_official_code_puts_it():
    v2 = caprobe.build_model("mobilenetv2_ca")
    blocks = [b for stage in list(v2.features)[1:-1] for b in stage]
    assert isinstance(blocks[0].attn, nn.Identity)  # t = 1 block: none
    assert all(isinstance(b.attn, AttentionModule) for b in blocks[1:])
    assert all(b.attn.conv1.in_channels == b.dw[0].out_channels for b in blocks[1:])
    nx = caprobe.build_model("mobilenext_ca")
    blocks = [b for stage in list(nx.features)[1:] for b in stage]
    with_attn = [isinstance(b.attn, AttentionModule) for b in blocks]
    has_dw1 = [not isinstance(b.dw1, nn.Identity) for b in blocks]
    assert with_attn == has_dw1 and len(blocks) - sum(has_dw1) == 5  # 5 transition blocks


def test_mobilenext_follows_the_official_transition_blocks():
    nx = caprobe.build_model("mobilenext")
    stages = list(nx.features)[1:]
    first = [stage[0] for stage in stages]
    dw = [(not isinstance(b.dw1, nn.Identity), not isinstance(b.dw2, nn.Identity)) for b in first]
    # rows: (2,96,1,2) (6,144,1,1) (6,192,3,2) (6,288,3,2) (6,384,4,1) (6,576,4,2) (6,960,3,1)
    #       (6,1280,1,1): width-changing blocks drop the first dw when they stride, both if not
    assert dw == [(True, True), (True, True), (False, True), (False, True), (False, False),
                  (False, True), (False, False), (True, True)]
    assert [b.use_residual for b in first] == [False] * 8
    assert all(b.use_residual for stage in stages for b in list(stage)[1:])
    assert isinstance(nx.classifier[1], nn.Linear) and nx.classifier[1].in_features == 1280


@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenext"])
def test_cifar_profile_keeps_a_4x4_last_map(backbone):
    model = caprobe.build_model(backbone, attn="ca", width=0.5, num_classes=10, profile="cifar")
    model.eval()
    assert model.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
    imagenet = caprobe.build_model(backbone, width=0.5, num_classes=10).eval()
    assert imagenet.features(torch.randn(1, 3, 32, 32)).shape[-2:] == (1, 1)


@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenext"])
@pytest.mark.parametrize("attn", ATTENTIONS)
def test_odd_sizes_tiny_maps_batch_one_and_gradients(backbone, attn):
    model = caprobe.build_model(backbone, attn=attn, width=0.35, num_classes=7)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 97, 131)).shape == (2, 7)
        assert model(torch.randn(2, 3, 1, 1)).shape == (2, 7)
    model.train()
    model(torch.randn(1, 3, 67, 45)).sum().backward()  # batch 1 in training mode
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_seeded_variants_share_the_weights_of_their_common_layers():
    plain = caprobe.build_model("mobilenetv2", width=0.5, seed=3).state_dict()
    with_ca = caprobe.build_model("mobilenetv2_ca", width=0.5, seed=3).state_dict()
    with_se = caprobe.build_model("mobilenetv2_se", width=0.5, seed=3).state_dict()
    for key, value in plain.items():
        assert torch.equal(value, with_ca[key]) and torch.equal(value, with_se[key]), key
    other = caprobe.build_model("mobilenetv2", width=0.5, seed=4).state_dict()
    assert not torch.equal(plain["features.stem.0.weight"], other["features.stem.0.weight"])


def test_names_shorthands_and_overrides():
    assert resolve_name("mobilenetv2_ca_h") == ("mobilenetv2", "ca_h")
    assert resolve_name("mobilenext_ca", "ca:act=relu") == ("mobilenext", "ca:act=relu")
    assert resolve_name("MobileNetV2") == ("mobilenetv2", "none")
    assert "mobilenext_cbam" in list_models() and "mobilenetv2" in list_models()
    model = caprobe.build_model("mobilenext", attn="ca:branches=w")
    assert model.name == "mobilenext_ca_w" and model.attn_spec == "ca_w"


@pytest.mark.parametrize("kwargs,fragment", [
    ({"name": "resnet50"}, "unknown model 'resnet50'; valid: mobilenetv2, mobilenext"),
    ({"name": "mobilenetv2_xx"}, "unknown model"),
    ({"name": "mobilenetv2", "width": 0}, "width must be a finite number > 0"),
    ({"name": "mobilenetv2", "width": float("inf")}, "width must be a finite number > 0"),
    ({"name": "mobilenetv2", "width": float("nan")}, "width must be a finite number > 0"),
    ({"name": "mobilenetv2", "width": -1.0}, "width must be a finite number > 0"),
    ({"name": "mobilenetv2", "num_classes": 0}, "num_classes"),
    ({"name": "mobilenetv2", "profile": "mnist"}, "valid profiles: imagenet, cifar"),
    ({"name": "mobilenetv2", "attn": "ca:bad"}, "malformed attention spec"),
])
def test_bad_model_requests_raise_value_errors(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        caprobe.build_model(**kwargs)


def test_coords_control_feeds_row_and_column_channels():
    """The CoordConv control: a 5-channel stem whose extra inputs are the pixel row / column."""
    import torch

    from caprobe.models import AddCoords, build_model

    x = torch.randn(2, 3, 5, 7)
    out = AddCoords()(x)
    assert out.shape == (2, 5, 5, 7) and torch.equal(out[:, :3], x)
    assert torch.equal(out[0, 3, :, 0], torch.linspace(-1, 1, 5))      # rows
    assert torch.equal(out[1, 4, 0, :], torch.linspace(-1, 1, 7))      # columns
    assert (out[:, 3].std(dim=2) == 0).all() and (out[:, 4].std(dim=1) == 0).all()
    plain = build_model("mobilenetv2", width=0.35, num_classes=16, profile="cifar", seed=0)
    model = build_model("mobilenetv2", width=0.35, num_classes=16, profile="cifar", seed=0,
                        coords=True)
    assert model.features.stem[0].in_channels == 5 and model.coords and not plain.coords
    assert (model.name, plain.name) == ("mobilenetv2+coords", "mobilenetv2")
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * 9 * model.features.stem[0].out_channels      # two more 3x3 input planes
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 16)


@pytest.mark.parametrize("spec", ["se", "cbam", "eca", "ca", "ca_h", "ca_w", "ca:gate=hsigmoid"])
def test_attention_gates_start_constant(spec):
    """init_weights zeroes each module's gate layers: every gate starts at gate(0) = 0.5
    everywhere (sigmoid and hard sigmoid), the block is a uniform scaling, and the gradient
    still reaches the gate layers."""
    import torch

    from caprobe.models import build_model

    model = build_model("mobilenetv2", attn=spec, width=0.35, num_classes=16, profile="cifar",
                        seed=3).train()
    blocks = [m for m in model.modules() if getattr(m, "gate_layers", ())]
    assert len(blocks) == 16                                     # every t = 6 block
    for block in blocks[:3]:
        channels = next(p for p in block.parameters() if p.ndim > 1).shape[1]
        x = torch.randn(4, channels, 6, 5)
        gates = block.gates(x)
        for name, gate in gates.items():
            assert torch.allclose(gate, torch.full_like(gate, 0.5)), name
        assert torch.allclose(block(x), 0.5 ** len(gates) * x, atol=1e-6)
    model(torch.randn(8, 3, 32, 32)).sum().backward()
    layers = [block.get_submodule(name) for block in blocks for name in block.gate_layers
              if getattr(block, name.split(".")[0]) is not None]
    assert all((layer.weight == 0).all() for layer in layers)
    reached = sum(bool(layer.weight.grad.abs().sum() > 0) for layer in layers)
    assert reached >= 0.75 * len(layers)  # a few SE/CBAM hidden units are dead ReLUs


def test_inplace_relu6_trains_as_autograd_without_a_copy_of_its_input():
    """caprobe's in-place ReLU6 saves its own output for the backward (no copy of its input)
    and gives autograd's gradient bit for bit, at the kinks 0 and 6 too, channels-last kept."""
    from caprobe.models.common import ReLU6

    values = torch.tensor([-1.0, 0.0, 0.5, 6.0, 7.0, 3.0]).repeat(24).view(2, 3, 4, 6)
    base = values.to(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(2, 3, 4, 6)

    def run(act):
        saved = []
        x = base * 1.0
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.data_ptr()) or t, lambda t: t):
            y = act(x)
        y.backward(grad)
        assert y.data_ptr() == x.data_ptr()  # in place
        return y.detach(), base.grad.clone(), saved, x.data_ptr()

    y0, g0, _, _ = run(nn.ReLU6(inplace=True))
    base.grad = None
    y1, g1, saved, ptr = run(ReLU6(inplace=True))
    assert torch.equal(y0, y1) and torch.equal(g0, g1)
    assert saved == [ptr]  # only the output, in place
    assert g1.is_contiguous(memory_format=torch.channels_last)


def test_backbones_use_the_copy_free_relu6():
    from caprobe.models.common import ReLU6

    for name in ("mobilenetv2_ca", "mobilenext"):
        modules = list(caprobe.build_model(name).modules())
        assert not any(type(m) is nn.ReLU6 for m in modules)
        assert any(isinstance(m, ReLU6) for m in modules)
