"""``caprobe.deploy``: the deployed forms equal the trainable forms in eval mode, for every
spec, both backbones, every shape class, dtype and memory format; deploy is one-way, leaves
the original untouched, and both forms trace, export and compile."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

import caprobe
from caprobe import attention
from caprobe.attention import AttentionModule, DeployedAttention
from caprobe.attention.base import GraphAttention, multiply_gates

SPECS = ["se", "eca", "cbam", "ca", "ca_h", "ca_w", "ca:act=relu6,gate=hsigmoid", "ca:act=silu",
         "ca:act=relu", "se:reduction=4,act=relu,gate=hsigmoid", "cbam:kernel=3",
         "eca:kernel=5"]
#: matrix pooling (small maps, square or not), sums (large maps; non-square rescales the W
#: strip), gates combined first (H+W <= 56) or one after the other, 1×1 maps, batch 0 to 3
SHAPES = [(3, 40, 7, 7), (1, 40, 14, 14), (2, 40, 5, 9), (2, 40, 28, 28), (2, 40, 30, 30),
          (1, 40, 20, 36), (2, 40, 1, 40), (2, 40, 1, 1), (0, 40, 7, 7)]


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics, so that folding and every gate are exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.5, 0.5, generator=gen)
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
            elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
                m.weight.normal_(0.0, 0.3, generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.3, generator=gen)
    return module


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_deployed_module_equals_the_trainable_one_in_eval(spec, shape, memory_format):
    module = _randomize(attention.build(spec, 40)).eval()
    x = (torch.rand(shape) * 4 - 1).contiguous(memory_format=memory_format)
    expected = module(x)
    deployed = caprobe.deploy(module)
    assert isinstance(deployed, DeployedAttention) and deployed.deployed and not deployed.training
    with torch.inference_mode():
        torch.testing.assert_close(deployed(x), expected, atol=1e-5, rtol=1e-5)
    gates = module.gates(x)  # the report's maps: their product is the output
    product = x
    for gate in gates.values():
        product = product * gate
    torch.testing.assert_close(product, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenext"])
@pytest.mark.parametrize("spec", ["none", "se", "eca", "cbam", "ca", "ca_h", "ca_w"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_deployed_network_equals_the_trainable_one(backbone, spec, dtype, tol):
    model = _randomize(caprobe.build_model(backbone, attn=spec, width=0.5, num_classes=7,
                                           profile="cifar", seed=1)).to(dtype).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = caprobe.deploy(model)
    assert deployed is not model and not model.training
    assert not any(isinstance(m, AttentionModule) for m in deployed.modules())
    for batch, side, fmt in [(2, 32, torch.channels_last), (1, 20, torch.contiguous_format),
                             (3, 17, torch.channels_last)]:
        x = torch.randn(batch, 3, side, side, dtype=dtype).contiguous(memory_format=fmt)
        with torch.no_grad():
            torch.testing.assert_close(deployed(x), model(x), atol=tol, rtol=tol)
    after = model.state_dict()  # deploy left the original untouched
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, AttentionModule) for m in model.modules()) == (spec != "none")


def test_deploy_is_a_snapshot_and_inplace_deploys_the_model_itself():
    model = caprobe.build_model("mobilenetv2", attn="ca", width=0.35, num_classes=3,
                                profile="cifar", seed=0).eval()
    x = torch.randn(1, 3, 16, 16)
    deployed = caprobe.deploy(model)
    with torch.no_grad():
        frozen = deployed(x)
        for p in model.parameters():
            p.add_(0.05)  # more training after deployment does not reach the deployed copy
        torch.testing.assert_close(deployed(x), frozen)
        assert not torch.allclose(model(x), frozen)
    same = caprobe.deploy(model, inplace=True)
    assert same is model and not any(isinstance(m, AttentionModule) for m in model.modules())


@pytest.mark.parametrize("spec", ["se", "cbam", "eca", "ca", "ca_h"])
def test_only_a_deployed_module_built_inplace_overwrites_its_input(spec):
    keep = _randomize(attention.build(spec, 48)).eval()
    own = attention.build(spec, 48, inplace=True).eval()
    own.load_state_dict(keep.state_dict())
    x = torch.randn(2, 48, 6, 7)
    before = x.clone()
    with torch.no_grad():
        expected = keep(x)
        own(x)  # the trainable form never writes into its input
        assert torch.equal(x, before)
        caprobe.deploy(keep)(x)
        assert torch.equal(x, before)
        out = caprobe.deploy(own)(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    assert out.data_ptr() == x.data_ptr()  # no new feature map


@pytest.mark.parametrize("spec", ["ca", "ca_w"])
def test_bf16_deployed_form_is_as_accurate_as_the_trainable_form(spec):
    module = _randomize(attention.build(spec, 32)).eval()
    x = torch.rand(2, 32, 6, 10) + 0.5  # matrix pooling with a non-square map
    exact = module.double()(x.double())
    module.bfloat16()
    xb = x.bfloat16()
    with torch.no_grad():
        paper = module(xb).double()
        fast = caprobe.deploy(module)(xb).double()
    paper_err, fast_err = (paper - exact).abs().max(), (fast - exact).abs().max()
    assert fast_err <= 1.5 * paper_err + 1e-3, (fast_err, paper_err)


def test_a_non_linearity_swapped_in_by_hand_reaches_the_deployed_form():
    ca = _randomize(attention.build("ca", 16)).eval()
    ca.act = nn.ReLU()
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(caprobe.deploy(ca)(x), ca(x), atol=1e-5, rtol=1e-5)


def test_both_forms_trace_export_and_compile():
    """The trainable form traces shape-free (ONNX with dynamic axes, no pooling operators)
    and compiles as one dynamo graph; the deployed form picks its pooling route per shape, so
    its trace holds for the traced shape, and it compiles."""
    onnx = pytest.importorskip("onnx")
    ca = _randomize(attention.build("ca", 32)).eval()
    deployed = caprobe.deploy(ca)
    x, other = torch.randn(1, 32, 9, 11), torch.randn(2, 32, 6, 13)
    with torch.no_grad():
        traced = torch.jit.trace(ca, x)
        torch.testing.assert_close(traced(other), ca(other), atol=1e-5, rtol=1e-5)
        traced_deployed = torch.jit.trace(deployed, x)
        torch.testing.assert_close(traced_deployed(x), ca(x), atol=1e-5, rtol=1e-5)
    for module, dynamic in ((ca, True), (deployed, False)):
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}} if dynamic else None)
        graph = onnx.load_from_string(buffer.getvalue())
        onnx.checker.check_model(graph)
        assert not any("Pool" in node.op_type for node in graph.graph.node)
    # the eager backend keeps this free of a C++ toolchain; the deployed form's cached
    # pooling matrix may break the graph, so only the trainable form is asked for one graph
    for module, fullgraph in ((ca, True), (deployed, False)):
        compiled = torch.compile(module, backend="eager", fullgraph=fullgraph)
        with torch.no_grad():
            torch.testing.assert_close(compiled(other), ca(other), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shapes", [[(2, 4, 5, 1), (2, 4, 1, 6)], [(2, 4, 1, 1), (2, 1, 5, 6)],
                                    [(2, 4, 1, 1), (2, 4, 1, 1)], [(2, 4, 5, 1)],
                                    [(2, 4, 1, 1), (2, 1, 5, 6), (2, 4, 5, 1)]])
@pytest.mark.parametrize("overwrite", [False, True])
def test_multiply_gates_equals_the_plain_product_for_any_gate_shapes(shapes, overwrite):
    x = torch.randn(2, 4, 5, 6)
    gates = [torch.rand(s) for s in shapes]
    expected = x.clone()
    for gate in gates:
        expected = expected * gate
    before = x.clone()
    with torch.no_grad():
        out = multiply_gates(x, gates, overwrite=overwrite)
    torch.testing.assert_close(out, expected)
    assert out.shape == x.shape
    if not overwrite:
        assert torch.equal(x, before)


# --------------------------------------------------------------------------- the graph form


@pytest.mark.parametrize("target", ["graph", "nchwc"])
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] > 0])
def test_graph_form_equals_the_trainable_one_in_eval(spec, shape, target):
    module = _randomize(attention.build(spec, 40)).double().eval()
    x = torch.rand(shape, dtype=torch.float64) * 4 - 1
    graph = caprobe.deploy(module, target=target)
    assert isinstance(graph, GraphAttention) and graph.deployed == target
    assert not any(p.requires_grad for p in graph.parameters())
    with torch.no_grad():
        torch.testing.assert_close(graph(x), module(x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("target", ["graph", "nchwc"])
@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenext"])
@pytest.mark.parametrize("spec", ["none", "se", "eca", "cbam", "ca", "ca_h", "ca_w"])
def test_graph_form_of_a_network_equals_the_network(backbone, spec, target):
    model = _randomize(caprobe.build_model(backbone, attn=spec, width=0.5, num_classes=10,
                                           profile="cifar", seed=0)).double().eval()
    graph = caprobe.deploy(model, target=target)
    assert not any(isinstance(m, AttentionModule) for m in graph.modules())
    x = torch.randn(2, 3, 32, 40, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), atol=1e-10, rtol=1e-10)


def _exported_ops(module: nn.Module, x: torch.Tensor) -> list[str]:
    program = torch.export.export(module, (x,), strict=False).run_decompositions({})
    return [str(n.target) for n in program.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("spec", ["ca", "ca_h", "ca_w", "se", "eca", "cbam"])
def test_graph_form_exports_as_a_static_graph_without_one_axis_means(spec):
    """What runtimes need: no write into the input, no mean over a single axis (XNNPACK does
    not take one and ONNX Runtime reorders the map around it), CA's strips as whole-row
    poolings."""
    module = _randomize(attention.build(spec, 16, inplace=True)).eval()
    graph = caprobe.deploy(module, target="graph")
    x = torch.randn(1, 16, 6, 9)
    before = x.clone()
    with torch.no_grad():
        graph(x)
    assert torch.equal(x, before)
    ops = _exported_ops(graph, x)
    means = [op for op in ops if "mean" in op]
    assert all("mean.dim" in op for op in means)
    if spec.startswith("ca"):
        assert ops.count("aten.avg_pool2d.default") == len(spec.removeprefix("ca_") if "_" in spec
                                                           else "hw")
        assert not means
    paper = _exported_ops(module, torch.randn(1, 16, 6, 9))
    assert paper != ops


@pytest.mark.parametrize("channels,mip,padded", [(40, 8, 16), (576, 18, 32), (960, 30, 32),
                                                 (512, 16, 16)])
@pytest.mark.parametrize("spec", ["ca", "ca_h", "ca_w"])
def test_nchwc_form_pads_mip_to_whole_blocks_and_expands_the_gates(spec, channels, mip, padded):
    """ONNX Runtime keeps a 1×1 conv in its blocked layout only with whole 16-channel blocks,
    and a product only between same-shape maps: F1's extra outputs are zero, the gate convs
    give them zero weight, each gate is upsampled to the map."""
    module = _randomize(attention.build(spec, channels)).eval()
    graph, nchwc = (caprobe.deploy(module, target=t) for t in ("graph", "nchwc"))
    for branch in graph.gates:
        plain_first, first = (getattr(g, f"conv1_{branch}") for g in (graph, nchwc))
        plain_gate, gate = (getattr(g, f"conv_{branch}") for g in (graph, nchwc))
        assert plain_first.out_channels == plain_gate.in_channels == mip
        assert first.out_channels == gate.in_channels == padded
        assert torch.equal(first.weight[:mip], plain_first.weight)
        assert not first.weight[mip:].any() and not first.bias[mip:].any()
        assert torch.equal(gate.weight[:, :mip], plain_gate.weight)
        assert not gate.weight[:, mip:].any()
    x = torch.randn(1, channels, 5, 6)
    ops = _exported_ops(nchwc, x)
    assert ops.count("aten.upsample_nearest2d.vec") == len(graph.gates)
    assert "aten.upsample_nearest2d.vec" not in _exported_ops(graph, x)
    with torch.no_grad():
        torch.testing.assert_close(nchwc(x), module(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ["se", "eca", "cbam"])
def test_nchwc_form_of_other_modules_is_their_graph_form(spec):
    module = _randomize(attention.build(spec, 32)).eval()
    graph, nchwc = (caprobe.deploy(module, target=t) for t in ("graph", "nchwc"))
    assert type(nchwc) is type(graph)
    assert {k: v.shape for k, v in nchwc.state_dict().items()} == {
        k: v.shape for k, v in graph.state_dict().items()}


def test_deploy_rejects_an_unknown_target():
    from caprobe.errors import CaprobeError

    with pytest.raises(CaprobeError, match="unknown deploy target 'onnx'; choose one of eager"):
        caprobe.deploy(nn.Identity(), target="onnx")
