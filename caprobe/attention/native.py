"""caprobe's native CPU kernels for Coordinate Attention's and CBAM's training steps.

``csrc/strip_kernels.cpp`` holds CA's: for channels-last maps, three one-pass map kernels
(both strip means in one read of the map; ``out = a · g^h · g^w [+ strip terms]`` in one pass,
the gate product and the input's whole gradient; both gates' gradients in one read of ``dy``
and ``x``) where eager PyTorch needs two to five passes for each (a temporary per factor
pair, one per reduction, autograd's sum of two input gradients); and CA's gates on the strips
(F1, BN on batch statistics, the activation, the gate convs, the gate) forward and backward in
one call each, about 22 eager operators per block. On this project's 2-core Xeon (2026-12-03,
the largest block of MobileNetV2-0.5's CIFAR profile, 64×96×32×32, alone): strip means 1.19
→ 0.60 ms, gate product 2.0 → 1.1 ms, the backward's reductions 4.9 → 1.0 ms, its input
gradient 5.5 → 1.1 ms; the gates of every block, per step, 18.7 → 15.2 ms; a whole CA
training step 1.34× → 1.17–1.22× ``none``'s (``benchmarks/train_throughput.py``, three runs).

``csrc/gate_kernels.cpp`` holds CBAM's: both pooled vectors in one read, the spatial
descriptor of ``x · gc`` without forming it, ``x · gc · gs`` in one pass; backward, the gates'
gradients in two reads and the input's whole gradient in one pass (seven map passes in all,
against about fifteen). At 64×96×32×32 they take 0.6 (pools), 1.8 (descriptor: a maximum and
its channel per position), 0.9, 0.9, 0.5 and 0.9 ms, against 0.9 ms for a copy of the map; a
whole CBAM training step 1.55× → 1.27× ``none``'s. It holds the channel gates' (SE, ECA)
backward too: their gate's gradient in one read of ``dy`` and ``x``, the input's whole
gradient in one pass (eager autograd: five passes and a map-sized temporary); SE's step
1.18× → 1.14×, ECA's 1.20× → 1.15× ``none``'s in one run each way.

The kernels are compiled once per machine kind on first use by
:func:`torch.utils.cpp_extension.load` (g++ with OpenMP, three sources, about 30 s; cached under
``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), with the vector flags of
the CPU capability torch itself runs with, named by it, so a shared home directory serves
machines of different kinds. Work runs in fixed blocks (a sample, or 64 strip rows) and sums
over blocks are added in order: results do not depend on the thread count.

``CAPROBE_KERNELS=eager`` leaves them unused (the eager functions of
:mod:`caprobe.attention.functional`, same math); ``native`` or unset is the default; any
other value is an error. Without a working compiler the build fails once, with a warning, and
the eager functions run.
"""

from __future__ import annotations

import sys
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from caprobe.runtime import kernel_setting

_CSRC = Path(__file__).with_name("csrc")  # the sources and kernels.h, nothing else
_SOURCES = [_CSRC / name for name in ("module.cpp", "strip_kernels.cpp", "gate_kernels.cpp")]
#: the vector flags for each of torch's CPU capabilities (``torch.backends.cpu``)
_ARCH_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}
DTYPES = (torch.float32, torch.float64)


@lru_cache(maxsize=1)
def attention_kernels() -> ModuleType | None:
    """The compiled kernels, or None when ``CAPROBE_KERNELS=eager`` or the build failed
    (warned once). A first build says so on stderr (it takes about 30 s)."""
    if kernel_setting() == "eager":
        return None
    from torch.utils import cpp_extension

    capability = torch.backends.cpu.get_cpu_capability()
    name = f"caprobe_attention_kernels_{capability.lower()}"
    try:  # built, and after the last change to the sources (a newer caprobe rebuilds)
        library = Path(cpp_extension._get_build_directory(name, False)) / f"{name}.so"
        built = library.exists() and library.stat().st_mtime >= max(
            path.stat().st_mtime for path in _CSRC.iterdir())
    except Exception:  # noqa: BLE001 - only decides whether to print the note below
        built = True
    if not built:
        print("caprobe: compiling the native attention kernels for this machine, once "
              "(about 30 s)", file=sys.stderr, flush=True)
    try:
        return cpp_extension.load(
            name=name, sources=[str(path) for path in _SOURCES],
            extra_cflags=["-O3", "-fopenmp", *_ARCH_FLAGS.get(capability, [])],
            extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as exc:  # noqa: BLE001 - no compiler, no ninja, a read-only cache
        reason = " ".join(str(exc).split())[:200]
        warnings.warn(f"caprobe: the native attention kernels did not build ({reason}); "
                      "training runs the eager functions (same math, slower); "
                      "CAPROBE_KERNELS=eager silences this", RuntimeWarning, stacklevel=2)
        return None


def prepare(device: str) -> str:
    """Build or load the kernels before a training on ``device`` needs them (so that a build
    never runs beside a timing or inside a step); returns :func:`kernels_state`."""
    if str(device).startswith("cpu"):
        attention_kernels()
    return kernels_state()


def kernels_state() -> str:
    """Whether this process had the native kernels, for environment records: ``"native"``
    (loaded: CA trained through them wherever they apply, a channels-last float32/64 CPU
    map), ``"eager"`` (``CAPROBE_KERNELS=eager``, or the build failed) or ``"unused"`` (not
    asked for in this process: nothing trained on the CPU here)."""
    if attention_kernels.cache_info().currsize == 0:
        return "unused"
    return "native" if attention_kernels() is not None else "eager"


def native_for(xm: torch.Tensor) -> ModuleType | None:
    """The kernels if they can run on the NHWC view ``xm`` of a map (CPU, float32 or float64,
    contiguous: the map is channels-last), else None."""
    if xm.device.type != "cpu" or xm.dtype not in DTYPES or not xm.is_contiguous():
        return None
    return attention_kernels()
