"""Attention modules and their registry: ``build(spec, channels)`` is the one way to make one.

Specs are parsed in :mod:`caprobe.attention.spec`; each module lives in its own file.
"""

from __future__ import annotations

from torch import nn

from caprobe.attention.base import AttentionModule, DeployedAttention
from caprobe.attention.cbam import CBAM
from caprobe.attention.coord import CoordAttention
from caprobe.attention.eca import ECA
from caprobe.attention.se import SqueezeExcite
from caprobe.attention.spec import AttnKind, AttnSpec, canonical, kinds, parse_spec, register
from caprobe.errors import CaprobeError

register(AttnKind("none", None, "no attention (identity)"))
register(AttnKind("se", SqueezeExcite, "Squeeze-and-Excitation: one weight per channel"))
register(AttnKind("cbam", CBAM, "CBAM: channel gate, then a k×k spatial gate"))
register(AttnKind("eca", ECA, "ECA: 1-D conv across channels, no reduction"))
register(AttnKind("ca", CoordAttention, "Coordinate Attention: row gate × column gate"))
register(AttnKind("ca_h", CoordAttention, "CA ablation: only the height gate (one weight per row)",
                  {"branches": "h"}))
register(AttnKind("ca_w", CoordAttention,
                  "CA ablation: only the width gate (one weight per column)", {"branches": "w"}))


def build(spec: str | AttnSpec | None, channels: int, *, inplace: bool = False) -> nn.Module:
    """Build the attention module named by ``spec`` for ``channels`` input channels.

    ``inplace=True`` says the input is a temporary: the deployed form (:meth:`fuse`,
    :func:`caprobe.deploy`) may then write its output into it.

    Raises :class:`~caprobe.errors.CaprobeError` (a ValueError) for an unknown name or option,
    a reduction or floor below 1 (the floors ``min_mip`` / ``min_hidden`` keep at least one
    hidden channel, so narrow networks build), or ``channels < 1``.
    """
    parsed = parse_spec(spec)
    if not isinstance(channels, int) or channels < 1:
        raise CaprobeError(f"attention needs channels >= 1, got {channels!r}")
    if parsed.kind.cls is None:
        return nn.Identity()
    module = parsed.kind.cls(channels, **parsed.kwargs(), inplace=inplace)
    module.spec = str(parsed)
    return module


__all__ = [
    "CBAM", "ECA", "AttentionModule", "AttnKind", "AttnSpec", "CoordAttention",
    "DeployedAttention", "SqueezeExcite", "build", "canonical", "kinds", "parse_spec", "register",
]
