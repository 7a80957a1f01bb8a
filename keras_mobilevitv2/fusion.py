"""The inference form of a model, and the dtype policy a model keeps in its config.

    import keras_mobilevitv2 as mv2
    fast = mv2.fused_copy(model)     # a new model, every layer fused; `model` is untouched
    model.fuse()                     # or in place (timm's `fuse()`): training is over

A fused model computes what `model(x, training=False)` computes (to float32 rounding), with the
BatchNorms folded into the convs, the transformer norms' affines folded into the 1x1 convs that
follow them and the attention's keys never formed per patch (`keras_mobilevitv2/layers.py`). It is
an ordinary Keras model of the same class, built with `fused=True`: it saves, loads, exports and
runs on every backend. It is for inference: its BatchNorm statistics are constants of the weights,
so training it is an error of the user's (the unfused model is the one to train).
"""

import keras

FUSED_MODEL_CLASSES = ("MobileViTV2Backbone", "MobileViTV2ImageClassifier", "MobileViTV2SemanticSegmenter")


def resolve_dtype(dtype):
    """None (the global policy), or the `keras.DTypePolicy` / `DTypePolicyMap` `dtype` names."""
    if dtype is None:
        return None
    return keras.dtype_policies.get(dtype)


def dtype_config(model):
    """The `dtype` entry of a model's `get_config`: its policy, serialized; a `DTypePolicyMap` of
    the quantized layers (keyed by layer path, as keras-hub does) when `model.quantize` ran, so
    that `from_config` builds those layers quantized and the saved variables fit them."""
    policy = model.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return keras.dtype_policies.serialize(policy)
    quantized = {
        layer.path: layer.dtype_policy
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if layer.quantization_mode is not None and layer.path
    }
    if not quantized:
        return keras.dtype_policies.serialize(policy)
    policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=policy)
    for path, layer_policy in sorted(quantized.items()):
        policy_map[path] = layer_policy
    return keras.dtype_policies.serialize(policy_map)


def fuse_layers(model):
    """Fuse every layer of `model` (a backbone or task) that has an inference form, in place."""
    for layer in model.layers:
        fuse = getattr(layer, "fuse", None)
        if callable(fuse) and not getattr(layer, "fused", False):
            fuse()
    model.fused = True
    return model


def fused_copy(model):
    """A new model of `model`'s class, built with `fused=True` from `model`'s config and weights
    (read once: later changes to `model` are not seen). `model` is not modified."""
    if type(model).__name__ not in FUSED_MODEL_CLASSES:
        raise TypeError(
            "fusion needs a MobileViTV2Backbone, MobileViTV2ImageClassifier or MobileViTV2SemanticSegmenter, "
            f"received {type(model).__name__}"
        )
    clone = type(model).from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone if clone.fused else fuse_layers(clone)
