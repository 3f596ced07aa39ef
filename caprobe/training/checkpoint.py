"""Checkpoints written atomically: a partial write never replaces a good checkpoint.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (model, optimiser,
scheduler, scaler, RNG states, epoch counters, metric rows), so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from caprobe.errors import CaprobeError
from caprobe.io import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
SCHEMA = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Serialise in memory, then write a temp file in the same folder and rename it over
    ``path`` (fsync'd). Any failure leaves the previous checkpoint untouched."""
    buf = io.BytesIO()
    torch.save({"schema": SCHEMA, **state}, buf)
    return atomic_write_bytes(path, buf.getbuffer())


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means a bad file
        raise CaprobeError(f"checkpoint {path} is unreadable ({type(exc).__name__}); "
                           "delete it to restart the run from scratch") from exc
    if not isinstance(state, dict) or state.get("schema") != SCHEMA:
        raise CaprobeError(f"{path} is not a caprobe checkpoint (schema {SCHEMA})")
    return state
