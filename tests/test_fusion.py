"""The inference form of every layer: fused equals unfused, for every task, width and compat mode."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mobilevitv2 as mv2
from keras_mobilevitv2 import backend_ops
from keras_mobilevitv2 import layers as L
from keras_mobilevitv2.fusion import fused_copy
from tests.conftest import max_rel_error, randomize_keras_model

TOLERANCE = 1e-4  # max abs diff / std of the output


def _model(task, width=0.5, compat="cvnets", output_stride=32):
    config = mv2.MobileViTV2Config(
        width_multiplier=width, num_labels=5, aspp_out_channels=32, output_stride=output_stride, compat=compat
    )
    cls = {
        "backbone": mv2.MobileViTV2Backbone,
        "image_classification": mv2.MobileViTV2ImageClassifier,
        "semantic_segmentation": mv2.MobileViTV2SemanticSegmenter,
    }[task]
    return randomize_keras_model(cls(config), seed=3)


def _assert_close(got, expected):
    tf.nest.assert_same_structure(got, expected)
    for g, e in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
        assert tuple(g.shape) == tuple(e.shape)
        assert max_rel_error(g, e) <= TOLERANCE


@pytest.mark.parametrize(
    "task,width,compat,output_stride",
    [
        ("image_classification", 0.5, "cvnets", 32),
        ("image_classification", 0.75, "transformers", 32),
        ("backbone", 1.0, "cvnets", 32),
        ("backbone", 0.5, "transformers", 32),
        ("semantic_segmentation", 0.5, "cvnets", 8),
        ("semantic_segmentation", 0.5, "transformers", 16),
    ],
)
def test_fused_copy_equals_the_model(task, width, compat, output_stride):
    model = _model(task, width, compat, output_stride)
    fused = fused_copy(model)
    assert fused.fused and not model.fused
    assert len(fused.weights) < len(model.weights)  # BatchNorms and norm affines gone
    # No BatchNormalization left, no affine in the transformer norms, qkv split.
    kinds = {type(layer).__name__ for layer in fused._flatten_layers(recursive=True)}
    assert "BatchNormalization" not in kinds
    rng = np.random.RandomState(0)
    # 96x96 divides evenly; 70x90 leaves remainders at the patch unfolds and odd maps at stride 2.
    for shape in [(2, 96, 96, 3), (1, 70, 90, 3)]:
        x = rng.rand(*shape).astype("float32")
        _assert_close(fused(x, training=False), model(x, training=False))


def test_fusing_in_place_equals_building_fused_and_saves():
    model = _model("semantic_segmentation", output_stride=16)
    x = np.random.RandomState(1).rand(1, 64, 64, 3).astype("float32")
    expected = model(x, training=False)
    model.fuse()
    assert model.fused
    _assert_close(model(x, training=False), expected)
    model.fuse()  # a second time changes nothing
    built = type(model).from_config(model.get_config())
    assert built.fused and len(built.weights) == len(model.weights)
    built.set_weights(model.get_weights())
    _assert_close(built(x, training=False), expected)


def test_fused_model_round_trips_through_a_keras_file(tmp_path):
    fused = fused_copy(_model("image_classification"))
    path = str(tmp_path / "fused.keras")
    fused.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.fused
    x = np.random.RandomState(2).rand(2, 64, 64, 3).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(fused(x)), atol=1e-6)


@pytest.mark.parametrize("size", [7, 8])
def test_fused_stride2_depthwise_reads_pytorch_windows(size):
    """The (k+1) x (k+1) "same" kernel of a fused stride-2 depthwise conv equals explicit padding."""
    layer = L.ConvBN(kernel_size=3, strides=2, depthwise=True, activation="swish")
    x = np.random.RandomState(size).rand(2, size, size + 1, 4).astype("float32")
    layer(x)
    randomize_keras_model(layer, seed=size)
    expected = np.asarray(layer(x))
    layer.fuse()
    assert layer.convolution.kernel.shape == (4, 4, 4, 1) and layer.normalization is None
    assert max_rel_error(layer(x), expected) <= TOLERANCE


def test_transformer_layer_fuses_its_norm_affines():
    layer = L.TransformerLayer(embed_dim=8, ffn_dim=16)
    x = np.random.RandomState(3).rand(2, 6, 4, 8).astype("float32")
    layer(x)
    randomize_keras_model(layer, seed=4)
    expected = np.asarray(layer(x))
    layer.fuse()
    assert not layer.layernorm_before.scale and not layer.layernorm_after.center
    assert not hasattr(layer.attention, "qkv_proj") or layer.attention.qkv_proj is None
    assert max_rel_error(layer(x), expected) <= TOLERANCE
    with pytest.raises(ValueError, match="already fused"):
        layer.attention.fuse(scale=np.ones(8), shift=np.zeros(8))


def test_training_a_fused_layer_is_not_the_unfused_form():
    """A fused ConvBN has no BatchNorm: in training it does not normalise by batch statistics."""
    layer = L.ConvBN(4, 3)
    x = np.random.RandomState(5).rand(2, 8, 8, 3).astype("float32") * 5
    layer(x)
    layer.fuse()
    y = np.asarray(layer(x, training=True))
    assert abs(y.mean()) > 0.1  # batch-normalised outputs would have mean ~0 per channel


# ------------------------------------------------------------------- backend fast paths
@pytest.mark.parametrize(
    "name,args",
    [
        ("bias_add", lambda rng: (rng.rand(2, 5, 4, 3), rng.rand(3))),
        ("conv2d", lambda rng: (rng.rand(2, 9, 8, 3), rng.rand(3, 3, 3, 4), 1, "same", 2)),
        ("conv2d", lambda rng: (rng.rand(2, 9, 8, 3), rng.rand(3, 3, 3, 4), 2, "valid", 1)),
        ("softmax", lambda rng: (rng.rand(2, 5, 4, 1), 1)),
        ("batch_moments_and_normalize", lambda rng: (rng.rand(4, 5, 6, 3) * 3, rng.rand(3), rng.rand(3), 1e-5)),
        ("resize_bilinear", lambda rng: (rng.rand(2, 5, 7, 3), 11, 9)),
        ("resize_bilinear", lambda rng: (rng.rand(2, 12, 10, 3), 5, 4)),
    ],
)
def test_every_fast_path_equals_its_keras_ops_fallback(name, args):
    rng = np.random.RandomState(6)
    values = [np.asarray(a, "float32") if isinstance(a, np.ndarray) else a for a in args(rng)]
    function = getattr(backend_ops, name)
    assert backend_ops.use_fast_path()
    fast = function(*values)
    with backend_ops.fallbacks_only():
        assert not backend_ops.use_fast_path()
        slow = function(*values)
    for f, s in zip(tf.nest.flatten(fast), tf.nest.flatten(slow)):
        np.testing.assert_allclose(np.asarray(f), np.asarray(s), rtol=1e-5, atol=1e-5)


def test_the_model_on_fallbacks_equals_the_fast_paths():
    model = _model("semantic_segmentation", output_stride=8)
    x = np.random.RandomState(7).rand(1, 64, 64, 3).astype("float32")
    fast = model(x, training=False)
    with backend_ops.fallbacks_only():
        slow = model(x, training=False)
    _assert_close(slow, fast)
