"""The runtimes models ship with: export a model, load it with a pinned thread count, run it.

Every runtime is an optional extra, imported only when used:

=============  ===================  ==========================================================
name           extra                what runs
=============  ===================  ==========================================================
eager          (always)             PyTorch eager, the deployed form (``caprobe.deploy``)
onnxruntime    ``caprobe[onnx]``    ``torch.onnx.export(dynamo=True)`` → ONNX Runtime, CPU EP
executorch     ``caprobe[executorch]`` ``torch.export`` → XNNPACK delegate → ExecuTorch (.pte)
openvino       ``caprobe[openvino]``  ``openvino.convert_model`` → OpenVINO CPU plugin (.xml)
=============  ===================  ==========================================================

What is exported is ``caprobe.deploy(model, target=graph_target(runtime, int8))`` (each
attention module's :meth:`~caprobe.attention.base.AttentionModule.graph_form`, or its
``nchwc_form`` for ONNX Runtime fp32 on a CPU where ORT uses its blocked layout) unless the
caller passes another module. Each backend module offers ``export(model, example, path) ->
Exported`` and ``load(path, threads) -> Session``; :func:`backend` finds it by name, or fails
with one line naming the extra to install.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from caprobe.errors import CaprobeError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Exported runtimes: name -> (backend module, extra, the import that proves it installed).
RUNTIMES: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("caprobe.runtimes.onnx_runtime", "onnx", "onnxruntime"),
    "executorch": ("caprobe.runtimes.executorch_xnnpack", "executorch", "executorch.exir"),
    "openvino": ("caprobe.runtimes.openvino_cpu", "openvino", "openvino"),
}
#: What ``--runtime`` accepts: PyTorch eager and the exported runtimes.
RUNTIME_NAMES = ("eager", *RUNTIMES)


@functools.cache
def int8_saturates() -> bool:
    """Whether this CPU multiplies int8 without VNNI (x86 with AVX2 or AVX-512 only): there
    the u8 x s8 kernels of ONNX Runtime and OpenVINO add pairs of products in 16 bits, which
    saturate with 8-bit weights. Measured on an AVX2-only AMD EPYC: SE's MobileNetV2 drifted
    to 0.19 of the largest logit in int8 in ORT and CA's block to 0.15 in OpenVINO (0.02-0.04
    with VNNI); with 7-bit weights both stay within the tests' bound of 0.1. Both quantisers
    then keep weights in 7 bits (ORT ``reduce_range``, NNCF's overflow fix on every layer)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = _cpu_flags()
    # no flags to read (no /proc/cpuinfo): unknown, keep the quantisers' 8-bit default
    return bool(flags) and not {"avx512_vnni", "avx_vnni", "amx_int8"} & flags


def _cpu_flags() -> set[str]:
    """The words of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def int8_weight_bits() -> str:
    """What the int8 exports of ONNX Runtime and OpenVINO keep their weights in here, for the
    records (``Exported.coverage["int8_weights"]``): see :func:`int8_saturates`."""
    return ("7-bit (no VNNI on this CPU: 16-bit accumulation would saturate)"
            if int8_saturates() else "8-bit")


@dataclass
class Exported:
    """One exported file and what the runtime's compiler did with the graph."""

    runtime: str
    path: str
    bytes: int
    export_s: float
    #: runtime-specific op coverage: ExecuTorch's delegated / left-out node counts by
    #: operator, ONNX Runtime's node counts by op type (and, in int8, the ops left in fp32)
    coverage: dict[str, Any] = field(default_factory=dict)
    #: "fp32", or "int8": static post-training quantisation calibrated on ``calibration``
    precision: str = "fp32"
    calibration_images: int = 0


class Session(Protocol):
    """A loaded model: ``run(x)`` returns the output as a torch tensor; ``bind(x)`` returns a
    call that runs the model on ``x`` with nothing converted per call (the timed form);
    ``settings`` holds what the runtime reports it applied (threads, precision, ...)."""

    settings: dict[str, Any]

    def run(self, x: torch.Tensor) -> torch.Tensor: ...

    def bind(self, x: torch.Tensor) -> Callable[[], Any]: ...


def check_runtime(name: str) -> str:
    """``name`` canonical (lower case), or a one-line error listing the runtimes."""
    key = str(name).strip().lower()
    if key not in RUNTIME_NAMES:
        raise CaprobeError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIME_NAMES)}")
    return key


def backend(name: str) -> Any:
    """The backend module of an exported runtime; a one-line error naming the extra when its
    packages are missing."""
    key = check_runtime(name)
    if key == "eager":
        raise CaprobeError("eager is PyTorch itself: there is nothing to export; pick "
                           f"one of {', '.join(RUNTIMES)}")
    module, extra, probe = RUNTIMES[key]
    try:
        importlib.import_module(probe)
    except ImportError as exc:
        raise CaprobeError(f"runtime {key} needs the {extra} extra ({exc.name or probe} is not "
                           f"installed); pip install 'caprobe[{extra}]'") from exc
    return importlib.import_module(module)


#: Runtimes with a static int8 path: ONNX Runtime (QDQ, ``quantize_static`` after
#: ``quant_pre_process``, per-channel weights, MinMax calibration), ExecuTorch (pt2e with
#: the XNNPACK quantizer, symmetric per-channel, then lowered to XNNPACK) and OpenVINO (NNCF
#: ``quantize``; the precision each op runs in is read from the compiled model).
INT8_RUNTIMES = ("onnxruntime", "executorch", "openvino")
#: Training images that calibrate an int8 model by default (``export --calib-images``, and
#: every variant and seed of ``compare --int8``): the first ones of the training split. 256
#: is the order ONNX Runtime's and NNCF's examples use (NNCF's default subset is 300); the
#: activation ranges are MinMax, so more images can only widen them.
CALIBRATION_IMAGES = 256


def graph_target(runtime: str, int8: bool = False) -> str:
    """The :func:`caprobe.deploy` target whose forms ``runtime`` runs fastest: ``"nchwc"``
    for ONNX Runtime in fp32 where it runs convolutions in its NCHWc layout
    (:func:`caprobe.runtimes.onnx_runtime.uses_nchwc`), else ``"graph"`` (int8 QDQ graphs
    run the gates' ops outside that layout anyway)."""
    if runtime == "onnxruntime" and not int8 and backend(runtime).uses_nchwc():
        return "nchwc"
    return "graph"


def export(model: torch.nn.Module, example: torch.Tensor, path: str | Path, runtime: str,
           calibration: list[torch.Tensor] | None = None) -> Exported:
    """Export ``model`` (as given: pass ``caprobe.deploy(m, target=graph_target(runtime,
    int8=calibration is not None))``) for ``runtime`` at ``example``'s shape into ``path``;
    the file is written whole or not at all. With ``calibration`` (batches of ``example``'s
    shape), the file is statically quantised to int8, its activation ranges observed on
    those batches."""
    import torch

    if calibration is not None:
        if not calibration:
            raise CaprobeError("int8 needs calibration images; pass --calib-data NAME")
        bad = [tuple(b.shape) for b in calibration if b.shape != example.shape]
        if bad:
            raise CaprobeError(f"calibration batch of shape {bad[0]} does not match the "
                               f"export shape {tuple(example.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        exported = backend(runtime).export(model.eval(), example, path, calibration)
    exported.export_s = time.perf_counter() - t0
    if calibration is not None:
        exported.precision, exported.calibration_images = "int8", sum(
            b.shape[0] for b in calibration)
    return exported


def load(path: str | Path, runtime: str, threads: int) -> Session:
    """Load an exported file with ``threads`` intra-op threads (and nothing else in parallel)."""
    if threads < 1:
        raise CaprobeError(f"thread count {threads} is invalid; use an integer >= 1")
    if not Path(path).exists():
        raise CaprobeError(f"{path} does not exist; export it first with caprobe export")
    return backend(runtime).load(Path(path), threads)


def max_error(expected: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """``{"max_abs": ..., "max_rel": ...}``: the largest absolute difference, and that
    relative to the largest magnitude of ``expected``."""
    diff = float((expected.float() - got.float()).abs().max())
    scale = float(expected.float().abs().max())
    return {"max_abs": diff, "max_rel": diff / scale if scale > 0 else diff}


def coverage_note(runtime: str, coverage: dict[str, Any], settings: dict[str, Any]) -> str:
    """One line on what ``runtime`` did with a graph: delegation (ExecuTorch), node count
    (ONNX Runtime), the precision per op (OpenVINO), and the thread setting read back."""
    if runtime == "executorch":
        outside = coverage.get("outside") or {}
        left = (", ".join(f"{op} ×{n}" for op, n in outside.items()) if outside
                else "nothing left out")
        return (f"XNNPACK took {coverage.get('delegated_nodes')} nodes in "
                f"{coverage.get('partitions')} partition(s); {left}; thread pool "
                f"{settings.get('threadpool_threads')}")
    if runtime == "openvino":
        precisions = settings.get("runtime_precisions") or {}
        ran = ", ".join(f"{p} ×{sum(ops.values())}" for p, ops in precisions.items())
        return (f"{coverage.get('nodes')} ops; executed as {ran or '?'} (inference precision "
                f"{settings.get('inference_precision')}, threads "
                f"{settings.get('inference_num_threads')}, streams {settings.get('num_streams')})")
    return (f"{coverage.get('nodes')} ONNX nodes; intra-op threads "
            f"{settings.get('intra_op_num_threads')}, spinning "
            f"{'off' if settings.get('allow_spinning') == '0' else 'on'}")


def runtime_notes(results: list[Any]) -> list[str]:
    """A line per exported variant of a list of latency results (none for eager ones): the
    :func:`caprobe.deploy` target it was exported for (:func:`graph_target`'s; none named for
    models timed as given), export, load and first-call times, then :func:`coverage_note`."""
    lines = []
    for r in results:
        info = r.env.get("runtime")
        if not info:
            continue
        form = f"deploy target {info['deploy_target']}, " if info.get("deploy_target") else ""
        lines.append(f"{r.runtime} {r.label}: {form}export {info['export_s']:.1f} s, load "
                     f"{info['load_s']:.2f} s, first call {info['first_call_ms']:.1f} ms; "
                     f"{coverage_note(r.runtime, info['coverage'], info['settings'])}")
    return lines


#: ``caprobe export --format`` names → runtimes.
FORMATS = {"onnx": "onnxruntime", "executorch": "executorch", "openvino": "openvino"}


@dataclass
class ExportReport:
    """What ``caprobe export`` did: the file, its coverage, the settings the runtime applied
    when loading it back, and its outputs' error against eager PyTorch per input."""

    exported: Exported
    settings: dict[str, Any]
    errors: dict[str, dict[str, float]]
    input_shape: list[int]
    form: str  # the deploy target written ("graph" or "nchwc"), or "paper"


def export_checked(model: torch.nn.Module, path: str | Path, runtime: str,
                   inputs: dict[str, torch.Tensor], *, threads: int = 1,
                   form: str = "graph", target: str | None = None,
                   calibration: list[torch.Tensor] | None = None) -> ExportReport:
    """Export ``model`` for ``runtime`` in ``form`` (``"graph"``: a deployed form, for the
    :func:`caprobe.deploy` ``target`` given or else :func:`graph_target`'s, which the report
    names; ``"paper"``: the papers' equations in plain operators) at the first input's shape
    (int8 with ``calibration``), load the file back and compare the runtime's outputs with
    eager PyTorch in fp32 (the model in eval mode) on every input (same shape). The file is
    made for this machine's runtime: ``target="graph"`` is the form every CPU runs well."""
    import torch

    from caprobe.attention.reference import reference_form
    from caprobe.deployment import deploy

    if form not in ("graph", "paper"):
        raise CaprobeError(f"unknown export form {form!r}; choose graph or paper")
    model = model.eval()
    if form == "graph":
        written = target or graph_target(runtime, calibration is not None)
        graph = deploy(model, target=written)
    else:
        written, graph = "paper", reference_form(model).eval()
    first = next(iter(inputs.values()))
    exported = export(graph, first, path, runtime, calibration)
    session = load(exported.path, runtime, threads)
    errors = {}
    with torch.no_grad():
        for name, x in inputs.items():
            errors[name] = max_error(model(x), session.run(x))
    return ExportReport(exported, session.settings, errors, list(first.shape), written)
