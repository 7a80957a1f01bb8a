"""The TFLite interpreter: LiteRT's (`ai_edge_litert`, the maintained one), else `tf.lite`'s.

    from keras_mobilevitv2.litert import interpreter
    runner = interpreter(model_path="model.tflite", num_threads=2)
    logits = runner.get_signature_runner("serving_default")(pixel_values=x)["logits"]

TensorFlow's `tf.lite.Interpreter` is deprecated in favour of the `ai-edge-litert` package (same
runtime and API); it is used only when that package is not installed. Every place that runs a
TFLite file goes through `interpreter()`.
"""

import importlib
import importlib.util
import warnings

LITERT_MODULE = "ai_edge_litert.interpreter"


def interpreter_module():
    """The module holding `Interpreter` and `OpResolverType`: `ai_edge_litert.interpreter` when
    installed, else `tf.lite` (with `tf.lite.experimental.OpResolverType`)."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        return importlib.import_module(LITERT_MODULE)
    import types

    import tensorflow as tf

    return types.SimpleNamespace(
        __name__="tf.lite", Interpreter=tf.lite.Interpreter, OpResolverType=tf.lite.experimental.OpResolverType
    )


def runtime_name():
    """"ai_edge_litert" or "tf.lite": which interpreter `interpreter()` makes."""
    return "ai_edge_litert" if importlib.util.find_spec("ai_edge_litert") is not None else "tf.lite"


def interpreter(model_content=None, model_path=None, num_threads=None, default_delegates=True, allocate=True):
    """A TFLite interpreter of a flatbuffer (`model_content` bytes) or a file (`model_path`).

    Args:
        num_threads: the interpreter's threads (default: the runtime's own choice).
        default_delegates: with the default delegates (XNNPACK on CPU, what TFLite runs by default);
            False runs the builtin kernels alone, and its op list is the model's own (XNNPACK replaces
            the ops it takes by DELEGATE nodes).
        allocate: call `allocate_tensors()` before returning.
    """
    if (model_content is None) == (model_path is None):
        raise ValueError("pass exactly one of model_content (bytes) and model_path")
    if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, received {num_threads!r}")
    module = interpreter_module()
    resolvers = module.OpResolverType
    resolver = resolvers.AUTO if default_delegates else resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with warnings.catch_warnings():
        # tf.lite.Interpreter (the fallback) warns that it moves to ai_edge_litert.
        warnings.simplefilter("ignore")
        runner = module.Interpreter(
            model_content=model_content,
            model_path=None if model_path is None else str(model_path),
            num_threads=num_threads,
            experimental_op_resolver_type=resolver,
        )
    if allocate:
        runner.allocate_tensors()
    return runner


def quantization_params(detail):
    """{"dtype", "scale", "zero_point"} of an interpreter's input or output detail (scale 0: not quantized)."""
    import numpy as np

    scale, zero_point = detail["quantization"]
    return {"dtype": np.dtype(detail["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}


def run_signature(runner, signature="serving_default", **inputs):
    """Run a signature of an allocated interpreter on float inputs; returns {output name: float32 numpy}.

    An int8 / uint8 input (a full-integer model with integer input) is quantized with its scale and
    zero point first, and such an output dequantized, so callers always pass and get float32.
    """
    import numpy as np

    signature_runner = runner.get_signature_runner(signature)
    feed = {}
    for name, detail in signature_runner.get_input_details().items():
        value = np.asarray(inputs[name], np.float32)
        dtype = np.dtype(detail["dtype"])
        if dtype.kind in "iu":
            scale, zero_point = detail["quantization"]
            info = np.iinfo(dtype)
            value = np.clip(np.round(value / scale) + zero_point, info.min, info.max).astype(dtype)
        feed[name] = value
    outputs = signature_runner(**feed)
    details = signature_runner.get_output_details()
    result = {}
    for name, value in outputs.items():
        value = np.array(value)  # a copy: the interpreter reuses its buffers
        if value.dtype.kind in "iu":
            scale, zero_point = details[name]["quantization"]
            value = (value.astype(np.float32) - zero_point) * scale
        result[name] = value.astype(np.float32)
    return result
