"""convert_checkpoint: any MobileViTV2 PyTorch checkpoint -> the Keras model of its task."""

import logging
import os

from conversion.hf import load_hf_state_dict
from conversion.sources import CheckpointError, load_source
from keras_mobilevitv2.models import build_model  # noqa: F401 - also `conversion.build_model`

logger = logging.getLogger("keras_mobilevitv2.conversion")


def read_config_override(path):
    """A `--config` JSON file as a (possibly partial) dict of MobileViTV2Config fields.

    Unknown fields are kept aside with a warning, as in a checkpoint's own config.json.
    """
    from conversion.sources import _read_json_object, split_config_fields

    from keras_mobilevitv2.config import MobileViTV2Config

    path = os.fspath(path)
    fields, _ = split_config_fields(_read_json_object(path), path)
    try:  # each given value is checked before any tensor is read (the rest takes the defaults here)
        MobileViTV2Config.from_dict(fields)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"invalid MobileViTV2 config {path}: {e}") from None
    return fields


def convert_checkpoint(path, config=None, compat=None, task=None, prefer_ema=False, verbose=True):
    """Convert a MobileViTV2 checkpoint into a Keras model with the same weights.

    Accepts a Hugging Face model directory or weight file (`.safetensors` / `.bin`, with or without
    `config.json` beside it), an Apple ml-cvnets `.pt`/`.pth`, or a timm `mobilevitv2_*` file; the
    source is detected from the tensor names. PyTorch files are read with `weights_only=True`.

    Args:
        path: the directory or file.
        config: a `MobileViTV2Config`, dict or `config.json` path. May be partial: its fields override
            the checkpoint's config.json or the values inferred from the tensor shapes, the rest is
            still inferred, and the result is checked against every tensor.
        compat: "cvnets" or "transformers"; overrides the config's (default "cvnets").
        task: force "image_classification", "semantic_segmentation" or "backbone"; by default the
            task of the checkpoint's head. A backbone can be taken out of any checkpoint.
        prefer_ema: take the EMA copy of the weights when the file holds both.

    Returns:
        The Keras model; `model.conversion_notes` lists what was detected and inferred.

    Raises:
        CheckpointError / ConversionError (both ValueError) naming the bad file, key or shape.
    """
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    path = os.fspath(path)
    if isinstance(config, (str, os.PathLike)):
        config = read_config_override(config)
    source = load_source(path, config=config, prefer_ema=prefer_ema)
    hf_state_dict, config_dict, detected_task = source["hf_state_dict"], source["config"], source["task"]
    fmt, notes = source["format"], source["notes"]
    overrides = {} if compat is None else {"compat": compat}
    model_config = MobileViTV2Config.from_dict(config_dict, **overrides)
    task = task or detected_task
    if task == "backbone" and detected_task != "backbone":
        hf_state_dict = {k: v for k, v in hf_state_dict.items() if k.startswith("mobilevitv2.")}
        notes.append(f"kept the backbone of a {detected_task} checkpoint; head tensors dropped")
    elif task != detected_task:
        raise ValueError(f"{path} holds a {detected_task} checkpoint; it cannot be converted to task {task!r}")
    preprocessing = None
    if source["preprocessing"] is not None and task != "backbone":
        try:
            preprocessing = PreprocessingConfig.from_hf_dict(source["preprocessing"])
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: invalid preprocessing ({source['preprocessing_note']}): {e}") from None
    model = build_model(model_config, task, preprocessing=preprocessing)
    load_hf_state_dict(model, hf_state_dict, strict=True)
    notes.append(f"{task} model, compat={model_config.compat}, {model.count_params():,} parameters")
    for note in notes:
        logger.info(note)
        if verbose:
            print(f"[convert] {note}")
    model.conversion_notes = notes
    model.source_format = fmt
    model.conversion_summary = {
        "source": path,
        "source_format": fmt,
        "task": task,
        "preprocessing": None if preprocessing is None else preprocessing.to_dict(),
        "preprocessing_origin": source["preprocessing_note"],
        "unknown_config_fields": source["unknown_config_fields"],
    }
    return model
