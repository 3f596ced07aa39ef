"""ONNX Runtime (CPU execution provider): ``torch.onnx.export(dynamo=True)`` → ``.onnx``.

Sessions run with ``intra_op_num_threads`` pinned, one inter-op thread, sequential execution
and spinning off (``session.intra_op.allow_spinning=0``: a spinning pool burns the cores that
an interleaved neighbour is being timed on), all graph optimisations on.
"""

from __future__ import annotations

import collections
import functools
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from caprobe.errors import CaprobeError, error_line
from caprobe.io import atomic_write_bytes
from caprobe.runtimes import Exported, int8_saturates, int8_weight_bits

#: file name suffix of an exported model
SUFFIX = ".onnx"


class _Batches:
    """ONNX Runtime's calibration reader over a list of batches."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self._feeds = iter([{"x": b.detach().contiguous().numpy()} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def _quantize(data: bytes, folder: Path, calibration: list[torch.Tensor]) -> bytes:
    """QDQ int8 (per-channel weights, MinMax activation ranges) of an fp32 model; 7-bit
    weights on a CPU without VNNI (:func:`caprobe.runtimes.int8_saturates`)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(dir=folder, prefix=".int8-") as tmp:
        raw, pre, out = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        raw.write_bytes(data)
        # ONNX's own shape inference suffices for a static graph; ORT's symbolic one fails on
        # CBAM's channel ReduceMax feeding a Concat ("'NoneType' object is not iterable")
        quant_pre_process(str(raw), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Batches(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=int8_saturates(),
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()


def fp32_ops(graph) -> dict[str, int]:
    """Op types of the nodes of a QDQ graph that still compute in fp32: a float input that
    no DequantizeLinear feeds (Q/DQ nodes themselves, and shape-only ops, not counted)."""
    made_by = {out: node.op_type for node in graph.graph.node for out in node.output}
    constants = {init.name for init in graph.graph.initializer}
    skip = {"QuantizeLinear", "DequantizeLinear", "Shape", "Reshape", "Flatten", "Constant"}
    left: collections.Counter[str] = collections.Counter()
    for node in graph.graph.node:
        if node.op_type in skip:
            continue
        inputs = [i for i in node.input if i and i not in constants]
        if any(made_by.get(i, "input") != "DequantizeLinear" for i in inputs):
            left[node.op_type] += 1
    return dict(sorted(left.items()))


def export(model: torch.nn.Module, example: torch.Tensor, path: Path,
           calibration: list[torch.Tensor] | None = None) -> Exported:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["x"],
                                        output_names=["logits"], verbose=False)
        graph = program.model_proto  # weights included; serialised in memory, written once
        data = graph.SerializeToString()
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one line
        raise CaprobeError(f"ONNX export failed ({error_line(exc)}); the model must be a "
                           "static graph (export caprobe.deploy(model, target='graph'))") from exc
    coverage: dict = {}
    if calibration is not None:
        try:
            data = _quantize(data, path.parent, calibration)
        except Exception as exc:  # noqa: BLE001
            raise CaprobeError(f"ONNX Runtime int8 quantisation failed ({error_line(exc)})"
                               ) from exc
        graph = onnx.load_from_string(data)
        coverage["fp32_ops"] = fp32_ops(graph)
        coverage["int8_weights"] = int8_weight_bits()
    atomic_write_bytes(path, data)
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    coverage.update(nodes=sum(ops.values()), ops=dict(sorted(ops.items())))
    return Exported("onnxruntime", str(path), len(data), 0.0, coverage)


#: the ONNX domain of ONNX Runtime's NCHWc operators
NCHWC_DOMAIN = "com.microsoft.nchwc"


def optimised_graph(model: bytes | Path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs for ``model`` (a serialised model or its file) on this
    CPU, all graph optimisations on: its optimised form, written out by ORT and read back."""
    with tempfile.TemporaryDirectory(prefix="caprobe-ort-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                             providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


@functools.cache
def uses_nchwc() -> bool:
    """Whether this ONNX Runtime build on this CPU runs convolutions in its channel-blocked
    NCHWc layout (x86 with AVX2 or AVX-512, all graph optimisations on): read from ORT
    itself, by optimising a one-conv graph and looking for the layout's domain. Should that
    probe fail, False: the graph form is right on every CPU."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [16, 16, 1, 1], [0.0] * 256)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 4])], [weight])
    # IR 8 / opset 17: what every ONNX Runtime since 1.13 reads, whatever onnx writes by default
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        optimised = optimised_graph(model.SerializeToString())
    except Exception:  # noqa: BLE001 - no probe, no blocked form: the graph form is safe
        return False
    return any(node.domain == NCHWC_DOMAIN for node in optimised.graph.node)


class OrtSession:
    def __init__(self, path: Path, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001
            raise CaprobeError(f"ONNX Runtime cannot load {path} ({error_line(exc)}); "
                               "export it again with caprobe export") from exc
        self._input = self._session.get_inputs()[0].name
        applied = self._session.get_session_options()
        self.settings: dict[str, Any] = {
            "runtime": "onnxruntime", "version": ort.__version__,
            "providers": self._session.get_providers(),
            "intra_op_num_threads": applied.intra_op_num_threads,
            "inter_op_num_threads": applied.inter_op_num_threads,
            "allow_spinning": applied.get_session_config_entry(
                "session.intra_op.allow_spinning"),
        }

    def run(self, x: torch.Tensor) -> torch.Tensor:
        out = self._session.run(None, {self._input: x.detach().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        feed = {self._input: x.detach().contiguous().numpy()}
        run = self._session.run
        return lambda: run(None, feed)


def load(path: Path, threads: int) -> OrtSession:
    return OrtSession(path, threads)
