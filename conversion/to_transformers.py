"""export_to_transformers: a Keras MobileViTV2 model -> a Hugging Face (transformers) model directory.

    export_to_transformers(model, "out/")
    transformers.MobileViTV2ForImageClassification.from_pretrained("out/")

writes what `save_pretrained` writes: `config.json` (transformers' `MobileViTV2Config` fields,
`architectures`, labels), `model.safetensors` (PyTorch layouts and names, from
`conversion.hf.model_to_hf_state_dict`) and, when the model carries one, `preprocessor_config.json`.
No torch or transformers is needed to export.

Our `compat` field is not written: transformers has one behaviour. Where it differs from ml-cvnets
(output stride 8 / 16: ml-cvnets dilates the local conv of the dilated stages, transformers does not)
a model converted with the default compat="cvnets" computes something else in stock transformers;
`export_to_transformers` warns and says so in the directory's README.md. At output stride 32 (the
released classifiers) the two agree on any input whose stage-3..5 feature maps are multiples of the
patch size (e.g. 256 x 256).
"""

import json
import os
import warnings

import numpy as np

from conversion.hf import BACKBONE_PREFIX, model_to_hf_state_dict
from keras_mobilevitv2.tasks import BACKBONE, task_class, task_of

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
README_FILE = "README.md"
# What export_to_transformers writes; any of them present in the directory is another checkpoint.
OUTPUT_FILES = (CONFIG_FILE, WEIGHTS_FILE, PREPROCESSOR_FILE, README_FILE)

# Config fields of ours that transformers' MobileViTV2Config does not have.
_KERAS_ONLY_FIELDS = ("compat",)

# BatchNorm buffers transformers keeps that carry no weight: written as int64 zeros, as a freshly
# built PyTorch model holds them, so `from_pretrained` finds every key it expects.
_RUNNING_MEAN = ".running_mean"
_NUM_BATCHES_TRACKED = ".num_batches_tracked"


def architecture(task):
    """The transformers class name of `task` (`architectures` in config.json): its class's `hf_architecture`."""
    return task_class(task).hf_architecture


def transformers_config_dict(config, task):
    """A transformers `config.json` dict for `config` (a MobileViTV2Config): our fields minus `compat`."""
    out = config.to_dict()
    for field in _KERAS_ONLY_FIELDS:
        out.pop(field)
    out["architectures"] = [architecture(task)]
    return out


def transformers_state_dict(model, task=None):
    """{transformers key: numpy array}: the model's weights as `save_pretrained` would write them.

    Float32 tensors in PyTorch layouts, plus one int64 zero `num_batches_tracked` per BatchNorm; a bare
    backbone (`MobileViTV2Model`) has no `mobilevitv2.` prefix.
    """
    task = task or task_of(model)
    state_dict = model_to_hf_state_dict(model)
    if task == BACKBONE:
        state_dict = {key.removeprefix(BACKBONE_PREFIX): value for key, value in state_dict.items()}
    for key in [k for k in state_dict if k.endswith(_RUNNING_MEAN)]:
        state_dict[key[: -len(_RUNNING_MEAN)] + _NUM_BATCHES_TRACKED] = np.zeros((), dtype=np.int64)
    return state_dict


def dilated_local_convs(config):
    """{transformers module path of a `conv_kxk`: dilation} where ml-cvnets dilates the local conv.

    Empty at output_stride 32. Read off `stage_dilations` of the config under compat="cvnets".
    """
    from keras_mobilevitv2.config import stage_dilations

    cvnets = config.replace(compat="cvnets")
    return {
        f"encoder.layer.{stage - 1}.conv_kxk": local
        for stage, (_, _, local) in stage_dilations(cvnets).items()
        if local > 1
    }


def export_notes(config):
    """Sentences about where stock transformers computes something else than this Keras model."""
    dilated = dilated_local_convs(config)
    if config.compat != "cvnets" or not dilated:
        return []
    where = ", ".join(f"{path} (dilation {d})" for path, d in dilated.items())
    return [
        f"This model was converted with compat='cvnets' at output_stride {config.output_stride}: like "
        f"Apple's ml-cvnets it dilates the local depthwise conv of the dilated stages: {where}. "
        "Stock transformers never dilates it, so transformers' MobileViTV2 computes different "
        "features and logits from these weights. Use the Keras model, or set `.convolution.dilation` "
        "and `.convolution.padding` of those modules after loading in transformers, or rebuild the "
        "Keras model with compat='transformers' (and fine-tune) before exporting."
    ]


def _readme(task, notes):
    lines = [
        "---",
        "library_name: transformers",
        "tags: [mobilevitv2, keras-mobilevitv2]",
        "---",
        "",
        f"# MobileViTV2 ({architecture(task)})",
        "",
        "Exported from a Keras 3 model by keras-mobilevitv2 (`conversion.export_to_transformers`).",
    ]
    if notes:
        lines += ["", "## Differences from the Keras model", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def export_to_transformers(model, out_dir, overwrite=False):
    """Write `model` (a Keras classifier, segmenter or backbone) as a transformers model directory.

    Files: `config.json`, `model.safetensors`, `README.md`, and `preprocessor_config.json` when
    `model.preprocessing` is set. `transformers.<architecture>.from_pretrained(out_dir)` then loads
    every weight with no missing or unexpected key.

    Warns (UserWarning, and in README.md) when stock transformers will not reproduce the model:
    compat="cvnets" at output_stride 8 or 16.

    Refuses (`OutputExistsError`, before writing anything) a directory that holds any of those files
    unless `overwrite`. Each file is written beside its name and renamed into place, with the
    user's umask.

    Returns:
        out_dir.
    """
    from safetensors.numpy import save_file

    from keras_mobilevitv2.outputs import atomic_file, check_can_write

    task = task_of(model)
    config = model.config
    directory = os.fspath(out_dir)
    check_can_write([os.path.join(directory, name) for name in OUTPUT_FILES], overwrite)
    os.makedirs(directory, exist_ok=True)

    notes = export_notes(config)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)

    state_dict = transformers_state_dict(model, task)
    with atomic_file(os.path.join(directory, WEIGHTS_FILE)) as tmp:  # the umask, not save_file's 0600
        save_file(state_dict, tmp, metadata={"format": "pt"})
    config_dict = transformers_config_dict(config, task)
    float_dtypes = {value.dtype.name for value in state_dict.values() if value.dtype.kind == "f"}
    if len(float_dtypes) == 1:  # what save_pretrained records, e.g. "float32"
        config_dict["dtype"] = float_dtypes.pop()
    texts = {CONFIG_FILE: json.dumps(config_dict, indent=2, sort_keys=True) + "\n", README_FILE: _readme(task, notes)}
    preprocessing = getattr(model, "preprocessing", None)
    if preprocessing is not None:
        texts[PREPROCESSOR_FILE] = json.dumps(preprocessing.to_hf_dict(), indent=2) + "\n"
    for name, text in texts.items():
        with atomic_file(os.path.join(directory, name)) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return out_dir
