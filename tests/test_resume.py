"""Resuming after a kill: a training run is SIGKILLed mid-epoch once it has written a checkpoint,
then started again with the same command; it must continue from that checkpoint and finish."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import datasets

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 4
EPOCHS = 2


def _command(data_dir, model_dir):
    return [
        sys.executable, "-m", "training.train_classification",
        "--data-dir", str(data_dir), "--model-dir", str(model_dir),
        "--width", "0.5", "--init", "none", "--mixed-precision", "off",
        "--set", "model.num_labels=3", "--set", "data.global_batch_size=6", "--set", "data.image_size=64",
        "--set", "data.eval_shortest_edge=72", "--set", "data.eval_crop_size=64", "--set", "schedule.warmup_steps=2",
        "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS_PER_EPOCH),
        "--checkpoint-every", "1", "--log-every", "1", "--no-export",
    ]


def _digest(variables):
    """sha256 of the values in order (as the trainer logs them in runs.jsonl, recomputed here)."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
    return digest.hexdigest()


def _counters(checkpoint):
    reader = tf.train.load_checkpoint(checkpoint)
    return (
        int(reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE")),
        int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")),
    )


def test_a_killed_run_resumes_from_its_checkpoint_with_nothing_lost(tmp_path):
    data_dir = tmp_path / "imagenet"
    datasets.make_imagenet_folder(str(data_dir), num_classes=3, per_class=2)
    model_dir = tmp_path / "run"
    checkpoint_dir = str(model_dir / "checkpoints")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    first_log = tmp_path / "first.log"

    with open(first_log, "w") as log:
        first = subprocess.Popen(_command(data_dir, model_dir), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 400
            while tf.train.latest_checkpoint(checkpoint_dir) is None:
                assert first.poll() is None, f"the run ended before its first checkpoint:\n{first_log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no checkpoint within 400 s"
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert first.returncode == -signal.SIGKILL
    killed_at = tf.train.latest_checkpoint(checkpoint_dir)
    step = int(killed_at.rsplit("-", 1)[1])
    # Killed mid-epoch (a checkpoint every step, the first one at step 1), before the end.
    assert 0 < step < EPOCHS * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH, step
    assert not (model_dir / "model.keras").exists()
    assert _counters(killed_at) == (step, step)
    # Keep a copy: the resumed run's CheckpointManager deletes old checkpoints.
    saved = tmp_path / "killed"
    saved.mkdir()
    for name in os.listdir(checkpoint_dir):
        if name.startswith(os.path.basename(killed_at) + "."):
            shutil.copy(os.path.join(checkpoint_dir, name), saved / name)

    second = subprocess.run(_command(data_dir, model_dir), capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resumed from {killed_at} at step {step}" in second.stdout
    logged_steps = [
        int(line.split()[2].split("/")[0]) for line in second.stdout.splitlines()
        if line.startswith("[train] step ") and "images/s" in line and "ETA" in line
    ]
    assert logged_steps == list(range(step + 1, EPOCHS * STEPS_PER_EPOCH + 1))

    runs = [json.loads(line) for line in (model_dir / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2 and runs[0]["restored_from"] is None and runs[0]["global_step"] == 0
    resumed = runs[1]
    assert resumed["restored_from"] == killed_at
    assert resumed["global_step"] == step and resumed["optimizer_iterations"] == step

    # The weights and optimizer state the second run started from are the checkpoint's, as read
    # here into a fresh model and optimizer.
    from training.cli import load_pretrained
    from training.loop import WarmupCosineSchedule

    model = load_pretrained(str(model_dir / "model.keras"))
    optimizer = keras.optimizers.AdamW(learning_rate=WarmupCosineSchedule(1e-3, 1e-4, 0, 1e-4, 1, 1))
    optimizer.build(model.trainable_variables)
    weights = {w.path: w for w in model.weights}
    status = tf.train.Checkpoint(weights=weights, optimizer=optimizer).restore(str(saved / os.path.basename(killed_at)))
    status.assert_existing_objects_matched()
    assert resumed["weights_sha256"] == _digest(model.weights)
    assert resumed["optimizer_sha256"] == _digest(optimizer.variables)
    assert int(optimizer.iterations.numpy()) == step

    final = tf.train.latest_checkpoint(checkpoint_dir)
    total = EPOCHS * STEPS_PER_EPOCH
    assert final.endswith(f"ckpt-{total}") and _counters(final) == (total, total)
    assert json.loads((model_dir / "eval_metrics.json").read_text())["images"] == 6


def _skip_count_run(model_dir, steps_per_epoch=4):
    """A toy trainer whose pipeline marks its first example unreadable; returns (trainer, counter, dataset_fn)."""
    from training.data import SkipCounter, keep_readable
    from training.loop import LoopConfig, Trainer

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        optimizer = keras.optimizers.SGD(0.1)
    counter = SkipCounter()
    images = np.ones((16, 2), "float32")
    labels = np.eye(2, dtype="float32")[np.arange(16) % 2]
    ok = np.arange(16) != 0

    def dataset_fn(context, epoch):
        ds = tf.data.Dataset.from_tensor_slices((images, labels, ok))
        ds = ds.filter(lambda x, y, good: keep_readable(good, tf.constant("example 0"), counter))
        return ds.map(lambda x, y, good: (x, y)).batch(2)

    def loss_fn(y, logits):
        return keras.ops.mean(keras.losses.categorical_crossentropy(y, logits, from_logits=True))

    config = LoopConfig(model_dir=str(model_dir), epochs=1, steps_per_epoch=steps_per_epoch, global_batch_size=2,
                        checkpoint_every=1, keep_checkpoints=10)
    return Trainer(model, optimizer, loss_fn, strategy, config, counter), counter, dataset_fn


def test_the_skipped_image_count_does_not_grow_on_resume(tmp_path):
    trainer, counter, dataset_fn = _skip_count_run(tmp_path)
    trainer.restore()
    trainer.fit(dataset_fn)
    assert counter.count == 1
    # Resume from the step-2 checkpoint (mid-epoch: the epoch's first batches are read again).
    tf.compat.v1.train.update_checkpoint_state(str(tmp_path / "checkpoints"), str(tmp_path / "checkpoints" / "ckpt-2"))
    resumed, counter, dataset_fn = _skip_count_run(tmp_path)
    assert resumed.restore().endswith("ckpt-2") and resumed.step == 2
    resumed.fit(dataset_fn)
    assert resumed.step == 4 and counter.count == 1  # was 2: the restored count plus the re-read example
