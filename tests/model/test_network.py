"""The PyTorch model against the architecture table, and the Noodle tensor conversion."""

import numpy as np
import pytest
import torch

from mobile_lenet import spec
from mobile_lenet.model.network import MobileLeNet, from_noodle, to_noodle


def test_every_layer_output_shape_matches_table():
    model = MobileLeNet().eval()
    outputs = model.forward_all(torch.zeros(2, 1, 28, 28))
    assert list(outputs) == [layer.name for layer in spec.LAYERS]
    for layer in spec.LAYERS:
        shape = layer.out_shape
        expected = (2, shape[2], shape[0], shape[1]) if len(shape) == 3 else (2, shape[0])
        assert tuple(outputs[layer.name].shape) == expected, layer.name


def test_parameter_counts_match_table():
    model = MobileLeNet()
    for layer in spec.LAYERS:
        module = model.layers[layer.name]
        trainable = sum(p.numel() for p in module.parameters())
        buffers = sum(b.numel() for n, b in module.named_buffers() if n in ("running_mean", "running_var"))
        assert (trainable, buffers) == (layer.trainable_params, layer.non_trainable_params), layer.name


def test_batchnorm_settings_match_keras():
    bn = MobileLeNet().layers["B3_dw_bn"]
    assert bn.eps == pytest.approx(1e-3)
    assert bn.momentum == pytest.approx(0.01)  # Keras momentum 0.99


def test_he_normal_init_scale():
    torch.manual_seed(0)
    w = MobileLeNet().layers["B6_pw1x1"].weight  # fan_in 24
    assert abs(w.std().item() - (2 / 24) ** 0.5 * 0.88) < 0.05  # truncated at 2 std: std shrinks by ~0.88
    assert w.abs().max().item() <= 2 * (2 / 24) ** 0.5 + 1e-6


def test_noodle_round_trip_is_exact():
    torch.manual_seed(3)
    model = MobileLeNet()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    tensors = to_noodle(model)
    assert [k for k, _, _ in spec.noodle_tensors()] == list(tensors)
    again = to_noodle(from_noodle(tensors))
    for k in tensors:
        np.testing.assert_array_equal(tensors[k], again[k])
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(model.eval()(x), from_noodle(tensors)(x), rtol=0, atol=0)


def test_noodle_layout_of_dense_is_transposed_keras():
    model = MobileLeNet()
    assert to_noodle(model)["w14"].shape == (10, 24)
    np.testing.assert_array_equal(to_noodle(model)["w14"], model.layers["OUT"].weight.detach().numpy())


def test_from_noodle_rejects_wrong_length():
    tensors = to_noodle(MobileLeNet())
    tensors["w07"] = tensors["w07"].ravel()[:-1]
    with pytest.raises(ValueError, match="w07"):
        from_noodle(tensors)
