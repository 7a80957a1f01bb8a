"""The model on the JAX and PyTorch backends of Keras, against TensorFlow.

This (TensorFlow) process writes width-0.5 models of every task with every weight and BatchNorm
statistic randomized (`.keras` and `.weights.h5`) and their outputs on 64 x 64 images; one process
per backend runs tests/backend_checks.py on them (build, load, predict, fit, save), and the `.keras`
files it saved are loaded back here, on TensorFlow, with the same outputs. Each check is a test of
its own, named `<backend>-<task>/<check>`, failing with the backend's error.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import backend_checks
from tests.conftest import randomize_keras_model

pytestmark = pytest.mark.slow  # a process per backend (JAX compiles the predict and train steps)

BACKENDS = ("jax", "torch")
CONFIGS = {
    "backbone": {"width_multiplier": 0.5},
    "classifier": {"width_multiplier": 0.5, "num_labels": 5},
    "segmenter": {"width_multiplier": 0.5, "num_labels": 5, "output_stride": 16, "aspp_out_channels": 32},
}


@pytest.fixture(scope="module")
def tensorflow_models(tmp_path_factory):
    """The work dir of the backend processes; {task: (model, {output: array})}."""
    from keras_mobilevitv2.config import MobileViTV2Config

    work = tmp_path_factory.mktemp("backends")
    x = np.random.RandomState(0).rand(4, 64, 64, 3).astype("float32")
    np.save(work / "inputs.npy", x)
    manifest, models = {}, {}
    for seed, (task, fields) in enumerate(CONFIGS.items()):
        config = MobileViTV2Config(**fields).to_dict()
        model = randomize_keras_model(backend_checks.build(task, config), seed)
        outputs = backend_checks.named_outputs(model(x, training=False))
        model.save(work / f"{task}.keras")
        model.save_weights(work / f"{task}.weights.h5")
        for name, value in outputs.items():
            np.save(work / f"{task}.tf.{name}.npy", value)
        manifest[task] = {"config": config, "outputs": sorted(outputs)}
        models[task] = (model, outputs)
    (work / "manifest.json").write_text(json.dumps(manifest))
    return work, models


_RUNS = {}


def backend_run(backend, work):
    """Run the checks on `backend` once; (results, log)."""
    if backend not in _RUNS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        script = os.path.join(os.path.dirname(__file__), "backend_checks.py")
        done = subprocess.run([sys.executable, script, str(work)], capture_output=True, text=True, env=env, timeout=900)
        path = work / f"results.{backend}.json"
        results = json.loads(path.read_text()) if path.exists() else None
        _RUNS[backend] = results, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return _RUNS[backend]


@pytest.mark.parametrize("check", backend_checks.check_names())
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend(backend, check, tensorflow_models):
    work, _ = tensorflow_models
    results, log = backend_run(backend, work)
    assert results is not None, f"the {backend} process wrote no results:\n{log}"
    assert results[check]["ok"], f"{backend} {check}: {results[check]['detail']}"


@pytest.mark.parametrize("task", backend_checks.TASKS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_file_saved_on_the_backend_loads_on_tensorflow(backend, task, tensorflow_models):
    from keras_mobilevitv2.saving import load_model

    work, models = tensorflow_models
    results, log = backend_run(backend, work)
    assert results is not None, f"the {backend} process wrote no results:\n{log}"
    path = work / f"{task}.{backend}.keras"
    assert results[f"{task}/save"]["ok"] and path.exists(), f"{backend} saved no {path.name}: {results[f'{task}/save']['detail']}"
    model = load_model(path)
    assert type(model) is type(models[task][0])
    x = np.load(work / "inputs.npy")
    backend_checks.compare(model(x, training=False), models[task][1])
