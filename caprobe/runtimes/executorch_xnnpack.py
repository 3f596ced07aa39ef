"""ExecuTorch with the XNNPACK delegate: ``torch.export`` → ``to_edge_transform_and_lower``
with :class:`XnnpackPartitioner` → ``.pte``.

The coverage record counts the nodes XNNPACK took and the ones left to ExecuTorch's portable
kernels, by operator: every node left out costs a graph break (a copy back to the portable
layout and a kernel that is not vectorised). ExecuTorch's thread pool is process-wide: a
session resets it to its thread count when loaded (and reads it back). The program is loaded
from its file, and the session keeps the program alive while its method runs (a method whose
program was freed crashes the process).
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import to_edge_transform_and_lower
from executorch.extension.pybindings import portable_lib
from executorch.runtime import Runtime

from caprobe.errors import CaprobeError, error_line
from caprobe.io import atomic_write_bytes
from caprobe.runtimes import Exported

#: file name suffix of an exported model
SUFFIX = ".pte"


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.removeprefix("aten.").split(".")[0]


def coverage(lowered: torch.fx.GraphModule) -> dict[str, Any]:
    """Delegated and left-out call nodes by operator (``getitem`` reads of the delegates'
    outputs are not kernels and are not counted) and the number of XNNPACK partitions."""
    delegated: collections.Counter[str] = collections.Counter()
    outside: collections.Counter[str] = collections.Counter()
    partitions = 0
    for node in lowered.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            partitions += 1
            inner = getattr(lowered, node.name).original_module.graph
            delegated.update(_op_name(n) for n in inner.nodes if n.op == "call_function")
        elif node.op == "call_function" and _op_name(node) not in (
                "executorch_call_delegate", "getitem"):
            outside[_op_name(node)] += 1
    return {"partitions": partitions, "delegated_nodes": sum(delegated.values()),
            "outside_nodes": sum(outside.values()), "delegated": dict(sorted(delegated.items())),
            "outside": dict(sorted(outside.items()))}


def quantize(model: torch.nn.Module, example: torch.Tensor,
             calibration: list[torch.Tensor]) -> torch.fx.GraphModule:
    """pt2e static int8 with the XNNPACK quantizer (symmetric, per-channel weights): the
    activation ranges observed on ``calibration``."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    captured = torch.export.export(model, (example,), strict=False).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(
        is_per_channel=True))
    prepared = prepare_pt2e(captured, quantizer)
    for batch in calibration:
        prepared(batch)
    return convert_pt2e(prepared)


def export(model: torch.nn.Module, example: torch.Tensor, path: Path,
           calibration: list[torch.Tensor] | None = None) -> Exported:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if calibration is not None:
                model = quantize(model, example, calibration)
            program = torch.export.export(model, (example,), strict=False)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            info = coverage(edge.exported_program().graph_module)
            data = edge.to_executorch().buffer
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one line
        raise CaprobeError(f"ExecuTorch export failed ({error_line(exc)}); the model must be "
                           "a static graph (export caprobe.deploy(model, target='graph'))"
                           ) from exc
    atomic_write_bytes(path, data)
    return Exported("executorch", str(path), len(data), 0.0, info)


class ExecuTorchSession:
    def __init__(self, path: Path, threads: int) -> None:
        portable_lib._unsafe_reset_threadpool(threads)
        try:
            self._program = Runtime.get().load_program(path)  # kept alive with the method
            self._method = self._program.load_method("forward")
        except Exception as exc:  # noqa: BLE001
            raise CaprobeError(f"ExecuTorch cannot load {path} ({error_line(exc)}); export "
                               "it again with caprobe export") from exc
        self.settings: dict[str, Any] = {
            "runtime": "executorch", "delegate": "XnnpackBackend",
            "threadpool_threads": portable_lib._threadpool_get_thread_count(),
        }

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self._method.execute([x.detach().contiguous()])[0].clone()

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        inputs = [x.detach().contiguous()]
        execute = self._method.execute
        return lambda: execute(inputs)


def load(path: Path, threads: int) -> ExecuTorchSession:
    return ExecuTorchSession(path, threads)
