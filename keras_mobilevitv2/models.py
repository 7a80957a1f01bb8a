"""Build a preset's model (randomly initialised) by name."""

from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.presets import get_preset


def preset_config(name, **overrides):
    """The MobileViTV2Config of a preset, with `overrides` (e.g. num_labels, compat) applied."""
    preset = get_preset(name)
    fields = dict(preset["config"])
    if "num_labels" in overrides or "id2label" in overrides:
        fields.pop("num_labels", None)
        fields.pop("id2label", None)
    fields.update(overrides)
    return MobileViTV2Config(**fields)


def from_preset(name, task=None, **overrides):
    """A new (untrained) model of preset `name`, e.g. "mobilevitv2-1.0-imagenet1k-256".

    Args:
        task: "image_classification", "semantic_segmentation" or "backbone"; default the preset's.
        overrides: MobileViTV2Config fields to change (num_labels, output_stride, compat, ...).
    """
    from conversion.convert import build_model
    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    preset = get_preset(name)
    config = preset_config(name, **overrides)
    preprocessing = PreprocessingConfig.from_hf_dict(preset["preprocessing"])
    return build_model(config, task or preset["task"], preprocessing=preprocessing)
