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


def deploy(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The deployed form of ``model`` (a deep copy unless ``inplace``), in eval mode.

    Its outputs equal ``model.eval()``'s to float rounding for every input the model accepts;
    the original is left untouched (``inplace=False``). A model without attention modules
    comes back as an eval-mode copy. ``model.deployed`` is set to True.
    """
    target = model if inplace else copy.deepcopy(model)
    if isinstance(target, AttentionModule):
        target = target.fuse()
    else:
        for name, module in list(target.named_modules()):
            if isinstance(module, AttentionModule):
                parent, _, child = name.rpartition(".")
                setattr(target.get_submodule(parent) if parent else target, child, module.fuse())
    target.eval()  # after the swap: the fused modules (and anything they hold) too
    target.deployed = True
    return target
