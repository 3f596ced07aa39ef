"""OpenVINO (CPU plugin): ``openvino.convert_model`` → IR (``.xml`` + ``.bin``), weights kept
in fp32 (``compress_to_fp16=False``).

Compiled with ``INFERENCE_NUM_THREADS`` pinned, the LATENCY hint, one stream, and
``INFERENCE_PRECISION_HINT=f32``: on a CPU with bf16/AMX (this one) OpenVINO otherwise runs
an fp32 model in bf16 without saying so. The coverage record is the precision the plugin
actually chose, by op type, read from the compiled model's runtime graph.
"""

from __future__ import annotations

import collections
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openvino as ov
import torch

from caprobe.errors import CaprobeError, error_line
from caprobe.runtimes import Exported, int8_saturates, int8_weight_bits

#: file name suffix of an exported model
SUFFIX = ".xml"


def _quantize(model: ov.Model, calibration: list[torch.Tensor]) -> ov.Model:
    """NNCF post-training int8 (its defaults: per-channel weights, fast bias correction), the
    activation ranges observed on ``calibration``; its progress bars are silenced. Its
    overflow fix (7-bit weights) covers every layer on a CPU without VNNI
    (:func:`caprobe.runtimes.int8_saturates`); elsewhere NNCF's default."""
    import contextlib
    import io
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    batches = [b.detach().contiguous().numpy() for b in calibration]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                             advanced_parameters=nncf.AdvancedQuantizationParameters(
                                 overflow_fix=nncf.OverflowFix.ENABLE if int8_saturates()
                                 else None))


def export(model: torch.nn.Module, example: torch.Tensor, path: Path,
           calibration: list[torch.Tensor] | None = None) -> Exported:
    if path.suffix != ".xml":
        raise CaprobeError(f"an OpenVINO model is saved as .xml (+ .bin); got {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = ov.convert_model(torch.export.export(model, (example,), strict=False))
            converted.reshape({0: list(example.shape)})  # static shapes, as the others
            if calibration is not None:
                converted = _quantize(converted, calibration)
    except Exception as exc:  # noqa: BLE001 - any converter failure becomes one line
        raise CaprobeError(f"OpenVINO conversion failed ({error_line(exc)}); the model must be "
                           "a static graph (export caprobe.deploy(model, target='graph'))"
                           ) from exc
    # the .xml names its .bin: both are written under temporary names, then renamed
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / path.name
        ov.save_model(converted, staged, compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)
    ops = collections.Counter(op.get_type_name() for op in converted.get_ordered_ops())
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    coverage: dict = {"nodes": sum(ops.values()), "ops": dict(sorted(ops.items()))}
    if calibration is not None:  # NNCF's default keeps the first layer in 7 bits anyway
        coverage["int8_weights"] = (int8_weight_bits() if int8_saturates()
                                    else "8-bit (7-bit first layer, NNCF's default)")
    return Exported("openvino", str(path), size, 0.0, coverage)


def runtime_precisions(compiled: ov.CompiledModel) -> dict[str, dict[str, int]]:
    """``{precision: {op type: count}}`` of the executable graph the plugin built."""
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        precision = (info["runtimePrecision"].astype(str) if "runtimePrecision" in info
                     else "?")
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        table[precision][kind] += 1
    return {p: dict(sorted(c.items())) for p, c in sorted(table.items())}


class OpenVinoSession:
    def __init__(self, path: Path, threads: int) -> None:
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                  "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        try:
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # noqa: BLE001
            raise CaprobeError(f"OpenVINO cannot load {path} ({error_line(exc)}); export it "
                               "again with caprobe export") from exc
        self._request = self._compiled.create_infer_request()
        get = self._compiled.get_property
        self.settings: dict[str, Any] = {
            "runtime": "openvino", "version": ov.get_version(), "device": "CPU",
            "inference_num_threads": int(get("INFERENCE_NUM_THREADS")),
            "num_streams": int(get("NUM_STREAMS")),
            "performance_hint": str(get("PERFORMANCE_HINT")),
            "inference_precision": get("INFERENCE_PRECISION_HINT").get_type_name(),
            "runtime_precisions": runtime_precisions(self._compiled),
        }

    def run(self, x: torch.Tensor) -> torch.Tensor:
        out = self._request.infer({0: x.detach().contiguous().numpy()})
        return torch.from_numpy(next(iter(out.values())).copy())

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        self._request.set_input_tensor(ov.Tensor(x.detach().contiguous().numpy(),
                                                 shared_memory=True))
        infer = self._request.infer
        return lambda: infer()


def load(path: Path, threads: int) -> OpenVinoSession:
    return OpenVinoSession(path, threads)
