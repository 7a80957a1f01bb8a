"""export_to_transformers: Keras-trained weights load strictly into transformers and compute the same
outputs; a transformers checkpoint survives Hugging Face -> Keras -> Hugging Face bit for bit."""

import json
import re
import warnings

import keras
import numpy as np
import pytest

from conversion.convert import build_model, convert_checkpoint
from conversion.report import patch_cvnets_dilation
from conversion.to_transformers import export_to_transformers
from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.preprocessing import PreprocessingConfig
from keras_mobilevitv2.segmenter import SegmentationLoss
from tests.conftest import max_rel_error, randomize_keras_model, randomize_torch_module

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

TOLERANCE = 1e-4  # max abs diff / std of the reference output
HF_CLASSES = {
    "image_classification": transformers.MobileViTV2ForImageClassification,
    "semantic_segmentation": transformers.MobileViTV2ForSemanticSegmentation,
    "backbone": transformers.MobileViTV2Model,
}
LABELS = {0: "cat", 1: "dog", 2: "bird"}


def _trained(task, config, size=64, seed=0):
    """A Keras model with every weight randomized, then trained two SGD steps (weights and BN stats move)."""
    model = randomize_keras_model(build_model(config, task, preprocessing=PreprocessingConfig(crop_height=size, crop_width=size)), seed)
    rng = np.random.RandomState(seed)
    x = rng.rand(8, size, size, 3).astype("float32")
    if task == "image_classification":
        y = rng.randint(0, config.num_labels, size=(8,))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        y = rng.randint(0, config.num_labels, size=(8, size, size, 1))
        loss = SegmentationLoss()
    before = [np.array(v) for v in model.weights]
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss=loss)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    unchanged = [v.path for v, value in zip(model.weights, before) if np.array_equal(value, np.array(v))]
    # Only shifts whose gradient is zero up to rounding may stay (whether the rounding leaves them
    # exactly unchanged varies run to run): a MobileViT block's final GroupNorm beta and its
    # projection's BatchNorm beta, followed (through a 1x1 conv) by a BatchNorm in training mode,
    # which subtracts the batch mean and with it any constant offset.
    zero_gradient = re.compile(r"encoder_layer_\d/(layernorm|conv_projection/normalization)/beta")
    assert all(zero_gradient.fullmatch(path) for path in unchanged), unchanged
    assert len(unchanged) < len(model.weights) // 20, unchanged
    return model


def _load(task, out_dir):
    hf, info = HF_CLASSES[task].from_pretrained(out_dir, output_loading_info=True)
    assert {k: list(v) for k, v in info.items() if v} == {}, info  # no missing / unexpected / mismatched key
    return hf.eval()


def _hf_outputs(hf, x):
    with torch.no_grad():
        return hf(torch.from_numpy(x.transpose(0, 3, 1, 2)))


def _nhwc(t):
    return t.numpy().transpose(0, 2, 3, 1)


def test_trained_classifier_exports_to_transformers(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.5, id2label=LABELS)
    model = _trained("image_classification", config)
    assert export_to_transformers(model, tmp_path) == tmp_path
    written = json.loads((tmp_path / "config.json").read_text())
    assert "compat" not in written and written["architectures"] == ["MobileViTV2ForImageClassification"]
    hf = _load("image_classification", tmp_path)
    assert hf.config.id2label == LABELS and hf.config.label2id == {v: k for k, v in LABELS.items()}
    # compat="cvnets" at output stride 32 and sizes divisible by 64: the same function as transformers.
    x = np.random.RandomState(1).rand(2, 128, 64, 3).astype("float32")
    assert max_rel_error(model(x), _hf_outputs(hf, x).logits.numpy()) <= TOLERANCE
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert PreprocessingConfig.from_hf_dict(processor) == model.preprocessing
    assert transformers.MobileViTImageProcessor(**processor).crop_size == {"height": 64, "width": 64}


def test_trained_segmenter_exports_to_transformers(tmp_path):
    config = MobileViTV2Config(
        width_multiplier=0.5, num_labels=3, output_stride=16, aspp_out_channels=32, compat="transformers"
    )
    model = _trained("semantic_segmentation", config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # compat="transformers": nothing to warn about
        export_to_transformers(model, tmp_path)
    hf = _load("semantic_segmentation", tmp_path)
    assert (hf.config.output_stride, hf.config.aspp_out_channels) == (16, 32)
    x = np.random.RandomState(2).rand(1, 100, 76, 3).astype("float32")  # any size under compat="transformers"
    out = _hf_outputs(hf, x)
    assert max_rel_error(model(x), _nhwc(out.logits)) <= TOLERANCE


def test_backbone_exports_without_prefix(tmp_path):
    model = randomize_keras_model(build_model(MobileViTV2Config(width_multiplier=0.5), "backbone"), seed=4)
    export_to_transformers(model, tmp_path)
    keys = safetensors_numpy.load_file(tmp_path / "model.safetensors")
    assert not any(k.startswith("mobilevitv2.") for k in keys)
    assert not (tmp_path / "preprocessor_config.json").exists()  # the model carries no preprocessing
    hf = _load("backbone", tmp_path)
    x = np.random.RandomState(4).rand(1, 64, 128, 3).astype("float32")
    out = _hf_outputs(hf, x)
    got = model(x)
    assert max_rel_error(got["last_hidden_state"], _nhwc(out.last_hidden_state)) <= TOLERANCE
    assert max_rel_error(got["pooler_output"], out.pooler_output.numpy()) <= TOLERANCE


def test_dilated_cvnets_model_warns_and_differs_in_stock_transformers(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3, output_stride=16, aspp_out_channels=32)
    model = randomize_keras_model(build_model(config, "semantic_segmentation"), seed=5)
    with pytest.warns(UserWarning, match="encoder.layer.4.conv_kxk"):
        export_to_transformers(model, tmp_path)
    assert "dilat" in (tmp_path / "README.md").read_text()
    hf = _load("semantic_segmentation", tmp_path)
    x = np.random.RandomState(5).rand(1, 64, 64, 3).astype("float32")
    assert max_rel_error(model(x), _nhwc(_hf_outputs(hf, x).logits)) > 1e-2  # what the warning is about
    patch_cvnets_dilation(hf, config)
    assert max_rel_error(model(x), _nhwc(_hf_outputs(hf, x).logits)) <= TOLERANCE


@pytest.mark.parametrize(
    "task,config",
    [
        ("image_classification", dict(width_multiplier=0.5, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})),
        ("semantic_segmentation", dict(width_multiplier=0.5, num_labels=4, output_stride=8, aspp_out_channels=32)),
        ("backbone", dict(width_multiplier=0.75)),
    ],
)
def test_round_trip_is_bit_identical(tmp_path, task, config):
    """transformers save_pretrained -> convert_checkpoint -> export_to_transformers: every tensor equal."""
    hf = randomize_torch_module(HF_CLASSES[task](transformers.MobileViTV2Config(**config)).eval(), seed=6)
    hf.save_pretrained(tmp_path / "hf")
    model = convert_checkpoint(tmp_path / "hf", compat="transformers", verbose=False)
    export_to_transformers(model, tmp_path / "back")
    original = safetensors_numpy.load_file(tmp_path / "hf" / "model.safetensors")
    exported = safetensors_numpy.load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(exported) == sorted(original)
    different = [k for k in original if original[k].dtype != exported[k].dtype or not np.array_equal(original[k], exported[k])]
    assert different == []
    fields = lambda c: {k: v for k, v in c.to_dict().items() if k not in ("transformers_version", "_name_or_path")}  # noqa: E731
    assert fields(type(hf.config).from_pretrained(tmp_path / "back")) == fields(type(hf.config).from_pretrained(tmp_path / "hf"))
