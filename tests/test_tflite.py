"""TFLite export: builtin ops only, float32 equal to Keras, float16 / dynamic int8 smaller and running.

Numbers come from the default interpreter (`keras_mobilevitv2.litert.interpreter`: LiteRT's, XNNPACK). TFLite's builtin kernels without
XNNPACK are less precise: at width 1.0 they differ from Keras by 1.4e-4 (classifier, 256 px) and
1.8e-3 (segmenter, 512 px) of the logits' std, XNNPACK by 5e-6 and 1.3e-5.

Width-0.5 models with every weight and BatchNorm statistic randomized. The segmenter runs at
72 x 104, where stage 3's 9 x 13 map is not a multiple of the patch size, so the ml-cvnets resize
to the next multiple is in the converted graph too.
"""

import collections
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_mobilevitv2 import export as export_module
from keras_mobilevitv2 import litert
from keras_mobilevitv2.cli import main
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.export import export_tflite
from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
from keras_mobilevitv2.preprocessing import PreprocessingConfig, preprocess_image
from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter
from tests.conftest import max_rel_error, randomize_keras_model

CLASSIFIER_SIZE = (128, 128)
SEGMENTER_SIZE = (72, 104)
FLOAT32_TOLERANCE = 1e-4  # max abs error / std of the Keras logits


def interpreter(path, default_delegates=True):
    """A TFLite interpreter, allocated. With `default_delegates` it is what LiteRT runs by default
    (XNNPACK on CPU); without, the builtin kernels alone, and the model's own op list (XNNPACK
    replaces the ops it takes by DELEGATE nodes)."""
    return litert.interpreter(model_path=path, default_delegates=default_delegates)


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
    # The agreement report's segmenter branch: a float32 file agrees with Keras on (nearly) every pixel.
    pixels = np.concatenate([random_pixels(SEGMENTER_SIZE, seed) for seed in (1, 2)])
    report = export_module.int8_agreement(segmenter, open(path, "rb").read(), pixels)
    assert report["images"] == 2 and report["input"]["dtype"] == report["output"]["dtype"] == "float32"
    assert report["max_logit_error_over_std"] <= FLOAT32_TOLERANCE and "top1_agreement" not in report
    assert report["pixel_agreement"] >= 0.999


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


# ---------------------------------------------------------------------------- full-integer int8
INT8_SIZE = (64, 64)
# The default preprocessing (shortest edge 288, crop 256) at 64 x 64: the same 288 / 256 ratio.
INT8_PREPROCESSING = PreprocessingConfig(shortest_edge=72, crop_height=64, crop_width=64)
INT8_LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def test_interpreter_is_litert_when_installed():
    pytest.importorskip("ai_edge_litert")
    assert litert.runtime_name() == "ai_edge_litert"
    assert type(litert.interpreter(model_content=_tiny_flatbuffer())).__module__.startswith("ai_edge_litert")


def test_interpreter_falls_back_to_tf_lite_without_litert(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert" else find_spec(name, *a))
    assert litert.runtime_name() == "tf.lite"
    runner = litert.interpreter(model_content=_tiny_flatbuffer(), num_threads=1)
    assert isinstance(runner, tf.lite.Interpreter)
    (detail,) = runner.get_input_details()
    runner.set_tensor(detail["index"], np.array([[1.5, -2.0]], np.float32))
    runner.invoke()
    np.testing.assert_array_equal(runner.get_tensor(runner.get_output_details()[0]["index"]), [[3.0, -4.0]])
    with pytest.raises(ValueError, match="exactly one of"):
        litert.interpreter()


def _tiny_flatbuffer():
    @tf.function(input_signature=[tf.TensorSpec([1, 2], tf.float32)])
    def double(x):
        return 2 * x

    return tf.lite.TFLiteConverter.from_concrete_functions([double.get_concrete_function()]).convert()


@pytest.fixture(scope="module")
def int8_classifier():
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=10))
    return randomize_keras_model(model, seed=7)


@pytest.mark.slow  # a calibrated conversion, 30-60 s on 2 busy cores
def test_full_int8_with_int8_io_runs_in_litert_and_reports_its_agreement(int8_classifier, tmp_path):
    path = tmp_path / "int8.tflite"
    report = export_module.export_tflite_int8(int8_classifier, path, input_size=INT8_SIZE, int8_io=True)
    assert report["path"] == str(path) and report["size_bytes"] == os.path.getsize(path)
    # Beside the file, the same report.
    assert json.loads((tmp_path / "int8.int8.json").read_text()) == json.loads(json.dumps(report))

    # Full integer: int8 input and output, every conv / dense op on int8 tensors.
    runner = interpreter(path)
    (detail,) = runner.get_input_details()
    (out_detail,) = runner.get_output_details()
    assert detail["dtype"] == np.int8 and out_detail["dtype"] == np.int8
    assert report["input"] == {"dtype": "int8", "scale": detail["quantization"][0], "zero_point": detail["quantization"][1]}
    assert report["output"]["dtype"] == "int8" and report["output"]["scale"] > 0
    builtin = interpreter(path, default_delegates=False)
    tensors = {t["index"]: t["dtype"] for t in builtin.get_tensor_details()}
    layers = [op for op in builtin._get_ops_details() if op["op_name"] in INT8_LAYERS]
    assert layers and all(tensors[op["inputs"][0]] == np.int8 for op in layers)

    # The report recomputed: the sample photos at 64 px, quantized by hand, against Keras float32.
    assert report["representative_images"] == export_module.sample_photos()
    assert report["images"] == len(report["representative_images"]) >= 3
    (in_scale, in_zero), (out_scale, out_zero) = detail["quantization"], out_detail["quantization"]
    top1, errors, expected_all = [], [], []
    for image_path in report["representative_images"]:
        pixels = preprocess_image(image_path, INT8_PREPROCESSING)[None]
        quantized = np.clip(np.round(pixels / in_scale) + in_zero, -128, 127).astype(np.int8)
        runner.set_tensor(detail["index"], quantized)
        runner.invoke()
        actual = (runner.get_tensor(out_detail["index"]).astype(np.float32) - out_zero) * out_scale
        expected = int8_classifier(pixels, training=False).numpy()
        top1.append(np.argmax(actual) == np.argmax(expected))
        errors.append(np.max(np.abs(actual - expected)))
        expected_all.append(expected)
    print(f"int8 (int8 io): {report['size_bytes']} bytes, top-1 agreement {np.mean(top1)}, max logit error "
          f"{max(errors):.3g} ({report['max_logit_error_over_std']:.3g} of std)")
    assert report["top1_agreement"] == pytest.approx(np.mean(top1))
    assert report["max_logit_error"] == pytest.approx(max(errors), rel=1e-5, abs=1e-6)
    assert report["max_logit_error_over_std"] == pytest.approx(max(errors) / np.std(expected_all), rel=1e-4)
    assert np.mean(top1) >= 0.5  # quantized, not broken: the logit error is a fraction of their spread
    assert report["max_logit_error_over_std"] < 2


@pytest.mark.slow  # a calibrated conversion, 30-60 s on 2 busy cores
def test_cli_full_int8_calibrates_on_a_folder_and_prints_the_agreement(int8_classifier, tmp_path, capsys):
    import skimage.data

    from PIL import Image

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.jpg")
    Image.fromarray(skimage.data.astronaut()).save(folder / "sub" / "astronaut.png")
    int8_classifier.save(tmp_path / "tiny.keras")
    argv = ["export", str(tmp_path / "tiny.keras"), "--format", "tflite", "--out", str(tmp_path / "out"),
            "--quantization", "int8", "--input-size", "64", "64", "--representative-images", str(folder)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    path = tmp_path / "out" / "tiny-int8.tflite"
    report = json.loads((tmp_path / "out" / "tiny-int8.int8.json").read_text())
    assert report["representative_images"] == [str(folder / "coffee.jpg"), str(folder / "sub" / "astronaut.png")]
    assert f"top-1 agreement {report['top1_agreement']:.0%} on 2 images" in out
    assert "input: float32" in out and "input: int8" not in out
    # Float input and output around the int8 graph; it runs in LiteRT.
    runner = interpreter(path)
    assert runner.get_input_details()[0]["dtype"] == np.float32
    logits = litert.run_signature(runner, pixel_values=random_pixels(INT8_SIZE))["logits"]
    assert logits.shape == (1, 10) and np.all(np.isfinite(logits))


def test_representative_folder_with_a_bad_file_names_it(int8_classifier, tmp_path, capsys):
    import skimage.data

    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(export_module.RepresentativeImageError, match=r"representative image .*broken\.jpg"):
        export_module.export_tflite(
            int8_classifier, tmp_path / "m.tflite", "int8", input_size=INT8_SIZE, representative_images=folder
        )
    assert not (tmp_path / "m.tflite").exists()
    int8_classifier.save(tmp_path / "tiny.keras")
    argv = ["export", str(tmp_path / "tiny.keras"), "--format", "tflite", "--out", str(tmp_path / "out"),
            "--quantization", "int8", "--representative-images", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: representative image ") and "broken.jpg" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "tiny-int8.tflite").exists()


def test_int8_without_any_photos_names_the_extra(int8_classifier, tmp_path, monkeypatch):
    from keras_mobilevitv2.extras import MissingExtraError

    monkeypatch.setattr(export_module, "SAMPLE_PHOTOS", (("skimage", "data/no-such-photo.png"),))
    with pytest.raises(MissingExtraError, match=r"keras-mobilevitv2\[samples\]"):
        export_module.export_tflite(int8_classifier, tmp_path / "m.tflite", "int8", input_size=INT8_SIZE)
    with pytest.raises(export_module.RepresentativeImageError, match="no image files"):
        export_module.export_tflite(
            int8_classifier, tmp_path / "m.tflite", "int8", input_size=INT8_SIZE, representative_images=tmp_path
        )


def test_int8_options_need_int8(int8_classifier, tmp_path, capsys):
    with pytest.raises(ValueError, match="apply to quantization='int8'"):
        export_module.export_tflite(int8_classifier, tmp_path / "m.tflite", "float16", int8_io=True)
    assert main(["export", "m.keras", "--format", "tflite", "--out", str(tmp_path), "--int8-io"]) == 2
    assert "apply to --quantization int8 only" in capsys.readouterr().err


def test_preprocessing_at_size_keeps_the_crop_ratio():
    at = export_module.preprocessing_at_size
    assert at(PreprocessingConfig(), 64, 64) == INT8_PREPROCESSING
    no_crop = PreprocessingConfig(shortest_edge=512, do_center_crop=False)
    assert at(no_crop, 64, 96) == PreprocessingConfig(shortest_edge=96, crop_height=64, crop_width=96, do_center_crop=True)
