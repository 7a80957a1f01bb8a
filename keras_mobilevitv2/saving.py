"""load_model: open a `.keras` file of this package in any process."""

import os


def register_classes():
    """Import the modules whose decorators register our Keras classes (layers, backbone, task models,
    losses). `import keras_mobilevitv2` is lazy and registers nothing, so `keras.saving.load_model`
    alone cannot find `MobileViTV2ImageClassifier` in a fresh process."""
    import keras_mobilevitv2.backbone  # noqa: F401
    import keras_mobilevitv2.image_classifier  # noqa: F401
    import keras_mobilevitv2.layers  # noqa: F401
    import keras_mobilevitv2.segmenter  # noqa: F401


def load_model(path, compile=True):
    """`keras.saving.load_model` of a `.keras` file written by this package.

    Raises `FileNotFoundError` for a missing file and `ValueError` for another kind of file, each
    naming the path.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"expected a .keras model file, received {path}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    import keras

    register_classes()
    return keras.saving.load_model(path, compile=compile)
