"""compile_for_inference: the fastest in-process inference callable of a MobileViTV2 model.

    import keras_mobilevitv2 as mv2
    model = mv2.from_pretrained("apple/mobilevitv2-1.0-imagenet1k-256")
    infer = mv2.compile_for_inference(model)
    logits = infer(pixel_values)                # what model(pixel_values, training=False) returns
    logits = infer.predict(pixel_values, batch_size=32)   # numpy in, numpy out, in batches
    infer = mv2.compile_for_inference(model, runtime="tflite")   # fixed-size inputs on CPU: faster

There is one forward pass, the model's own (`keras_mobilevitv2/layers.py`). With
`fold_batchnorm=True` (the default) the callable runs its inference form: a fused copy of the
model (`keras_mobilevitv2.fusion.fused_copy`: BatchNorms folded into the convs, the transformer
norms' affines folded into the 1x1 convs after them, the attention's keys never formed per patch),
traced once and frozen, its weights turned into graph constants (oneDNN's constant-filter
convolutions are faster than its variable-filter ones: 60 fused convs, 25 vs 40 ms at width 1.0,
batch 1, under the profiler). The weights are read once: later changes to the model are not seen,
and the model is never modified. The exported SavedModel and TFLite file hold this same graph.

Two runtimes run it:

- "tensorflow" (the default): one `tf.function` for every input size and batch, so TF Serving
  runs what you measured in-process.
- "tflite": the graph converted for each input shape (1-2 s, on first use; the 8 most recent
  shapes stay cached) and run by LiteRT's XNNPACK kernels: faster at batch 1, where TensorFlow's
  per-op overhead dominates, about even at batch 8 (benchmarks/RESULTS.md). It is not the
  default because every new input shape pays a conversion: use it for latency when the input
  shape is fixed (a crop size, a batch).

The result equals `model(x, training=False)` to float32 rounding (tests/test_inference.py holds
it to 1e-4 of the output's standard deviation). With `fold_batchnorm=False` the callable is
`tf.function(model(x, training=False))` on the model itself, and follows later changes of its
weights.
"""

import collections
import os
import threading

import numpy as np
import tensorflow as tf

from keras_mobilevitv2 import litert
from keras_mobilevitv2.fusion import FUSED_MODEL_CLASSES, fused_copy

JIT_COMPILE_CHOICES = ("auto", True, False)
RUNTIME_CHOICES = ("tensorflow", "tflite")


# ------------------------------------------------------------------------- the fused, frozen graph
def _frozen(function, spec):
    """`function` traced for `spec` with its variables turned into constants, as a `tf.function`."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    concrete = tf.function(function, input_signature=[spec]).get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    structure = concrete.structured_outputs

    def call(pixel_values):
        return tf.nest.pack_sequence_as(structure, tf.nest.flatten(frozen(pixel_values)))

    return tf.function(call, input_signature=[spec])


def fused_graph(model, channels=None):
    """The fused, frozen forward pass of `model` (backbone, classifier or segmenter): a
    `tf.function` on float32 (B, H, W, C) pixels of any size, weights as constants."""
    fused = fused_copy(model)
    channels = channels or model.inputs[0].shape[-1]
    spec = tf.TensorSpec([None, None, None, channels], tf.float32, name="pixel_values")
    return _frozen(lambda x: fused(x, training=False), spec)


def _resolve_jit_compile(jit_compile):
    """True or False for a `jit_compile` already checked against JIT_COMPILE_CHOICES."""
    if jit_compile == "auto":
        # On CPU XLA is slower (benchmarks/RESULTS.md): its depthwise convolution is 60x slower
        # than oneDNN's, and it compiles once per input shape. On a GPU XLA is the usual choice
        # (not measured in this repository).
        return bool(tf.config.list_logical_devices("GPU"))
    return jit_compile


class TFLiteRuntime:
    """The fused, frozen graph run by TFLite's XNNPACK CPU kernels: one converted model per input shape.

    A call with a new (B, H, W, C) converts the graph for that shape (1-2 s at width 0.5-1.0, the
    weights are already constants) and keeps its interpreter; the `max_shapes` most recently used
    shapes stay cached. Calls are serialized per shape (a TFLite interpreter is not thread-safe).
    """

    def __init__(self, graph, num_threads=None, max_shapes=8):
        if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1):
            raise ValueError(f"num_threads must be a positive int or None, received {num_threads!r}")
        if not isinstance(max_shapes, int) or isinstance(max_shapes, bool) or max_shapes < 1:
            raise ValueError(f"max_shapes must be a positive int, received {max_shapes!r}")
        self._graph = graph
        self.num_threads = num_threads or os.cpu_count() or 1
        self.max_shapes = max_shapes
        self._cache = collections.OrderedDict()  # shape -> (interpreter runner, output structure, lock)
        self._cache_lock = threading.Lock()

    @property
    def shapes(self):
        """The input shapes with a converted model, least recently used first."""
        with self._cache_lock:
            return list(self._cache)

    def _convert(self, shape):
        structure = []

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="pixel_values")])
        def flat(pixel_values):
            outputs = self._graph(pixel_values)
            structure.append(outputs)
            # Names that sort in the order of tf.nest.flatten.
            return {f"output_{i:03d}": t for i, t in enumerate(tf.nest.flatten(outputs))}

        module = tf.Module()
        module.flat = flat
        converter = tf.lite.TFLiteConverter.from_concrete_functions([flat.get_concrete_function()], module)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
        runner = litert.interpreter(model_content=flatbuffer, num_threads=self.num_threads).get_signature_runner()
        return runner, structure[0], threading.Lock()

    def _entry(self, shape):
        with self._cache_lock:
            entry = self._cache.get(shape)
            if entry is not None:
                self._cache.move_to_end(shape)
                return entry
        entry = self._convert(shape)  # outside the lock: other shapes keep running
        with self._cache_lock:
            entry = self._cache.setdefault(shape, entry)
            self._cache.move_to_end(shape)
            while len(self._cache) > self.max_shapes:
                self._cache.popitem(last=False)
        return entry

    def __call__(self, pixel_values):
        """numpy float32 (B, H, W, C) -> the model's output structure of numpy arrays."""
        pixel_values = np.ascontiguousarray(pixel_values, np.float32)
        runner, structure, lock = self._entry(tuple(pixel_values.shape))
        with lock:
            outputs = runner(pixel_values=pixel_values)
            flat = [np.array(outputs[name]) for name in sorted(outputs)]  # copies: buffers are reused
        return tf.nest.pack_sequence_as(structure, flat)


class InferenceFunction:
    """What `compile_for_inference` returns: call it on (B, H, W, C) float32 pixels.

    Attributes:
        runtime: "tensorflow" (a `tf.function`) or "tflite" (`TFLiteRuntime`, XNNPACK kernels).
        function: the underlying `tf.function` (runtime "tensorflow"): one trace for every input
            size and batch, or with XLA one trace and compilation per input shape. None for TFLite.
        tflite: the `TFLiteRuntime` (runtime "tflite"), else None.
        jit_compile: whether XLA compiles it.
        fold_batchnorm: whether it runs the fused, frozen graph (True) or the model itself (False).
    """

    def __init__(self, model, jit_compile="auto", fold_batchnorm=True, runtime="tensorflow", num_threads=None):
        if runtime not in RUNTIME_CHOICES:
            raise ValueError(f"runtime must be one of {RUNTIME_CHOICES}, received {runtime!r}")
        if jit_compile not in JIT_COMPILE_CHOICES:
            raise ValueError(f"jit_compile must be one of {JIT_COMPILE_CHOICES}, received {jit_compile!r}")
        self.runtime = runtime
        self.fold_batchnorm = bool(fold_batchnorm)
        self.function = self.tflite = None
        channels = model.inputs[0].shape[-1]
        if self.fold_batchnorm and type(model).__name__ not in FUSED_MODEL_CLASSES:
            raise TypeError(
                f"fold_batchnorm=True needs a {', '.join(FUSED_MODEL_CLASSES)}, received "
                f"{type(model).__name__}; pass fold_batchnorm=False"
            )
        if runtime == "tflite":
            if jit_compile is True:
                raise ValueError("jit_compile=True applies to runtime='tensorflow' only")
            if not self.fold_batchnorm:
                raise ValueError("runtime='tflite' converts the folded graph: it needs fold_batchnorm=True")
            self.jit_compile = False
            self.tflite = TFLiteRuntime(fused_graph(model, channels), num_threads=num_threads)
            return
        if num_threads is not None:
            raise ValueError("num_threads applies to runtime='tflite' only (TensorFlow's are set with tf.config.threading)")
        self.jit_compile = _resolve_jit_compile(jit_compile)
        spec = tf.TensorSpec([None, None, None, channels], tf.float32, name="pixel_values")
        if self.jit_compile:
            # XLA compiles one program per input shape anyway; traced per shape, the shapes are static
            # (a dynamic-shape trace has reshapes XLA cannot compile).
            target = fused_copy(model) if self.fold_batchnorm else model
            self.function = tf.function(lambda x: target(x, training=False), jit_compile=True)
        elif self.fold_batchnorm:
            self.function = fused_graph(model, channels)
        else:
            self.function = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def __call__(self, pixel_values):
        if self.tflite is not None:
            outputs = self.tflite(np.asarray(pixel_values, np.float32))
            return tf.nest.map_structure(tf.convert_to_tensor, outputs)
        return self.function(tf.convert_to_tensor(pixel_values, tf.float32))

    def predict(self, pixel_values, batch_size=32):
        """numpy (N, H, W, C) in, numpy out (the model's output structure), `batch_size` images per call."""
        pixel_values = np.asarray(pixel_values, np.float32)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, received {batch_size!r}")
        if len(pixel_values) == 0:
            raise ValueError("predict needs at least one image")
        run = self.tflite if self.tflite is not None else lambda x: tf.nest.map_structure(lambda t: t.numpy(), self(x))
        outputs = [run(pixel_values[start : start + batch_size]) for start in range(0, len(pixel_values), batch_size)]
        return tf.nest.map_structure(lambda *parts: np.concatenate(parts, axis=0), *outputs)


def compile_for_inference(model, jit_compile="auto", fold_batchnorm=True, runtime="tensorflow", num_threads=None):
    """The fastest in-process inference callable of `model`; see the module docstring.

    Args:
        model: a `MobileViTV2ImageClassifier`, `MobileViTV2SemanticSegmenter` or
            `MobileViTV2Backbone` (any Keras model with `fold_batchnorm=False`).
        jit_compile: compile with XLA: True, False, or "auto" (XLA only when a GPU is visible;
            on CPU oneDNN's kernels are much faster than XLA's).
        fold_batchnorm: run the fused copy of the model, weights frozen (fast, a snapshot), rather
            than the model itself.
        runtime: "tensorflow" (one graph for every input shape; what the SavedModel runs) or
            "tflite" (the folded graph converted per input shape and run by TFLite's XNNPACK
            kernels: on CPU up to 2.3x faster at batch 1, about even at batch 8, see
            benchmarks/RESULTS.md; the first call with a new shape converts, 1-2 s). For
            fixed-size, small-batch inputs on CPU, "tflite" is the fastest.
        num_threads: threads of the TFLite interpreter (default: one per core).

    Returns:
        An `InferenceFunction`: `f(pixel_values)` takes NHWC float32 pixels of any size and batch
        and returns what `model(pixel_values, training=False)` returns (tf tensors);
        `f.predict(array, batch_size)` the same as numpy, in batches.
    """
    return InferenceFunction(
        model, jit_compile=jit_compile, fold_batchnorm=fold_batchnorm, runtime=runtime, num_threads=num_threads
    )
