"""count(): fvcore multiply-adds, the documented extra costs, attention share, breakdowns."""

import pytest
import torch
from torch import nn

import caprobe
from caprobe.measure.counting import input_hw


class _Pooled(nn.Module):
    """conv 3→8, then a coordinate pooling written either with means or adaptive pools."""

    def __init__(self, adaptive: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.adaptive = adaptive
        self.pool_h, self.pool_w = nn.AdaptiveAvgPool2d((None, 1)), nn.AdaptiveAvgPool2d((1, None))

    def forward(self, x):
        x = self.conv(x)
        if self.adaptive:
            z_h, z_w = self.pool_h(x), self.pool_w(x)
        else:
            z_h, z_w = x.mean(dim=3, keepdim=True), x.mean(dim=2, keepdim=True)
        return x * torch.sigmoid(z_h) * torch.sigmoid(z_w)


def test_mean_and_adaptive_pooling_count_the_same():
    a = caprobe.count(_Pooled(adaptive=True), (12, 10))
    b = caprobe.count(_Pooled(adaptive=False), (12, 10))
    assert (a.madds, a.madds_total) == (b.madds, b.madds_total)
    conv = 8 * 3 * 9 * 12 * 10
    # pools read the map twice, 2 sigmoids on 12 + 10 values, 2 products over the map
    assert a.madds == conv
    assert a.madds_total == conv + 2 * 960 + (8 * 12 + 8 * 10) + 2 * 960
    assert a.uncounted_ops == {}


def test_documented_costs_of_norm_activation_and_residual():
    class Unit(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1, bias=False)
            self.bn = nn.BatchNorm2d(3)
            self.act = nn.ReLU6()

        def forward(self, x):
            return x + self.act(self.bn(self.conv(x)))

    counts = caprobe.count(Unit(), 5)
    elements = 3 * 5 * 5
    assert counts.madds == 3 * 3 * 25
    assert counts.madds_total == counts.madds + 3 * elements  # bn, relu6, residual add


def test_attention_share_and_stages_add_up():
    counts = caprobe.count(caprobe.build_model("mobilenetv2_ca"), 224)
    assert counts.attention_params == 3_950_648 - 3_504_872
    assert counts.attention_madds == pytest.approx(5.892e6, rel=1e-3)
    assert 0.019 < counts.attention_share < 0.0195
    assert sum(s.madds for s in counts.by_stage) == counts.madds
    assert sum(s.params for s in counts.by_stage) == counts.params
    assert sum(s.attention_madds for s in counts.by_stage) == counts.attention_madds
    assert [s.stage for s in counts.by_stage][:2] == ["stem", "stage1"]
    attn_rows = [m for m in counts.by_module if m.attention]
    assert len(attn_rows) == 16 and all(m.type == "CoordAttention" for m in attn_rows)
    plain = caprobe.count(caprobe.build_model("mobilenetv2"), 224)
    assert plain.attention_madds == 0 and plain.attention_params == 0


def test_counting_leaves_the_model_mode_alone_and_any_size_works():
    model = caprobe.build_model("mobilenext_cbam", width=0.5, num_classes=10, profile="cifar")
    model.train()
    counts = caprobe.count(model, (31, 45))
    assert model.training and counts.input_size == (31, 45) and counts.uncounted_ops == {}


@pytest.mark.parametrize("bad", [0, -3, (0, 5), (5,), "224", (2.5, 3)])
def test_bad_input_sizes(bad):
    with pytest.raises(ValueError, match="input size"):
        input_hw(bad)
