"""`mobilevitv2 predict`: top classes of a classifier, label-map PNGs of a segmenter, clear errors."""

import dataclasses
import re

import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from keras_mobilevitv2.cli import main
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
from keras_mobilevitv2.predict_cli import overlay, voc_palette
from keras_mobilevitv2.preprocessing import PreprocessingConfig, decode_image, preprocess_image, tf_preprocess
from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter, resize_logits
from tests.conftest import randomize_keras_model

LABELS = {0: "tabby", 1: "coffee mug", 2: "space shuttle", 3: "rock", 4: "paper", 5: "scissors"}
SEGMENTER_PREPROCESSING = PreprocessingConfig(shortest_edge=64, crop_height=48, crop_width=48)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = {"chelsea.jpg": skimage.data.chelsea(), "coffee.png": skimage.data.coffee()}
    for name, image in paths.items():
        encode = tf.io.encode_jpeg if name.endswith(".jpg") else tf.io.encode_png
        tf.io.write_file(str(folder / name), encode(image))
    return {name: folder / name for name in paths}


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    preprocessing = PreprocessingConfig(shortest_edge=72, crop_height=64, crop_width=64)
    config = MobileViTV2Config(width_multiplier=0.5, id2label=LABELS)
    model = MobileViTV2ImageClassifier(config, preprocessing=preprocessing)
    randomize_keras_model(model, seed=6)
    path = tmp_path_factory.mktemp("models") / "classifier.keras"
    model.save(path)
    return path, model


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=4, output_stride=16, aspp_out_channels=32)
    model = MobileViTV2SemanticSegmenter(config, preprocessing=SEGMENTER_PREPROCESSING)
    randomize_keras_model(model, seed=7)
    path = tmp_path_factory.mktemp("models") / "segmenter.keras"
    model.save(path)
    return path, model


def parse_top_classes(text):
    """{image path: [(score, label, index), ...]} from the classifier's printout."""
    results, current = {}, None
    for line in text.splitlines():
        match = re.fullmatch(r"  \d+\. (\d\.\d{4})  (.+) \((\d+)\)", line)
        if match:
            results[current].append((float(match[1]), match[2], int(match[3])))
        else:
            current = line
            results[current] = []
    return results


def test_classifier_prints_top_classes(classifier_file, images, capsys):
    path, model = classifier_file
    argv = ["predict", str(images["chelsea.jpg"]), str(images["coffee.png"]), "--model", str(path), "--top-k", "3"]
    assert main(argv) == 0
    printed = parse_top_classes(capsys.readouterr().out)
    assert list(printed) == [str(images["chelsea.jpg"]), str(images["coffee.png"])]
    for image_path, top in printed.items():
        pixels = preprocess_image(image_path, model.preprocessing)[None]
        probabilities = tf.nn.softmax(model(pixels, training=False)).numpy()[0]
        expected = np.argsort(-probabilities)[:3]
        assert [index for _, _, index in top] == list(expected)
        assert [label for _, label, _ in top] == [LABELS[i] for i in expected]
        np.testing.assert_allclose([score for score, _, _ in top], probabilities[expected], atol=6e-5)


def expected_label_map(model, image_path):
    """The label map in-process: decode, preprocess without the crop, logits resized to the image."""
    image = decode_image(tf.io.read_file(str(image_path)))
    pixels = tf_preprocess(image, dataclasses.replace(SEGMENTER_PREPROCESSING, do_center_crop=False))[None]
    logits = resize_logits(model(pixels, training=False), (image.shape[0], image.shape[1])).numpy()[0]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return image.numpy(), np.argmax(logits, -1), top2[..., 1] - top2[..., 0] > 1e-4


@pytest.mark.parametrize("use_out_dir", [False, True])
def test_segmenter_writes_a_blended_label_map(segmenter_file, images, tmp_path, capsys, use_out_dir):
    model_path, model = segmenter_file
    image_path = images["chelsea.jpg"]
    argv = ["predict", str(image_path), "--model", str(model_path)]
    if use_out_dir:
        argv += ["--out", str(tmp_path / "masks")]
        written = tmp_path / "masks" / "chelsea.segmentation.png"
    else:
        written = image_path.parent / "chelsea.segmentation.png"
    assert main(argv) == 0
    assert f"{image_path} -> {written}" in capsys.readouterr().out
    blended = decode_image(tf.io.read_file(str(written))).numpy()
    image, label_map, decided = expected_label_map(model, image_path)
    assert blended.shape == image.shape == (300, 451, 3)
    assert len(np.unique(label_map)) > 1, "a one-class label map would not test the colours"
    expected = overlay(image, label_map, 0.5)
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(blended[decided], expected[decided])


def test_voc_palette():
    palette = voc_palette(21)
    assert palette.dtype == np.uint8 and palette.shape == (21, 3)
    # PASCAL VOC: background black, aeroplane dark red, bicycle green, person, tvmonitor.
    expected = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [192, 128, 128], [0, 64, 128]]
    np.testing.assert_array_equal(palette[[0, 1, 2, 15, 20]], expected)
    assert len({tuple(c) for c in voc_palette(256)}) == 256


def test_missing_files_and_bad_images_are_clear_errors(classifier_file, images, tmp_path, capsys):
    path, _ = classifier_file
    assert main(["predict", str(tmp_path / "nowhere.jpg"), "--model", str(path)]) == 2
    assert "image file not found" in capsys.readouterr().err
    assert main(["predict", str(images["chelsea.jpg"]), "--model", str(tmp_path / "nowhere.keras")]) == 2
    assert "model file not found" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["predict", str(images["chelsea.jpg"]), "--model", str(tmp_path / "notes.txt")]) == 2
    assert "expected a .keras model file" in capsys.readouterr().err
    # A file that is no image is reported; the other images are still classified.
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert main(["predict", str(tmp_path / "broken.jpg"), str(images["chelsea.jpg"]), "--model", str(path)]) == 2
    captured = capsys.readouterr()
    assert "broken.jpg: cannot decode the image: Unknown image file format" in captured.err
    assert list(parse_top_classes(captured.out)) == [str(images["chelsea.jpg"])]
