"""Models by name: a built-in preset (randomly initialised), or a saved preset directory / hub handle.

    model = from_preset("mobilevitv2-0.5-imagenet1k-256")       # built-in: architecture only
    save_to_preset(model, "my-preset/")                          # config, weights, preprocessing, labels
    model = from_preset("my-preset/")                            # or from_preset("hf://owner/name")

A preset directory, as keras-hub writes them, holds `config.json` (the task class and its
MobileViTV2Config, labels included), `model.weights.h5`, `preprocessor.json` (the
PreprocessingConfig, when the model has one), `labels.json` (the class names, index order: the
same as the config's `id2label`, for tools that read only that) and `metadata.json` (Keras and
package versions, task, parameter count). Loading one needs this package and Keras only, not the
conversion code.
"""

import json
import os

from keras_mobilevitv2.config import MobileViTV2Config
from keras_mobilevitv2.presets import PRESETS, get_preset
from keras_mobilevitv2.tasks import TASK_NAMES

PRESET_CONFIG_FILE = "config.json"
PRESET_WEIGHTS_FILE = "model.weights.h5"
PRESET_PREPROCESSOR_FILE = "preprocessor.json"
PRESET_LABELS_FILE = "labels.json"
PRESET_METADATA_FILE = "metadata.json"
PRESET_FILES = [PRESET_CONFIG_FILE, PRESET_WEIGHTS_FILE, PRESET_PREPROCESSOR_FILE, PRESET_LABELS_FILE, PRESET_METADATA_FILE]


class PresetError(ValueError):
    """A preset directory that is incomplete or inconsistent; names the file and field."""


def preset_config(name, **overrides):
    """The MobileViTV2Config of a preset, with `overrides` (e.g. num_labels, compat) applied."""
    preset = get_preset(name)
    fields = dict(preset["config"])
    if "num_labels" in overrides or "id2label" in overrides:
        fields.pop("num_labels", None)
        fields.pop("id2label", None)
    fields.update(overrides)
    return MobileViTV2Config(**fields)


def build_model(config, task, preprocessing=None):
    """The Keras model of `task` ("image_classification", "semantic_segmentation", "backbone")."""
    from keras_mobilevitv2.tasks import BACKBONE, task_class

    cls = task_class(task)
    if task == BACKBONE:
        return cls(config)
    return cls(config, preprocessing=preprocessing)


def from_preset(name, task=None, **overrides):
    """A model from a built-in preset name, a preset directory, or a hub handle `hf://owner/name`.

    A built-in preset (e.g. "mobilevitv2-1.0-imagenet1k-256") gives a new, untrained model of
    that architecture; a directory or handle (written by `save_to_preset`) gives the saved model,
    weights included.

    Args:
        task: "image_classification", "semantic_segmentation" or "backbone"; default the preset's.
            A backbone can be taken out of a saved classifier or segmenter.
        overrides: built-in presets only: MobileViTV2Config fields to change (num_labels,
            output_stride, compat, ...).
    """
    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    name = os.fspath(name)
    if name in PRESETS or name.removeprefix("apple/") in PRESETS:
        preset = get_preset(name)
        config = preset_config(name, **overrides)
        preprocessing = PreprocessingConfig.from_hf_dict(preset["preprocessing"])
        return build_model(config, task or preset["task"], preprocessing=preprocessing)
    if os.path.isdir(name):
        directory = name
    elif name.startswith("hf://"):
        from keras_mobilevitv2.hub import download_from_hub

        directory = download_from_hub(name[len("hf://"):], allow_patterns=PRESET_FILES)
    else:
        raise ValueError(
            f"not found: {name} (not a preset directory, an hf://owner/name handle, or a built-in preset: "
            f"{', '.join(sorted(PRESETS))})"
        )
    if overrides:
        raise ValueError(f"overrides ({', '.join(sorted(overrides))}) apply to built-in presets, not to the saved preset {name}")
    return load_preset(directory, task=task)


def _read_json(directory, file, required=True):
    path = os.path.join(directory, file)
    if not os.path.isfile(path):
        if required:
            raise PresetError(f"{directory} is not a MobileViTV2 preset: {file} is missing")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise PresetError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise PresetError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def load_preset(directory, task=None):
    """The model saved in a preset directory by `save_to_preset`."""
    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    directory = os.fspath(directory)
    spec = _read_json(directory, PRESET_CONFIG_FILE)
    config_path = os.path.join(directory, PRESET_CONFIG_FILE)
    saved_task = spec.get("task")
    if saved_task not in TASK_NAMES:
        raise PresetError(f"{config_path}: task must be one of {', '.join(TASK_NAMES)}, received {saved_task!r}")
    try:
        config = MobileViTV2Config.from_dict(spec.get("config"))
    except (ValueError, TypeError) as e:
        raise PresetError(f"{config_path}: invalid config: {e}") from None
    preprocessing = None
    processor = _read_json(directory, PRESET_PREPROCESSOR_FILE, required=False)
    if processor is not None:
        try:
            preprocessing = PreprocessingConfig.from_dict(processor)
        except (ValueError, TypeError) as e:
            raise PresetError(f"{os.path.join(directory, PRESET_PREPROCESSOR_FILE)}: {e}") from None
    weights = os.path.join(directory, PRESET_WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise PresetError(f"{directory} is not a MobileViTV2 preset: {PRESET_WEIGHTS_FILE} is missing")
    model = build_model(config, saved_task, preprocessing=preprocessing)
    try:
        model.load_weights(weights)
    except (ValueError, OSError) as e:
        raise PresetError(f"{weights} does not fit the model of {config_path}: {e}") from None
    task = task or saved_task
    if task == saved_task:
        return model
    if task == "backbone":
        return model.backbone if saved_task != "backbone" else model
    raise PresetError(f"{directory} holds a {saved_task} model; it cannot give task {task!r}")


def save_to_preset(model, directory, overwrite=False):
    """Write `model` (classifier, segmenter or backbone) as a preset directory; returns it.

    Refuses a directory that holds files unless `overwrite`. The weights are written first and
    `config.json` last, so a directory with a `config.json` is complete.
    """
    import keras

    from keras_mobilevitv2 import __version__
    from keras_mobilevitv2.tasks import task_of

    task = task_of(model)
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{directory} exists and is not a directory")
    if os.path.isdir(directory) and os.listdir(directory) and not overwrite:
        raise FileExistsError(f"{directory} is not empty; pass overwrite=True to write the preset into it")
    os.makedirs(directory, exist_ok=True)

    def write_json(file, data):
        path = os.path.join(directory, file)
        with open(path + ".partial", "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(path + ".partial", path)

    model.save_weights(os.path.join(directory, PRESET_WEIGHTS_FILE))
    preprocessing = getattr(model, "preprocessing", None)
    processor_path = os.path.join(directory, PRESET_PREPROCESSOR_FILE)
    if preprocessing is not None:
        write_json(PRESET_PREPROCESSOR_FILE, preprocessing.to_dict())
    elif os.path.exists(processor_path):
        os.remove(processor_path)
    config = model.config
    if task != "backbone":
        write_json(PRESET_LABELS_FILE, {"labels": [config.id2label[i] for i in range(config.num_labels)]})
    metadata = {
        "keras_version": keras.__version__,
        "keras_mobilevitv2_version": __version__,
        "task": task,
        "class_name": type(model).__name__,
        "parameter_count": int(model.count_params()),
    }
    summary = getattr(model, "conversion_summary", None)
    if summary:
        metadata["converted_from"] = {k: summary[k] for k in ("source", "source_format", "preprocessing_origin") if k in summary}
    write_json(PRESET_METADATA_FILE, metadata)
    write_json(PRESET_CONFIG_FILE, {"class_name": type(model).__name__, "task": task, "config": config.to_dict()})
    return directory
