"""Parameter counts equal transformers' for every preset."""

import pytest
import torch  # noqa: F401  (transformers' models need it)
import transformers

from keras_mobilevitv2.models import from_preset, preset_config
from keras_mobilevitv2.presets import PRESETS


def _hf_count(name):
    config = preset_config(name).to_dict()
    config.pop("compat")
    hf_config = transformers.MobileViTV2Config(**{k: v for k, v in config.items() if k != "model_type"})
    cls = (
        transformers.MobileViTV2ForSemanticSegmentation
        if PRESETS[name]["task"] == "semantic_segmentation"
        else transformers.MobileViTV2ForImageClassification
    )
    model = cls(hf_config)
    # BatchNorm running statistics are Keras weights too (non-trainable); count both sides alike.
    return sum(t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked"))


def test_mobilevitv2_1_0_has_4_9m_parameters():
    model = from_preset("mobilevitv2-1.0-imagenet1k-256")
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    assert round(trainable / 1e6, 1) == 4.9
    assert model.count_params() == _hf_count("mobilevitv2-1.0-imagenet1k-256")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_counts_like_transformers(name):
    assert from_preset(name).count_params() == _hf_count(name)
