"""compile_for_inference returns what the model returns (to 1e-4 of std) and leaves the model alone."""

import numpy as np
import pytest
import tensorflow as tf

import keras_mobilevitv2 as mv2
from keras_mobilevitv2.inference import InferenceFunction
from tests.conftest import max_rel_error, randomize_keras_model

TOLERANCE = 1e-4  # max abs diff / std of the model's output


def _model(task, compat="transformers", output_stride=32, seed=0):
    config = mv2.MobileViTV2Config(
        width_multiplier=0.5, num_labels=5, aspp_out_channels=32, output_stride=output_stride, compat=compat
    )
    if task == "backbone":
        model = mv2.MobileViTV2Backbone(config)
    elif task == "image_classification":
        model = mv2.MobileViTV2ImageClassifier(config)
    else:
        model = mv2.MobileViTV2SemanticSegmenter(config)
    return randomize_keras_model(model, seed)


def _assert_same_outputs(got, expected):
    tf.nest.assert_same_structure(got, expected)
    for g, e in zip(tf.nest.flatten(got), tf.nest.flatten(expected)):
        assert tuple(g.shape) == tuple(e.shape)
        assert max_rel_error(g, e) <= TOLERANCE


CASES = [
    # task, compat, output_stride: one per task here; tests/test_fusion.py holds the fused model
    # (what this runs, frozen) equal to the model for every task, compat mode and output stride.
    ("image_classification", "transformers", 32),
    ("backbone", "cvnets", 32),
    ("semantic_segmentation", "cvnets", 8),
]


@pytest.mark.parametrize("task,compat,output_stride", CASES)
def test_matches_model_at_two_sizes(task, compat, output_stride):
    model = _model(task, compat, output_stride)
    infer = mv2.compile_for_inference(model)
    rng = np.random.RandomState(1)
    # 128 divides by 64 everywhere; 100x76 leaves remainders at the patch unfolds (dropped by
    # transformers, resized away by cvnets) and odd maps at the stride-2 convs.
    for shape in [(2, 128, 128, 3), (1, 100, 76, 3)]:
        x = rng.rand(*shape).astype("float32")
        _assert_same_outputs(infer(x), model(x, training=False))


def test_one_trace_serves_every_size_and_batch():
    model = _model("image_classification")
    infer = mv2.compile_for_inference(model)
    for shape in [(1, 64, 64, 3), (3, 96, 80, 3), (2, 70, 130, 3)]:
        x = np.random.RandomState(sum(shape)).rand(*shape).astype("float32")
        _assert_same_outputs(infer(x), model(x, training=False))
    assert len(infer.function._list_all_concrete_functions()) == 1


def test_does_not_modify_the_model_and_takes_a_snapshot():
    model = _model("image_classification")
    before = [w.numpy().copy() for w in model.weights]
    x = np.random.RandomState(2).rand(2, 64, 64, 3).astype("float32")
    expected = model(x, training=False).numpy()
    infer = mv2.compile_for_inference(model)
    got = infer(x).numpy()
    for old, variable in zip(before, model.weights):
        np.testing.assert_array_equal(old, variable.numpy(), err_msg=variable.path)
    # Later changes to the model do not reach the folded copy; fold_batchnorm=False follows them.
    live = mv2.compile_for_inference(model, fold_batchnorm=False)
    kernel = model.get_layer("classifier").kernel
    kernel.assign(kernel.numpy() * 2.0)
    np.testing.assert_array_equal(infer(x).numpy(), got)
    assert max_rel_error(live(x), model(x, training=False)) <= TOLERANCE
    assert max_rel_error(got, expected) <= TOLERANCE


def test_unfolded_path_and_predict_in_batches():
    model = _model("semantic_segmentation", output_stride=16)
    x = np.random.RandomState(3).rand(5, 64, 96, 3).astype("float32")
    expected = model(x, training=False)
    for fold in (True, False):
        infer = mv2.compile_for_inference(model, jit_compile=False, fold_batchnorm=fold)
        got = infer.predict(x, batch_size=2)
        assert isinstance(got, np.ndarray)
        _assert_same_outputs(got, expected)


def test_backbone_predict_keeps_the_output_structure():
    model = _model("backbone")
    x = np.random.RandomState(4).rand(3, 64, 64, 3).astype("float32")
    got = mv2.compile_for_inference(model).predict(x, batch_size=2)
    assert isinstance(got["hidden_states"], tuple) and len(got["hidden_states"]) == 5
    _assert_same_outputs(got, model(x, training=False))


def test_xla_matches():
    model = _model("image_classification", compat="cvnets")
    x = np.random.RandomState(5).rand(1, 100, 76, 3).astype("float32")
    infer = mv2.compile_for_inference(model, jit_compile=True)
    assert infer.jit_compile is True
    _assert_same_outputs(infer(x), model(x, training=False))


def test_auto_picks_no_xla_on_cpu():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible")
    assert mv2.compile_for_inference(_model("backbone")).jit_compile is False


@pytest.mark.parametrize(
    "kwargs,message",
    [({"jit_compile": "yes"}, "jit_compile must be one of"), ({"fold_batchnorm": True}, "fold_batchnorm=True needs")],
)
def test_rejects_bad_arguments(kwargs, message):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 1)])
    with pytest.raises((ValueError, TypeError), match=message):
        InferenceFunction(model, **kwargs)


def test_predict_rejects_bad_batch_size():
    infer = mv2.compile_for_inference(_model("image_classification"))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        infer.predict(np.zeros((1, 64, 64, 3), "float32"), batch_size=0)


# ----------------------------------------------------------------------------- runtime="tflite"
@pytest.mark.parametrize(
    "task,compat,output_stride,shape",
    [
        ("image_classification", "cvnets", 32, (2, 100, 76, 3)),
        ("backbone", "transformers", 32, (1, 96, 80, 3)),
        ("semantic_segmentation", "cvnets", 16, (1, 72, 88, 3)),
    ],
)
def test_tflite_runtime_matches_model(task, compat, output_stride, shape):
    model = _model(task, compat, output_stride)
    infer = mv2.compile_for_inference(model, runtime="tflite")
    assert infer.runtime == "tflite" and infer.function is None
    x = np.random.RandomState(6).rand(*shape).astype("float32")
    got = infer(x)
    assert all(isinstance(t, tf.Tensor) for t in tf.nest.flatten(got))
    _assert_same_outputs(got, model(x, training=False))
    assert infer.tflite.shapes == [shape]


def test_tflite_runtime_caches_recent_shapes_and_predicts_in_batches():
    model = _model("image_classification")
    infer = mv2.compile_for_inference(model, runtime="tflite", num_threads=1)
    infer.tflite.max_shapes = 2
    x = np.random.RandomState(7).rand(5, 64, 64, 3).astype("float32")
    got = infer.predict(x, batch_size=2)  # batches of 2, 2, 1: two shapes
    assert isinstance(got, np.ndarray)
    _assert_same_outputs(got, model(x, training=False))
    assert infer.tflite.shapes == [(2, 64, 64, 3), (1, 64, 64, 3)]
    infer(x[:3])  # a third shape evicts the least recently used
    assert infer.tflite.shapes == [(1, 64, 64, 3), (3, 64, 64, 3)]


def test_tflite_runtime_is_safe_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    model = _model("image_classification")
    infer = mv2.compile_for_inference(model, runtime="tflite")
    inputs = [np.random.RandomState(i).rand(1, 64, 64, 3).astype("float32") for i in range(12)]
    expected = [model(x, training=False).numpy() for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: infer(x).numpy(), inputs))
    for got, want in zip(results, expected):
        assert max_rel_error(got, want) <= TOLERANCE


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"runtime": "onnx"}, "runtime must be one of"),
        ({"runtime": "tflite", "jit_compile": True}, "jit_compile=True applies to runtime='tensorflow' only"),
        ({"runtime": "tflite", "fold_batchnorm": False}, "needs fold_batchnorm=True"),
        ({"runtime": "tflite", "num_threads": 0}, "num_threads must be a positive int"),
        ({"num_threads": 2}, "num_threads applies to runtime='tflite' only"),
    ],
)
def test_tflite_runtime_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mv2.compile_for_inference(_model("backbone"), **kwargs)
