"""The task registry (keras_mobilevitv2.tasks): one class per task, its facts on the class."""

import keras
import pytest

from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.presets import PRESETS
from keras_mobilevitv2.tasks import (
    CLI_ALIASES,
    HEAD_TASK_NAMES,
    TASK_NAMES,
    UnknownTaskError,
    canonical_task,
    task_class,
    task_of,
)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_each_class_carries_its_task(name):
    cls = task_class(name)
    assert cls.task_name == name
    assert cls.hf_architecture.startswith("MobileViTV2")
    for preset in (cls.default_preset, cls.default_preprocessing_preset):
        assert preset in PRESETS
    if name != "backbone":
        assert PRESETS[cls.default_preset]["task"] == name
    assert set(cls.summary_fields) <= set(MobileViTV2Config().to_dict())


def test_hf_architectures_are_transformers_classes():
    transformers = pytest.importorskip("transformers")
    for name in TASK_NAMES:
        assert hasattr(transformers, task_class(name).hf_architecture), name


def test_task_of_models_and_refusals():
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3)
    for name in TASK_NAMES:
        assert task_of(task_class(name)(config)) == name
    with pytest.raises(UnknownTaskError, match="expected a MobileViTV2ImageClassifier, MobileViTV2SemanticSegmenter or "
                       "MobileViTV2Backbone, received Sequential"):
        task_of(keras.Sequential())
    with pytest.raises(ValueError, match="task must be one of image_classification, semantic_segmentation, backbone, "
                       "received 'classification'"):
        task_class("classification")


def test_cli_aliases_only_where_asked():
    assert canonical_task("classification", aliases=True) == "image_classification"
    assert canonical_task("segmentation", aliases=True) == "semantic_segmentation"
    assert set(CLI_ALIASES.values()) == set(HEAD_TASK_NAMES)
    with pytest.raises(UnknownTaskError, match="received 'segmentation'"):
        canonical_task("segmentation")


def test_default_losses():
    import numpy as np

    from keras_mobilevitv2.segmenter import SegmentationLoss

    assert task_class("backbone").default_loss() is None
    assert isinstance(task_class("semantic_segmentation").default_loss(), SegmentationLoss)
    loss = task_class("image_classification").default_loss()
    logits = np.array([[2.0, 0.0, -1.0]], "float32")
    expected = -np.log(np.exp(2.0) / np.exp(logits).sum())
    assert float(loss(np.array([0]), logits)) == pytest.approx(expected, rel=1e-5)
    model = task_class("image_classification")(MobileViTV2Config(width_multiplier=0.5, num_labels=3))
    model.compile(optimizer="sgd")  # loss="auto": the task's
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
