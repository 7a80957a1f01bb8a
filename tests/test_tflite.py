"""TFLite export: builtin ops only, float32 equal to Keras, float16 / dynamic int8 smaller and running.

Numbers come from the default `tf.lite.Interpreter` (XNNPACK). TFLite's builtin kernels without
XNNPACK are less precise: at width 1.0 they differ from Keras by 1.4e-4 (classifier, 256 px) and
1.8e-3 (segmenter, 512 px) of the logits' std, XNNPACK by 5e-6 and 1.3e-5.

Width-0.5 models with every weight and BatchNorm statistic randomized. The segmenter runs at
72 x 104, where stage 3's 9 x 13 map is not a multiple of the patch size, so the ml-cvnets resize
to the next multiple is in the converted graph too.
"""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mobilevitv2.cli import main
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.export import export_tflite
from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
from keras_mobilevitv2.preprocessing import PreprocessingConfig
from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter
from tests.conftest import max_rel_error, randomize_keras_model

CLASSIFIER_SIZE = (128, 128)
SEGMENTER_SIZE = (72, 104)
FLOAT32_TOLERANCE = 1e-4  # max abs error / std of the Keras logits


def interpreter(path, default_delegates=True):
    """A TFLite interpreter, allocated. With `default_delegates` it is what `tf.lite.Interpreter`
    runs by default (XNNPACK on CPU); without, the builtin kernels alone, and the model's own op
    list (XNNPACK replaces the ops it takes by DELEGATE nodes)."""
    resolvers = tf.lite.experimental.OpResolverType
    resolver = resolvers.AUTO if default_delegates else resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    runner = tf.lite.Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    runner.allocate_tensors()
    return runner


def run_tflite(path, pixels):
    return interpreter(path).get_signature_runner("serving_default")(pixel_values=pixels)["logits"]


def op_counts(path):
    ops = interpreter(path, default_delegates=False)._get_ops_details()
    return collections.Counter(op["op_name"] for op in ops)


def assert_builtin_ops_only(path):
    ops = op_counts(path)
    assert ops, "no ops listed"
    not_builtin = {name for name in ops if name.startswith("Flex") or name in ("CUSTOM", "DELEGATE")}
    assert not not_builtin, f"non-builtin ops {not_builtin} in {dict(ops)}"
    return ops


def random_pixels(size, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (1, *size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def classifier():
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=10))
    return randomize_keras_model(model, seed=3)


@pytest.fixture(scope="module")
def segmenter():
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=5, output_stride=16, aspp_out_channels=32)
    return randomize_keras_model(MobileViTV2SemanticSegmenter(config), seed=4)


@pytest.fixture(scope="module")
def classifier_float32(classifier, tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "classifier.tflite"
    return export_tflite(classifier, path, input_size=CLASSIFIER_SIZE)


def test_classifier_float32_matches_keras(classifier, classifier_float32):
    pixels = random_pixels(CLASSIFIER_SIZE)
    expected = classifier(pixels, training=False).numpy()
    actual = run_tflite(classifier_float32, pixels)
    assert actual.shape == (1, 10)
    error = max_rel_error(actual, expected)
    print(f"classifier float32: max abs error / std {error:.3g}, {os.path.getsize(classifier_float32)} bytes")
    assert error <= FLOAT32_TOLERANCE
    ops = assert_builtin_ops_only(classifier_float32)
    print(f"classifier ops: {dict(ops)}")
    # Patch unfold/fold are rank-4 reshapes and transposes; the classifier head a fully connected op.
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE", "RESHAPE", "FULLY_CONNECTED"} <= set(ops)


@pytest.mark.slow  # a conversion each, 20-30 s on 2 busy cores
@pytest.mark.parametrize(
    "quantization, max_size_ratio, max_error", [("float16", 0.6, 0.05), ("dynamic_int8", 0.4, 0.5)]
)
def test_quantized_classifier_is_smaller_and_runs(
    classifier, classifier_float32, tmp_path, quantization, max_size_ratio, max_error
):
    path = export_tflite(classifier, tmp_path / f"{quantization}.tflite", quantization, input_size=CLASSIFIER_SIZE)
    size_ratio = os.path.getsize(path) / os.path.getsize(classifier_float32)
    print(f"{quantization}: {os.path.getsize(path)} bytes, {size_ratio:.2f} of float32")
    assert size_ratio < max_size_ratio
    pixels = random_pixels(CLASSIFIER_SIZE, seed=1)
    actual = run_tflite(path, pixels)
    assert np.all(np.isfinite(actual))
    # Quantized weights: close to the model, not equal.
    error = max_rel_error(actual, classifier(pixels, training=False).numpy())
    print(f"{quantization}: max abs error / std {error:.3g}")
    assert error <= max_error
    ops = assert_builtin_ops_only(path)
    if quantization == "float16":
        assert ops["DEQUANTIZE"] > 0  # float16 weights are dequantized to float32 at load


def test_segmenter_float32_matches_keras_at_a_size_not_divisible_by_patches(segmenter, tmp_path):
    path = export_tflite(segmenter, tmp_path / "segmenter.tflite", input_size=SEGMENTER_SIZE)
    pixels = random_pixels(SEGMENTER_SIZE)
    expected = segmenter(pixels, training=False).numpy()
    actual = run_tflite(path, pixels)
    assert actual.shape == expected.shape == (1, 6, 8, 5)  # cvnets rounds 9x13 up at stage 3, 5x7 at stage 4
    error = max_rel_error(actual, expected)
    print(f"segmenter float32: max abs error / std {error:.3g}")
    assert error <= FLOAT32_TOLERANCE
    print(f"segmenter ops: {dict(assert_builtin_ops_only(path))}")


def test_export_tflite_rejects_bad_arguments(classifier, tmp_path):
    with pytest.raises(ValueError, match="quantization must be one of"):
        export_tflite(classifier, tmp_path / "m.tflite", quantization="int4")
    with pytest.raises(ValueError, match="input_size"):
        export_tflite(classifier, tmp_path / "m.tflite", input_size=256)
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.slow  # a conversion, 20-30 s on 2 busy cores
def test_cli_exports_tflite_at_the_preprocessing_crop_size(tmp_path, capsys):
    preprocessing = PreprocessingConfig(shortest_edge=80, crop_height=64, crop_width=96)
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3)
    model = MobileViTV2ImageClassifier(config, preprocessing=preprocessing)
    randomize_keras_model(model, seed=5)
    model.save(tmp_path / "tiny.keras")
    assert main(["export", str(tmp_path / "tiny.keras"), "--format", "tflite", "--out", str(tmp_path / "out")]) == 0
    path = tmp_path / "out" / "tiny.tflite"
    assert f"wrote {path}" in capsys.readouterr().out
    pixels = random_pixels((64, 96))
    assert max_rel_error(run_tflite(path, pixels), model(pixels, training=False).numpy()) <= FLOAT32_TOLERANCE
    # An existing file is not replaced without --overwrite.
    assert main(["export", str(tmp_path / "tiny.keras"), "--format", "tflite", "--out", str(path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
