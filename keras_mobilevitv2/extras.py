"""The optional parts of the install (setup.cfg `extras_require`) and the errors that name them.

    raise MissingExtraError("reading ckpt.pt needs PyTorch", "torch")
    # reading ckpt.pt needs PyTorch: pip install "keras-mobilevitv2[torch]"  (from a checkout: pip install -e ".[torch]")

Every message that tells the user to install something goes through `install_hint`, so the command
works for an installed package and for a clone of the repository alike.
"""

import importlib

DISTRIBUTION = "keras-mobilevitv2"

# extra -> what it is for (README's Install section says the same).
EXTRAS = {
    "torch": "read PyTorch .pt / .pth / .bin checkpoints (the CPU wheel is enough)",
    "hub": "download checkpoints from the Hugging Face hub (from_pretrained with a hub id)",
    "parity": "the PyTorch parity check of `convert` (torch and transformers)",
    "serving": "the TF Serving client API (tensorflow-serving-api), to query a served bundle",
    "samples": "scikit-image, whose sample photos `mobilevitv2 predict sample:cat` uses",
    "onnx": "ONNX export and its onnxruntime check (tf2onnx, onnx, onnxruntime)",
    "litert": "LiteRT's TFLite interpreter (ai-edge-litert; tf.lite's deprecated one is the fallback)",
    "batch": "Apache Beam, for `mobilevitv2 predict-batch` (keras_mobilevitv2.batch)",
    "jax": "JAX (CPU), for Keras' JAX backend (KERAS_BACKEND=jax)",
    "dev": "everything above plus the test suite's tools",
}


def install_hint(extra):
    """The pip command that installs `extra`, for a released package and for a checkout."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {', '.join(EXTRAS)}")
    return f'pip install "{DISTRIBUTION}[{extra}]"  (from a checkout: pip install -e ".[{extra}]")'


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""

    def __init__(self, what, extra):
        self.extra = extra
        super().__init__(f"{what}: {install_hint(extra)}")


class NetworkError(OSError):
    """A download failed (no network, unknown repository, hub error); one sentence, no traceback chain."""


def require(module, what, extra):
    """Import `module`, or raise `MissingExtraError(what, extra)`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(what, extra) from None
