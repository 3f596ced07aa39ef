"""Decode image files to one uint8 N×H×W×3 array, in parallel, never stopping at a bad file.

Every image is converted to RGB (grayscale, palette, CMYK, alpha all handled). An image that
is not ``size``×``size`` is resized so its shorter side is ``size`` (bilinear, antialiased;
JPEG draft mode first so large JPEGs decode at a reduced scale) and centre-cropped.
Unreadable or truncated files are returned as errors, not raised, so ``caprobe data check``
can list them all.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from caprobe.data.sources import read_locator

PARALLEL_MIN = 2048
CHUNK = 1000
RESIZE_TAG = "rgb;short-side-bilinear+center-crop"


def _decode_one(data: bytes, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if im.size != (size, size) and im.format == "JPEG":
            im.draft("RGB", (size, size))
        im.load()
        if im.mode != "RGB":
            im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (size, size):
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise ValueError(f"decoded to shape {arr.shape}")
    return arr


def _decode_chunk(args: tuple[Sequence[tuple], int]) -> tuple[np.ndarray, list[bytes], list]:
    locators, size = args
    out = np.zeros((len(locators), size, size, 3), dtype=np.uint8)
    digests: list[bytes] = []
    errors: list[tuple[int, str]] = []
    for i, loc in enumerate(locators):
        try:
            data = read_locator(loc)
        except OSError as exc:
            digests.append(b"")
            errors.append((i, f"cannot read ({exc.strerror or exc})"))
            continue
        digests.append(hashlib.sha256(data).digest())
        try:
            out[i] = _decode_one(data, size)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            errors.append((i, f"unreadable image ({msg})"))
    return out, digests, errors


def decode_images(locators: Sequence[tuple], size: int, *, workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None
                  ) -> tuple[np.ndarray, list[bytes], list[tuple[int, str]]]:
    """Decode every locator to ``size``×``size`` RGB: (N×H×W×3 uint8, sha256 per file, errors).

    ``errors`` holds ``(index, reason)``; those rows are left black.
    """
    n = len(locators)
    chunks = [(locators[i:i + CHUNK], size) for i in range(0, n, CHUNK)]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    digests: list[bytes] = []
    errors: list[tuple[int, str]] = []
    done = 0

    def collect(k: int, result) -> None:
        nonlocal done
        arr, dig, err = result
        start = k * CHUNK
        images[start:start + len(arr)] = arr
        digests.extend(dig)
        errors.extend((start + i, msg) for i, msg in err)
        done += len(arr)
        if progress is not None:
            progress(done, n)

    if n >= PARALLEL_MIN and workers > 1 and sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(workers, len(chunks))) as pool:
            for k, result in enumerate(pool.imap(_decode_chunk, chunks)):
                collect(k, result)
    else:
        for k, chunk in enumerate(chunks):
            collect(k, _decode_chunk(chunk))
    return images, digests, errors
