"""`mobilevitv2 predict`: inputs (files, folders, globs, samples, any checkpoint), outputs in --out, clear errors."""

import csv
import dataclasses
import json
import os
import re
import shutil
import stat
import sys

import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from keras_mobilevitv2.cli import main
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
from keras_mobilevitv2.cli.predict import overlay, printable, sample_path, voc_palette
from keras_mobilevitv2.preprocessing import PreprocessingConfig, decode_image, preprocess_image, tf_preprocess
from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter, resize_logits
from tests.conftest import randomize_keras_model

# Label 5 as a hostile checkpoint might carry it: escape sequences and a bell must not reach the terminal.
LABELS = {0: "tabby", 1: "coffee mug", 2: "space shuttle", 3: "rock", 4: "paper", 5: "scissors\x1b[2J\x07"}
SEGMENTER_PREPROCESSING = PreprocessingConfig(shortest_edge=64, crop_height=48, crop_width=48)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = {"chelsea.jpg": skimage.data.chelsea(), "coffee.png": skimage.data.coffee(), "small.png": skimage.data.coffee()[::8, ::8]}
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


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty working directory, with the conversion cache inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_MOBILEVITV2_CACHE", str(tmp_path / "cache"))
    return tmp_path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def parse_top_classes(text):
    """{image path: [(score, label, index), ...]} from the classifier's printout."""
    results, current = {}, None
    for line in text.splitlines():
        match = re.fullmatch(r"  \d+\. (\d\.\d{4})  (.+) \((\d+)\)", line)
        if match:
            results[current].append((float(match[1]), match[2], int(match[3])))
        elif not line.startswith("wrote "):  # the closing line naming the results files
            current = line
            results[current] = []
    return results


def test_classifier_prints_top_classes_and_writes_results(classifier_file, images, workdir, capsys):
    path, model = classifier_file
    argv = ["predict", str(images["chelsea.jpg"]), str(images["coffee.png"]), "--model", str(path), "--top-k", "3"]
    assert main(argv) == 0
    printed = parse_top_classes(capsys.readouterr().out)
    assert list(printed) == [str(images["chelsea.jpg"]), str(images["coffee.png"])]
    records = read_jsonl(workdir / "predictions" / "predictions.jsonl")  # default --out: ./predictions/
    assert [r["image"] for r in records] == list(printed)
    rows = list(csv.DictReader(open(workdir / "predictions" / "predictions.csv", encoding="utf-8")))
    assert len(rows) == 6 and [int(r["rank"]) for r in rows] == [1, 2, 3, 1, 2, 3]
    for record, (image_path, top) in zip(records, printed.items()):
        pixels = preprocess_image(image_path, model.preprocessing)[None]
        probabilities = tf.nn.softmax(model(pixels, training=False)).numpy()[0]
        expected = np.argsort(-probabilities)[:3]
        assert [index for _, _, index in top] == list(expected)
        assert [label for _, label, _ in top] == [printable(LABELS[i]) for i in expected]
        np.testing.assert_allclose([score for score, _, _ in top], probabilities[expected], atol=6e-5)
        assert [item["index"] for item in record["top_k"]] == list(expected)
        assert [item["label"] for item in record["top_k"]] == [LABELS[i] for i in expected]  # JSON keeps the name
        np.testing.assert_allclose([item["score"] for item in record["top_k"]], probabilities[expected], atol=6e-5)


def test_label_names_are_printed_without_control_characters(classifier_file, images, workdir, capsys):
    path, _ = classifier_file
    assert main(["predict", str(images["coffee.png"]), "--model", str(path), "--top-k", "6"]) == 0
    out = capsys.readouterr().out
    assert "scissors\\x1b[2J\\x07" in out
    assert "\x1b" not in out and "\x07" not in out
    assert printable("a\tb\nc\x1b") == "a\\tb\\nc\\x1b" and printable("crème brûlée") == "crème brûlée"


def expected_label_map(model, image_path):
    """The label map in-process: decode, preprocess without the crop, logits resized to the image."""
    image = decode_image(tf.io.read_file(str(image_path)))
    pixels = tf_preprocess(image, dataclasses.replace(SEGMENTER_PREPROCESSING, do_center_crop=False))[None]
    logits = resize_logits(model(pixels, training=False), (image.shape[0], image.shape[1])).numpy()[0]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return image.numpy(), np.argmax(logits, -1), top2[..., 1] - top2[..., 0] > 1e-4


@pytest.mark.parametrize("out_dir", [None, "masks"])
def test_segmenter_writes_a_blended_label_map_into_out(segmenter_file, images, workdir, capsys, out_dir):
    """The overlay goes to --out (default ./predictions/), never beside the image."""
    model_path, model = segmenter_file
    image_path = images["chelsea.jpg"]
    argv = ["predict", str(image_path), "--model", str(model_path)] + (["--out", out_dir] if out_dir else [])
    old_mask = os.umask(0o022)
    try:
        assert main(argv) == 0
    finally:
        os.umask(old_mask)
    written = os.path.join(out_dir or "predictions", "chelsea.segmentation.png")
    assert f"{image_path} -> {written}" in capsys.readouterr().out
    assert not (image_path.parent / "chelsea.segmentation.png").exists()
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o644
    blended = decode_image(tf.io.read_file(written)).numpy()
    image, label_map, decided = expected_label_map(model, image_path)
    assert blended.shape == image.shape == (300, 451, 3)
    assert len(np.unique(label_map)) > 1, "a one-class label map would not test the colours"
    expected = overlay(image, label_map, 0.5)
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(blended[decided], expected[decided])
    (record,) = read_jsonl(workdir / (out_dir or "predictions") / "predictions.jsonl")
    assert record["overlay"] == written
    counts = np.bincount(label_map.ravel(), minlength=4) / label_map.size
    for label, fraction in record["class_fractions"].items():
        index = {v: k for k, v in model.config.id2label.items()}[label]
        assert abs(fraction - counts[index]) < 0.01
    assert abs(sum(record["class_fractions"].values()) - 1) < 1e-6


def test_files_folders_and_globs_give_names_that_never_collide(segmenter_file, images, workdir, capsys):
    model_path, _ = segmenter_file
    small = images["small.png"]
    for folder in ("a", "b", "tree/x", "tree/y/z"):
        (workdir / folder).mkdir(parents=True)
        shutil.copy(small, workdir / folder / "cat.png")
    shutil.copy(images["chelsea.jpg"], workdir / "a" / "cat.jpg")  # same stem, other suffix
    argv = ["predict", "a/cat.png", "b/cat.png", "a/*.jpg", "tree", "a/cat.png", "--model", str(model_path)]
    assert main(argv) == 0
    written = sorted(str(p.relative_to(workdir / "predictions")) for p in (workdir / "predictions").rglob("*.png"))
    assert written == [
        "cat-2.segmentation.png", "cat-3.segmentation.png", "cat.segmentation.png",
        "x/cat.segmentation.png", "y/z/cat.segmentation.png",
    ]
    records = read_jsonl(workdir / "predictions" / "predictions.jsonl")
    assert [r["image"] for r in records] == ["a/cat.png", "b/cat.png", "a/cat.jpg", "tree/x/cat.png", "tree/y/z/cat.png"]
    assert [r["overlay"] for r in records] == [
        os.path.join("predictions", name) for name in
        ["cat.segmentation.png", "cat-2.segmentation.png", "cat-3.segmentation.png", "x/cat.segmentation.png",
         "y/z/cat.segmentation.png"]
    ]


def test_existing_outputs_are_kept_unless_overwrite(classifier_file, images, workdir, capsys):
    path, _ = classifier_file
    argv = ["predict", str(images["small.png"]), "--model", str(path)]
    assert main(argv) == 0
    before = (workdir / "predictions" / "predictions.jsonl").read_text()
    (workdir / "predictions" / "predictions.jsonl").write_text("mine\n")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "predictions/predictions.jsonl exists (and 1 more); pass --overwrite" in err
    assert (workdir / "predictions" / "predictions.jsonl").read_text() == "mine\n"
    assert main(argv + ["--overwrite"]) == 0
    assert (workdir / "predictions" / "predictions.jsonl").read_text() == before


def test_bad_and_oversized_images_are_reported_and_the_rest_processed(classifier_file, images, workdir, capsys):
    path, _ = classifier_file
    (workdir / "broken.jpg").write_bytes(b"not an image")
    argv = ["predict", "broken.jpg", str(images["chelsea.jpg"]), str(images["small.png"]), "--model", str(path),
            "--max-image-pixels", "100000"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "error: broken.jpg: cannot decode the image: Unknown image file format" in captured.err
    assert f"error: {images['chelsea.jpg']}: 135,300 pixels, over --max-image-pixels 100,000" in captured.err
    assert "2 of 3 images failed" in captured.err
    assert list(parse_top_classes(captured.out)) == [str(images["small.png"])]
    records = read_jsonl(workdir / "predictions" / "predictions.jsonl")
    assert [("error" in r, "top_k" in r) for r in records] == [(True, False), (True, False), (False, True)]
    assert main(argv[:-2] + ["--max-image-pixels", "0"]) == 2
    assert "--max-image-pixels must be a positive integer" in capsys.readouterr().err


def test_any_checkpoint_from_pretrained_reads(fixtures_dir, workdir, capsys):
    """A timm .safetensors (converted once, cached) on the packaged sample photo, as README shows."""
    argv = ["predict", "sample:cat", "--model", str(fixtures_dir / "timm_mobilevitv2_050.safetensors"), "--top-k", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    printed = parse_top_classes(out)
    assert list(printed) == [sample_path("cat")] and len(printed[sample_path("cat")]) == 2
    assert len(list((workdir / "cache").glob("*.keras"))) == 1
    assert main(argv + ["--out", "again"]) == 0  # from the cache this time
    assert read_jsonl(workdir / "again" / "predictions.jsonl") == read_jsonl(workdir / "predictions" / "predictions.jsonl")


def test_samples():
    assert sample_path("cat") == os.path.join(os.path.dirname(skimage.data.__file__), "chelsea.png")
    np.testing.assert_array_equal(decode_image(tf.io.read_file(sample_path("cat"))).numpy(), skimage.data.chelsea())


def test_missing_sample_extra_names_the_install(monkeypatch, classifier_file, workdir, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    assert main(["predict", "sample:cat", "--model", str(classifier_file[0])]) == 2
    assert capsys.readouterr().err == (
        'error: sample:cat is a photo that ships with scikit-image: pip install "keras-mobilevitv2[samples]"  '
        '(from a checkout: pip install -e ".[samples]")\n'
    )


def test_voc_palette():
    palette = voc_palette(21)
    assert palette.dtype == np.uint8 and palette.shape == (21, 3)
    # PASCAL VOC: background black, aeroplane dark red, bicycle green, person, tvmonitor.
    expected = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [192, 128, 128], [0, 64, 128]]
    np.testing.assert_array_equal(palette[[0, 1, 2, 15, 20]], expected)
    assert len({tuple(c) for c in voc_palette(256)}) == 256


def test_bad_arguments_are_one_line_errors(classifier_file, images, workdir, capsys):
    path, _ = classifier_file
    (workdir / "empty").mkdir()
    (workdir / "notes.txt").write_text("not a model")
    cases = [
        (["nowhere.jpg", "--model", str(path)], "image file not found: nowhere.jpg"),
        (["empty", "--model", str(path)], "no image files (.jpg, .jpeg, .png, .bmp, .gif) in directory empty"),
        (["nothing/*.jpg", "--model", str(path)], "no image files match nothing/*.jpg"),
        (["sample:dog", "--model", str(path)], "unknown sample 'dog'; the samples are sample:cat, sample:astronaut"),
        ([str(images["small.png"]), "--model", "converted/modl.keras"], "model file not found: converted/modl.keras"),
        ([str(images["small.png"]), "--model", "notes.txt"], "notes.txt"),
        ([str(images["small.png"]), "--model", str(path), "--top-k", "0"], "--top-k must be a positive integer"),
    ]
    for argv, phrase in cases:
        assert main(["predict", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert phrase in err and "Traceback" not in err, (argv, err)
        assert err.splitlines()[-1].startswith("error: "), err
    assert not (workdir / "predictions").exists()
