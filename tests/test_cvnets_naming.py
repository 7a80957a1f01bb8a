"""ml-cvnets checkpoints built independently (tests/cvnets_reference.py, names read from ml-cvnets'
sources) convert with no config and reproduce transformers' model that holds the same tensors.

The builder is itself checked against checkpoints the original ml-cvnets code wrote (the shared
fixtures): same keys, same order, same shapes and dtypes.
"""

import json

import numpy as np
import pytest

from conversion.convert import convert_checkpoint
from tests.conftest import max_rel_error, randomize_torch_module
from tests.cvnets_reference import cvnets_state_dict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4  # max abs diff / std of the reference output


def _hf_model(task, seed=0, **config):
    cls = {
        "image_classification": transformers.MobileViTV2ForImageClassification,
        "semantic_segmentation": transformers.MobileViTV2ForSemanticSegmentation,
    }[task]
    return randomize_torch_module(cls(transformers.MobileViTV2Config(**config)).eval(), seed)


def _logits(torch_model, x):
    with torch.no_grad():
        out = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
    return out.transpose(0, 2, 3, 1) if out.ndim == 4 else out


@pytest.mark.parametrize(
    "fixture,task,config,aux_head",
    [
        ("cvnets_mobilevitv2_050_cls", "image_classification", dict(width_multiplier=0.5, num_labels=10), False),
        (
            "cvnets_mobilevitv2_050_deeplabv3",
            "semantic_segmentation",
            dict(width_multiplier=0.5, num_labels=21, aspp_out_channels=64, output_stride=16),
            True,
        ),
    ],
)
def test_builder_writes_the_keys_ml_cvnets_writes(fixtures_dir, fixture, task, config, aux_head):
    meta = json.loads((fixtures_dir / f"{fixture}.json").read_text())
    written_by_cvnets = torch.load(fixtures_dir / f"{fixture}.pt", weights_only=True)
    ours = cvnets_state_dict(_hf_model(task, **config), aux_head=aux_head)
    assert len(written_by_cvnets) == meta["state_dict_num_keys"]
    assert list(ours) == list(written_by_cvnets)  # same names, in ml-cvnets' registration order
    for key, tensor in written_by_cvnets.items():
        assert (ours[key].shape, ours[key].dtype) == (tensor.shape, tensor.dtype), key


def _wrap(state_dict, wrapping):
    if wrapping == "plain":
        return state_dict
    if wrapping == "module_prefix":  # saved from DistributedDataParallel
        return {f"module.{k}": v for k, v in state_dict.items()}
    # ml-cvnets' training checkpoints, generic loops: the weights under a key, beside other entries
    return {wrapping: state_dict, "epoch": 3, "best_metric": 0.5}


@pytest.mark.parametrize("wrapping", ["plain", "state_dict", "model", "module_prefix"])
def test_classifier_from_cvnets_names(tmp_path, wrapping):
    hf = _hf_model("image_classification", width_multiplier=0.5, num_labels=7)
    path = tmp_path / "mobilevitv2.pt"
    torch.save(_wrap(cvnets_state_dict(hf), wrapping), path)
    model = convert_checkpoint(path, verbose=False)
    assert model.source_format == "cvnets"
    assert (model.config.width_multiplier, model.config.num_labels, model.config.output_stride) == (0.5, 7, 32)
    # Output stride 32, sizes divisible by 64: ml-cvnets and transformers compute the same function.
    x = np.random.RandomState(1).rand(2, 128, 64, 3).astype("float32")
    assert max_rel_error(model(x), _logits(hf, x)) <= TOLERANCE


def test_deeplabv3_from_cvnets_names_dilated(tmp_path):
    """Output stride 16, inferred: compat="cvnets" dilates stage 5's local conv as ml-cvnets; the
    transformers reference is patched the same way (conversion.report.patch_cvnets_dilation)."""
    from conversion.report import patch_cvnets_dilation

    hf = _hf_model("semantic_segmentation", width_multiplier=0.5, num_labels=5, aspp_out_channels=32, output_stride=16)
    path = tmp_path / "deeplabv3.pt"
    torch.save({"state_dict": cvnets_state_dict(hf, aux_head=True)}, path)
    x = np.random.RandomState(2).rand(1, 96, 64, 3).astype("float32")

    stock = _logits(hf, x)
    as_transformers = convert_checkpoint(path, compat="transformers", verbose=False)
    assert max_rel_error(as_transformers(x), stock) <= TOLERANCE

    model = convert_checkpoint(path, verbose=False)
    assert model.config.output_stride == 16 and model.config.aspp_out_channels == 32
    assert any("aux_head" in note for note in model.conversion_notes)
    assert patch_cvnets_dilation(hf, model.config) == ["mobilevitv2.encoder.layer.4.conv_kxk: dilation 2, padding 2"]
    dilated = _logits(hf, x)
    assert max_rel_error(dilated, stock) > 1e-2  # the patch changes the function ...
    assert max_rel_error(model(x), dilated) <= TOLERANCE  # ... into the one the Keras model computes


def test_deeplabv3_output_stride_8_with_config(tmp_path):
    from conversion.report import patch_cvnets_dilation

    config = dict(width_multiplier=0.5, num_labels=4, aspp_out_channels=32, output_stride=8, atrous_rates=[12, 24, 36])
    hf = _hf_model("semantic_segmentation", seed=3, **config)
    path = tmp_path / "deeplabv3_os8.pth"
    torch.save({"model": {f"module.{k}": v for k, v in cvnets_state_dict(hf).items()}}, path)
    model = convert_checkpoint(path, config=config, verbose=False)
    assert patch_cvnets_dilation(hf, model.config) == [
        "mobilevitv2.encoder.layer.3.conv_kxk: dilation 2, padding 2",
        "mobilevitv2.encoder.layer.4.conv_kxk: dilation 4, padding 4",
    ]
    x = np.random.RandomState(3).rand(1, 64, 80, 3).astype("float32")
    assert max_rel_error(model(x), _logits(hf, x)) <= TOLERANCE
