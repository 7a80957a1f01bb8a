"""Keras vs transformers' PyTorch MobileViTV2, every weight and buffer randomized, compat="transformers"."""

import numpy as np
import pytest
import torch
import transformers

from conversion.convert import convert_checkpoint
from tests.conftest import max_rel_error, randomize_torch_module

TOLERANCE = 1e-4  # max abs diff / std of the reference output

HF_CLASSES = {
    "backbone": transformers.MobileViTV2Model,
    "image_classification": transformers.MobileViTV2ForImageClassification,
    "semantic_segmentation": transformers.MobileViTV2ForSemanticSegmentation,
}


def _reference(tmp_path, task, width, output_stride, seed=0):
    config = transformers.MobileViTV2Config(
        width_multiplier=width, output_stride=output_stride, num_labels=5, aspp_out_channels=32
    )
    model = randomize_torch_module(HF_CLASSES[task](config).eval(), seed)
    model.save_pretrained(tmp_path)
    return model


def _compare(torch_model, keras_model, task, height, width, seed=0):
    x = np.random.RandomState(seed).rand(2, height, width, 3).astype("float32")
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True)
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    if task == "backbone":
        got = keras_model(x)
        errors = {"last_hidden_state": max_rel_error(got["last_hidden_state"], nhwc(ref.last_hidden_state))}
        errors["pooler_output"] = max_rel_error(got["pooler_output"], ref.pooler_output.numpy())
        hidden = got["hidden_states"]
    else:
        logits = np.asarray(keras_model(x))
        expected = ref.logits.numpy()
        errors = {"logits": max_rel_error(logits, nhwc(ref.logits) if expected.ndim == 4 else expected)}
        hidden = keras_model.backbone(x)["hidden_states"]
    assert len(hidden) == len(ref.hidden_states) == 5
    for i, (h, r) in enumerate(zip(hidden, ref.hidden_states)):
        errors[f"hidden_states[{i}]"] = max_rel_error(h, nhwc(r))
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, errors


CASES = [
    # task, width, output_stride, height, width
    ("image_classification", 0.5, 32, 64, 64),
    ("image_classification", 0.5, 32, 100, 76),  # not divisible by 64: remainder dropped at unfold
    ("backbone", 0.5, 32, 72, 88),
    ("semantic_segmentation", 0.5, 16, 96, 160),
    ("semantic_segmentation", 0.5, 8, 90, 70),
]
SLOW_CASES = [
    ("image_classification", 1.0, 32, 256, 256),
    ("semantic_segmentation", 1.0, 16, 130, 98),
    ("image_classification", 2.0, 32, 96, 80),
    ("semantic_segmentation", 2.0, 8, 64, 96),
]


@pytest.mark.parametrize("task,width,output_stride,height,image_width", CASES)
def test_matches_transformers(tmp_path, task, width, output_stride, height, image_width):
    reference = _reference(tmp_path, task, width, output_stride)
    model = convert_checkpoint(tmp_path, compat="transformers", verbose=False)
    assert model.config.compat == "transformers"
    _compare(reference, model, task, height, image_width)


@pytest.mark.slow
@pytest.mark.parametrize("task,width,output_stride,height,image_width", SLOW_CASES)
def test_matches_transformers_large(tmp_path, task, width, output_stride, height, image_width):
    reference = _reference(tmp_path, task, width, output_stride, seed=1)
    model = convert_checkpoint(tmp_path, compat="transformers", verbose=False)
    _compare(reference, model, task, height, image_width, seed=1)


def test_cvnets_default_equals_transformers_when_divisible(tmp_path):
    """At sizes divisible by 64 and output stride 32 the two references compute the same function."""
    reference = _reference(tmp_path, "image_classification", 0.5, 32)
    model = convert_checkpoint(tmp_path, verbose=False)
    assert model.config.compat == "cvnets"
    _compare(reference, model, "image_classification", 128, 64)


def test_compat_modes_differ_where_the_references_differ(tmp_path):
    """Not divisible by the patch size: cvnets resizes, transformers crops; the outputs must differ."""
    _reference(tmp_path, "image_classification", 0.5, 32)
    cvnets = convert_checkpoint(tmp_path, compat="cvnets", verbose=False)
    hf = convert_checkpoint(tmp_path, compat="transformers", verbose=False)
    x = np.random.RandomState(3).rand(1, 100, 76, 3).astype("float32")
    assert max_rel_error(cvnets(x), hf(x)) > 1e-2
    x = np.random.RandomState(3).rand(1, 128, 64, 3).astype("float32")
    assert max_rel_error(cvnets(x), hf(x)) < 1e-5
