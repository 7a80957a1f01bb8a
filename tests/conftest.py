import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No test reaches the Hugging Face hub: hub code is tested against local directories and stand-ins.
os.environ["HF_HUB_OFFLINE"] = "1"

import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.fail(f"the shared fixtures are missing: {FIXTURES}")
    return FIXTURES


def randomize_torch_module(module, seed=0):
    """Overwrite every float parameter and buffer of a torch module with non-trivial random values.

    Weights N(0, 1/fan_in), biases and BatchNorm shifts/means 0.1*N(0, 1), norm scales 1+0.1*N(0, 1),
    running variances U(0.5, 1.5): activations keep their scale through the depth of the network, so
    a wrong layer shows as a large error instead of hiding under shrinking activations.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point():
                continue
            shape = tensor.shape
            if name.endswith("running_var"):
                value = torch.rand(shape, generator=gen) + 0.5
            elif name.endswith("running_mean") or name.endswith("bias"):
                value = 0.1 * torch.randn(shape, generator=gen)
            elif tensor.ndim >= 2:
                fan_in = int(np.prod(shape[1:]))
                value = torch.randn(shape, generator=gen) / np.sqrt(fan_in)
            else:
                value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            tensor.data.copy_(value)
    return module


def max_rel_error(actual, expected):
    """max |actual - expected| divided by the standard deviation of `expected`."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / (np.std(expected) + 1e-12))


def randomize_keras_model(model, seed=0):
    """The Keras twin of `randomize_torch_module`: every variable at a scale that keeps activations alive."""
    rng = np.random.RandomState(seed)
    for variable in model.weights:
        shape, name = tuple(variable.shape), variable.path.rsplit("/", 1)[-1]
        if name == "moving_variance":
            value = rng.rand(*shape) + 0.5
        elif name in ("moving_mean", "bias", "beta"):
            value = 0.1 * rng.randn(*shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[:-1]))
            if len(shape) == 4 and shape[-1] == 1:  # depthwise kernel (kh, kw, C, 1)
                fan_in = shape[0] * shape[1]
            value = rng.randn(*shape) / np.sqrt(fan_in)
        else:
            value = 1.0 + 0.1 * rng.randn(*shape)
        variable.assign(value.astype("float32"))
    return model
