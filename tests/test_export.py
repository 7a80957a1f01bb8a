"""SavedModel / TF Serving export: every signature replayed in a fresh process, as a server would.

The models are width 0.5 with every weight and BatchNorm statistic randomized; preprocessing is
shrunk (shortest edge 72 and crop 64 for the classifier, shortest edge 64 for the segmenter) to keep
the tests fast. Requests are `PredictionLog` TFRecords (the warmup format) replayed by
`tests/serving_client.py` in a new Python process that imports neither keras nor this package.
Those tests are marked slow (each exports a SavedModel and starts a process, 15-40 s on 2 cores);
the bundle layout tests replace the SavedModel by a marker file and are fast.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from keras_mobilevitv2 import export as export_module
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.export import (
    SEGMENTATION_PAD_LABEL,
    WARMUP_FILE,
    export_saved_model,
    export_serving_bundle,
    prediction_log,
    promote_canary,
    resolve_preprocessing,
)
from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
from keras_mobilevitv2.preprocessing import PreprocessingConfig, decode_image, preprocess_image, tf_preprocess
from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter, resize_logits
from tests.conftest import randomize_keras_model

CLIENT = pathlib.Path(__file__).with_name("serving_client.py")
CLASSIFIER_PREPROCESSING = PreprocessingConfig(shortest_edge=72, crop_height=64, crop_width=64)
# The segmenter's is given with a centre crop, which its signatures leave out (resolve_preprocessing).
SEGMENTER_PREPROCESSING = PreprocessingConfig(shortest_edge=64, crop_height=48, crop_width=48)
SEGMENTER_SIGNATURE_PREPROCESSING = dataclasses.replace(SEGMENTER_PREPROCESSING, do_center_crop=False)
LABELS = {i: f"class-{i}" for i in range(10)}
TOLERANCE = 1e-5  # SavedModel vs in-process Keras on the same pixels: max abs error of the logits


def encode(image, fmt):
    image = tf.convert_to_tensor(np.asarray(image, np.uint8))
    return (tf.io.encode_jpeg(image, quality=90) if fmt == "jpeg" else tf.io.encode_png(image)).numpy()


CHELSEA_JPEG = encode(skimage.data.chelsea(), "jpeg")  # 300 x 451
CHELSEA_PNG = encode(skimage.data.chelsea(), "png")
COFFEE_PNG = encode(skimage.data.coffee(), "png")  # 400 x 600
GRAY_PNG = encode(skimage.data.camera()[::4, ::4, None], "png")  # 128 x 128, one channel
ONE_PIXEL_PNG = encode(np.full((1, 1, 3), 200), "png")


def read_requests(path):
    """The PredictRequests of a TFRecord of PredictionLogs, parsed with the serving protos."""
    requests = []
    for record in tf.data.TFRecordDataset(str(path)):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        requests.append((request.model_spec.name, request.model_spec.signature_name, inputs))
    return requests


def replay(saved_model_dir, requests_path, tmp_path):
    """Run `serving_client.py` in a new process; its per-request results as {index: dict}."""
    out = tmp_path / f"replay-{requests_path.stem}.npz"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.run(
        [sys.executable, str(CLIENT), str(saved_model_dir), str(requests_path), str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    with np.load(out) as data:
        for key in data.files:
            index, name = key.split("/", 1)
            results.setdefault(int(index), {})[name] = data[key]
    return [results[i] for i in sorted(results)]


def replay_with_warmup(bundle, logs, tmp_path):
    """One serving process for `logs` followed by the bundle's warmup requests (the warmup file's
    records as they are): (results of `logs`, the warmup requests, their results)."""
    warmup = read_requests(bundle / WARMUP_FILE)
    path = tmp_path / "requests.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
        for record in tf.data.TFRecordDataset(str(bundle / WARMUP_FILE)):
            writer.write(record.numpy())
    results = replay(bundle, path, tmp_path)
    assert len(results) == len(logs) + len(warmup)
    return results[: len(logs)], warmup, results[len(logs) :]


def assert_close(actual, expected):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = np.max(np.abs(actual.astype(np.float64) - expected))
    assert error <= TOLERANCE, f"max abs error {error:.3g} (logits std {np.std(expected):.3g})"


def keras_logits(model, pixels):
    return model(np.asarray(pixels, np.float32), training=False).numpy()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def classifier():
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, id2label=LABELS))
    return randomize_keras_model(model, seed=1)


@pytest.fixture(scope="module")
def segmenter():
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=5, output_stride=16, aspp_out_channels=32)
    return randomize_keras_model(MobileViTV2SemanticSegmenter(config), seed=2)


@pytest.fixture(scope="module")
def classifier_bundle(classifier, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    version_dir = export_serving_bundle(classifier, base, "classifier", preprocessing=CLASSIFIER_PREPROCESSING)
    return pathlib.Path(version_dir)


@pytest.fixture(scope="module")
def segmenter_bundle(segmenter, tmp_path_factory):
    base = tmp_path_factory.mktemp("serving")
    version_dir = export_serving_bundle(
        segmenter, base, "segmenter", preprocessing=SEGMENTER_PREPROCESSING,
        warmup_images=[CHELSEA_JPEG, GRAY_PNG],
    )
    return pathlib.Path(version_dir)


# --------------------------------------------------------------------------- classifier
def classifier_reference(model, pixels, top_k=5):
    logits = keras_logits(model, pixels)
    probabilities = tf.nn.softmax(logits).numpy()
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
    return logits, probabilities, order


def check_classifier_outputs(result, model, pixels):
    logits, probabilities, order = classifier_reference(model, pixels)
    out = result
    assert out["out/logits"].dtype == np.float32 and out["out/logits"].shape == logits.shape
    assert_close(out["out/logits"], logits)
    np.testing.assert_allclose(out["out/probabilities"], probabilities, atol=1e-6)
    assert out["out/top_k_indices"].dtype == np.int32
    np.testing.assert_array_equal(out["out/top_k_indices"], order)
    np.testing.assert_allclose(out["out/top_k_scores"], np.take_along_axis(probabilities, order, -1), atol=1e-6)
    np.testing.assert_array_equal(out["out/top_k_labels"], np.vectorize(LABELS.get)(order))


CLASSIFIER_PIXEL_BATCH = np.random.default_rng(0).uniform(0, 1, (2, 64, 80, 3)).astype(np.float32)
CLASSIFIER_IMAGES = [CHELSEA_JPEG, CHELSEA_PNG, COFFEE_PNG, GRAY_PNG]


@pytest.fixture(scope="module")
def classifier_replay(classifier_bundle, tmp_path_factory):
    """The signature requests of the test below and the warmup file, replayed in one fresh process."""
    pixel_batch, images = CLASSIFIER_PIXEL_BATCH, CLASSIFIER_IMAGES
    logs = [
        prediction_log("classifier", "serving_default", {"image_bytes": np.array(images, dtype=object)}),
        prediction_log("classifier", "predict_pixels", {"pixel_values": pixel_batch}),
        prediction_log("classifier", "serving_default", {"image_bytes": np.array([ONE_PIXEL_PNG], dtype=object)}),
        prediction_log("classifier", "serving_default", {"image_bytes": np.array([], dtype=object)}),
        prediction_log("classifier", "serving_default", {"image_bytes": np.array([b"not an image"], dtype=object)}),
        prediction_log("classifier", "predict_pixels", {"pixel_values": np.zeros((0, 64, 64, 3), np.float32)}),
        prediction_log("classifier", "predict_pixels", {"pixel_values": np.zeros((1, 0, 64, 3), np.float32)}),
    ]
    return replay_with_warmup(classifier_bundle, logs, tmp_path_factory.mktemp("replay"))


@pytest.mark.slow  # exports a SavedModel and starts a TensorFlow process
def test_classifier_signatures_in_fresh_process(classifier, classifier_replay):
    pixel_batch, images = CLASSIFIER_PIXEL_BATCH, CLASSIFIER_IMAGES
    results, _, _ = classifier_replay

    # A batch of JPEG / PNG photos of different sizes, decoded and preprocessed in the graph.
    pixels = np.stack([preprocess_image(data, CLASSIFIER_PREPROCESSING) for data in images])
    check_classifier_outputs(results[0], classifier, pixels)
    jpeg_logits, png_logits = results[0]["out/logits"][:2]
    # The JPEG and the PNG of one photo: the same top-1 as preprocess_image + Keras, each.
    assert np.argmax(jpeg_logits) == np.argmax(keras_logits(classifier, pixels[:1]))
    assert np.argmax(png_logits) == np.argmax(keras_logits(classifier, pixels[1:2]))
    # Already preprocessed pixels, any size.
    check_classifier_outputs(results[1], classifier, pixel_batch)
    # A 1x1 image is valid: resized up like any other.
    check_classifier_outputs(results[2], classifier, preprocess_image(ONE_PIXEL_PNG, CLASSIFIER_PREPROCESSING)[None])
    # An empty batch and bytes that are no image are InvalidArgumentErrors that say why.
    assert results[3]["error_type"] == "InvalidArgumentError"
    assert "image_bytes is empty" in str(results[3]["error"])
    assert results[4]["error_type"] == "InvalidArgumentError"
    assert "Unknown image file format" in str(results[4]["error"])
    for result in results[5:]:
        assert result["error_type"] == "InvalidArgumentError"
        assert "pixel_values must hold at least one image of at least 1x1 pixels" in str(result["error"])


@pytest.mark.slow  # exports a SavedModel and starts a TensorFlow process
def test_classifier_warmup_requests_replay(classifier, classifier_replay):
    _, requests, results = classifier_replay
    assert [(name, signature) for name, signature, _ in requests] == [
        ("classifier", "serving_default")
    ] * 3 + [("classifier", "predict_pixels")]
    assert len(results) == len(requests)
    for (_, signature, inputs), result in zip(requests, results):
        assert "error" not in result
        if signature == "serving_default":
            (data,) = inputs["image_bytes"]
            pixels = preprocess_image(data, CLASSIFIER_PREPROCESSING)[None]
        else:
            pixels = inputs["pixel_values"]
            assert pixels.shape == (1, 64, 64, 3)
        check_classifier_outputs(result, classifier, pixels)


def saved_model_cli_show(saved_model_dir):
    proc = subprocess.run(
        ["saved_model_cli", "show", "--all", "--dir", str(saved_model_dir)],
        capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "-1"}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def signature_block(text, name):
    """The part of `saved_model_cli show --all` output that describes one signature."""
    start = text.index(f"signature_def['{name}']:")
    end = text.find("signature_def[", start + 1)
    return text[start : end if end != -1 else text.find("Concrete Functions", start)]


def tensor_line(block, name, dtype, shape):
    """`saved_model_cli` prints each tensor as `['name'] tensor_info:` then dtype, shape, name."""
    start = block.index(f"['{name}'] tensor_info:")
    lines = block[start:].splitlines()[1:3]
    return lines[0].strip() == f"dtype: {dtype}" and lines[1].strip() == f"shape: {shape}"


@pytest.mark.slow  # exports a SavedModel and starts a TensorFlow process
def test_saved_model_cli_lists_classifier_signatures(classifier_bundle):
    text = saved_model_cli_show(classifier_bundle)
    serve = signature_block(text, "serving_default")
    assert tensor_line(serve, "image_bytes", "DT_STRING", "(-1)")
    expected_outputs = {
        "logits": ("DT_FLOAT", "(-1, 10)"),
        "probabilities": ("DT_FLOAT", "(-1, 10)"),
        "top_k_indices": ("DT_INT32", "(-1, 5)"),
        "top_k_scores": ("DT_FLOAT", "(-1, 5)"),
        "top_k_labels": ("DT_STRING", "(-1, 5)"),
    }
    pixels = signature_block(text, "predict_pixels")
    assert tensor_line(pixels, "pixel_values", "DT_FLOAT", "(-1, -1, -1, 3)")
    for block in (serve, pixels):
        assert "Method name is: tensorflow/serving/predict" in block
        for name, (dtype, shape) in expected_outputs.items():
            assert tensor_line(block, name, dtype, shape), (name, block)


# --------------------------------------------------------------------------- segmenter
def segmenter_reference(model, data):
    """In-process: decode, preprocess, model, logits resized to the decoded size, argmax."""
    image = decode_image(data)
    pixels = tf_preprocess(image, SEGMENTER_SIGNATURE_PREPROCESSING)[None]
    logits = model(pixels, training=False)
    resized = resize_logits(logits, (image.shape[0], image.shape[1])).numpy()[0]
    return logits.numpy()[0], resized, image.shape[:2]


def assert_label_maps_match(actual, resized_logits):
    """Equal argmax wherever the best two logits are not within float noise of each other."""
    top2 = np.sort(resized_logits, axis=-1)[..., -2:]
    decided = top2[..., 1] - top2[..., 0] > 1e-4
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(actual[decided], np.argmax(resized_logits, -1)[decided])


SEGMENTER_PIXEL_BATCH = np.random.default_rng(0).uniform(0, 1, (2, 64, 96, 3)).astype(np.float32)
SEGMENTER_IMAGES = [CHELSEA_JPEG, COFFEE_PNG]


@pytest.fixture(scope="module")
def segmenter_replay(segmenter_bundle, tmp_path_factory):
    """The signature requests of the test below and the warmup file, replayed in one fresh process."""
    pixel_batch, images = SEGMENTER_PIXEL_BATCH, SEGMENTER_IMAGES
    logs = [
        prediction_log("segmenter", "serving_default", {"image_bytes": np.array(images, dtype=object)}),
        prediction_log("segmenter", "predict_pixels", {"pixel_values": pixel_batch}),
        prediction_log("segmenter", "serving_default", {"image_bytes": np.array([ONE_PIXEL_PNG], dtype=object)}),
        prediction_log("segmenter", "serving_default", {"image_bytes": np.array([], dtype=object)}),
    ]
    return replay_with_warmup(segmenter_bundle, logs, tmp_path_factory.mktemp("replay"))


@pytest.mark.slow  # exports a SavedModel and starts a TensorFlow process
def test_segmenter_signatures_in_fresh_process(segmenter, segmenter_replay):
    pixel_batch, images = SEGMENTER_PIXEL_BATCH, SEGMENTER_IMAGES
    results, _, _ = segmenter_replay

    # Images of different sizes: label maps at each image's own size, padded with -1 to the largest.
    out = results[0]
    assert out["out/segmentation"].dtype == np.int32 and out["out/segmentation"].shape == (2, 400, 600)
    np.testing.assert_array_equal(out["out/image_size"], [[300, 451], [400, 600]])
    for i, data in enumerate(images):
        logits, resized, (height, width) = segmenter_reference(segmenter, data)
        segmentation = out["out/segmentation"][i]
        assert_label_maps_match(segmentation[:height, :width], resized)
        assert np.all(segmentation[height:] == SEGMENTATION_PAD_LABEL)
        assert np.all(segmentation[:, width:] == SEGMENTATION_PAD_LABEL)
        h, w = out["out/logits_size"][i]
        assert (h, w) == logits.shape[:2]
        assert_close(out["out/logits"][i, :h, :w], logits)
        assert np.all(out["out/logits"][i, h:] == 0) and np.all(out["out/logits"][i, :, w:] == 0)
    # Already preprocessed pixels: the model's logits, and the label map at the pixels' size.
    out = results[1]
    logits = keras_logits(segmenter, pixel_batch)
    assert_close(out["out/logits"], logits)
    assert out["out/segmentation"].shape == (2, 64, 96)
    assert_label_maps_match(out["out/segmentation"], resize_logits(logits, (64, 96)).numpy())
    # A 1x1 image gives a 1x1 label map; an empty batch is an error.
    out = results[2]
    np.testing.assert_array_equal(out["out/image_size"], [[1, 1]])
    assert out["out/segmentation"].shape == (1, 1, 1)
    assert out["out/segmentation"][0, 0, 0] == np.argmax(segmenter_reference(segmenter, ONE_PIXEL_PNG)[1])
    assert results[3]["error_type"] == "InvalidArgumentError"
    assert "image_bytes is empty" in str(results[3]["error"])


@pytest.mark.slow  # exports a SavedModel and starts a TensorFlow process
def test_segmenter_warmup_requests_replay(segmenter, segmenter_replay):
    _, requests, results = segmenter_replay
    assert [signature for _, signature, _ in requests] == ["serving_default"] * 2 + ["predict_pixels"]
    assert len(results) == len(requests)
    for (name, signature, inputs), result in zip(requests, results):
        assert name == "segmenter" and "error" not in result
        if signature == "serving_default":
            logits, resized, size = segmenter_reference(segmenter, inputs["image_bytes"][0])
            assert_close(result["out/logits"][0], logits)
            assert_label_maps_match(result["out/segmentation"][0], resized)
        else:
            logits = keras_logits(segmenter, inputs["pixel_values"])
            assert_close(result["out/logits"], logits)


@pytest.mark.slow  # exports a SavedModel and starts a TensorFlow process
def test_saved_model_cli_lists_segmenter_signatures(segmenter_bundle):
    text = saved_model_cli_show(segmenter_bundle)
    serve = signature_block(text, "serving_default")
    assert tensor_line(serve, "image_bytes", "DT_STRING", "(-1)")
    assert tensor_line(serve, "logits", "DT_FLOAT", "(-1, -1, -1, 5)")
    assert tensor_line(serve, "segmentation", "DT_INT32", "(-1, -1, -1)")
    assert tensor_line(serve, "image_size", "DT_INT32", "(-1, 2)")
    assert tensor_line(serve, "logits_size", "DT_INT32", "(-1, 2)")
    pixels = signature_block(text, "predict_pixels")
    assert tensor_line(pixels, "pixel_values", "DT_FLOAT", "(-1, -1, -1, 3)")
    assert tensor_line(pixels, "logits", "DT_FLOAT", "(-1, -1, -1, 5)")
    assert tensor_line(pixels, "segmentation", "DT_INT32", "(-1, -1, -1)")


# --------------------------------------------------------------------------- preprocessing choice
def test_preprocessing_argument_then_model_attribute_then_task_default(classifier, segmenter, monkeypatch):
    assert resolve_preprocessing(classifier, CLASSIFIER_PREPROCESSING) == CLASSIFIER_PREPROCESSING
    assert resolve_preprocessing(classifier) == PreprocessingConfig.from_preset("mobilevitv2-1.0-imagenet1k-256")
    assert resolve_preprocessing(classifier).crop_height == 256
    monkeypatch.setattr(classifier, "preprocessing", CLASSIFIER_PREPROCESSING, raising=False)
    assert resolve_preprocessing(classifier) == CLASSIFIER_PREPROCESSING
    # A segmenter's label map covers the whole image: its signatures never centre crop.
    voc = PreprocessingConfig.from_preset("mobilevitv2-1.0-voc-deeplabv3")
    assert resolve_preprocessing(segmenter) == dataclasses.replace(voc, do_center_crop=False)
    assert resolve_preprocessing(segmenter, CLASSIFIER_PREPROCESSING) == dataclasses.replace(
        CLASSIFIER_PREPROCESSING, do_center_crop=False
    )
    with pytest.raises(TypeError, match="PreprocessingConfig"):
        resolve_preprocessing(classifier, "mobilevitv2-1.0-imagenet1k-256")


# --------------------------------------------------------------------------- bundle layout
class ExportCalls(list):
    """The paths exported, in order; `.folded` the `fold_batchnorm` of each."""


@pytest.fixture
def fake_saved_model(monkeypatch):
    """Replace the (slow) SavedModel writing by a marker file: these tests are about the layout."""
    calls = ExportCalls()
    folded = []

    def fake_export(model, path, preprocessing=None, top_k=5, fold_batchnorm=True, max_image_pixels=None):
        calls.append(path)
        folded.append(fold_batchnorm)
        os.makedirs(path, exist_ok=True)
        pathlib.Path(path, "saved_model.pb").write_text(f"export {len(calls)}")
        return path

    monkeypatch.setattr(export_module, "export_saved_model", fake_export)
    calls.folded = folded
    return calls


def read_models_config(base):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((base / "models.config").read_text(), config)
    return {c.name: (c.base_path, c.model_platform) for c in config.model_config_list.config}


def entries(model_dir):
    return sorted(os.listdir(model_dir))


def test_versions_count_up_and_are_never_overwritten(classifier, fake_saved_model, tmp_path):
    kwargs = dict(preprocessing=CLASSIFIER_PREPROCESSING, warmup_images=[ONE_PIXEL_PNG])
    first = export_serving_bundle(classifier, tmp_path, "cls", **kwargs)
    second = export_serving_bundle(classifier, tmp_path, "cls", **kwargs)  # the canary
    assert (first, second) == (str(tmp_path / "cls" / "1"), str(tmp_path / "cls" / "2"))
    promote_canary(tmp_path, "cls")  # each new version is the canary: promoted, the next one can be
    assert export_serving_bundle(classifier, tmp_path, "cls", version=7, **kwargs).endswith("/7")
    promote_canary(tmp_path, "cls")
    assert export_serving_bundle(classifier, tmp_path, "cls", **kwargs).endswith("/8")
    promote_canary(tmp_path, "cls")
    (tmp_path / "cls" / "notes").mkdir()  # not all digits: not a version
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_serving_bundle(classifier, tmp_path, "cls", version=2, **kwargs)
    assert (tmp_path / "cls" / "2" / "saved_model.pb").read_text() == "export 2"
    replaced = export_serving_bundle(classifier, tmp_path, "cls", version=2, overwrite=True, **kwargs)
    assert pathlib.Path(replaced, "saved_model.pb").read_text() == "export 5"
    assert (pathlib.Path(replaced) / WARMUP_FILE).is_file()
    assert entries(tmp_path / "cls") == ["1", "2", "7", "8", "notes"]
    for bad in (0, -1, "3", 2.0):
        with pytest.raises(ValueError, match="version must be a positive integer"):
            export_serving_bundle(classifier, tmp_path, "cls", version=bad, **kwargs)


def test_models_config_keeps_other_models(classifier, fake_saved_model, tmp_path):
    (tmp_path / "models.config").write_text(
        'model_config_list {\n  config {\n    name: "other"\n    base_path: "/srv/other"\n'
        '    model_platform: "tensorflow"\n  }\n}\n'
    )
    kwargs = dict(preprocessing=CLASSIFIER_PREPROCESSING, warmup_images=[ONE_PIXEL_PNG])
    export_serving_bundle(classifier, tmp_path, "cls", **kwargs)
    export_serving_bundle(classifier, tmp_path, "cls", **kwargs)
    export_serving_bundle(classifier, tmp_path, "seg", server_base_dir="/models", **kwargs)
    assert read_models_config(tmp_path) == {
        "other": ("/srv/other", "tensorflow"),
        "cls": (str(tmp_path / "cls"), "tensorflow"),
        "seg": ("/models/seg", "tensorflow"),
    }


def test_a_failed_export_leaves_no_version_and_no_temporary_dir(classifier, fake_saved_model, tmp_path, monkeypatch):
    kwargs = dict(preprocessing=CLASSIFIER_PREPROCESSING, warmup_images=[ONE_PIXEL_PNG])
    export_serving_bundle(classifier, tmp_path, "cls", **kwargs)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "_write_warmup", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        export_serving_bundle(classifier, tmp_path, "cls", **kwargs)
    assert entries(tmp_path / "cls") == ["1"]
    # Replacing a version that then fails keeps the old one.
    with pytest.raises(RuntimeError, match="disk full"):
        export_serving_bundle(classifier, tmp_path, "cls", version=1, overwrite=True, **kwargs)
    assert entries(tmp_path / "cls") == ["1"]
    assert (tmp_path / "cls" / "1" / "saved_model.pb").read_text() == "export 1"
    assert read_models_config(tmp_path) == {"cls": (str(tmp_path / "cls"), "tensorflow")}


def test_bundle_rejects_bad_names_and_warmup_images(classifier, fake_saved_model, tmp_path):
    with pytest.raises(ValueError, match="model_name"):
        export_serving_bundle(classifier, tmp_path, "../escape")
    with pytest.raises(TypeError, match="warmup_images"):
        export_serving_bundle(classifier, tmp_path, "cls", warmup_images=[np.zeros((4, 4, 3))])
    assert not (tmp_path / "cls").exists()


def test_export_saved_model_rejects_other_models(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match="MobileViTV2ImageClassifier or MobileViTV2SemanticSegmenter"):
        export_saved_model(model, tmp_path / "m")


def saved_model_sizes(path):
    variables = sum(f.stat().st_size for f in (pathlib.Path(path) / "variables").glob("*"))
    return (pathlib.Path(path) / "saved_model.pb").stat().st_size, variables


def test_folded_and_variable_savedmodels_agree_and_store_the_weights_once(classifier, classifier_bundle, tmp_path):
    weights_bytes = 4 * classifier.count_params()
    # The bundle's version directory is export_saved_model(classifier, preprocessing=CLASSIFIER_PREPROCESSING)
    # (folded, the default) plus the warmup requests in assets.extra.
    folded = classifier_bundle
    plain = export_saved_model(
        classifier, tmp_path / "plain", preprocessing=CLASSIFIER_PREPROCESSING, fold_batchnorm=False
    )
    # Folded: constants in the graph, once for both signatures (a shared function); no variables.
    graph_bytes, variable_bytes = saved_model_sizes(folded)
    assert variable_bytes < 1000 and weights_bytes * 0.9 < graph_bytes < weights_bytes * 1.3, (graph_bytes, weights_bytes)
    graph_bytes, variable_bytes = saved_model_sizes(plain)
    assert variable_bytes > weights_bytes * 0.9
    pixels = np.random.default_rng(0).normal(size=(2, 64, 80, 3)).astype(np.float32)
    expected = keras_logits(classifier, pixels)
    for path in (folded, plain):
        signatures = tf.saved_model.load(str(path)).signatures
        assert_close(signatures["predict_pixels"](pixel_values=tf.constant(pixels))["logits"].numpy(), expected)
        served = signatures["serving_default"](image_bytes=tf.constant([CHELSEA_JPEG, COFFEE_PNG]))
        assert served["logits"].shape == (2, len(LABELS))


# --------------------------------------------------------------------------- export CLI
def test_cli_writes_serving_versions_and_savedmodels(classifier, fake_saved_model, tmp_path, capsys):
    from keras_mobilevitv2.cli import main

    model_file = tmp_path / "my model.keras"
    classifier.save(model_file)
    base = tmp_path / "serving"
    assert main(["export", str(model_file), "--format", "serving", "--out", str(base)]) == 0
    argv = ["export", str(model_file), "--format", "serving", "--out", str(base)]
    assert main(argv + ["--server-base-dir", "/models"]) == 0
    out = capsys.readouterr().out
    # The default name says what the model is (width, task), not what the file is called.
    name = "mobilevitv2-0.5-classifier"
    assert f"wrote {base / name / '1'}" in out and f"wrote {base / name / '2'}" in out
    assert read_models_config(base) == {name: (f"/models/{name}", "tensorflow")}
    argv = ["export", str(model_file), "--format", "serving", "--out", str(base), "--name", "cls", "--version", "2"]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert entries(base / "cls") == ["2"]
    assert main(argv + ["--overwrite", "--keep-variables"]) == 0
    assert fake_saved_model.folded == [True] * 4 + [False]

    assert main(["export", str(model_file), "--format", "savedmodel", "--out", str(tmp_path / "sm")]) == 0
    assert fake_saved_model[-1] == str(tmp_path / "sm")
    assert main(["export", str(model_file), "--format", "savedmodel", "--out", str(tmp_path / "sm")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_rejects_options_of_other_formats_and_missing_models(tmp_path, capsys):
    from keras_mobilevitv2.cli import main

    model_file = str(tmp_path / "absent.keras")
    misplaced = {
        "--quantization applies to --format tflite only": ["--format", "serving", "--quantization", "float16"],
        "--name, --version and --server-base-dir apply to --format serving only": ["--format", "tflite", "--name", "x"],
        "--keep-variables applies to --format savedmodel and serving only": ["--format", "tflite", "--keep-variables"],
    }
    for message, extra in misplaced.items():
        assert main(["export", model_file, "--out", str(tmp_path / "o"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", model_file, "--format", "tflite", "--out", str(tmp_path / "o")]) == 2
    assert f"model file not found: {model_file}" in capsys.readouterr().err


# --------------------------------------------------------------------------- fleet files
def serving_proto(module, message):
    """`message` class of TF Serving's `module` (a pb2 the tensorflow-serving-api wheel may not
    ship), else one built from `tests/serving_protos.py`'s copy of its fields."""
    import importlib

    try:
        return getattr(importlib.import_module(module), message)
    except ImportError:
        from tests.serving_protos import message_class

        return message_class(message)


def parse_text_proto(path, message_class):
    message = message_class()
    text_format.Parse(pathlib.Path(path).read_text(), message)
    return message


def batching_message():
    return serving_proto("tensorflow_serving.servables.tensorflow.session_bundle_config_pb2", "BatchingParameters")


def monitoring_message():
    return serving_proto("tensorflow_serving.config.monitoring_config_pb2", "MonitoringConfig")


def model_entry(base, name):
    config = parse_text_proto(base / "models.config", model_server_config_pb2.ModelServerConfig)
    entry = next(c for c in config.model_config_list.config if c.name == name)
    return dict(entry.version_labels), list(entry.model_version_policy.specific.versions)


def test_bundle_files_parse_as_tf_serving_protos(classifier, fake_saved_model, tmp_path):
    version_dir = export_serving_bundle(
        classifier, tmp_path, "cls", preprocessing=CLASSIFIER_PREPROCESSING, warmup_images=[ONE_PIXEL_PNG],
        num_batch_threads=3,
    )
    assert model_entry(tmp_path, "cls") == ({"stable": 1}, [1])
    expected = export_module.batching_parameters(classifier, CLASSIFIER_PREPROCESSING, num_batch_threads=3)
    for path in (tmp_path / "batching_parameters.txt", pathlib.Path(version_dir) / "batching_params.pbtxt"):
        parameters = parse_text_proto(path, batching_message())
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            assert getattr(parameters, name).value == expected[name], name
        assert list(parameters.allowed_batch_sizes) == expected["allowed_batch_sizes"]
    assert parameters.num_batch_threads.value == parameters.max_enqueued_batches.value == 3
    monitoring = parse_text_proto(tmp_path / "monitoring.config", monitoring_message())
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"
    # The server-wide files are the user's once written: a tuned file is kept.
    (tmp_path / "batching_parameters.txt").write_text("max_batch_size { value: 3 }\n")
    export_serving_bundle(classifier, tmp_path, "cls", preprocessing=CLASSIFIER_PREPROCESSING, warmup_images=[ONE_PIXEL_PNG])
    assert parse_text_proto(tmp_path / "batching_parameters.txt", batching_message()).max_batch_size.value == 3


def test_label_and_promote_round_trip(classifier, fake_saved_model, tmp_path):
    kwargs = dict(preprocessing=CLASSIFIER_PREPROCESSING, warmup_images=[ONE_PIXEL_PNG])
    (tmp_path / "models.config").write_text(
        'model_config_list {\n  config {\n    name: "other"\n    base_path: "/srv/other"\n'
        '    model_platform: "tensorflow"\n  }\n}\n'
    )
    export_serving_bundle(classifier, tmp_path, "cls", **kwargs)  # the first version: stable
    export_serving_bundle(classifier, tmp_path, "cls", **kwargs)  # then: the canary, served beside it
    assert model_entry(tmp_path, "cls") == ({"stable": 1, "canary": 2}, [1, 2])
    # A label in use never moves to an unloaded version: refused before anything is written.
    for label in (None, "stable", "canary"):
        with pytest.raises(export_module.VersionLabelError, match="version already"):
            export_serving_bundle(classifier, tmp_path, "cls", label=label, **kwargs)
    assert entries(tmp_path / "cls") == ["1", "2"]
    with pytest.raises(ValueError, match="label must be one of"):
        export_serving_bundle(classifier, tmp_path, "cls", label="beta", **kwargs)
    assert promote_canary(tmp_path, "cls") == {"stable": 2}
    assert model_entry(tmp_path, "cls") == ({"stable": 2}, [2])  # version 1 is unloaded
    with pytest.raises(export_module.VersionLabelError, match="no canary version to promote"):
        promote_canary(tmp_path, "cls")
    assert export_serving_bundle(classifier, tmp_path, "cls", label="canary", **kwargs).endswith("/3")
    assert model_entry(tmp_path, "cls") == ({"stable": 2, "canary": 3}, [2, 3])
    assert export_module.drop_canary(tmp_path, "cls") == {"stable": 2}  # a canary that failed
    assert model_entry(tmp_path, "cls") == ({"stable": 2}, [2])
    assert entries(tmp_path / "cls") == ["1", "2", "3"]  # versions stay on disk for a rollback
    # Overwriting a labelled version keeps its label.
    export_serving_bundle(classifier, tmp_path, "cls", version=2, overwrite=True, **kwargs)
    assert model_entry(tmp_path, "cls") == ({"stable": 2}, [2])
    assert read_models_config(tmp_path)["other"] == ("/srv/other", "tensorflow")
    with pytest.raises(export_module.VersionLabelError, match="no model named 'absent'"):
        promote_canary(tmp_path, "absent")


def test_batching_parameters_follow_the_signature(classifier, segmenter):
    # Classifier with a centre crop: one batch of crops, sized by the activation memory.
    crop = PreprocessingConfig(shortest_edge=288, crop_height=256, crop_width=256)
    params = export_module.batching_parameters(classifier, crop, num_batch_threads=2)
    per_image = export_module.ACTIVATION_BYTES_PER_PIXEL * 0.5 * 256 * 256
    assert params["max_batch_size"] * per_image <= export_module.BATCH_MEMORY_BUDGET
    assert params["max_batch_size"] == 64  # width 0.5: the cap; width 1.0 would get 32
    allowed = params["allowed_batch_sizes"]
    assert allowed[0] == 1 and allowed[-1] == params["max_batch_size"] and allowed == sorted(set(allowed))
    # Padding a batch up to the next allowed size wastes at most a third of it.
    assert all(upper <= 1.5 * (lower + 1) for lower, upper in zip(allowed, allowed[1:])), allowed
    assert 1000 <= params["batch_timeout_micros"] <= 10000
    assert params["num_batch_threads"] == params["max_enqueued_batches"] == 2
    # A bigger crop: fewer images per batch.
    big = PreprocessingConfig(shortest_edge=1024, crop_height=1024, crop_width=1024)
    assert export_module.batching_parameters(classifier, big)["max_batch_size"] < params["max_batch_size"]
    # Segmenter: images run one by one, so every size is allowed (padding would run extra images).
    voc = PreprocessingConfig(shortest_edge=512, crop_height=512, crop_width=512)
    params = export_module.batching_parameters(segmenter, voc, num_batch_threads=2)
    assert params["allowed_batch_sizes"] == list(range(1, params["max_batch_size"] + 1))
    assert 1 <= params["max_batch_size"] < 64
    with pytest.raises(ValueError, match="num_batch_threads"):
        export_module.batching_parameters(classifier, crop, num_batch_threads=0)


def test_cli_labels_promotes_and_drops(classifier, fake_saved_model, tmp_path, capsys):
    from keras_mobilevitv2.cli import main

    model_file = tmp_path / "m.keras"
    classifier.save(model_file)
    base = tmp_path / "serving"
    export = ["export", str(model_file), "--format", "serving", "--out", str(base), "--name", "cls"]
    assert main(export) == 0
    assert main(export + ["--label", "canary"]) == 0
    assert "canary" in capsys.readouterr().out
    assert model_entry(base, "cls") == ({"stable": 1, "canary": 2}, [1, 2])
    assert main(export + ["--label", "canary"]) == 2
    assert "has a canary version already (2)" in capsys.readouterr().err
    assert main(["export", "--promote", "--out", str(base), "--name", "cls"]) == 0
    assert model_entry(base, "cls") == ({"stable": 2}, [2])
    assert main(["export", "--drop-canary", "--out", str(base), "--name", "cls"]) == 2
    assert "no canary version" in capsys.readouterr().err
    assert main(["export", "--promote", "--out", str(base)]) == 2
    assert "--promote and --drop-canary need --name" in capsys.readouterr().err


@pytest.mark.slow  # starts a TensorFlow process
def test_rest_b64_request_of_the_readme(classifier, classifier_bundle, tmp_path):
    import base64
    import json

    # The README's body: the row format, each instance {"b64": ...} (TF Serving base64-decodes it
    # for a tf.string input, whatever the input's name).
    images = [CHELSEA_JPEG, COFFEE_PNG]
    body = {"signature_name": "serving_default", "instances": [{"b64": base64.b64encode(d).decode()} for d in images]}
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    (result,) = replay(classifier_bundle, request, tmp_path)
    pixels = np.stack([preprocess_image(data, CLASSIFIER_PREPROCESSING) for data in images])
    check_classifier_outputs(result, classifier, pixels)
    # No tf.string output ends in `_bytes`: TF Serving returns the labels as plain JSON strings.
    outputs = tf.saved_model.load(str(classifier_bundle)).signatures["serving_default"].structured_outputs
    strings = [name for name, spec in outputs.items() if spec.dtype == tf.string]
    assert strings == ["top_k_labels"] and not any(name.endswith("_bytes") for name in outputs)
