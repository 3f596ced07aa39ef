"""``caprobe.deploy(model)``: the model as it ships, made once, by an explicit call.

A trainable model has one forward, the papers' math. Its deployed form is a copy in eval mode
in which every attention module is replaced by what its :meth:`fuse` returns: BN folded into
the layer before it, the tuned inference paths (see each module), in-place products where the
backbone built the module with ``inplace=True`` (its input is a temporary). One way, like
timm's ``reparameterize_model`` or RepVGG's ``switch_to_deploy``: a deployed model is for
inference and cannot be trained. The backbones' own conv+BN pairs stay as they are: oneDNN
already runs BN in eval mode as a cheap affine pass, and folding them would change what the
counts and latency records describe beyond the attention modules.
"""

from __future__ import annotations

import copy

from torch import nn

from caprobe.attention.base import AttentionModule
from caprobe.errors import CaprobeError

#: What the deployed form is for: ``"eager"`` (PyTorch: each module's :meth:`fuse`, tuned for
#: eager CPU and CUDA kernels) or ``"graph"`` (exported graphs: each module's
#: :meth:`graph_form`, in ops ONNX Runtime, ExecuTorch-XNNPACK and OpenVINO run as fused
#: kernels; see ``caprobe.runtimes``) or ``"nchwc"`` (each module's :meth:`nchwc_form`: the
#: graph forms for ONNX Runtime's channel-blocked layout on x86, chosen by
#: :func:`caprobe.runtimes.graph_target`).
TARGETS = ("eager", "graph", "nchwc")


def deploy(model: nn.Module, *, inplace: bool = False, target: str = "eager") -> nn.Module:
    """The deployed form of ``model`` for ``target`` (a deep copy unless ``inplace``), in
    eval mode.

    Its outputs equal ``model.eval()``'s to float rounding for every input the model accepts;
    the original is left untouched (``inplace=False``). A model without attention modules
    comes back as an eval-mode copy. ``model.deployed`` is set to ``target``'s name.
    """
    if target not in TARGETS:
        raise CaprobeError(f"unknown deploy target {target!r}; choose one of "
                           f"{', '.join(TARGETS)}")
    target_model = model if inplace else copy.deepcopy(model)

    def form(module: AttentionModule) -> nn.Module:
        return {"eager": module.fuse, "graph": module.graph_form,
                "nchwc": module.nchwc_form}[target]()

    if isinstance(target_model, AttentionModule):
        target_model = form(target_model)
    else:
        for name, module in list(target_model.named_modules()):
            if isinstance(module, AttentionModule):
                parent, _, child = name.rpartition(".")
                owner = target_model.get_submodule(parent) if parent else target_model
                setattr(owner, child, form(module))
    target_model.eval()  # after the swap: the new modules (and anything they hold) too
    target_model.deployed = target
    return target_model
