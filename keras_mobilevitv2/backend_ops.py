"""Backend fast paths, one small function each, every one with a `keras.ops` fallback.

The model is written with `keras.ops` and runs on every Keras backend. A few operations have a
faster form on TensorFlow (the backend of export, serving and training at scale); each lives here,
and runs only when `use_fast_path()` is true (the TensorFlow backend, and `FAST_PATHS` not turned
off). `tests/test_backend_ops.py` holds every fast path equal to its fallback. TensorFlow is imported
inside the functions, never at module level: the model imports no TensorFlow on JAX or PyTorch.
"""

import contextlib

import keras
from keras import ops

# Set to False (or use `fallbacks_only()`) to run the `keras.ops` forms on TensorFlow too.
FAST_PATHS = True


def use_fast_path():
    return FAST_PATHS and keras.backend.backend() == "tensorflow"


@contextlib.contextmanager
def fallbacks_only():
    """Within this block every function here runs its `keras.ops` fallback (for tests)."""
    global FAST_PATHS
    saved, FAST_PATHS = FAST_PATHS, False
    try:
        yield
    finally:
        FAST_PATHS = saved


def bias_add(x, bias):
    """x + bias over the last axis. Fast path `tf.nn.bias_add`: grappler fuses conv + BiasAdd
    (+ activation, + a residual add) into one oneDNN kernel only when it sees that op."""
    if use_fast_path():
        import tensorflow as tf

        return tf.nn.bias_add(x, ops.cast(bias, x.dtype))
    return x + ops.cast(bias, x.dtype)


def conv2d(x, kernel, strides=1, padding="valid", dilation_rate=1):
    """`ops.conv` of an NHWC tensor. Fast path `tf.nn.conv2d`: a dilated conv is one native
    (oneDNN) conv that grappler fuses with its bias and activation, where `ops.conv` goes through
    space-to-batch (the ASPP's rate-6/12/18 convs: 490 -> 350 ms for a 512x512 segmentation).
    Not for a dilated float16 conv: TensorFlow on CPU has no float16 gradient for it."""
    dilated = dilation_rate not in (1, (1, 1), [1, 1])
    if use_fast_path() and not (dilated and keras.backend.standardize_dtype(x.dtype) == "float16"):
        import tensorflow as tf

        return tf.nn.conv2d(x, kernel, strides, padding.upper(), dilations=dilation_rate)
    return ops.conv(x, kernel, strides, padding, dilation_rate=dilation_rate)


def softmax(x, axis):
    """`ops.softmax`. Fast path `tf.nn.softmax`: a single patch (N = 1, a map the size of the
    patch) is a valid input, about which `ops.softmax` warns on every call."""
    if use_fast_path():
        import tensorflow as tf

        return tf.nn.softmax(x, axis=axis)
    return ops.softmax(x, axis=axis)


def batch_moments_and_normalize(x, gamma, beta, epsilon):
    """BatchNorm over (B, H, W) with batch statistics: (normalized float32, mean, biased variance).

    Fast path: one `FusedBatchNormV3` op (and one gradient op) instead of moments and a
    normalisation (a dozen element-wise ops forward, more backward). Both compute in float32.
    """
    x = ops.cast(x, "float32")
    gamma, beta = ops.cast(gamma, "float32"), ops.cast(beta, "float32")
    if use_fast_path() and len(x.shape) == 4:
        import tensorflow as tf

        empty = tf.zeros([0], tf.float32)
        y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True,
        )
        # The op returns the Bessel-corrected variance (n / (n - 1), for n > 1); Keras averages the biased one.
        n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
        return y, mean, variance * tf.maximum(n - 1.0, 0.0) / n
    axes = tuple(range(len(x.shape) - 1))
    mean, variance = ops.moments(x, axes=axes)
    y = (x - mean) * ops.rsqrt(variance + epsilon) * gamma + beta
    return y, mean, variance


def resize_bilinear(x, height, width):
    """Bilinear resize (half-pixel centres, no antialiasing: PyTorch's `align_corners=False`) of
    (B, h, w, C) to (B, height, width, C). Fast path `tf.image.resize`: it exports with dynamic
    sizes, which Keras 3.15's `ops.image.resize` does not (OperatorNotAllowedInGraphError)."""
    if use_fast_path():
        import tensorflow as tf

        resized = tf.image.resize(x, tf.stack([height, width]), method="bilinear", antialias=False)
        return tf.cast(resized, x.dtype)
    resized = ops.image.resize(x, (height, width), interpolation="bilinear", antialias=False, data_format="channels_last")
    return ops.cast(resized, x.dtype)
