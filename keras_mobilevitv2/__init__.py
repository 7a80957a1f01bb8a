"""MobileViTV2 (Mehta & Rastegari, "Separable Self-attention for Mobile Vision Transformers") in Keras 3.

    import keras_mobilevitv2 as mv2
    model = mv2.from_pretrained("apple/mobilevitv2-1.0-imagenet1k-256")   # or a local dir / file
    backbone = mv2.MobileViTV2Backbone(mv2.MobileViTV2Config(width_multiplier=0.5))

Names are imported on first use, so `import keras_mobilevitv2` does not start TensorFlow.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "MobileViTV2Config": "keras_mobilevitv2.config",
    "make_divisible": "keras_mobilevitv2.config",
    "PRESETS": "keras_mobilevitv2.presets",
    "get_preset": "keras_mobilevitv2.presets",
    "MobileViTV2Backbone": "keras_mobilevitv2.backbone",
    "MobileViTV2ImageClassifier": "keras_mobilevitv2.image_classifier",
    "MobileViTV2SemanticSegmenter": "keras_mobilevitv2.segmenter",
    "resize_logits": "keras_mobilevitv2.segmenter",
    "segmentation_loss": "keras_mobilevitv2.segmenter",
    "from_preset": "keras_mobilevitv2.models",
    "save_to_preset": "keras_mobilevitv2.models",
    "from_pretrained": "keras_mobilevitv2.hub",
    "preprocess_image": "keras_mobilevitv2.preprocessing",
    "compile_for_inference": "keras_mobilevitv2.inference",
    "fused_copy": "keras_mobilevitv2.fusion",
    "load_model": "keras_mobilevitv2.saving",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_mobilevitv2' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
