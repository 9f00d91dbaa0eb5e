"""The PyTorch Mobile-LeNet, built row by row from the architecture table in ``spec``.

The model is an ``nn.Sequential`` whose children carry the seed's layer names, so
``model.layers["B3_dw3x3_s2"]`` is that depthwise convolution. It returns logits; apply softmax to predict.

``to_noodle`` / ``from_noodle`` convert between the model and a dict of Noodle tensors
(file name -> float32 array in the Noodle layout, see ``spec.noodle_tensors``). That dict is the common
currency of every exporter, importer and engine in this package.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from mobile_lenet import spec
from mobile_lenet.model.data import to_tensor_input
from mobile_lenet.spec import LayerKind


class GlobalAveragePool(nn.Module):
    """Mean over the spatial plane: (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def make_layer(layer: spec.Layer) -> nn.Module:
    """The PyTorch module for one table row."""
    if layer.kind == LayerKind.CONV:
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding,
                         bias=layer.bias)
    if layer.kind == LayerKind.DWCONV:
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.padding,
                         groups=layer.in_channels, bias=layer.bias)
    if layer.kind == LayerKind.BN:
        # PyTorch's momentum is the weight of the new batch; Keras' is the weight of the old average.
        return nn.BatchNorm2d(layer.out_channels, eps=spec.BN_EPSILON, momentum=1 - spec.BN_MOMENTUM_KERAS)
    if layer.kind == LayerKind.RELU:
        return nn.ReLU(inplace=True)  # in place: ~10% faster training on a CPU, and BN's backward doesn't need it
    if layer.kind == LayerKind.PAD:
        return nn.ZeroPad2d(layer.padding)
    if layer.kind == LayerKind.GAP:
        return GlobalAveragePool()
    if layer.kind == LayerKind.DENSE:
        return nn.Linear(layer.in_channels, layer.out_channels, bias=layer.bias)
    raise ValueError(f"unknown layer kind {layer.kind!r}")


class NamedSequential(nn.Sequential):
    """``nn.Sequential`` that can also be indexed by layer name: ``layers["B3_dw3x3_s2"]``."""

    def __getitem__(self, key):
        return self._modules[key] if isinstance(key, str) else super().__getitem__(key)


class MobileLeNet(nn.Module):
    """Mobile-LeNet: stem conv, six depthwise-separable blocks, GAP, dense. Input (N, 1, S, S) in [0, 1], S the
    architecture's input size (the seed's: 28). ``architecture`` picks the family member (default the seed's)."""

    def __init__(self, architecture: spec.Architecture = spec.SEED):
        super().__init__()
        self.architecture = architecture
        self.layers = NamedSequential(OrderedDict((layer.name, make_layer(layer))
                                                  for layer in spec.layers(architecture)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal kernels and zero biases, as the upstream Keras model (BN: gamma 1, beta 0)."""
        for module in self.layers:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                # Keras' he_normal: truncated normal with std sqrt(2 / fan_in), cut at 2 std.
                fan_in = module.weight[0].numel()
                std = (2.0 / fan_in) ** 0.5
                nn.init.trunc_normal_(module.weight, 0.0, std, -2 * std, 2 * std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def forward_all(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Run the network and return every layer's output, keyed by the seed's layer name."""
        outputs = OrderedDict()
        for name, module in self.layers.named_children():
            # out of place here, so the in-place ReLU does not overwrite the BN output kept just before it
            x = torch.relu(x) if isinstance(module, nn.ReLU) else module(x)
            outputs[name] = x
        return outputs


def to_noodle(model: MobileLeNet) -> dict[str, np.ndarray]:
    """The model's weights as Noodle tensors (file name -> float32 array in the Noodle layout)."""
    tensors = {}
    for file_name, layer, shape in spec.noodle_tensors(model.architecture):
        module = model.layers[layer.name]
        if file_name == layer.bias_file:
            value = module.bias
        elif layer.kind == LayerKind.BN:
            value = torch.stack([module.weight, module.bias, module.running_mean, module.running_var])
        else:
            value = module.weight  # conv (Cout,Cin,K,K), depthwise (C,1,K,K), dense (Dout,Din)
        tensors[file_name] = value.detach().to(torch.float32).numpy().reshape(shape).copy()
    return tensors


def from_noodle(tensors: dict[str, np.ndarray], architecture: spec.Architecture | None = None) -> MobileLeNet:
    """Build a model (in eval mode) from Noodle tensors of the member ``architecture`` (default: the one loaded
    tensors record, ``spec.architecture_of``); shapes are checked against the member's table."""
    architecture = spec.architecture_of(tensors, architecture)
    model = MobileLeNet(architecture)
    with torch.no_grad():
        for file_name, layer, shape in spec.noodle_tensors(architecture):
            if file_name not in tensors:
                raise ValueError(f"missing tensor {file_name}")
            value = np.asarray(tensors[file_name], dtype=np.float32)
            if value.size != int(np.prod(shape)):
                raise ValueError(f"{file_name}: expected {int(np.prod(shape))} values, got {value.size}")
            value = torch.from_numpy(value.reshape(shape).copy())
            module = model.layers[layer.name]
            if file_name == layer.bias_file:
                module.bias.copy_(value)
            elif layer.kind == LayerKind.BN:
                for param, row in zip((module.weight, module.bias, module.running_mean, module.running_var), value):
                    param.copy_(row)
            else:
                module.weight.copy_(value.reshape(module.weight.shape))
    return model.eval()


@torch.no_grad()
def predict_logits(model: MobileLeNet, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits (N, 10) of the model in inference mode for uint8 images (N, S, S), S the model's input size."""
    model.eval()
    out = [model(torch.from_numpy(to_tensor_input(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, spec.NUM_CLASSES), np.float32)
