"""convert_checkpoint: any MobileViTV2 PyTorch checkpoint -> the Keras model of its task."""

import logging
import os

from conversion.hf import load_hf_state_dict
from conversion.sources import load_as_hf

logger = logging.getLogger("keras_mobilevitv2.conversion")

PREPROCESSOR_CONFIG = "preprocessor_config.json"


def build_model(config, task, preprocessing=None):
    """The Keras model of `task` ("image_classification", "semantic_segmentation", "backbone")."""
    from keras_mobilevitv2.backbone import MobileViTV2Backbone
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
    from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter

    if task == "image_classification":
        return MobileViTV2ImageClassifier(config, preprocessing=preprocessing)
    if task == "semantic_segmentation":
        return MobileViTV2SemanticSegmenter(config, preprocessing=preprocessing)
    if task == "backbone":
        return MobileViTV2Backbone(config)
    raise ValueError(f"task must be image_classification, semantic_segmentation or backbone, received {task!r}")


def _read_preprocessing(path):
    """The PreprocessingConfig of a `preprocessor_config.json` beside the weights (or in the dir), else None."""
    import json

    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(directory, PREPROCESSOR_CONFIG)
    if not os.path.isfile(candidate):
        return None
    with open(candidate, encoding="utf-8") as f:
        return PreprocessingConfig.from_hf_dict(json.load(f))


def convert_checkpoint(path, config=None, compat=None, task=None, prefer_ema=False, verbose=True):
    """Convert a MobileViTV2 checkpoint into a Keras model with the same weights.

    Accepts a Hugging Face model directory or weight file (`.safetensors` / `.bin`, with or without
    `config.json` beside it), an Apple ml-cvnets `.pt`/`.pth`, or a timm `mobilevitv2_*` file; the
    source is detected from the tensor names. PyTorch files are read with `weights_only=True`.

    Args:
        path: the directory or file.
        config: a `MobileViTV2Config`, dict or `config.json` path; wins over the file's config. With
            neither, the hyper-parameters are inferred from the tensor shapes (and logged).
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

    path = os.fspath(path)
    if isinstance(config, (str, os.PathLike)):
        config = MobileViTV2Config.from_json_file(config)
    hf_state_dict, config_dict, detected_task, fmt, notes = load_as_hf(path, config=config, prefer_ema=prefer_ema)
    overrides = {} if compat is None else {"compat": compat}
    model_config = MobileViTV2Config.from_dict(config_dict, **overrides)
    task = task or detected_task
    if task == "backbone" and detected_task != "backbone":
        hf_state_dict = {k: v for k, v in hf_state_dict.items() if k.startswith("mobilevitv2.")}
        notes.append(f"kept the backbone of a {detected_task} checkpoint; head tensors dropped")
    elif task != detected_task:
        raise ValueError(f"{path} holds a {detected_task} checkpoint; it cannot be converted to task {task!r}")
    preprocessing = _read_preprocessing(path)
    if preprocessing is not None:
        notes.append(f"preprocessing from {PREPROCESSOR_CONFIG}")
    model = build_model(model_config, task, preprocessing=preprocessing)
    load_hf_state_dict(model, hf_state_dict, strict=True)
    notes.append(f"{task} model, compat={model_config.compat}, {model.count_params():,} parameters")
    for note in notes:
        logger.info(note)
        if verbose:
            print(f"[convert] {note}")
    model.conversion_notes = notes
    model.source_format = fmt
    return model
