"""Backbones with a pluggable attention module: ``build_model("mobilenetv2_ca")``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from caprobe.attention import canonical, kinds
from caprobe.errors import CaprobeError, require_positive
from caprobe.models.common import PROFILES, init_weights
from caprobe.models.mobilenetv2 import mobilenetv2
from caprobe.models.mobilenext import mobilenext

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mobilenetv2": mobilenetv2,
    "mobilenext": mobilenext,
}


def list_models() -> list[str]:
    """Every accepted model name: backbones and ``<backbone>_<attention>`` shorthands."""
    names = []
    for backbone in BACKBONES:
        names.append(backbone)
        names.extend(f"{backbone}_{attn}" for attn in kinds() if attn != "none")
    return names


def resolve_name(name: str, attn: str | None = None) -> tuple[str, str]:
    """``(backbone, canonical attention spec)`` for a model name and optional spec.

    ``attn`` overrides the attention named by a shorthand such as ``mobilenetv2_ca``.
    """
    key = name.strip().lower()
    backbone, shorthand = key, None
    if key not in BACKBONES:
        for candidate in BACKBONES:
            if key.startswith(candidate + "_") and key[len(candidate) + 1:] in kinds():
                backbone, shorthand = candidate, key[len(candidate) + 1:]
                break
        else:
            raise CaprobeError(
                f"unknown model {name!r}; valid: {', '.join(BACKBONES)} or <backbone>_<attention> "
                f"with attention one of {', '.join(a for a in kinds() if a != 'none')}")
    return backbone, canonical(attn if attn is not None else shorthand)


def build_model(name: str, *, attn: str | None = None, width: float = 1.0,
                num_classes: int = 1000, profile: str = "imagenet",
                seed: int | None = None, coords: bool = False) -> nn.Module:
    """Build a backbone with the attention module given by its name or by ``attn``.

    ``profile``: ``"imagenet"`` (224-px layout) or ``"cifar"`` (32-px adaptation: stem stride 1,
    first stride-2 stage at stride 1, last map 4×4). ``seed`` makes the initialisation
    deterministic per layer name, so variants of one seed share their common layers' weights;
    without it the seed is drawn from torch's global generator. ``coords``: the positional
    probe's positive control (CoordConv, Liu et al. 2018): the stem also sees two channels
    holding each pixel's row and column (:class:`AddCoords`).
    """
    backbone, spec = resolve_name(name, attn)
    require_positive(width, "width")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise CaprobeError(f"num_classes must be a positive integer, got {num_classes!r}")
    if profile not in PROFILES:
        raise CaprobeError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    model = BACKBONES[backbone](attn=spec, width=width, num_classes=num_classes, profile=profile)
    if coords:
        _add_coords(model)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    init_weights(model, seed)
    model.name = (f"{backbone}" if spec == "none" else f"{backbone}_{spec}") + (
        "+coords" if coords else "")
    model.backbone, model.attn_spec, model.width, model.profile = backbone, spec, width, profile
    model.coords = coords
    return model


class AddCoords(nn.Module):
    """Appends two channels to N×C×H×W: the row and the column of each pixel, in -1..1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        rows = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device)
        cols = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij")).expand(n, 2, h, w)
        return torch.cat([x, grid.to(memory_format=torch.contiguous_format)], dim=1)


def _add_coords(model: nn.Module) -> None:
    """Give the stem conv two more input channels and put :class:`AddCoords` before it."""
    old = model.features.stem[0]
    model.features.stem[0] = nn.Conv2d(old.in_channels + 2, old.out_channels, old.kernel_size,
                                       old.stride, old.padding, bias=False)
    model.features = nn.Sequential(OrderedDict([("coords", AddCoords()),
                                                *model.features.named_children()]))


__all__ = ["AddCoords", "BACKBONES", "PROFILES", "build_model", "list_models", "resolve_name"]
