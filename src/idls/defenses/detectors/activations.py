"""Every layer's output of a classifier's network, flattened per image, recorded with forward hooks.

Detectors that look inside the network (LID) need the activations of all its layers
for a batch. The rule that picks the layers is generic over registered models:

* **Layers** are the direct children of the network (``Classifier.net``), where a
  plain container (exactly ``nn.Sequential``, ``nn.ModuleList`` or ``nn.ModuleDict``,
  not a subclass with its own ``forward``) is replaced by its members, recursively.
  So a CIFAR ResNet gives ``conv1, bn1, relu, layer1.0 .. layer3.2, linear`` (residual
  blocks are layers) and the embedded CNN gives every conv / batch-norm / ReLU / max-pool
  of ``features`` and ``fc``.
* Modules whose eval-mode output is their input reshaped (``nn.Identity``, dropout,
  ``nn.Flatten``, ``nn.Unflatten``) are left out: they would repeat the previous
  layer's distances.
* A layer is recorded each time it is called, in call order (a module called twice
  gives ``name`` and ``name#2``); a layer the forward pass never calls is absent;
  outputs that are not tensors are skipped.
* The **logits** (the classifier's output) come last, unless the last recorded layer
  output already equals them (a final linear layer), which is not repeated.

The classifier is *called* (so its normalisation and ``input_transform`` apply) while
its network is hooked; :func:`recording` removes the hooks on exit, also on errors.
Outputs are copied when recorded, so in-place modules (``ReLU(inplace=True)``) cannot
change them afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn

from idls.system import Classifier

#: modules that only group others (replaced by their members)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
#: modules whose eval-mode output is their input, reshaped
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout, nn.Flatten, nn.Unflatten)


def activation_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` layers of ``net`` under the module docstring's rule, in registration order."""
    layers: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if type(child) in _CONTAINERS:
                visit(f"{full}.", child)
            elif not isinstance(child, _PASS_THROUGH):
                layers.append((full, child))

    visit("", net)
    return layers


@dataclass
class ActivationRecord:
    """What one hooked forward pass recorded: layer names and their outputs ``B x D_l`` (flattened copies)."""

    names: list[str] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)

    def clear(self) -> None:
        self.names.clear()
        self.outputs.clear()


@contextmanager
def recording(net: nn.Module) -> Iterator[ActivationRecord]:
    """Hook every layer of ``net`` (:func:`activation_layers`) while the block runs; the hooks are removed on exit.

    Each call of a layer appends its output, flattened to ``B x D`` and copied, to the
    yielded :class:`ActivationRecord`. Gradients flow through the copies.
    """
    record = ActivationRecord()
    calls: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if not isinstance(output, Tensor):
                return
            calls[name] = calls.get(name, 0) + 1
            record.names.append(name if calls[name] == 1 else f"{name}#{calls[name]}")
            record.outputs.append(output.flatten(1).clone())
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in activation_layers(net)]
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def layer_activations(classifier: Classifier, x: Tensor) -> tuple[list[str], list[Tensor]]:
    """Per-layer activations of pixels ``x`` (``B x C x H x W`` in [0, 1]) and the logits.

    Returns:
        ``(names, outputs)``: one name and one ``B x D_l`` tensor per layer (the
        module docstring's rule), the logits ``B x N`` last (named ``'logits'`` unless
        the last layer's output already is the logits).
    """
    with recording(classifier.net) as record:
        logits = classifier(x)
        names, outputs = list(record.names), list(record.outputs)
    if not outputs or not _same_tensor_values(outputs[-1], logits):
        names.append("logits")
        outputs.append(logits.flatten(1))
    return names, outputs


def _same_tensor_values(recorded: Tensor, logits: Tensor) -> bool:
    """Whether the last recorded output equals the logits (the hook's copy of the tensor the classifier returned)."""
    return recorded.shape == logits.flatten(1).shape and bool((recorded == logits.flatten(1)).all())


__all__ = ["ActivationRecord", "activation_layers", "layer_activations", "recording"]
