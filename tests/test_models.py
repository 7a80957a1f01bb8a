"""Backbone and task models: outputs, serialization, predict/fit, mixed precision, loss, from_pretrained."""

import keras
import numpy as np
import pytest
import torch
import transformers

import keras_mobilevitv2 as mv2
from keras_mobilevitv2.segmenter import SegmentationLoss, resize_logits, segmentation_loss
from tests.conftest import max_rel_error, randomize_keras_model, randomize_torch_module

SMALL = dict(width_multiplier=0.5, num_labels=4, aspp_out_channels=16)


def _x(shape=(2, 64, 96, 3), seed=0):
    return np.random.RandomState(seed).rand(*shape).astype("float32")


def test_backbone_outputs():
    backbone = mv2.MobileViTV2Backbone(mv2.MobileViTV2Config(**SMALL))
    out = backbone(_x())
    # stage 5 is 2x3 after its stride: cvnets resizes it up to the patch multiple 2x4
    assert out["last_hidden_state"].shape == (2, 2, 4, 256)
    assert out["pooler_output"].shape == (2, 256)
    assert [tuple(h.shape[1:]) for h in out["hidden_states"]] == [
        (32, 48, 32), (16, 24, 64), (8, 12, 128), (4, 6, 192), (2, 4, 256)
    ]
    no_pool = mv2.MobileViTV2Backbone(mv2.MobileViTV2Config(**SMALL), expand_output=False)
    assert "pooler_output" not in no_pool(_x())
    assert set(backbone.stage_outputs) == {"stage1", "stage2", "stage3", "stage4", "stage5"}


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_segmenter_output_stride(output_stride):
    model = mv2.MobileViTV2SemanticSegmenter(mv2.MobileViTV2Config(output_stride=output_stride, **SMALL))
    assert model(_x((1, 64, 128, 3))).shape == (1, 64 // output_stride, 128 // output_stride, 4)


@pytest.mark.parametrize("kind", ["backbone", "classifier", "segmenter"])
def test_keras_file_round_trip(tmp_path, kind):
    config = mv2.MobileViTV2Config(output_stride=16, **SMALL)
    model = {
        "backbone": lambda: mv2.MobileViTV2Backbone(config),
        "classifier": lambda: mv2.MobileViTV2ImageClassifier(config),
        "segmenter": lambda: mv2.MobileViTV2SemanticSegmenter(config),
    }[kind]()
    # non-trivial BatchNorm statistics so that a lost buffer shows
    for w in model.weights:
        if "moving" in w.path:
            w.assign(np.random.RandomState(len(w.path)).rand(*w.shape).astype("float32") + 0.5)
    x = _x()
    before = keras.tree.map_structure(np.asarray, model(x))
    path = tmp_path / f"{kind}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    after = keras.tree.map_structure(np.asarray, loaded(x))
    keras.tree.map_structure(lambda a, b: np.testing.assert_array_equal(a, b), before, after)
    clone = type(model).from_config(model.get_config())
    assert clone.get_config() == model.get_config()


def test_preprocessing_is_saved_with_the_model(tmp_path):
    model = mv2.from_preset("mobilevitv2-0.5-imagenet1k-256", num_labels=3)
    assert model.preprocessing.crop_height == 256
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").preprocessing == model.preprocessing


def test_task_model_on_an_existing_backbone():
    config = mv2.MobileViTV2Config(**SMALL)
    backbone = mv2.MobileViTV2Backbone(config)
    classifier = mv2.MobileViTV2ImageClassifier(config.replace(num_labels=7), backbone=backbone)
    assert classifier(_x()).shape == (2, 7)
    assert classifier.backbone is backbone
    with pytest.raises(ValueError, match=r"disagree on backbone fields \['width_multiplier'\]"):
        mv2.MobileViTV2ImageClassifier(config.replace(width_multiplier=1.0), backbone=backbone)


def test_predict_and_fit_learn():
    keras.utils.set_random_seed(0)
    model = mv2.MobileViTV2ImageClassifier(mv2.MobileViTV2Config(**SMALL))
    y = np.arange(8) % 4
    x = (0.5 * _x((8, 64, 64, 3)) + 0.15 * y[:, None, None, None]).astype("float32")  # class k is brighter
    assert model.predict(x, batch_size=4, verbose=0).shape == (8, 4)
    # Eager steps: tracing a compiled step costs more than these 12 (compiled `fit` runs in
    # test_to_transformers, test_keras_conventions' run_layer_test and the training tests).
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True
    )
    history = model.fit(x, y, batch_size=4, epochs=6, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses


def test_segmenter_fits_with_ignore_index():
    keras.utils.set_random_seed(0)
    model = mv2.MobileViTV2SemanticSegmenter(mv2.MobileViTV2Config(output_stride=16, **SMALL))
    # Learnable labels: 16 x 16 pixel blocks of one colour, whose class is which of its red and
    # green are above 0.5 (random labels gave a loss that need not fall in a few steps).
    blocks = np.random.RandomState(1).rand(4, 4, 4, 3).astype("float32")
    x = blocks.repeat(16, axis=1).repeat(16, axis=2)  # (4, 64, 64, 3)
    labels = ((x[..., 0] > 0.5).astype("int32") + 2 * (x[..., 1] > 0.5)).astype("int32")
    labels[:, :8] = 255
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SegmentationLoss(255), run_eagerly=True)  # as above
    history = model.fit(x, labels, batch_size=2, epochs=6, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses


def test_mixed_precision_model_tracks_float32():
    config = mv2.MobileViTV2Config(**SMALL)
    reference = randomize_keras_model(mv2.MobileViTV2ImageClassifier(config))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = mv2.MobileViTV2ImageClassifier(config)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.set_weights(reference.get_weights())
    x = _x()
    assert max_rel_error(np.asarray(model(x), dtype="float32"), reference(x)) < 5e-2


def test_segmentation_loss_matches_torch_cross_entropy_with_ignore_index():
    rng = np.random.RandomState(0)
    logits = rng.randn(2, 4, 6, 5).astype("float32")
    labels = rng.randint(0, 5, size=(2, 16, 24)).astype("int64")
    labels[0, :5] = 255
    ours = float(segmentation_loss(labels, logits, ignore_index=255))
    up = torch.nn.functional.interpolate(
        torch.from_numpy(logits.transpose(0, 3, 1, 2)), size=(16, 24), mode="bilinear", align_corners=False
    )
    ref = torch.nn.functional.cross_entropy(up, torch.from_numpy(labels), ignore_index=255).item()
    assert abs(ours - ref) < 1e-5
    assert float(segmentation_loss(np.full((1, 4, 4), 255), logits[:1, :2, :2])) == 0.0


def test_resize_logits_matches_torch_interpolate():
    logits = np.random.RandomState(0).randn(1, 5, 7, 3).astype("float32")
    got = np.asarray(resize_logits(logits, (20, 21)))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(logits.transpose(0, 3, 1, 2)), size=(20, 21), mode="bilinear", align_corners=False
    ).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_from_pretrained_converts_once_and_caches(tmp_path, monkeypatch):
    hf = transformers.MobileViTV2ForImageClassification(transformers.MobileViTV2Config(width_multiplier=0.5, num_labels=3))
    randomize_torch_module(hf.eval(), 0)
    hf.save_pretrained(tmp_path / "ckpt")
    cache = tmp_path / "cache"
    first = mv2.from_pretrained(tmp_path / "ckpt", cache_dir=cache, verbose=False)
    assert len(list(cache.glob("*.keras"))) == 1
    import conversion.convert

    def fail(*args, **kwargs):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(conversion.convert, "convert_checkpoint", fail)
    second = mv2.from_pretrained(tmp_path / "ckpt", cache_dir=cache, verbose=False)
    x = _x((1, 64, 64, 3))
    np.testing.assert_array_equal(np.asarray(first(x)), np.asarray(second(x)))


def test_from_pretrained_hub_id_downloads_with_huggingface_hub(tmp_path, monkeypatch):
    """The hub is unreachable here: a stand-in snapshot_download serves a local snapshot."""
    import huggingface_hub

    hf = transformers.MobileViTV2ForImageClassification(transformers.MobileViTV2Config(width_multiplier=0.5, num_labels=3))
    hf.save_pretrained(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, cache_dir=None):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = mv2.from_pretrained("apple/mobilevitv2-0.5-imagenet1k-256", cache_dir=tmp_path / "c", verbose=False)
    assert calls[0][0] == "apple/mobilevitv2-0.5-imagenet1k-256" and "model.safetensors" in calls[0][1]
    assert model.config.num_labels == 3

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="could not download 'apple/mobilevitv2-2.0-imagenet1k-256'.*no network"):
        mv2.from_pretrained("mobilevitv2-2.0-imagenet1k-256", cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="neither a local file or directory nor a hub id"):
        mv2.from_pretrained(str(tmp_path / "missing" / "dir" / "x"))


def test_keras_file_loads_in_a_fresh_process(tmp_path):
    """`import keras_mobilevitv2` registers nothing (it is lazy); load_model must still open the file."""
    import subprocess
    import sys

    model = mv2.MobileViTV2ImageClassifier(mv2.MobileViTV2Config(**SMALL))
    model.save(tmp_path / "m.keras")
    code = (
        "import sys, keras_mobilevitv2 as mv2\n"
        "m = mv2.load_model(sys.argv[1]); print(type(m).__name__, m.count_params())\n"
        "m = mv2.from_pretrained(sys.argv[1]); print(type(m).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.keras")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"MobileViTV2ImageClassifier {model.count_params()}" in result.stdout
    with pytest.raises(ValueError, match="expected a .keras model file, received"):
        mv2.load_model(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="x.txt"):
        mv2.load_model(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        mv2.load_model(tmp_path / "missing.keras")
