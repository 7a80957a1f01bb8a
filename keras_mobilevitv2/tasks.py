"""The task registry: which Keras model class serves which task.

    from keras_mobilevitv2.tasks import TASK_NAMES, task_class, task_of
    task_class("semantic_segmentation").hf_architecture    # "MobileViTV2ForSemanticSegmentation"
    task_of(model)                                          # "image_classification"

Everything about a task is a class attribute of its model, as keras-hub's tasks carry
`backbone_cls` / `preprocessor_cls`:

- `task_name`: "image_classification", "semantic_segmentation" or "backbone" (the one spelling);
- `hf_architecture`: the transformers class (`architectures` in a Hugging Face config.json);
- `default_preset`: the built-in preset (`keras_mobilevitv2.presets`) of the released model;
- `default_preprocessing_preset`: the preset whose preprocessing a model without its own gets;
- `default_loss()`: the training loss of its outputs (None for a bare backbone).

Conversion, export, training and the command line read those attributes; this module only says
where each class lives, so that the task names are known without importing Keras (the CLI's
`--help` imports neither TensorFlow nor Keras).
"""

import importlib

BACKBONE = "backbone"

# task name -> "module:Class" of its Keras model, imported on first use.
_CLASSES = {
    "image_classification": "keras_mobilevitv2.image_classifier:MobileViTV2ImageClassifier",
    "semantic_segmentation": "keras_mobilevitv2.segmenter:MobileViTV2SemanticSegmenter",
    BACKBONE: "keras_mobilevitv2.backbone:MobileViTV2Backbone",
}
TASK_NAMES = tuple(_CLASSES)
# The tasks with a head (a loss, labels, exports and evaluation).
HEAD_TASK_NAMES = tuple(name for name in TASK_NAMES if name != BACKBONE)

# Spellings the command line took before the names were one: `mobilevitv2 train classification`,
# `evaluate --task segmentation`. Accepted there only, with the same behaviour.
CLI_ALIASES = {"classification": "image_classification", "segmentation": "semantic_segmentation"}


class UnknownTaskError(ValueError):
    """A task name that is not one of `TASK_NAMES`, or a model that is none of the task classes."""


def canonical_task(name, aliases=False):
    """`name` as one of `TASK_NAMES`; with `aliases`, a `CLI_ALIASES` spelling is accepted too."""
    if aliases and name in CLI_ALIASES:
        return CLI_ALIASES[name]
    if name not in _CLASSES:
        known = TASK_NAMES + tuple(CLI_ALIASES) if aliases else TASK_NAMES
        raise UnknownTaskError(f"task must be one of {', '.join(known)}, received {name!r}")
    return name


def task_class(name):
    """The Keras model class of task `name`."""
    module, _, cls = _CLASSES[canonical_task(name)].partition(":")
    return getattr(importlib.import_module(module), cls)


def task_classes():
    """{task name: Keras model class}, in `TASK_NAMES` order."""
    return {name: task_class(name) for name in TASK_NAMES}


def task_of(model):
    """The task name of one of our models (`type(model).task_name`, subclasses included)."""
    classes = task_classes()
    for name, cls in classes.items():
        if isinstance(model, cls):
            return name
    names = [cls.__name__ for cls in classes.values()]
    raise UnknownTaskError(f"expected a {', '.join(names[:-1])} or {names[-1]}, received {type(model).__name__}")
