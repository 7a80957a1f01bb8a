"""`mobilevitv2 predict-batch` / `keras_mobilevitv2.batch`: the Beam pipeline on the DirectRunner
gives what `mobilevitv2 predict` gives, image by image.

Real photos (scikit-image's chelsea and coffee, matplotlib's grace_hopper), width-0.5 models with
random weights and shrunk preprocessing. Each pipeline run loads TensorFlow and the model in Beam's
in-process runner (15-30 s on 2 cores): those tests are marked slow.
"""

import glob
import json
import os
import shutil

import numpy as np
import pytest

beam = pytest.importorskip("apache_beam")

import matplotlib  # noqa: E402
import skimage  # noqa: E402
import skimage.data  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_mobilevitv2 import batch  # noqa: E402
from keras_mobilevitv2.cli import main  # noqa: E402
from keras_mobilevitv2.config import MobileViTV2Config  # noqa: E402
from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier  # noqa: E402
from keras_mobilevitv2.cli.predict_batch import split_pipeline_args  # noqa: E402
from keras_mobilevitv2.cli.predict import overlay  # noqa: E402
from keras_mobilevitv2.preprocessing import PreprocessingConfig, decode_image  # noqa: E402
from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter  # noqa: E402
from tests.conftest import randomize_keras_model  # noqa: E402
from tests.datasets import write_corrupt_jpeg  # noqa: E402

LABELS = {i: f"class-{i}" for i in range(8)}
TOLERANCE = 1e-5  # probabilities: batch of images vs predict's one image at a time


def read_jsonl(pattern):
    records = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def by_name(records):
    return {os.path.basename(r["image"]): r for r in records}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(os.path.join(os.path.dirname(skimage.__file__), "data", "chelsea.png"), folder / "chelsea.png")
    tf.io.write_file(str(folder / "coffee.jpg"), tf.io.encode_jpeg(skimage.data.coffee(), quality=90))
    shutil.copy(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"), folder / "grace_hopper.jpg")
    return folder


@pytest.fixture(scope="module")
def with_bad_files(photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    for path in photos.iterdir():
        shutil.copy(path, folder / path.name)
    write_corrupt_jpeg(folder / "truncated.jpg")
    write_corrupt_jpeg(folder / "notes.jpg", kind="text")
    return folder


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    preprocessing = PreprocessingConfig(shortest_edge=72, crop_height=64, crop_width=64)
    model = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, id2label=LABELS), preprocessing=preprocessing)
    randomize_keras_model(model, seed=11)
    path = tmp_path_factory.mktemp("models") / "classifier.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=4, output_stride=16, aspp_out_channels=32)
    preprocessing = PreprocessingConfig(shortest_edge=64, crop_height=48, crop_width=48)
    model = MobileViTV2SemanticSegmenter(config, preprocessing=preprocessing)
    randomize_keras_model(model, seed=12)
    path = tmp_path_factory.mktemp("models") / "segmenter.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def predicted(with_bad_files, classifier_file, tmp_path_factory):
    """`mobilevitv2 predict`'s predictions.jsonl over the photos and the two bad files."""
    out = tmp_path_factory.mktemp("predict")
    assert main(["predict", str(with_bad_files), "--model", str(classifier_file), "--out", str(out), "--top-k", "3"]) == 2
    return by_name(read_jsonl(str(out / "predictions.jsonl")))


def assert_same_top_k(batch_record, predict_record):
    got, expected = batch_record["top_k"], predict_record["top_k"]
    assert [(t["rank"], t["index"], t["label"]) for t in got] == [(t["rank"], t["index"], t["label"]) for t in expected]
    np.testing.assert_allclose([t["score"] for t in got], [t["score"] for t in expected], atol=TOLERANCE)


# --------------------------------------------------------------------------- image files
@pytest.mark.slow  # a Beam pipeline with TensorFlow on the DirectRunner
def test_cli_classifier_matches_predict_and_names_bad_images(with_bad_files, classifier_file, predicted, tmp_path, capsys):
    prefix = str(tmp_path / "out" / "run-")
    argv = ["predict-batch", "--model", str(classifier_file), "--output-prefix", prefix, "--top-k", "3",
            "--max-batch-size", "2", str(with_bad_files / "*"), "--", "--runner=DirectRunner", "--direct_num_workers", "1"]
    assert main(argv) == 2  # two images failed: reported, the others predicted
    out, err = capsys.readouterr()
    assert "(3 images predicted, 2 failed)" in out and "error: 2 images failed" in err
    results = by_name(read_jsonl(prefix + "predictions-*.jsonl"))
    good = {name for name, record in predicted.items() if "error" not in record}
    assert set(results) == good == {"chelsea.png", "coffee.jpg", "grace_hopper.jpg"}
    for name in good:
        assert_same_top_k(results[name], predicted[name])
    errors = by_name(read_jsonl(prefix + "errors-*.jsonl"))
    assert set(errors) == {"truncated.jpg", "notes.jpg"} == set(predicted) - good
    for name, record in errors.items():  # the reasons predict gives
        assert record["error"] == predicted[name]["error"] and record["error"].startswith("cannot decode the image")
    # A second run would replace them: refused without --overwrite, before the pipeline starts.
    assert main(argv[:-4] + ["--pipeline-options", "--runner=DirectRunner"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


@pytest.mark.slow  # a Beam pipeline with TensorFlow on the DirectRunner
def test_segmenter_label_maps_match_predict(photos, segmenter_file, tmp_path):
    out = tmp_path / "predict"
    assert main(["predict", str(photos), "--model", str(segmenter_file), "--out", str(out)]) == 0
    expected = by_name(read_jsonl(str(out / "predictions.jsonl")))
    summary = batch.predict_batch(segmenter_file, [str(photos / "*")], str(tmp_path / "beam") + "/", max_batch_size=3)
    assert (summary["predicted"], summary["failed"]) == (3, 0)
    results = by_name(read_jsonl(summary["predictions"]))
    assert set(results) == set(expected) == {"chelsea.png", "coffee.jpg", "grace_hopper.jpg"}
    for name, record in results.items():
        image = decode_image(tf.io.read_file(str(photos / name))).numpy()
        label_map = tf.io.decode_png(tf.io.read_file(record["label_map"])).numpy()[..., 0]
        assert label_map.shape == image.shape[:2] == (record["height"], record["width"])
        # predict writes the label map blended over the image: the same blend of ours is its file.
        predicted_overlay = tf.io.decode_png(tf.io.read_file(expected[name]["overlay"])).numpy()
        np.testing.assert_array_equal(overlay(image, label_map.astype(np.int64), 0.5), predicted_overlay)
        assert record["class_fractions"] == expected[name]["class_fractions"]
        assert len(record["class_fractions"]) >= 1


@pytest.mark.slow  # exports a SavedModel and runs a Beam pipeline
def test_savedmodel_of_export_gives_the_same_predictions(photos, classifier_file, predicted, tmp_path):
    from keras_mobilevitv2.export import export_saved_model
    from keras_mobilevitv2.saving import load_model

    saved_model = export_saved_model(load_model(str(classifier_file)), tmp_path / "savedmodel", top_k=5)
    summary = batch.predict_batch(saved_model, [str(photos / "*")], str(tmp_path / "out-"), top_k=3)
    results = by_name(read_jsonl(summary["predictions"]))
    assert set(results) == {"chelsea.png", "coffee.jpg", "grace_hopper.jpg"}
    for name, record in results.items():
        assert_same_top_k(record, predicted[name])  # the exported top 5, cut to 3


# --------------------------------------------------------------------------- TFRecords
def example(features):
    return tf.train.Example(features=tf.train.Features(feature={
        name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value])) for name, value in features.items()
    })).SerializeToString()


@pytest.mark.slow  # a Beam pipeline with TensorFlow on the DirectRunner
def test_tfrecords_of_examples_match_predict(with_bad_files, classifier_file, predicted, tmp_path):
    records = [
        example({"jpeg": (with_bad_files / name).read_bytes(), "name": name.encode()})
        for name in ("chelsea.png", "coffee.jpg", "grace_hopper.jpg", "truncated.jpg")
    ]
    records.append(example({"name": b"no-image"}))  # no image feature
    records.append(b"\xff\x00 not a protobuf")
    shards = [tmp_path / "shard-0.tfrecord", tmp_path / "shard-1.tfrecord"]
    for shard, part in zip(shards, (records[:3], records[3:])):
        with tf.io.TFRecordWriter(str(shard)) as writer:
            for record in part:
                writer.write(record)
    summary = batch.predict_batch(
        classifier_file, [str(tmp_path / "shard-*.tfrecord")], str(tmp_path / "out-"), input_format="tfrecord",
        image_feature="jpeg", key_feature="name", top_k=3, max_batch_size=2,
    )
    assert (summary["predicted"], summary["failed"]) == (3, 3)
    results = by_name(read_jsonl(summary["predictions"]))
    assert set(results) == {"chelsea.png", "coffee.jpg", "grace_hopper.jpg"}
    for name, record in results.items():
        assert_same_top_k(record, predicted[name])
    errors = read_jsonl(summary["errors"])
    reasons = {os.path.basename(r["image"]).split("@")[0]: r["error"] for r in errors}
    assert reasons["truncated.jpg"] == predicted["truncated.jpg"]["error"]
    assert reasons["truncated.jpg"].startswith("cannot decode the image: jpeg::Uncompress failed")
    assert "no single bytes feature 'jpeg'" in reasons["no-image"]
    assert reasons["shard-1.tfrecord"] == "the record is not a tf.train.Example"


# --------------------------------------------------------------------------- arguments
def test_pipeline_options_after_the_separator_and_bad_arguments(tmp_path, capsys):
    assert split_pipeline_args(["a/*.jpg", "b.png", "--runner=FlinkRunner", "--flink_master", "host:8081"]) == (
        ["a/*.jpg", "b.png"], ["--runner=FlinkRunner", "--flink_master", "host:8081"],
    )
    assert split_pipeline_args(["a.jpg"]) == (["a.jpg"], [])
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    with pytest.raises(batch.BatchInputError, match="no files match .*nothing-"):
        batch.predict_batch(model, [str(tmp_path / "nothing-*.jpg")], str(tmp_path / "o-"))
    with pytest.raises(batch.BatchInputError, match="min_batch_size 8 is over max_batch_size 4"):
        batch.predict_batch(model, ["x"], str(tmp_path / "o-"), min_batch_size=8, max_batch_size=4)
    with pytest.raises(batch.BatchInputError, match="input_format must be one of"):
        batch.predict_batch(model, ["x"], str(tmp_path / "o-"), input_format="csv")
    argv = ["predict-batch", str(tmp_path / "nothing-*.jpg"), "--model", str(model), "--output-prefix", str(tmp_path / "o-")]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: no files match")
    assert main(["predict-batch", "x", "--model", str(tmp_path / "absent.keras"), "--output-prefix", "o-"]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_label_map_names_are_distinct_and_pngs_round_trip():
    assert batch.label_map_name("a/b/cat.jpg") != batch.label_map_name("c/cat.jpg")
    assert batch.label_map_name("gs://bucket/x y/cat.jpg").startswith("cat-")
    for high in (3, 300):
        label_map = np.array([[0, 1], [2, high]])
        decoded = tf.io.decode_png(batch.label_map_png(label_map), dtype=tf.uint16 if high > 255 else tf.uint8)
        np.testing.assert_array_equal(decoded.numpy()[..., 0], label_map)
