"""ONNX Runtime (CPU execution provider): ``torch.onnx.export(dynamo=True)`` → ``.onnx``.

Sessions run with ``intra_op_num_threads`` pinned, one inter-op thread, sequential execution
and spinning off (``session.intra_op.allow_spinning=0``: a spinning pool burns the cores that
an interleaved neighbour is being timed on), all graph optimisations on.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from caprobe.errors import CaprobeError
from caprobe.io import atomic_write_bytes
from caprobe.runtimes import Exported, error_line

#: file name suffix of an exported model
SUFFIX = ".onnx"


def export(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Exported:
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
    atomic_write_bytes(path, data)
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    return Exported("onnxruntime", str(path), len(data), 0.0,
                    {"nodes": sum(ops.values()), "ops": dict(sorted(ops.items()))})


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
            "precision": "fp32",
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
