"""Attention maps of a trained model on a few fixed test images, saved as a record.

Forward pre-hooks capture the input of every attention module; ``module.gates(x)`` then gives
the gates the report draws:

* CA (``h`` N×C×H×1 and ``w`` N×C×1×W): the channel means of g^h (a column, one weight per
  row) and g^w (one weight per column), and ``hw`` = mean over channels of g^h·g^w, the
  spatial weighting CA applies on average;
* SE / CBAM ``channel`` (N×C×1×1): the channel weights;
* CBAM ``spatial`` (N×1×H×W): the spatial map.

Values are rounded to 4 decimals; images are stored as uint8 H×W×3 lists (at most
``MAX_SIDE`` pixels a side) so ``attention_maps.json`` stays small and the report never needs
the checkpoint or torch.
"""

from __future__ import annotations

from typing import Any

MAX_SIDE = 64
MAX_BLOCKS = 3


def pick_images(labels: Any, n: int, total: int) -> list[int]:
    """``n`` fixed test-image indices: the first image of each class in class order, then
    the following images; deterministic for a given test set."""
    if n <= 0 or total <= 0:
        return []
    chosen: list[int] = []
    if labels is not None:
        seen = set()
        for i, lab in enumerate(list(map(int, labels))):
            if lab not in seen:
                seen.add(lab)
                chosen.append(i)
            if len(chosen) >= n:
                break
    i = 0
    while len(chosen) < min(n, total):
        if i not in chosen:
            chosen.append(i)
        i += 1
    return chosen[:n]


def pick_blocks(count: int, k: int = MAX_BLOCKS) -> list[int]:
    """Indices of ``k`` evenly spread attention modules (first, middle, last, ...)."""
    if count <= 0:
        return []
    if count <= k:
        return list(range(count))
    return sorted({round(i * (count - 1) / (k - 1)) for i in range(k)})


def _r(arr) -> Any:
    import numpy as np

    return np.round(np.asarray(arr, dtype=float), 4).tolist()


def _image_record(images) -> list:
    """uint8 N×3×H×W tensor/array -> list of H×W×3 lists, downsampled to MAX_SIDE."""
    import numpy as np

    arr = np.asarray(images)
    out = []
    for img in arr:
        img = np.transpose(img, (1, 2, 0))
        step = max(1, int(np.ceil(max(img.shape[:2]) / MAX_SIDE)))
        out.append(np.ascontiguousarray(img[::step, ::step]).astype(np.uint8).tolist())
    return out


def gate_summary(gates: dict[str, Any]) -> dict[str, Any]:
    """Per-image arrays the report draws, from one module's gate tensors."""
    out: dict[str, Any] = {}
    g = {k: v.detach().float().cpu() for k, v in gates.items()}
    if "h" in g:
        out["h"] = _r(g["h"].mean(dim=1)[:, :, 0])  # N×H
    if "w" in g:
        out["w"] = _r(g["w"].mean(dim=1)[:, 0, :])  # N×W
    if "h" in g and "w" in g:
        out["hw"] = _r((g["h"] * g["w"]).mean(dim=1))  # N×H×W
    if "channel" in g:
        out["channel"] = _r(g["channel"].flatten(1))  # N×C
    if "spatial" in g:
        out["spatial"] = _r(g["spatial"].mean(dim=1))  # N×H×W
    for key, t in g.items():  # any other gate: channel mean as a 2-D map
        if key not in out and key not in ("h", "w") and t.dim() == 4:
            out[key] = _r(t.mean(dim=1) if t.shape[2] * t.shape[3] > 1 else t.flatten(1))
    return out


def compute_maps(model, images, mean, std, *, max_blocks: int = MAX_BLOCKS) -> list[dict]:
    """Gates of ``max_blocks`` evenly spread attention modules of ``model`` for ``images``
    (uint8 N×3×H×W), normalized with the data set's ``mean`` / ``std``."""
    import torch

    from caprobe.attention import AttentionModule
    from caprobe.data import to_input

    x = to_input(images, mean, std).float()
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionModule)]
    chosen = [modules[i] for i in pick_blocks(len(modules), max_blocks)]
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in chosen:
        def hook(mod, args, _name=name):
            captured[_name] = args[0].detach()
        hooks.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
            blocks = []
            for idx, (name, m) in zip(pick_blocks(len(modules), max_blocks), chosen,
                                      strict=True):
                inp = captured[name]
                blocks.append({
                    "name": name, "index": idx, "of": len(modules),
                    "spec": getattr(m, "spec", ""), "channels": int(inp.shape[1]),
                    "size": [int(inp.shape[2]), int(inp.shape[3])],
                    "gates": gate_summary(m.gates(inp)),
                })
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return blocks


def images_record(images, indices: list[int], labels: Any, classes: Any) -> dict[str, Any]:
    names = list(classes) if classes is not None else None
    labs = [int(labels[i]) for i in indices] if labels is not None else [None] * len(indices)
    return {
        "indices": indices,
        "labels": labs,
        "classes": [names[lab] if names and lab is not None and lab < len(names) else None
                    for lab in labs],
        "pixels": _image_record(images),
    }
