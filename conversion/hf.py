"""The Hugging Face <-> Keras weight table, and strict loading in both directions.

Keras layer names mirror transformers' module paths with "." spelled "_" (Keras' torch backend
refuses "." in names), so the table is derived, not written by hand: the variable
`encoder_layer_2/conv_kxk/convolution/kernel` of a `DepthwiseConv2D` is the tensor
`mobilevitv2.encoder.layer.2.conv_kxk.convolution.weight`, transformed by `depthwise`
(`hf_module_path` spells the numbered module lists back: `encoder_layer_2` -> `encoder.layer.2`,
`transformer_layer_0` -> `transformer.layer.0`, `layer_1` -> `layer.1`, `convs_4` -> `convs.4`). Backbone
tensors always carry the `mobilevitv2.` prefix here (`conversion.sources` adds it to bare
`MobileViTV2Model` checkpoints).
"""

import re

import numpy as np

BACKBONE_PREFIX = "mobilevitv2."

# Named layout transforms, PyTorch -> Keras, and their inverses.
TRANSFORMS = {
    "identity": (lambda a: a, lambda a: a),
    # Conv2d weight (O, I, kh, kw) -> Keras Conv2D kernel (kh, kw, I, O)
    "conv": (lambda a: np.transpose(a, (2, 3, 1, 0)), lambda a: np.transpose(a, (3, 2, 0, 1))),
    # depthwise Conv2d weight (C, 1, kh, kw) -> Keras DepthwiseConv2D kernel (kh, kw, C, 1)
    "depthwise": (lambda a: np.transpose(a, (2, 3, 0, 1)), lambda a: np.transpose(a, (2, 3, 0, 1))),
    # Linear weight (out, in) -> Dense kernel (in, out)
    "dense": (lambda a: np.transpose(a), lambda a: np.transpose(a)),
}

# (Keras layer class name, Keras variable name) -> (PyTorch parameter name, transform)
_VARIABLE_RULES = {
    ("Conv2D", "kernel"): ("weight", "conv"),
    ("Conv2D", "bias"): ("bias", "identity"),
    ("DepthwiseConv2D", "kernel"): ("weight", "depthwise"),
    ("DepthwiseConv2D", "bias"): ("bias", "identity"),
    ("Dense", "kernel"): ("weight", "dense"),
    ("Dense", "bias"): ("bias", "identity"),
    ("BatchNormalization", "gamma"): ("weight", "identity"),
    ("BatchNormalization", "beta"): ("bias", "identity"),
    ("BatchNormalization", "moving_mean"): ("running_mean", "identity"),
    ("BatchNormalization", "moving_variance"): ("running_var", "identity"),
    ("GroupNormalization", "gamma"): ("weight", "identity"),
    ("GroupNormalization", "beta"): ("bias", "identity"),
}

# A Keras layer name that is a numbered entry of a PyTorch ModuleList / Sequential: the list's
# name (which may itself be `<parent>_layer`), "_", the index.
_NUMBERED_MODULE = re.compile(r"^(?:(?P<parent>encoder|transformer)_)?(?P<list>layer|convs)_(?P<index>\d+)$")


def hf_module_path(keras_path):
    """`encoder_layer_2/transformer_layer_0/attention` -> `encoder.layer.2.transformer.layer.0.attention`."""
    parts = []
    for name in keras_path.split("/"):
        match = _NUMBERED_MODULE.match(name)
        if match:
            parent = match["parent"] + "." if match["parent"] else ""
            name = f"{parent}{match['list']}.{match['index']}"
        elif "." in name:
            raise ConversionError(f"layer name {name!r} in {keras_path} has a '.': Keras layer names spell it '_'")
        parts.append(name)
    return ".".join(parts)

# Buffers PyTorch keeps that carry no weight.
IGNORED_SUFFIXES = (".num_batches_tracked",)


class ConversionError(ValueError):
    """A checkpoint does not fit the model: names the unused, missing or mis-shaped tensors."""


def _leaf_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True) if not layer._layers]


def weight_table(model):
    """{Keras variable path: (Hugging Face key, transform name, variable)} for every model variable."""
    backbone = getattr(model, "backbone", None)
    backbone_ids = {id(v) for v in (backbone.weights if backbone is not None else model.weights)}
    if backbone is None and type(model).__name__ != "MobileViTV2Backbone":
        backbone_ids = set()
    table = {}
    for layer in _leaf_layers(model):
        kind = type(layer).__name__
        for variable in layer.weights:
            module_path, var_name = variable.path.rsplit("/", 1)
            if (kind, var_name) not in _VARIABLE_RULES:
                raise ConversionError(f"no Hugging Face name for variable {variable.path} of a {kind} layer")
            param, transform = _VARIABLE_RULES[(kind, var_name)]
            key = hf_module_path(module_path) + "." + param
            if id(variable) in backbone_ids:
                key = BACKBONE_PREFIX + key
            if variable.path in table:
                raise ConversionError(f"two variables share the path {variable.path}")
            table[variable.path] = (key, transform, variable)
    return table


def _summarize(names, limit=12):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_hf_state_dict(model, state_dict, strict=True):
    """Set every variable of `model` from a Hugging Face-named state dict (PyTorch layouts).

    Strict: every tensor is used once and every variable set once; otherwise a `ConversionError`
    names the unused and the missing keys (and any shape mismatch) before anything is assigned.
    Returns the list of keys that were used.
    """
    table = weight_table(model)
    tensors = {k: v for k, v in state_dict.items() if not k.endswith(IGNORED_SUFFIXES)}
    wanted = {key: path for path, (key, _, _) in table.items()}
    missing = [key for key in wanted if key not in tensors]
    unused = [key for key in tensors if key not in wanted]
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {_summarize(missing)}")
    if unused and strict:
        problems.append(f"unused checkpoint tensors ({len(unused)}): {_summarize(unused)}")
    updates = []
    for path, (key, transform, variable) in table.items():
        if key not in tensors:
            continue
        value = TRANSFORMS[transform][0](np.asarray(tensors[key]))
        if tuple(value.shape) != tuple(variable.shape):
            problems.append(
                f"shape mismatch for {key}: checkpoint {tuple(np.asarray(tensors[key]).shape)} "
                f"-> {tuple(value.shape)}, model variable {path} is {tuple(variable.shape)}"
            )
            continue
        updates.append((variable, value))
    if problems:
        raise ConversionError("the checkpoint does not fit the model:\n  " + "\n  ".join(problems))
    for variable, value in updates:
        variable.assign(value.astype(variable.dtype, copy=False))
    return sorted(wanted)


def model_to_hf_state_dict(model):
    """The model's variables as a Hugging Face-named state dict (PyTorch layouts, numpy float32)."""
    out = {}
    for _, (key, transform, variable) in weight_table(model).items():
        out[key] = np.ascontiguousarray(TRANSFORMS[transform][1](np.asarray(variable.numpy())))
    return out
