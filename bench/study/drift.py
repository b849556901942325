"""How far each layer's output drifts from the float network's: the paper's "errors
accumulate through all layers" argument, measured instead of assumed."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


@torch.no_grad()
def layer_output_errors(model: nn.Module, reference: nn.Module, images: Sequence[Tensor],
                        layers: Sequence[str]) -> dict[str, float]:
    """Relative output error of each named layer against the same layer of `reference`.

    images: FloatTensor[3, H, W] in [0, 1], run as one batch through both networks in eval
    mode (the detector's own resizing and padding). For a layer with output y in `model` and
    y_ref in `reference` (all images and positions stacked into one vector):
    ||y - y_ref||_2 / ||y_ref||_2. A binarized layer is read through its parametrization or
    its unpacked weights alike, so a served checkpoint and a training network give the same
    numbers. The error of a layer includes what its inputs inherited from every layer before
    it: that is the accumulated error.

    Where a BatchNorm directly follows the layer in an `nn.Sequential` (PedNet's conv blocks),
    its output is compared instead: fine-tuning may rescale a conv's weights freely (the
    BatchNorm undoes it), so only the normalised feature is comparable with the float one.
    """
    outputs: dict[int, dict[str, Tensor]] = {0: {}, 1: {}}
    hooks = []
    for which, net in enumerate((model, reference)):
        modules = dict(net.named_modules())
        for name in layers:
            if name not in modules:
                raise ValueError(f"no layer {name!r} in the network")

            def keep(_m: nn.Module, _args: object, out: Tensor, which: int = which, name: str = name) -> None:
                outputs[which].setdefault(name, out.detach().float())  # first call: heads may run again
            hooks.append(modules[feature_module(modules, name)].register_forward_hook(keep))
    states = [model.training, reference.training]
    try:
        model.eval()
        reference.eval()
        model(list(images))
        reference(list(images))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(states[0])
        reference.train(states[1])
    errors = {}
    for name in layers:
        ours, ref = outputs[0][name], outputs[1][name]
        errors[name] = float(torch.linalg.vector_norm(ours - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-12))
    return errors


def feature_module(modules: dict[str, nn.Module], name: str) -> str:
    """The module whose output stands for layer `name`: the BatchNorm right after it in the
    same `nn.Sequential`, else the layer itself."""
    parent, _, index = name.rpartition(".")
    container = modules.get(parent)
    if isinstance(container, nn.Sequential) and index.isdigit() and int(index) + 1 < len(container):
        following = container[int(index) + 1]
        if isinstance(following, nn.modules.batchnorm._BatchNorm):
            return f"{parent}.{int(index) + 1}" if parent else str(int(index) + 1)
    return name
