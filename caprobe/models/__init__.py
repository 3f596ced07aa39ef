"""Backbones with a pluggable attention module: ``build_model("mobilenetv2_ca")``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from caprobe.attention import canonical, kinds
from caprobe.errors import CaprobeError
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
                seed: int | None = None) -> nn.Module:
    """Build a backbone with the attention module given by its name or by ``attn``.

    ``profile``: ``"imagenet"`` (224-px layout) or ``"cifar"`` (32-px adaptation: stem stride 1,
    first stride-2 stage at stride 1, last map 4×4). ``seed`` makes the initialisation
    deterministic per layer name, so variants of one seed share their common layers' weights;
    without it the seed is drawn from torch's global generator.
    """
    backbone, spec = resolve_name(name, attn)
    if not width > 0:
        raise CaprobeError(f"width must be > 0, got {width}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise CaprobeError(f"num_classes must be a positive integer, got {num_classes!r}")
    if profile not in PROFILES:
        raise CaprobeError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    model = BACKBONES[backbone](attn=spec, width=width, num_classes=num_classes, profile=profile)
    if seed is None:
        import torch
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
    init_weights(model, seed)
    model.name = f"{backbone}" if spec == "none" else f"{backbone}_{spec}"
    model.backbone, model.attn_spec, model.width, model.profile = backbone, spec, width, profile
    return model


__all__ = ["BACKBONES", "PROFILES", "build_model", "list_models", "resolve_name"]
