"""Each layer: config round trip, shapes, and the numerics a reference can check in isolation."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from keras_mobilevitv2 import layers as L
from tests.conftest import max_rel_error

LAYER_CASES = [
    (L.ConvBN, dict(filters=8, kernel_size=3, strides=2, activation="swish"), (2, 9, 7, 4)),
    (L.ConvBN, dict(kernel_size=3, dilation_rate=2, depthwise=True), (2, 9, 7, 4)),
    (L.InvertedResidual, dict(out_channels=8, strides=2, expand_ratio=2.0), (2, 9, 7, 8)),
    (L.MobileNetStage, dict(out_channels=8, num_blocks=2, strides=2), (2, 8, 8, 4)),
    (L.LinearSelfAttention, dict(embed_dim=8), (2, 6, 4, 8)),
    (L.FFN, dict(embed_dim=8, hidden_dim=16), (2, 6, 4, 8)),
    (L.TransformerLayer, dict(embed_dim=8, ffn_dim=16), (2, 6, 4, 8)),
    (L.MobileViTV2Block, dict(out_channels=16, attn_unit_dim=8, n_attn_blocks=1), (2, 10, 6, 8)),
    (L.MobileViTV2Block, dict(out_channels=16, attn_unit_dim=8, downsample_strides=None, compat="transformers"), (2, 7, 5, 16)),
    (L.ASPPPooling, dict(filters=4), (2, 5, 3, 8)),
    (L.ASPP, dict(filters=4, atrous_rates=[1, 2, 3]), (2, 5, 3, 8)),
    (L.DeepLabV3Head, dict(num_labels=3, aspp_filters=4, atrous_rates=[1, 2, 3]), (2, 5, 3, 8)),
    # The inference forms, built directly.
    (L.ConvBN, dict(kernel_size=3, strides=2, depthwise=True, fused=True), (2, 9, 8, 4)),
    (L.LinearSelfAttention, dict(embed_dim=8, fused=True), (2, 6, 4, 8)),
    (L.TransformerLayer, dict(embed_dim=8, ffn_dim=16, fused=True), (2, 6, 4, 8)),
    (L.MobileViTV2Block, dict(out_channels=16, attn_unit_dim=8, n_attn_blocks=1, fused=True), (2, 10, 6, 8)),
]


@pytest.mark.parametrize("cls,kwargs,shape", LAYER_CASES, ids=lambda v: getattr(v, "__name__", None))
def test_config_round_trip_and_output_shape(cls, kwargs, shape):
    layer = cls(**kwargs, name="layer")
    x = np.random.RandomState(0).rand(*shape).astype("float32")
    y = np.asarray(layer(x))
    config = layer.get_config()
    assert cls.from_config(config).get_config() == config
    for key in kwargs:
        assert key in config
    clone = cls.from_config(config)
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), y, atol=1e-6)
    expected = layer.compute_output_shape(shape)
    assert tuple(y.shape) == tuple(expected)


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (L.ConvBN, dict(filters=0), "`filters` must be a positive integer, received 0"),
        (L.ConvBN, dict(filters=4, kernel_size=2), "`kernel_size` must be odd, received 2"),
        (L.ConvBN, dict(filters=4, strides=3), "`strides` must be 1 or 2, received 3"),
        (L.ConvBN, dict(filters=4, activation="mish"), "`activation` must be None or one of"),
        (L.TransformerLayer, dict(embed_dim=8, ffn_dim=16, layer_norm_eps=0), "`layer_norm_eps` must be a positive number, received 0"),
        (L.LinearSelfAttention, dict(embed_dim=8, attn_dropout=1.0), r"`attn_dropout` must be in \[0, 1\), received 1.0"),
        (L.MobileViTV2Block, dict(out_channels=8, attn_unit_dim=8, compat="hf"), "`compat` must be one of"),
        (L.MobileViTV2Block, dict(out_channels=8, attn_unit_dim=8, patch_size=(2, 0)), "`patch_size` must be two positive integers"),
        (L.ASPP, dict(filters=4, atrous_rates=[6, 12]), "`atrous_rates` must have 3 entries, received \\[6, 12\\]"),
    ],
)
def test_bad_arguments_are_named(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_unfold_fold_are_inverse_and_group_pixels_by_patch():
    x = np.arange(2 * 4 * 6 * 3, dtype="float32").reshape(2, 4, 6, 3)
    patches = np.asarray(L.unfold_patches(x, 2, 2))
    assert patches.shape == (2, 6, 4, 3)  # (B, N, P, C)
    # patch n = (row 0, col 1) holds pixels (0..1, 2..3) in row-major order
    np.testing.assert_array_equal(patches[0, 1, :, 0], x[0, 0:2, 2:4, 0].reshape(-1))
    np.testing.assert_array_equal(np.asarray(L.fold_patches(patches, 4, 6, 2, 2)), x)


def test_stride2_conv_pads_like_pytorch():
    """Odd and even sizes: Keras' 'same' would pad bottom/right only; ConvBN pads both sides."""
    for size in (7, 8):
        x = np.random.RandomState(size).rand(1, size, size, 3).astype("float32")
        layer = L.ConvBN(4, 3, strides=2, use_normalization=False)
        y = np.asarray(layer(x))
        conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(layer.convolution.kernel.numpy().transpose(3, 2, 0, 1)))
            ref = conv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
        assert max_rel_error(y, ref) < 1e-5


def test_group_norm_matches_torch_group_norm_with_one_group():
    x = np.random.RandomState(1).randn(2, 5, 3, 8).astype("float32") * 3 + 1
    layer = L.layer_norm()
    layer.build(x.shape)
    layer.gamma.assign(np.linspace(0.5, 1.5, 8))
    layer.beta.assign(np.linspace(-1, 1, 8))
    gn = torch.nn.GroupNorm(1, 8, eps=1e-5)
    with torch.no_grad():
        gn.weight.copy_(torch.linspace(0.5, 1.5, 8))
        gn.bias.copy_(torch.linspace(-1, 1, 8))
        ref = gn(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    assert max_rel_error(layer(x), ref) < 1e-5


@pytest.mark.parametrize("size,out", [((5, 7), (6, 8)), ((1, 3), (2, 4)), ((4, 4), (4, 4))])
def test_align_corners_resize_matches_torch(size, out):
    x = np.random.RandomState(2).rand(2, *size, 3).astype("float32")
    got = np.asarray(L.resize_bilinear_align_corners(x, *out))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), size=out, mode="bilinear", align_corners=True
    ).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("compat", ["cvnets", "transformers"])
def test_block_dynamic_shapes_equal_static(compat):
    """In a tf.function with unknown H, W the block takes the runtime branch; it must equal eager."""
    block = L.MobileViTV2Block(out_channels=16, attn_unit_dim=8, downsample_strides=None, compat=compat)
    x = np.random.RandomState(4).rand(1, 7, 5, 16).astype("float32")
    eager = np.asarray(block(x))
    expected_hw = (8, 6) if compat == "cvnets" else (7, 5)
    assert eager.shape[1:3] == expected_hw
    fn = tf.function(block.call, input_signature=[tf.TensorSpec([None, None, None, 16], tf.float32)])
    np.testing.assert_allclose(fn(x).numpy(), eager, atol=1e-5)
    even = np.random.RandomState(5).rand(1, 6, 4, 16).astype("float32")
    np.testing.assert_allclose(fn(even).numpy(), np.asarray(block(even)), atol=1e-5)


def test_softmax_and_norms_run_in_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = L.TransformerLayer(embed_dim=8, ffn_dim=16)
        x = np.random.RandomState(6).rand(2, 6, 4, 8).astype("float16")
        y = layer(x)
        assert y.dtype == "float16"
        assert layer.layernorm_before.gamma.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    reference = L.TransformerLayer(embed_dim=8, ffn_dim=16)
    reference(x.astype("float32"))
    reference.set_weights(layer.get_weights())
    assert max_rel_error(np.asarray(y, dtype="float32"), reference(x.astype("float32"))) < 1e-2
