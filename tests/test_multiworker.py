"""Distributed training: two MultiWorkerMirroredStrategy workers on 127.0.0.1 end with the same
weights, and replicas of a MirroredStrategy train exactly like one replica on their joint batch.

Each case runs in subprocesses (a strategy's devices and TF_CONFIG must be set before TensorFlow
starts), bounded by timeouts and killed on failure.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests import datasets

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": REPO}

# A worker: the `train` command's code path with --strategy multiworker, then its own weights file.
WORKER = textwrap.dedent(
    """
    import argparse, json, os, sys
    index, ports, data_dir, model_dir, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4], sys.argv[5]
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )
    import numpy as np
    from keras_mobilevitv2.cli.train import add_train_arguments
    from training.run import train
    from training.train_classification import TASK

    parser = argparse.ArgumentParser()
    add_train_arguments(parser, TASK)
    args = parser.parse_args([
        "--data-dir", data_dir, "--model-dir", model_dir, "--strategy", "multiworker",
        "--width", "0.5", "--init", "none", "--mixed-precision", "off",
        "--set", "model.num_labels=3", "--set", "data.global_batch_size=4", "--set", "data.image_size=32",
        "--set", "data.eval_shortest_edge=36", "--set", "data.eval_crop_size=32", "--set", "schedule.warmup_steps=0",
        "--epochs", "1", "--steps-per-epoch", "3", "--log-every", "1", "--no-export",
    ])
    trainer = train(TASK, args)["trainer"]
    values = {"weights/" + w.path: w.numpy() for w in trainer.model.weights}
    values.update({"ema/" + path: value for path, value in trainer.ema.values().items()})
    values.update({"optimizer/" + str(i): v.numpy() for i, v in enumerate(trainer.optimizer.variables)})
    np.savez(out, **values)
    print("replicas", trainer.replicas, "step", trainer.step)
    """
)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_all(commands, timeout):
    """Start the commands together, wait for all; kill every one of them on a timeout or failure."""
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV) for c in commands]
    outputs = [None] * len(processes)
    try:
        for i, process in enumerate(processes):
            outputs[i], _ = process.communicate(timeout=timeout)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, f"exit {process.returncode}:\n{(output or '')[-4000:]}"
    return outputs


def test_two_workers_end_with_identical_weights(tmp_path):
    data_dir = tmp_path / "imagenet"
    datasets.make_imagenet_folder(str(data_dir), num_classes=3, per_class=2)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    model_dir = tmp_path / "run"
    ports = ",".join(str(p) for p in _free_ports(2))
    outs = [tmp_path / f"worker{i}.npz" for i in range(2)]
    commands = [[sys.executable, str(script), str(i), ports, str(data_dir), str(model_dir), str(outs[i])] for i in range(2)]
    logs = _run_all(commands, timeout=600)
    assert all("replicas 2 step 3" in log for log in logs), logs
    first, second = np.load(outs[0]), np.load(outs[1])
    assert sorted(first.files) == sorted(second.files)
    assert sum(name.startswith("weights/") for name in first.files) == 244  # BatchNorm moving statistics too
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    # Training moved the weights away from their average's start.
    assert any(not np.allclose(first[n], first["ema/" + n[len("weights/"):]]) for n in first.files if n.startswith("weights/"))
    # The chief wrote the checkpoints and the model; the other worker's temporary checkpoints are gone.
    checkpoints = os.listdir(model_dir / "checkpoints")
    assert "ckpt-3.index" in checkpoints and not [c for c in checkpoints if c.startswith(".tmp-")]
    assert (model_dir / "model.keras").exists()
    runs = [json.loads(line) for line in (model_dir / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 1 and runs[0]["replicas"] == 2


# Two replicas (logical CPUs) with micro-batch 2 against one replica with batch 4, on a model whose
# loss is a mean of per-example terms (LayerNorm), plus a BatchNorm model whose moving statistics
# the replicas must agree on.
MIRRORED = textwrap.dedent(
    """
    import sys, tempfile
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from training.loop import LoopConfig, Trainer

    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    labels = np.eye(3, dtype="float32")[rng.integers(0, 3, 8)]

    def run(strategy, per_replica_batch, norm):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), norm(),
                                      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
            optimizer = keras.optimizers.SGD(0.5)
        loss = lambda y, z: keras.ops.mean(keras.losses.categorical_crossentropy(y, z, from_logits=True))
        config = LoopConfig(model_dir=tempfile.mkdtemp(), epochs=1, steps_per_epoch=2, global_batch_size=4,
                            clipnorm=0.5, ema_decay=0.8)
        trainer = Trainer(model, optimizer, loss, strategy, config)

        def dataset(context, epoch):  # replica r of each step gets examples [4s + 2r, 4s + 2r + 2)
            return tf.data.Dataset.from_tensor_slices((images, labels)).batch(per_replica_batch)

        trainer.fit(dataset)
        return trainer

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two = run(mirrored, 2, keras.layers.LayerNormalization)
    one = run(tf.distribute.get_strategy(), 4, keras.layers.LayerNormalization)
    assert two.replicas == 2 and one.replicas == 1
    for a, b in zip(two.model.weights, one.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
    for a, b in zip(two.ema.shadows, one.ema.shadows):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    bn = run(mirrored, 2, keras.layers.BatchNormalization)
    for weight in bn.model.weights:
        copies = mirrored.experimental_local_results(weight.value)
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy(), err_msg=weight.path)
    moving = [w for w in bn.model.weights if "moving_mean" in w.path][0]
    assert np.abs(moving.numpy()).max() > 0  # the statistics did move
    print("mirrored ok")
    """
)


def test_mirrored_replicas_train_like_one_replica_on_the_joint_batch(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    (log,) = _run_all([[sys.executable, str(script)]], timeout=300)
    assert "mirrored ok" in log
