"""The default compat="cvnets" against checkpoints written by the original code (../shared/fixtures)."""

import json

import numpy as np
import pytest

from conversion.convert import convert_checkpoint
from keras_mobilevitv2.segmenter import resize_logits
from tests.conftest import max_rel_error

TOLERANCE = 1e-4


def _nhwc(a):
    return a.transpose(0, 2, 3, 1)


def test_timm_fixture(fixtures_dir):
    io = np.load(fixtures_dir / "timm_mobilevitv2_050_io.npz")
    model = convert_checkpoint(fixtures_dir / "timm_mobilevitv2_050.safetensors", verbose=False)
    assert model.config.width_multiplier == 0.5 and model.config.num_labels == 1000
    logits = model(_nhwc(io["pixel_values_nchw"]))
    assert max_rel_error(logits, io["logits"]) <= TOLERANCE


def test_cvnets_classification_fixture(fixtures_dir):
    io = np.load(fixtures_dir / "cvnets_mobilevitv2_050_cls_io.npz")
    model = convert_checkpoint(fixtures_dir / "cvnets_mobilevitv2_050_cls.pt", verbose=False)
    x = _nhwc(io["pixel_values_nchw"])
    assert max_rel_error(model(x), io["logits"]) <= TOLERANCE
    hidden = model.backbone(x)["hidden_states"]
    for stage, key in zip((2, 3, 4), ("encoder_out_l3", "encoder_out_l4", "encoder_out_l5")):
        assert max_rel_error(hidden[stage], _nhwc(io[key])) <= TOLERANCE, key


@pytest.mark.parametrize("explicit_config", [True, False])
def test_cvnets_deeplabv3_fixture_dilated(fixtures_dir, explicit_config):
    """Output stride 16: ml-cvnets dilates stage 5's local conv; the default compat must too."""
    meta = json.loads((fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3.json").read_text())
    io = np.load(fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3_io.npz")
    config = dict(
        width_multiplier=meta["width_multiplier"],
        num_labels=meta["n_classes"],
        output_stride=meta["output_stride"],
        aspp_out_channels=meta["aspp_out_channels"],
        atrous_rates=meta["aspp_rates"],
    )
    model = convert_checkpoint(
        fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3.pt", config=config if explicit_config else None, verbose=False
    )
    x = _nhwc(io["pixel_values_nchw"])
    hidden = model.backbone(x)["hidden_states"]
    for stage, key in zip((2, 3, 4), ("encoder_out_l3", "encoder_out_l4", "encoder_out_l5")):
        assert max_rel_error(hidden[stage], _nhwc(io[key])) <= TOLERANCE, key
    if not explicit_config:
        # Atrous rates are not in the tensors: inference assumes ml-cvnets' VOC recipe and says so.
        assert model.config.atrous_rates == [6, 12, 18]
        assert any("atrous" in note for note in model.conversion_notes)
    logits = np.asarray(model(x))
    assert logits.shape == (1, 16, 16, 21)
    assert max_rel_error(logits, _nhwc(io["logits_head_raw"])) <= TOLERANCE
    upsampled = resize_logits(logits, (256, 256), align_corners=True)
    assert max_rel_error(upsampled, _nhwc(io["logits"])) <= TOLERANCE


def test_transformers_compat_misses_the_dilated_fixture(fixtures_dir):
    """The switch is real: transformers' undilated local conv does not reproduce ml-cvnets at OS 16."""
    io = np.load(fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3_io.npz")
    model = convert_checkpoint(fixtures_dir / "cvnets_mobilevitv2_050_deeplabv3.pt", compat="transformers", verbose=False)
    hidden = model.backbone(_nhwc(io["pixel_values_nchw"]))["hidden_states"]
    assert max_rel_error(hidden[4], _nhwc(io["encoder_out_l5"])) > 1e-2
