"""Keras conventions (issue 13): dtype policies and policy maps, quantized save / reload,
mixed-precision training on CPU, and Keras' own `run_layer_test` for every public layer.

Every model here is tiny (width 0.5, one transformer layer per stage, 64 px images); the layer
cases are the smallest shapes that still exercise each code path (stride 2, dilation, a map not
divisible by the patch).
"""

import warnings

import keras
import numpy as np
import pytest
from keras import dtype_policies
from keras.src.testing import TestCase

import keras_mobilevitv2
from keras_mobilevitv2 import layers as L
from keras_mobilevitv2.backbone import MobileViTV2Backbone
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter, ResizeLogits, SegmentationLoss
from tests.conftest import randomize_keras_model

TINY = dict(width_multiplier=0.5, n_attn_blocks=(1, 1, 1), num_labels=3, aspp_out_channels=16)
IMAGE = (2, 64, 64, 3)

MODELS = {
    "backbone": lambda dtype=None: MobileViTV2Backbone(MobileViTV2Config(**TINY), dtype=dtype),
    "classifier": lambda dtype=None: MobileViTV2ImageClassifier(MobileViTV2Config(**TINY), dtype=dtype),
    "segmenter": lambda dtype=None: MobileViTV2SemanticSegmenter(
        MobileViTV2Config(output_stride=16, **TINY), dtype=dtype
    ),
}
MODEL_CLASSES = {
    "backbone": MobileViTV2Backbone,
    "classifier": MobileViTV2ImageClassifier,
    "segmenter": MobileViTV2SemanticSegmenter,
}

# (layer class, constructor kwargs, input shape): one small case per public layer, for the dtype tests.
LAYER_CASES = {
    "ConvBN": (L.ConvBN, dict(filters=8, kernel_size=3, strides=2, activation="swish"), (2, 9, 7, 4)),
    "ConvBN_dilated": (L.ConvBN, dict(filters=8, kernel_size=3, dilation_rate=2, activation="relu"), (2, 9, 7, 4)),
    "InvertedResidual": (L.InvertedResidual, dict(out_channels=8, strides=2), (2, 9, 7, 8)),
    "MobileNetStage": (L.MobileNetStage, dict(out_channels=8, num_blocks=2, strides=2), (2, 8, 8, 4)),
    "LinearSelfAttention": (L.LinearSelfAttention, dict(embed_dim=8), (2, 6, 4, 8)),
    "FFN": (L.FFN, dict(embed_dim=8, hidden_dim=16), (2, 6, 4, 8)),
    "TransformerLayer": (L.TransformerLayer, dict(embed_dim=8, ffn_dim=16), (2, 6, 4, 8)),
    "MobileViTV2Block": (L.MobileViTV2Block, dict(out_channels=16, attn_unit_dim=8, n_attn_blocks=1), (2, 10, 6, 8)),
    "ASPPPooling": (L.ASPPPooling, dict(filters=4), (2, 5, 3, 8)),
    "ASPP": (L.ASPP, dict(filters=4, atrous_rates=[1, 2, 3]), (2, 5, 3, 8)),
    "DeepLabV3Head": (L.DeepLabV3Head, dict(num_labels=3, aspp_filters=4, atrous_rates=[1, 2, 3]), (2, 5, 3, 8)),
}

# What each policy must give every layer: (compute dtype, variable dtype).
POLICIES = {"bfloat16": ("bfloat16", "bfloat16"), "mixed_float16": ("float16", "float32")}


def _images(shape=IMAGE, seed=0):
    return np.random.RandomState(seed).rand(*shape).astype("float32")


def _numpy_outputs(outputs):
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(outputs)]


def _float_dtype(dtype):
    return keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))


def _sublayers(layer):
    """Every layer under `layer` (itself included), InputLayers left out."""
    return [sub for sub in layer._flatten_layers() if not isinstance(sub, keras.layers.InputLayer)]


def _policy_of(layer):
    """The policy that applies to `layer`: its entry in a policy map, or its own policy."""
    policy = layer.dtype_policy
    if isinstance(policy, dtype_policies.DTypePolicyMap) and layer.path:
        return policy[layer.path]
    return policy


def _assert_policy_everywhere(layer, compute_dtype, variable_dtype):
    wrong = [
        (sub.path or sub.name, sub.compute_dtype, sub.variable_dtype)
        for sub in _sublayers(layer)
        if (sub.compute_dtype, sub.variable_dtype) != (compute_dtype, variable_dtype)
    ]
    assert not wrong, f"layers without the policy ({compute_dtype}, {variable_dtype}): {wrong[:10]}"
    wrong = [(v.path, v.dtype) for v in layer.weights if _float_dtype(v.dtype) and v.dtype != variable_dtype]
    assert not wrong, f"variables not in {variable_dtype}: {wrong[:10]}"


def _assert_outputs_in(outputs, compute_dtype):
    dtypes = {keras.backend.standardize_dtype(t.dtype) for t in keras.tree.flatten(outputs)}
    assert dtypes == {compute_dtype}, dtypes


@pytest.fixture
def restore_global_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


# ----------------------------------------------------------------------- dtype: models
@pytest.mark.parametrize("policy", ["bfloat16", "mixed_float16"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_model_dtype_reaches_every_layer_and_config(kind, policy):
    compute_dtype, variable_dtype = POLICIES[policy]
    model = MODELS[kind](dtype=policy)
    assert model.dtype_policy.name == policy
    _assert_policy_everywhere(model, compute_dtype, variable_dtype)
    _assert_outputs_in(model(_images((1, 64, 64, 3))), compute_dtype)

    config = model.get_config()
    assert "dtype" in config, sorted(config)
    assert dtype_policies.get(config["dtype"]).name == policy
    revived = MODEL_CLASSES[kind].from_config(config)
    assert revived.dtype_policy.name == policy
    _assert_policy_everywhere(revived, compute_dtype, variable_dtype)
    assert revived.get_config() == config


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_model_accepts_a_dtype_policy_object(kind):
    model = MODELS[kind](dtype=keras.DTypePolicy("mixed_bfloat16"))
    assert model.dtype_policy.name == "mixed_bfloat16"
    _assert_policy_everywhere(model, "bfloat16", "float32")


def _attention_stage_path(model):
    """Path of the first MobileViTV2Block of a model (without relying on its name)."""
    blocks = [layer for layer in model._flatten_layers() if isinstance(layer, L.MobileViTV2Block)]
    assert blocks, "no MobileViTV2Block in the model"
    return blocks[0].path


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_model_dtype_policy_map_reaches_each_path_and_survives_a_keras_file(kind, tmp_path):
    """A DTypePolicyMap keyed by layer path (exact and regex keys, as keras-hub's quantization
    test builds one): the first attention stage and everything under it in bfloat16, the rest float32."""
    stage = _attention_stage_path(MODELS[kind]())
    policy_map = dtype_policies.DTypePolicyMap(default_policy="float32")
    policy_map[stage] = "bfloat16"
    policy_map[f"{stage}/.*"] = "bfloat16"
    model = MODELS[kind](dtype=policy_map)

    def check(model):
        assert isinstance(model.dtype_policy, dtype_policies.DTypePolicyMap)
        inside = outside = 0
        for sub in _sublayers(model):
            if not sub.path:  # stateless layers built in their constructor (Dropout): no path, no variables
                assert not sub.weights, sub.name
                continue
            expected = "bfloat16" if sub.path == stage or sub.path.startswith(stage + "/") else "float32"
            assert (sub.compute_dtype, sub.variable_dtype) == (expected, expected), sub.path
            if expected == "bfloat16":
                inside += 1
            else:
                outside += 1
        assert inside > 5 and outside > 5, (inside, outside)  # the map split the model
        for variable in model.weights:
            expected = "bfloat16" if variable.path.startswith(stage + "/") else "float32"
            assert variable.dtype == expected, variable.path

    check(model)
    x = _images((1, 64, 64, 3))
    outputs = _numpy_outputs(model(x))
    assert all(np.isfinite(o.astype("float32")).all() for o in outputs)

    config = model.get_config()
    revived_map = dtype_policies.get(config["dtype"])
    assert isinstance(revived_map, dtype_policies.DTypePolicyMap)
    assert revived_map.default_policy.name == "float32"
    assert {k: revived_map[k].name for k in revived_map} == {stage: "bfloat16", f"{stage}/.*": "bfloat16"}
    check(MODEL_CLASSES[kind].from_config(config))

    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras_mobilevitv2.load_model(path)
    check(loaded)
    for a, b in zip(outputs, _numpy_outputs(loaded(x))):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_model_survives_a_keras_file(tmp_path):
    model = MODELS["classifier"](dtype="bfloat16")
    x = _images((1, 64, 64, 3))
    before = np.asarray(model(x)).astype("float32")
    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.dtype_policy.name == "bfloat16"
    _assert_policy_everywhere(loaded, "bfloat16", "bfloat16")
    np.testing.assert_array_equal(np.asarray(loaded(x)).astype("float32"), before)


# ----------------------------------------------------------------------- dtype: layers
@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_dtype_reaches_every_sublayer_and_config(case, policy):
    cls, kwargs, shape = LAYER_CASES[case]
    compute_dtype, variable_dtype = POLICIES[policy]
    layer = cls(**kwargs, dtype=policy, name="layer")
    _assert_outputs_in(layer(_images(shape)), compute_dtype)
    _assert_policy_everywhere(layer, compute_dtype, variable_dtype)
    config = layer.get_config()
    assert dtype_policies.get(config["dtype"]).name == policy
    revived = cls.from_config(config)
    revived(_images(shape))
    _assert_policy_everywhere(revived, compute_dtype, variable_dtype)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_dtype_policy_map_reaches_sublayers_by_path(case):
    """`dtype=DTypePolicyMap` on a layer: the layer looks up its own path ("layer") and hands the map
    itself to its sub-layers, which look up theirs ("layer/..."), as keras-hub's layers do and as a
    quantized model's reload needs. Default float32; the layer and everything under it bfloat16."""
    cls, kwargs, shape = LAYER_CASES[case]
    policy_map = dtype_policies.DTypePolicyMap(default_policy="float32")
    policy_map["layer"] = "bfloat16"
    policy_map["layer/.*"] = "bfloat16"
    layer = cls(**kwargs, dtype=policy_map, name="layer")
    # Built before the first call: Keras 3.15's Layer.__call__ casts the inputs to the compute dtype
    # before `build` sets the path that a map is looked up with (so a first call would cast to the default).
    layer.build(shape)
    _assert_outputs_in(layer(_images(shape)), "bfloat16")
    subs = _sublayers(layer)
    # Keras 3.15 sets a layer's path in its build; stateless layers built in their constructor
    # (Dropout, SpatialDropout2D) never get one and take the map's default. They hold no variables.
    pathless = [sub for sub in subs if sub.path is None]
    assert all(not sub.weights for sub in pathless), [sub.name for sub in pathless if sub.weights]
    subs = [sub for sub in subs if sub.path is not None]
    assert len(subs) > 1
    for sub in subs:
        assert sub.path == "layer" or sub.path.startswith("layer/"), sub.path
        assert isinstance(sub.dtype_policy, dtype_policies.DTypePolicyMap), sub.path
        assert (sub.compute_dtype, sub.variable_dtype) == ("bfloat16", "bfloat16"), sub.path
    assert all(v.dtype == "bfloat16" for v in layer.weights if _float_dtype(v.dtype))
    revived = cls.from_config(layer.get_config())
    assert isinstance(revived.dtype_policy, dtype_policies.DTypePolicyMap)
    revived.build(shape)
    assert [_policy_of(s).name for s in _sublayers(revived)] == [_policy_of(s).name for s in _sublayers(layer)]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_resize_logits_dtype(policy):
    compute_dtype, _ = POLICIES[policy]
    layer = ResizeLogits(dtype=policy)
    y = layer(_images((2, 4, 4, 3)), _images((2, 16, 12, 3)))
    assert tuple(y.shape) == (2, 16, 12, 3)
    _assert_outputs_in(y, compute_dtype)
    assert dtype_policies.get(layer.get_config()["dtype"]).name == policy


# ------------------------------------------------------------------------- quantization
def _quantize(model):
    with warnings.catch_warnings():
        # Model.quantize warns once for every leaf layer without a `quantize` (Conv2D, BatchNorm, ...)
        warnings.simplefilter("ignore", UserWarning)
        model.quantize("int8")


def _quantized_paths(model):
    return sorted(layer.path for layer in model._flatten_layers() if layer.quantization_mode is not None)


# int8 rounds weights (per output channel) and activations (per row) to 1/254 of their absolute
# maximum; the classifier's 128-wide head moves its logits by ~4% of their std (measured 0.018 / 0.44),
# and only the Dense head (and, in Keras 3.15, no conv) is quantized. 15% of the std leaves room
# for other seeds and for quantizing 1x1 projections, and still fails a head whose scale is lost
# (that error is the size of the logits) or a model that stayed float where it should not.
QUANTIZATION_TOLERANCE = 0.15


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_quantized_model_saves_and_reloads(kind, tmp_path):
    model = randomize_keras_model(MODELS[kind]())
    x = _images()
    floats = _numpy_outputs(model(x))
    _quantize(model)
    quantized_paths = _quantized_paths(model)
    if kind == "classifier":
        head = model.get_layer("classifier")
        assert head.quantization_mode == "int8" and head.path in quantized_paths
    quantized = _numpy_outputs(model(x))
    for f, q in zip(floats, quantized):
        assert np.max(np.abs(q - f)) <= QUANTIZATION_TOLERANCE * np.std(f), (np.max(np.abs(q - f)), np.std(f))

    # get_config round trip: the same layers come back quantized, and take the quantized weights
    revived = MODEL_CLASSES[kind].from_config(model.get_config())
    assert _quantized_paths(revived) == quantized_paths
    revived.set_weights(model.get_weights())
    for a, b in zip(quantized, _numpy_outputs(revived(x))):
        np.testing.assert_array_equal(a, b)

    path = tmp_path / f"{kind}.keras"
    model.save(path)
    for loaded in (keras.saving.load_model(path), keras_mobilevitv2.load_model(path)):
        assert type(loaded) is type(model)
        assert _quantized_paths(loaded) == quantized_paths
        for a, b in zip(quantized, _numpy_outputs(loaded(x))):
            np.testing.assert_array_equal(a, b)


def test_quantized_classifier_head_error_is_int8_rounding():
    """The head's error against its float kernel is within the worst case of abs-max int8 rounding:
    |x.w - xq.wq| <= sum_i |x_i| dw + |w_i| dx + dx dw, with dw = max|w_:j| / 254, dx = max|x| / 254."""
    model = randomize_keras_model(MODELS["classifier"]())
    head = model.get_layer("classifier")
    kernel = np.asarray(head.kernel, dtype="float64")  # (C, L)
    bias = np.asarray(head.bias, dtype="float64")
    _quantize(model)
    x = _images()
    features = model.backbone(x)["pooler_output"]
    features = np.asarray(features, dtype="float64")  # (B, C): the head's input in the quantized model
    exact = features @ kernel + bias
    got = np.asarray(model(x), dtype="float64")
    dw = np.max(np.abs(kernel), axis=0) / 254.0  # (L,)
    dx = np.max(np.abs(features), axis=1, keepdims=True) / 254.0  # (B, 1)
    bound = np.abs(features) @ np.ones_like(kernel) * dw + dx * np.sum(np.abs(kernel), axis=0) + dx * dw * kernel.shape[0]
    error = np.abs(got - exact)
    assert np.all(error <= bound * 1.01 + 1e-5), float(np.max(error / bound))
    assert np.max(error) > 0  # the head is really int8


# ----------------------------------------------------------- mixed precision training (CPU)
# Keras' default initial loss scale (2^15) overflows the float16 gradients of a fresh model in its
# first steps: by design those steps are skipped and the scale halved, so two steps would update
# nothing. 2^7 keeps the scaled gradients in range; the scaling stays dynamic.
INITIAL_LOSS_SCALE = 2.0**7


def _fit_two_steps(model, loss, labels):
    """Two optimizer steps of `fit`, eagerly: the kernels (and their dtypes) are those of a compiled
    step, without its tracing, which costs a minute per model on a shared core."""
    images = _images((4, 64, 64, 3))
    before = {v.path: np.array(v) for v in model.trainable_variables}
    optimizer = keras.optimizers.Adam(1e-3)
    if model.dtype_policy.compute_dtype == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=INITIAL_LOSS_SCALE)
    model.compile(optimizer=optimizer, loss=loss, run_eagerly=True)
    history = model.fit(images, labels, batch_size=2, epochs=1, verbose=0)
    losses = history.history["loss"]
    assert losses and all(np.isfinite(losses)), losses
    assert int(model.optimizer.iterations) == 2
    unchanged = [v.path for v in model.trainable_variables if np.array_equal(np.array(v), before[v.path])]
    assert not unchanged, f"{len(unchanged)} of {len(before)} trainable variables unchanged: {unchanged[:5]}"
    not_float32 = [(v.path, v.dtype) for v in model.variables if _float_dtype(v.dtype) and v.dtype != "float32"]
    assert not not_float32, not_float32[:5]


def _segmentation_labels(num_labels):
    labels = np.random.RandomState(1).randint(0, num_labels, size=(4, 64, 64)).astype("int32")
    labels[:, :8] = 255  # ignored pixels
    return labels


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("task", ["classifier", "segmenter_os16", "segmenter_os8", "backbone_with_head"])
def test_mixed_precision_trains_every_task_on_cpu(task, policy, restore_global_policy):
    keras.config.set_dtype_policy(policy)
    num_labels = TINY["num_labels"]
    if task == "classifier":
        model = MobileViTV2ImageClassifier(MobileViTV2Config(**TINY))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        labels = np.array([0, 1, 2, 1])
    elif task.startswith("segmenter"):
        output_stride = int(task[len("segmenter_os"):])
        model = MobileViTV2SemanticSegmenter(MobileViTV2Config(output_stride=output_stride, **TINY))
        loss = SegmentationLoss()
        labels = _segmentation_labels(num_labels)
    else:
        backbone = MobileViTV2Backbone(MobileViTV2Config(**TINY))
        logits = keras.layers.Dense(num_labels, name="head")(backbone.output["pooler_output"])
        model = keras.Model(backbone.input, logits)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        labels = np.array([0, 1, 2, 1])
    assert model.dtype_policy.name == policy
    _fit_two_steps(model, loss, labels)


# ---------------------------------------------------------------- Keras' run_layer_test
class TestRunLayerTest(TestCase):
    """Keras' own layer checks (keras/src/testing/test_case.py `run_layer_test`): config and
    serialization round trips, build without a call, symbolic and eager calls, a compiled training
    step (XLA on TensorFlow) and a mixed_float16 instance. Weight counts are counted by hand from
    the architecture: a ConvBN with BatchNorm is kernel + gamma + beta trainable and the two moving
    statistics non-trainable; without BatchNorm it is kernel (+ bias)."""

    def _run(self, cls, init_kwargs, input_shape, expected_output_shape, trainable, non_trainable, **kwargs):
        self.run_layer_test(
            cls,
            init_kwargs=init_kwargs,
            input_shape=input_shape,
            expected_output_shape=expected_output_shape,
            expected_num_trainable_weights=trainable,
            expected_num_non_trainable_weights=non_trainable,
            expected_num_losses=0,
            supports_masking=False,
            run_training_check=kwargs.pop("run_training_check", True),
            run_mixed_precision_check=True,
            **kwargs,
        )

    # ConvBN: conv (no bias) + BatchNorm -> 3 trainable, 2 non-trainable
    def test_conv_bn(self):
        self._run(L.ConvBN, dict(filters=8, kernel_size=3, activation="swish"), (2, 9, 7, 4), (2, 9, 7, 8), 3, 2)

    def test_conv_bn_depthwise(self):
        self._run(L.ConvBN, dict(kernel_size=3, depthwise=True, activation="swish"), (2, 9, 7, 4), (2, 9, 7, 4), 3, 2)

    def test_conv_bn_stride_2(self):
        # PyTorch padding 1 on every side: 9 -> 5, 7 -> 4
        self._run(L.ConvBN, dict(filters=8, kernel_size=3, strides=2), (2, 9, 7, 4), (2, 5, 4, 8), 3, 2)

    def test_conv_bn_depthwise_stride_2(self):
        self._run(L.ConvBN, dict(kernel_size=3, strides=2, depthwise=True), (2, 8, 7, 4), (2, 4, 4, 4), 3, 2)

    def test_conv_bn_dilated(self):
        self._run(L.ConvBN, dict(filters=8, kernel_size=3, dilation_rate=2, activation="relu"), (2, 9, 7, 4), (2, 9, 7, 8), 3, 2)

    def test_conv_bn_depthwise_dilated(self):
        self._run(L.ConvBN, dict(kernel_size=3, dilation_rate=2, depthwise=True), (2, 9, 7, 4), (2, 9, 7, 4), 3, 2)

    def test_conv_no_norm_with_bias(self):
        # kernel + bias, nothing else
        self._run(
            L.ConvBN, dict(filters=8, kernel_size=1, use_bias=True, use_normalization=False), (2, 9, 7, 4), (2, 9, 7, 8), 2, 0
        )

    # InvertedResidual: expand 1x1, depthwise 3x3, reduce 1x1, each a ConvBN with BatchNorm -> 9 / 6
    def test_inverted_residual_with_residual(self):
        self._run(L.InvertedResidual, dict(out_channels=8, strides=1), (2, 9, 7, 8), (2, 9, 7, 8), 9, 6)

    def test_inverted_residual_strided(self):
        self._run(L.InvertedResidual, dict(out_channels=16, strides=2), (2, 9, 7, 8), (2, 5, 4, 16), 9, 6)

    def test_inverted_residual_dilated(self):
        self._run(L.InvertedResidual, dict(out_channels=8, dilation_rate=2), (2, 9, 7, 8), (2, 9, 7, 8), 9, 6)

    # MobileNetStage: two InvertedResiduals -> 18 / 12
    def test_mobilenet_stage(self):
        self._run(L.MobileNetStage, dict(out_channels=8, num_blocks=2, strides=2), (2, 8, 8, 4), (2, 4, 4, 8), 18, 12)

    # LinearSelfAttention: qkv_proj and out_proj, 1x1 convs with bias -> 4 / 0
    def test_linear_self_attention(self):
        self._run(L.LinearSelfAttention, dict(embed_dim=8), (2, 6, 4, 8), (2, 6, 4, 8), 4, 0)

    def test_linear_self_attention_with_dropout(self):
        self._run(L.LinearSelfAttention, dict(embed_dim=8, attn_dropout=0.1), (2, 6, 4, 8), (2, 6, 4, 8), 4, 0)

    # FFN: two 1x1 convs with bias -> 4 / 0
    def test_ffn(self):
        self._run(L.FFN, dict(embed_dim=8, hidden_dim=16, ffn_dropout=0.1), (2, 6, 4, 8), (2, 6, 4, 8), 4, 0)

    # TransformerLayer: 2 GroupNorms (gamma, beta) + attention 4 + FFN 4 -> 12 / 0
    def test_transformer_layer(self):
        self._run(L.TransformerLayer, dict(embed_dim=8, ffn_dim=16), (2, 6, 4, 8), (2, 6, 4, 8), 12, 0)

    # MobileViTV2Block: downsampling InvertedResidual 9 / 6, conv_kxk (BN) 3 / 2, conv_1x1 (no BN, no
    # bias) 1 / 0, n x TransformerLayer 12 / 0, GroupNorm 2 / 0, conv_projection (BN) 3 / 2.
    def test_mobilevitv2_block_cvnets_size_not_divisible_by_patch(self):
        # 10x6 -> stride 2 -> 5x3, resized up to the patch multiple 6x4 (cvnets)
        self._run(
            L.MobileViTV2Block,
            dict(out_channels=16, attn_unit_dim=8, n_attn_blocks=1, compat="cvnets"),
            (2, 10, 6, 8),
            (2, 6, 4, 16),
            9 + 3 + 1 + 12 + 2 + 3,
            6 + 2 + 2,
        )

    def test_mobilevitv2_block_transformers_size_not_divisible_by_patch(self):
        # no downsampling; 7x5 keeps its size (transformers drops the remainder at unfold, pads at fold)
        self._run(
            L.MobileViTV2Block,
            dict(out_channels=16, attn_unit_dim=8, n_attn_blocks=2, downsample_strides=None, compat="transformers"),
            (2, 7, 5, 16),
            (2, 7, 5, 16),
            3 + 1 + 2 * 12 + 2 + 3,
            2 + 2,
        )

    def test_mobilevitv2_block_dilated(self):
        # output stride 16/8: the downsampling block keeps stride 1, the local conv is dilated
        self._run(
            L.MobileViTV2Block,
            dict(out_channels=16, attn_unit_dim=8, n_attn_blocks=1, downsample_strides=1, downsample_dilation=2, local_dilation=2),
            (2, 6, 4, 8),
            (2, 6, 4, 16),
            9 + 3 + 1 + 12 + 2 + 3,
            6 + 2 + 2,
        )

    # ASPPPooling: one ConvBN with BatchNorm -> 3 / 2
    def test_aspp_pooling(self):
        self._run(L.ASPPPooling, dict(filters=4), (2, 5, 3, 8), (2, 5, 3, 4), 3, 2)

    # ASPP: 1x1, three dilated 3x3, pooling branch, projection: six ConvBNs with BatchNorm -> 18 / 12
    def test_aspp(self):
        self._run(L.ASPP, dict(filters=4, atrous_rates=[1, 2, 3]), (2, 5, 3, 8), (2, 5, 3, 4), 18, 12)

    def test_aspp_rates_larger_than_the_map(self):
        # the released rates 6/12/18 on a 4x4 map (output stride 16 at 64 px): every tap but the centre is padding
        self._run(L.ASPP, dict(filters=4, atrous_rates=[6, 12, 18]), (2, 4, 4, 8), (2, 4, 4, 4), 18, 12)

    # DeepLabV3Head: ASPP 18 / 12 + the classifier (1x1 conv with bias) 2 / 0
    def test_deeplabv3_head(self):
        self._run(L.DeepLabV3Head, dict(num_labels=3, aspp_filters=4, atrous_rates=[1, 2, 3]), (2, 5, 3, 8), (2, 5, 3, 3), 20, 12)

    # ResizeLogits: two inputs (logits, reference), no weights. `run_layer_test` passes a dict of
    # shapes as keyword arguments (`logits_shape` -> build(logits_shape=...), call(logits=...)); its
    # training step calls the layer with one positional dict, which a two-input layer cannot take,
    # so the gradient is checked by hand below.
    def test_resize_logits(self):
        for align_corners in (False, True):
            self._run(
                ResizeLogits,
                dict(align_corners=align_corners),
                {"logits_shape": (2, 4, 4, 3), "reference_shape": (2, 16, 12, 5)},
                (2, 16, 12, 3),
                0,
                0,
                run_training_check=False,
            )

    def test_resize_logits_gradient(self):
        """One SGD step (learning rate 1) on logits held as a variable, loss = sum of the resized
        logits: bilinear upsampling by 4 (half-pixel centres) spreads each source pixel over 16
        output pixels in total, so the gradient is 16 everywhere and the logits become -16."""

        class LogitsVariable(keras.layers.Layer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.resize = ResizeLogits()

            def build(self, reference_shape):
                self.logits = self.add_weight(shape=(1, 4, 4, 3), initializer="zeros", name="logits")

            def call(self, reference):
                return self.resize(self.logits, reference)

        class Sum(keras.losses.Loss):
            def __call__(self, y_true, y_pred, sample_weight=None):
                return keras.ops.sum(y_pred)

        reference = keras.Input((16, 16, 1))
        layer = LogitsVariable()
        model = keras.Model(reference, layer(reference))
        model.compile(optimizer=keras.optimizers.SGD(1.0), loss=Sum())
        model.fit(np.zeros((1, 16, 16, 1), "float32"), np.zeros((1, 16, 16, 3), "float32"), verbose=0)
        np.testing.assert_allclose(np.asarray(layer.logits), np.full((1, 4, 4, 3), -16.0), rtol=1e-5)
