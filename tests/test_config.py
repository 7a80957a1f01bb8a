import json

import pytest
import transformers

from keras_mobilevitv2.config import MobileViTV2Config, make_divisible, stage_dilations, stage_widths
from keras_mobilevitv2.presets import PRESETS, WIDTHS, get_preset

HF_FIELDS = [
    "num_channels", "image_size", "patch_size", "expand_ratio", "hidden_act", "conv_kernel_size",
    "output_stride", "classifier_dropout_prob", "initializer_range", "layer_norm_eps", "aspp_out_channels",
    "atrous_rates", "aspp_dropout_prob", "semantic_loss_ignore_index", "n_attn_blocks", "base_attn_unit_dims",
    "width_multiplier", "ffn_multiplier", "attn_dropout", "ffn_dropout", "num_labels",
]


def test_defaults_equal_transformers():
    ours, theirs = MobileViTV2Config(), transformers.MobileViTV2Config()
    for field in HF_FIELDS:
        value = getattr(theirs, field)
        value = list(value) if isinstance(value, tuple) else value
        assert getattr(ours, field) == value, field
    assert ours.compat == "cvnets"


def test_reads_a_transformers_config_json(tmp_path):
    hf = transformers.MobileViTV2Config(
        width_multiplier=0.75, output_stride=16, id2label={0: "cat", 1: "dog", 2: "bird"}, atrous_rates=[12, 24, 36]
    )
    hf.architectures = ["MobileViTV2ForSemanticSegmentation"]
    hf.save_pretrained(tmp_path)
    config = MobileViTV2Config.from_json_file(tmp_path / "config.json")
    assert config.width_multiplier == 0.75 and config.output_stride == 16
    assert config.id2label == {0: "cat", 1: "dog", 2: "bird"} and config.label2id["dog"] == 1
    assert config.num_labels == 3 and config.atrous_rates == [12, 24, 36]
    # to_dict -> from_dict is the identity, and to_dict is what transformers reads back
    assert MobileViTV2Config.from_dict(config.to_dict()) == config
    (tmp_path / "ours.json").write_text(config.to_json_string())
    back = transformers.MobileViTV2Config.from_json_file(tmp_path / "ours.json")
    assert back.width_multiplier == 0.75 and back.id2label[2] == "bird"


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("output_stride", 4, "output_stride must be one of (8, 16, 32), received 4"),
        ("width_multiplier", 0, "width_multiplier must be a positive number, received 0"),
        ("width_multiplier", -1.0, "width_multiplier must be a positive number, received -1.0"),
        ("n_attn_blocks", [2, 4], "n_attn_blocks must have 3 entries"),
        ("base_attn_unit_dims", [128, 0, 256], "base_attn_unit_dims must hold positive integers"),
        ("atrous_rates", [6, 12], "atrous_rates must have 3 entries, received [6, 12]"),
        ("compat", "timm", "compat must be one of ('cvnets', 'transformers'), received 'timm'"),
        ("hidden_act", "mish", "hidden_act must be one of"),
        ("attn_dropout", 1.5, "attn_dropout must be a probability in [0, 1), received 1.5"),
        ("conv_kernel_size", 4, "conv_kernel_size must be odd, received 4"),
        ("num_labels", -2, "num_labels must be a non-negative integer, received -2"),
    ],
)
def test_invalid_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        MobileViTV2Config(**{field: value})


def test_disagreeing_labels_and_unknown_fields():
    with pytest.raises(ValueError, match="num_labels=3 disagrees with id2label, which has 2 entries"):
        MobileViTV2Config(num_labels=3, id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="unknown MobileViTV2 config field 'widht_multiplier'"):
        MobileViTV2Config.from_dict({"widht_multiplier": 1.0})
    with pytest.raises(ValueError, match="model_type must be 'mobilevitv2', received 'mobilevit'"):
        MobileViTV2Config.from_dict({"model_type": "mobilevit"})


def test_bad_json_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        MobileViTV2Config.from_json_file(path)


def test_widths_follow_the_reference():
    assert make_divisible(64 * 0.75, 16) == 48
    assert stage_widths(MobileViTV2Config(width_multiplier=1.0)) == {
        "stem": 32, "stage1": 64, "stage2": 128, "stage3": 256, "stage4": 384, "stage5": 512,
        "attn3": 128, "attn4": 192, "attn5": 256,
    }
    assert stage_widths(MobileViTV2Config(width_multiplier=0.5))["stem"] == 16


def test_dilations():
    os8_cvnets = stage_dilations(MobileViTV2Config(output_stride=8))
    assert os8_cvnets == {3: (2, 1, 1), 4: (1, 1, 2), 5: (1, 2, 4)}
    os16_hf = stage_dilations(MobileViTV2Config(output_stride=16, compat="transformers"))
    assert os16_hf == {3: (2, 1, 1), 4: (2, 1, 1), 5: (1, 1, 1)}


def test_presets_cover_every_width():
    names = ["0.5", "0.75", "1.0", "1.25", "1.5", "1.75", "2.0"]
    for width, name in zip(WIDTHS, names, strict=True):
        assert PRESETS[f"mobilevitv2-{name}-imagenet1k-256"]["config"]["width_multiplier"] == width
        assert PRESETS[f"mobilevitv2-{name}-voc-deeplabv3"]["task"] == "semantic_segmentation"
    assert get_preset("apple/mobilevitv2-1.0-voc-deeplabv3")["config"]["output_stride"] == 16
    with pytest.raises(ValueError, match="unknown preset 'mobilevitv2-3.0'"):
        get_preset("mobilevitv2-3.0")
    json.dumps(PRESETS)  # presets are plain data
