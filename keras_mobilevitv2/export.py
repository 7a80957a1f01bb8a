"""Production export: SavedModel with serving signatures, a TF Serving bundle, TFLite.

    from keras_mobilevitv2.export import export_saved_model, export_serving_bundle, export_tflite
    export_saved_model(model, "out/savedmodel")
    export_serving_bundle(model, "serving", "mobilevitv2")     # serving/mobilevitv2/1, labelled stable
    export_serving_bundle(model2, "serving", "mobilevitv2")    # serving/mobilevitv2/2, labelled canary
    promote_canary("serving", "mobilevitv2")                   # stable -> 2; version 1 is unloaded
    export_tflite(model, "out/model.tflite", quantization="float16")
    report = export_tflite_int8(model, "out/model-int8.tflite", int8_io=True)   # + out/model-int8.int8.json

(ONNX: `keras_mobilevitv2.onnx_export.export_onnx`.)

SavedModel signatures (the same for `export_saved_model` and the serving bundle):

- `serving_default(image_bytes)`: `image_bytes` is a tf.string batch [None] of encoded JPEG, PNG,
  BMP, GIF or WebP images. Each image is decoded (`preprocessing.decode_image`), preprocessed
  (`preprocessing.tf_preprocess`) and run in the graph; images of different sizes may share a batch.
  Over TF Serving's REST API each image is sent as `{"b64": "<base64>"}`: the server decodes that
  object for any tf.string input, whatever its name. The `_bytes` name suffix is what TF Serving
  (following Cloud ML Engine, now Vertex AI, which also keys inputs on it) reads on *outputs*: a
  tf.string output named `*_bytes` is returned base64-encoded. Our input keeps the suffix for those
  platforms; no output has it, so `top_k_labels` comes back as plain JSON strings.
- `predict_pixels(pixel_values)`: float32 (None, None, None, 3), already preprocessed (what
  `preprocess_image` returns, batched).

Classifier outputs: `logits` (B, L), `probabilities` (B, L), `top_k_indices` int32 (B, k),
`top_k_scores` (B, k, probabilities), `top_k_labels` tf.string (B, k) from `config.id2label`,
with k = min(top_k, L).

Segmenter outputs of `predict_pixels`: `logits` (B, h, w, L) (the model's, h = H / output_stride)
and `segmentation` int32 (B, H, W), the argmax of the logits resized bilinearly to the pixels' size.
Segmenter outputs of `serving_default`, where the images of a batch may differ in size:
`segmentation` int32 (B, H_max, W_max) holds each image's label map at its own decoded size,
padded at the bottom and right with -1 to the largest height and width in the batch;
`image_size` int32 (B, 2) is each image's (height, width); `logits` (B, h_max, w_max, L) holds
each image's model logits zero-padded the same way, with `logits_size` int32 (B, 2) their valid
(h, w). A batch of one image has no padding. The label map is computed over tiles of rows
(`export.label_map`, the same numbers as resizing all logits then taking the argmax): the
full-size float logits are never held at once.

Every image's header is read before its pixels are decoded: more than `max_image_pixels`
(default `preprocessing.MAX_IMAGE_PIXELS`, 50 megapixels) is an `InvalidArgumentError` naming the
image's index in the batch, its size and the limit; so are bytes of no known format and a header
without a size. (A file whose header reads but whose data is corrupt fails in the decoder, whose
message TensorFlow does not let us annotate.)

Both signatures run one shared logits function: by default the BatchNorm-folded graph of
`compile_for_inference` with the weights as graph constants, stored once (no SavedModel
variables); `fold_batchnorm=False` keeps the model's variables instead. Keras' `ExportArchive`
writes both.

Bad input raises `InvalidArgumentError`: an empty `image_bytes` batch ("image_bytes is empty"),
bytes that are no image ("image 3 of the batch: Unknown image file format, ..."), an image over
`max_image_pixels` ("image 1 of the batch is 10000 x 10000 = 100000000 pixels, over the limit"), `pixel_values` with no
image or no pixels ("pixel_values must hold at least one image of at least 1x1 pixels"). A 1x1
pixel image is valid: it is resized like any other.

Preprocessing comes from the `preprocessing=` argument, else the model's `preprocessing`
attribute (a `PreprocessingConfig`), else the preset default of the model's task (ImageNet:
shortest edge 288, centre crop 256; VOC segmentation: shortest edge 544). A segmenter's signatures
never centre crop, so the label map covers the whole image (see `resolve_preprocessing`).
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_mobilevitv2.preprocessing import (
    MAX_IMAGE_PIXELS,
    PreprocessingConfig,
    decode_image,
    preprocess_image,
    tf_preprocess,
)
from keras_mobilevitv2.tasks import HEAD_TASK_NAMES, task_class, task_of
from keras_mobilevitv2.umask import apply_umask

SEGMENTATION_PAD_LABEL = -1  # label of the padding in a `serving_default` segmentation batch
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
PREPROCESSOR_FILE = "preprocessor_config.json"  # in assets.extra/ of every SavedModel
MODELS_CONFIG = "models.config"
TFLITE_QUANTIZATIONS = (None, "float16", "dynamic_int8", "int8")
REPRESENTATIVE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# The real photos full-integer quantization calibrates on by default: (package, file in it).
SAMPLE_PHOTOS = (
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/astronaut.png"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


# Floats of resized logits `label_map` holds at once (64 MB), whatever the image size.
LABEL_MAP_TILE_FLOATS = 1 << 24


def label_map(logits, size, tile_floats=LABEL_MAP_TILE_FLOATS):
    """(B, h, w, L) logits -> (B, H, W) int32: the argmax of `resize_logits(logits, size)`, the
    same numbers, without holding the (B, H, W, L) float resize.

    Bilinear (align_corners=False, half-pixel centres) is separable and each output row depends
    on two source rows: over tiles of output rows (`tile_floats` floats of B * rows * W * L), the
    source rows a tile needs are resized along the width with `tf.image.resize` (the same
    `ResizeBilinear` arithmetic; the height unchanged is an exact copy) and blended along the
    height as the kernel does (`top + (bottom - top) * lerp`, `in = (y + 0.5) * h / H - 0.5`).
    """
    height, width = (tf.cast(v, tf.int32) for v in size)
    shape = tf.shape(logits)
    batch, in_height, num_labels = shape[0], shape[1], shape[3]
    rows_per_tile = tf.maximum(1, tile_floats // tf.maximum(batch * width * num_labels, 1))
    scale = tf.cast(in_height, tf.float32) / tf.cast(height, tf.float32)
    num_tiles = (height + rows_per_tile - 1) // rows_per_tile

    def tile(t):
        rows = tf.range(t * rows_per_tile, tf.minimum((t + 1) * rows_per_tile, height))
        source = (tf.cast(rows, tf.float32) + 0.5) * scale - 0.5
        floor = tf.floor(source)
        lower = tf.maximum(tf.cast(floor, tf.int32), 0)
        upper = tf.minimum(tf.cast(tf.math.ceil(source), tf.int32), in_height - 1)
        lerp = (source - floor)[None, :, None, None]
        first, last = lower[0], upper[-1]
        strip = logits[:, first : last + 1]  # (B, rows needed, w, L)
        strip = tf.image.resize(strip, tf.stack([last + 1 - first, width]), method="bilinear", antialias=False)
        top = tf.gather(strip, lower - first, axis=1)
        bottom = tf.gather(strip, upper - first, axis=1)
        labels = tf.argmax(top + (bottom - top) * lerp, axis=-1, output_type=tf.int32)  # (B, rows, W)
        return tf.transpose(labels, [1, 0, 2])  # (rows, B, W): the TensorArray concatenates rows

    tiles = tf.TensorArray(tf.int32, size=num_tiles, infer_shape=False, element_shape=[None, None, None])
    _, tiles = tf.while_loop(
        lambda t, _: t < num_tiles, lambda t, ta: (t + 1, ta.write(t, tile(t))), (tf.constant(0), tiles)
    )
    return tf.transpose(tiles.concat(), [1, 0, 2])  # (H, B, W) -> (B, H, W)

# Server-wide files in the base directory, beside models.config (written once, never replaced: a
# tuned file stays), and each version's own batching sizes (read with
# --enable_per_model_batching_parameters).
BATCHING_PARAMETERS = "batching_parameters.txt"
PER_MODEL_BATCHING_PARAMETERS = "batching_params.pbtxt"
MONITORING_CONFIG = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
VERSION_LABELS = ("stable", "canary")


# ---------------------------------------------------------------------------- model facts
def model_task(model):
    """"image_classification" or "semantic_segmentation"; any other model (a bare backbone) is an error."""
    try:
        task = task_of(model)
    except ValueError:
        task = None
    if task not in HEAD_TASK_NAMES:
        names = " or ".join(task_class(name).__name__ for name in HEAD_TASK_NAMES)
        raise TypeError(f"export needs a {names}, received {type(model).__name__}")
    return task


def default_preprocessing(model):
    """The preprocessing of the task's `default_preprocessing_preset`, for a model that carries none."""
    return PreprocessingConfig.from_preset(task_class(model_task(model)).default_preprocessing_preset)


def resolve_preprocessing(model, preprocessing=None):
    """The `PreprocessingConfig` the exported signatures apply to `model`'s images.

    The `preprocessing` argument, else `model.preprocessing`, else the preset default of the
    model's task. For a segmenter the centre crop is left out: the label map must cover the whole
    image, and a crop does not change the scale, so the fully convolutional model sees what it
    would in the crop, and the rest of the image.
    """
    if preprocessing is None:
        preprocessing = getattr(model, "preprocessing", None)
    if preprocessing is None:
        preprocessing = default_preprocessing(model)
    if isinstance(preprocessing, dict):
        preprocessing = PreprocessingConfig.from_dict(preprocessing)
    if not isinstance(preprocessing, PreprocessingConfig):
        raise TypeError(f"preprocessing must be a PreprocessingConfig, received {type(preprocessing).__name__}")
    if model_task(model) == "semantic_segmentation" and preprocessing.do_center_crop:
        preprocessing = dataclasses.replace(preprocessing, do_center_crop=False)
    return preprocessing


def _labels(model):
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


# ---------------------------------------------------------------------------- signatures
def _checked_batch(image_bytes):
    """`image_bytes`, after asserting it is not empty (so that error comes first)."""
    check = tf.debugging.assert_positive(
        tf.size(image_bytes), message="image_bytes is empty: send at least one encoded image"
    )
    with tf.control_dependencies([check]):
        return tf.identity(image_bytes)


def _checked_pixels(pixel_values):
    """`pixel_values`, after asserting the batch, height and width are not empty."""
    shape = tf.shape(pixel_values)
    check = tf.debugging.Assert(
        tf.reduce_min(shape[:3]) > 0,
        ["pixel_values must hold at least one image of at least 1x1 pixels; received shape", shape],
    )
    with tf.control_dependencies([check]):
        return tf.identity(pixel_values)


def _forward(model, fold_batchnorm):
    """The logits function the signatures share: one `tf.function` (stored once in a SavedModel).

    `compile_for_inference(model, fold_batchnorm=...)`'s TensorFlow graph: folded, the BatchNorm-
    folded graph with the weights as constants (about 15% faster at batch 1 than the model's
    variables, see benchmarks/RESULTS.md); otherwise the model itself. Logits in float32.
    """
    from keras_mobilevitv2.inference import compile_for_inference

    infer = compile_for_inference(model, jit_compile=False, fold_batchnorm=fold_batchnorm).function

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixel_values")])
    def logits(pixel_values):
        return tf.cast(infer(pixel_values), tf.float32)

    # The one trace: a tf.function would be traced again when Keras' ExportArchive saves, and the
    # SavedModel would then hold the folded weights twice.
    return logits.get_concrete_function()


def _classifier_outputs(logits, labels, top_k):
    probabilities = tf.nn.softmax(logits, axis=-1)
    top = tf.math.top_k(probabilities, k=min(top_k, len(labels)))
    indices = tf.cast(top.indices, tf.int32)
    return {
        "logits": logits,
        "probabilities": probabilities,
        "top_k_indices": indices,
        "top_k_scores": top.values,
        "top_k_labels": tf.gather(tf.constant(labels, tf.string), indices),
    }


def _segmentation(logits, height, width):
    """(B, h, w, L) logits -> (B, height, width) int32 argmax of the bilinearly resized logits,
    computed over tiles of rows (`label_map`): the full-size float logits are never held."""
    return label_map(logits, (height, width))


def _decoded(image_bytes, max_image_pixels):
    """Image i of the batch decoded, its header checked first (the errors name i)."""
    return lambda data, i: decode_image(data, max_pixels=max_image_pixels, index=i)


def _pad_to(x, height, width, value):
    """(h, w, ...) -> (height, width, ...) padded at the bottom and right with `value`."""
    shape = tf.shape(x)
    paddings = tf.concat(
        [[[0, height - shape[0]], [0, width - shape[1]]], tf.zeros([tf.rank(x) - 2, 2], tf.int32)], axis=0
    )
    return tf.pad(x, paddings, constant_values=value)


def _classifier_signatures(model, forward, preprocessing, top_k, max_image_pixels=MAX_IMAGE_PIXELS):
    labels = _labels(model)
    num_labels = len(labels)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_image_bytes(image_bytes):
        image_bytes = _checked_batch(image_bytes)
        decode = _decoded(image_bytes, max_image_pixels)
        indexed = (image_bytes, tf.range(tf.shape(image_bytes)[0]))
        if preprocessing.do_center_crop:
            # Every image becomes (crop_height, crop_width, 3): preprocess one by one, run as a batch.
            pixels = tf.map_fn(
                lambda item: tf_preprocess(decode(*item), preprocessing),
                indexed,
                fn_output_signature=tf.TensorSpec(
                    [preprocessing.crop_height, preprocessing.crop_width, 3], tf.float32
                ),
            )
            logits = forward(pixels)
        else:
            logits = tf.map_fn(
                lambda item: forward(tf_preprocess(decode(*item), preprocessing)[None])[0],
                indexed,
                fn_output_signature=tf.TensorSpec([num_labels], tf.float32),
            )
        return _classifier_outputs(logits, labels, top_k)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixel_values")])
    def predict_pixels(pixel_values):
        pixel_values = _checked_pixels(pixel_values)
        return _classifier_outputs(forward(pixel_values), labels, top_k)

    return serve_image_bytes, predict_pixels


def _segmenter_signatures(model, forward, preprocessing, max_image_pixels=MAX_IMAGE_PIXELS):
    num_labels = model.config.num_labels

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_image_bytes(image_bytes):
        image_bytes = _checked_batch(image_bytes)
        decode = _decoded(image_bytes, max_image_pixels)
        n = tf.shape(image_bytes)[0]
        all_logits = tf.TensorArray(tf.float32, size=n, infer_shape=False, element_shape=[None, None, num_labels])
        all_labels = tf.TensorArray(tf.int32, size=n, infer_shape=False, element_shape=[None, None])
        image_sizes = tf.TensorArray(tf.int32, size=n, element_shape=[2])
        logits_sizes = tf.TensorArray(tf.int32, size=n, element_shape=[2])
        for i in tf.range(n):
            image = decode(image_bytes[i], i)
            height, width = tf.shape(image)[0], tf.shape(image)[1]
            logits = forward(tf_preprocess(image, preprocessing)[None])  # (1, h, w, L)
            all_labels = all_labels.write(i, _segmentation(logits, height, width)[0])
            all_logits = all_logits.write(i, logits[0])
            image_sizes = image_sizes.write(i, tf.stack([height, width]))
            logits_sizes = logits_sizes.write(i, tf.shape(logits)[1:3])
        image_sizes = image_sizes.stack()
        logits_sizes = logits_sizes.stack()
        max_image = tf.reduce_max(image_sizes, axis=0)
        max_logits = tf.reduce_max(logits_sizes, axis=0)
        segmentation = tf.map_fn(
            lambda i: _pad_to(all_labels.read(i), max_image[0], max_image[1], SEGMENTATION_PAD_LABEL),
            tf.range(n),
            fn_output_signature=tf.TensorSpec([None, None], tf.int32),
        )
        logits = tf.map_fn(
            lambda i: _pad_to(all_logits.read(i), max_logits[0], max_logits[1], 0.0),
            tf.range(n),
            fn_output_signature=tf.TensorSpec([None, None, num_labels], tf.float32),
        )
        return {
            "logits": logits,
            "segmentation": segmentation,
            "image_size": image_sizes,
            "logits_size": logits_sizes,
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixel_values")])
    def predict_pixels(pixel_values):
        pixel_values = _checked_pixels(pixel_values)
        logits = forward(pixel_values)
        shape = tf.shape(pixel_values)
        return {"logits": logits, "segmentation": _segmentation(logits, shape[1], shape[2])}

    return serve_image_bytes, predict_pixels


def _check_max_image_pixels(max_image_pixels):
    if max_image_pixels is not None and (
        not isinstance(max_image_pixels, int) or isinstance(max_image_pixels, bool) or max_image_pixels < 1
    ):
        raise ValueError(f"max_image_pixels must be a positive integer or None, received {max_image_pixels!r}")


def serving_functions(model, preprocessing=None, top_k=5, fold_batchnorm=True, max_image_pixels=MAX_IMAGE_PIXELS):
    """{"serving_default": fn(image_bytes), "predict_pixels": fn(pixel_values)}: the `tf.function`s
    `export_saved_model` exports, for use in-process. With `fold_batchnorm` they run a snapshot
    of the weights (`compile_for_inference`); later changes to the model are not seen.
    `max_image_pixels`: `serving_default` refuses an image whose header claims more pixels
    (`InvalidArgumentError` naming its index in the batch); None: no limit."""
    _check_max_image_pixels(max_image_pixels)
    preprocessing = resolve_preprocessing(model, preprocessing)
    task = model_task(model)
    if task == "image_classification" and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, received {top_k!r}")
    forward = _forward(model, fold_batchnorm)
    if task == "image_classification":
        serve, pixels = _classifier_signatures(model, forward, preprocessing, top_k, max_image_pixels)
    else:
        serve, pixels = _segmenter_signatures(model, forward, preprocessing, max_image_pixels)
    return {"serving_default": serve, "predict_pixels": pixels}


# ---------------------------------------------------------------------------- SavedModel
def export_saved_model(model, path, preprocessing=None, top_k=5, fold_batchnorm=True, max_image_pixels=MAX_IMAGE_PIXELS):
    """Write `model` as a SavedModel with the `serving_default` and `predict_pixels` signatures.

    Args:
        model: a `MobileViTV2ImageClassifier` or `MobileViTV2SemanticSegmenter`.
        path: the SavedModel directory to write.
        preprocessing: the `PreprocessingConfig` that `serving_default` applies; default
            `model.preprocessing`, else the preset default of the model's task.
        top_k: how many classes the classifier's `top_k_*` outputs hold (at most num_labels).
        fold_batchnorm: store the BatchNorm-folded graph of `compile_for_inference`, its weights
            as constants in the graph (the default: as fast as the in-process compiled path).
            False stores the model's variables, about 15% slower at batch 1; the numbers agree to
            float32 rounding either way. Both are written by Keras' `ExportArchive`.
        max_image_pixels: `serving_default` refuses an image whose header claims more pixels
            (height * width), before decoding it; default `MAX_IMAGE_PIXELS` (50 megapixels),
            None for no limit.

    Returns the path.
    """
    functions = serving_functions(
        model, preprocessing, top_k, fold_batchnorm=fold_batchnorm, max_image_pixels=max_image_pixels
    )
    archive = keras.export.ExportArchive()
    if not fold_batchnorm:
        archive.track(model)  # the endpoints read the model's variables; folded, they hold constants
    for name, fn in functions.items():
        archive.add_endpoint(name, fn)
    archive.write_out(os.fspath(path), verbose=False)
    # What serving_default applies, for clients and for humans: transformers' processor fields.
    extra = os.path.join(os.fspath(path), "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, PREPROCESSOR_FILE), "w", encoding="utf-8") as f:
        json.dump(resolve_preprocessing(model, preprocessing).to_hf_dict(), f, indent=2)
    return os.fspath(path)


# ---------------------------------------------------------------------------- TF Serving bundle
def _version_dirs(model_dir):
    """{version: path} of the all-digit directories in `model_dir` (what TF Serving loads)."""
    if not os.path.isdir(model_dir):
        return {}
    return {
        int(name): os.path.join(model_dir, name)
        for name in os.listdir(model_dir)
        if name.isdigit() and os.path.isdir(os.path.join(model_dir, name))
    }


# Hidden names in a model directory (not all digits, so TF Serving ignores them), each carrying the
# pid and host of the export that made it: `.claim-<version>` (a version being written), and
# `.tmp-<version>-<pid>-<host>-*` / `.old-<version>-<pid>-<host>-*` (its files).
CLAIM_PREFIX = ".claim-"
TEMP_PREFIXES = (".tmp-", ".old-")
STALE_AFTER_SECONDS = 24 * 3600  # an entry from another host is removed only after this long


def _owner_tag():
    host = re.sub(r"[^A-Za-z0-9]+", "_", socket.gethostname())[:40] or "host"
    return f"{os.getpid()}-{host}"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _is_stale(path, tag):
    """True when the export that made `path` (owner `tag` = "<pid>-<host>") is gone: on this host its
    pid is not running; on another host (a shared file system) it is older than STALE_AFTER_SECONDS."""
    match = re.match(r"(\d+)-([A-Za-z0-9_]+)", tag)
    if match is None:
        return False
    pid, host = int(match.group(1)), match.group(2)
    if host == _owner_tag().split("-", 1)[1]:
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        return time.time() - os.lstat(path).st_mtime > STALE_AFTER_SECONDS
    except FileNotFoundError:
        return False


def remove_stale_entries(model_dir):
    """Remove the temporary directories and version claims of exports that are no longer running
    (killed or crashed). Entries of running exports are kept. Returns the removed paths."""
    removed = []
    if not os.path.isdir(model_dir):
        return removed
    for name in os.listdir(model_dir):
        path = os.path.join(model_dir, name)
        if name.startswith(TEMP_PREFIXES):
            tag = name.split("-", 2)[2] if name.count("-") >= 2 else ""
        elif name.startswith(CLAIM_PREFIX):
            try:
                with open(os.path.join(path, "owner"), encoding="utf-8") as f:
                    tag = f.read().strip()
            except OSError:  # a claim still being made, or not ours: judge it by its age
                tag = f"0-unknown-{name}"
        else:
            continue
        if _is_stale(path, tag):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _claimed_versions(model_dir):
    return {
        int(name[len(CLAIM_PREFIX):])
        for name in os.listdir(model_dir)
        if name.startswith(CLAIM_PREFIX) and name[len(CLAIM_PREFIX):].isdigit()
    }


def _claim_version(model_dir, version, overwrite):
    """Claim a version number with `mkdir` (atomic: of two exports, one wins). `version` None takes
    the next free number (past existing and claimed ones). Returns (version, claim directory).

    Raises `OutputExistsError` when an explicit version exists (without `overwrite`) or another
    export is writing it."""
    from keras_mobilevitv2.outputs import OutputExistsError

    explicit = version is not None
    while True:
        if not explicit:
            taken = set(_version_dirs(model_dir)) | _claimed_versions(model_dir)
            version = max(taken, default=0) + 1
        version_dir = os.path.join(model_dir, str(version))
        if explicit and os.path.exists(version_dir) and not overwrite:
            raise OutputExistsError(f"{version_dir} exists; pass --overwrite (overwrite=True) to replace it, or another version")
        claim = os.path.join(model_dir, f"{CLAIM_PREFIX}{version}")
        try:
            os.mkdir(claim)
        except FileExistsError:
            if explicit:
                raise OutputExistsError(
                    f"another export is writing {version_dir} ({claim} exists); choose another version, or remove "
                    "the claim if no export is running"
                ) from None
            continue  # a concurrent export took this number: take the next one
        with open(os.path.join(claim, "owner"), "w", encoding="utf-8") as f:
            f.write(_owner_tag() + "\n")
        if not explicit and os.path.exists(version_dir):  # finished by another export since we looked
            shutil.rmtree(claim, ignore_errors=True)
            continue
        return version, claim


def _encode(image, fmt):
    image = tf.convert_to_tensor(np.asarray(image, np.uint8))
    if fmt == "jpeg":
        return tf.io.encode_jpeg(image, quality=90).numpy()
    return tf.io.encode_png(image).numpy()


def default_warmup_images():
    """A few real photos from scikit-image, encoded as JPEG and PNG, of different sizes."""
    try:
        from skimage import data
    except ImportError:
        message = "the default warmup images come from scikit-image: install it, or pass warmup_images"
        raise ImportError(message) from None

    return [_encode(data.chelsea(), "jpeg"), _encode(data.astronaut(), "png"), _encode(data.coffee(), "jpeg")]


def prediction_log(model_name, signature_name, inputs):
    """A `PredictionLog` holding the `PredictRequest` TF Serving would receive.

    `inputs` maps input names to arrays; arrays of bytes become tf.string tensors.
    """
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        value = np.asarray(value)
        dtype = tf.string if value.dtype == object or value.dtype.kind == "S" else None
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_requests(model_name, images, pixel_values):
    """TF Serving's warmup requests: a `serving_default` request per encoded image and one
    `predict_pixels` request with `pixel_values` (B, H, W, 3) float32."""
    logs = [
        prediction_log(model_name, "serving_default", {"image_bytes": np.array([data], dtype=object)})
        for data in images
    ]
    pixel_values = np.asarray(pixel_values, np.float32)
    return logs + [prediction_log(model_name, "predict_pixels", {"pixel_values": pixel_values})]


def _write_warmup(version_dir, model_name, images, preprocessing):
    pixel_values = preprocess_image(images[0], preprocessing)[None]
    os.makedirs(os.path.join(version_dir, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(version_dir, WARMUP_FILE)) as writer:
        for record in warmup_requests(model_name, images, pixel_values):
            writer.write(record.SerializeToString())


def _read_image_bytes(item):
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, (str, os.PathLike)):
        with open(item, "rb") as f:
            return f.read()
    raise TypeError(f"warmup_images must hold encoded image bytes or file paths, received {type(item).__name__}")


class VersionLabelError(ValueError):
    """A version label that cannot be set or moved as asked (the message says what to do instead)."""


@contextlib.contextmanager
def _locked_models_config(base_dir):
    """Yield `base_dir/models.config` parsed as a `ModelServerConfig` (empty if absent), holding a
    lock file (`fcntl.flock`) so concurrent exports and label changes are serialised; on a normal
    exit the config is written back atomically, so no update is lost and a server never reads half
    a file."""
    import fcntl

    from google.protobuf import text_format

    from keras_mobilevitv2.outputs import atomic_file

    path = os.path.join(base_dir, MODELS_CONFIG)
    with open(os.path.join(base_dir, f".{MODELS_CONFIG}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server_config = read_models_config(base_dir)
        yield server_config
        with atomic_file(path) as tmp:
            tmp.write_text(text_format.MessageToString(server_config), encoding="utf-8")


def _model_entry(server_config, model_name, create=False):
    configs = server_config.model_config_list.config
    entry = next((c for c in configs if c.name == model_name), None)
    if entry is None and create:
        entry = configs.add()
        entry.name = model_name
    return entry


def _sync_version_policy(entry):
    """`model_version_policy { specific { versions: ... } }` = the labelled versions, so the server
    loads exactly what a label points to (and unloads a version no label names any more). Without
    labels the policy is left out: TF Serving's default, the latest version."""
    versions = sorted(set(entry.version_labels.values()))
    entry.ClearField("model_version_policy")
    if versions:
        entry.model_version_policy.specific.versions.extend(versions)


def _check_label(label):
    if label not in VERSION_LABELS:
        raise ValueError(f"label must be one of {VERSION_LABELS} or None, received {label!r}")


def _label_for_new_version(entry, model_name, version, label):
    """The label a newly written `version` gets: `label`, or by default "stable" for a model without
    one and "canary" otherwise; None when the version already carries a label (an overwrite).

    TF Serving moves a label that is in use only to a version it has already loaded (see README,
    "Export and serving"), so an in-use stable or canary is never moved to a new version here: the
    new version becomes the canary, and `promote_canary` moves stable once it is loaded."""
    labels = dict(entry.version_labels) if entry is not None else {}
    if label is None and version in labels.values():
        return None
    if label is None:
        label = "stable" if "stable" not in labels else "canary"
    if label in labels and labels[label] != version:
        if label == "stable":
            hint = "export it as the canary (label='canary', --label canary), then promote it (promote_canary, --promote)"
        else:
            hint = "promote it (promote_canary, --promote) or drop it (drop_canary, --drop-canary) first"
        raise VersionLabelError(
            f"{model_name} has a {label} version already ({labels[label]}); {hint}. TF Serving moves a label "
            "in use only to a version it has loaded"
        )
    return label


def update_models_config(base_dir, model_name, model_base_path, version=None, label=None):
    """Add or replace `model_name` in `base_dir/models.config` (TF Serving's `--model_config_file`),
    keeping the other models, under the lock of `_locked_models_config`.

    With `version`, that version gets a label (`_label_for_new_version`: `label`, or "stable" for
    the model's first version and "canary" after) and the version policy lists the labelled
    versions. Returns the file's path."""
    if label is not None:
        _check_label(label)
    with _locked_models_config(base_dir) as server_config:
        entry = _model_entry(server_config, model_name, create=True)
        entry.base_path = model_base_path
        entry.model_platform = "tensorflow"
        if version is not None:
            chosen = _label_for_new_version(entry, model_name, version, label)
            if chosen is not None:
                entry.version_labels[chosen] = version
            _sync_version_policy(entry)
    return os.path.join(base_dir, MODELS_CONFIG)


def read_models_config(base_dir):
    """`base_dir/models.config` as a `ModelServerConfig` (empty if there is none). No lock: the
    file is only ever replaced whole."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = os.path.join(os.fspath(base_dir), MODELS_CONFIG)
    server_config = model_server_config_pb2.ModelServerConfig()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            try:
                text_format.Parse(f.read(), server_config)
            except text_format.ParseError as err:
                raise ValueError(f"{path} is not a TF Serving model config ({err}); fix or remove it") from None
    return server_config


def version_labels(base_dir, model_name):
    """{label: version} of `model_name` in `base_dir/models.config` ({} if it has none)."""
    entry = _model_entry(read_models_config(base_dir), model_name)
    return dict(entry.version_labels) if entry is not None else {}


def _edit_labels(base_dir, model_name, edit):
    with _locked_models_config(os.path.abspath(os.fspath(base_dir))) as server_config:
        entry = _model_entry(server_config, model_name)
        if entry is None:
            path = os.path.join(base_dir, MODELS_CONFIG)
            raise VersionLabelError(f"{path} has no model named {model_name!r}")
        labels = dict(entry.version_labels)
        edit(labels)
        entry.ClearField("version_labels")
        entry.version_labels.update(labels)
        _sync_version_policy(entry)
        return labels


def promote_canary(base_dir, model_name):
    """Move `stable` to the canary version and drop the `canary` label; the version policy then
    lists that version only, so the server unloads the old stable one. Call it once the server has
    loaded the canary (its status is AVAILABLE): TF Serving refuses to move a label in use to a
    version it has not loaded. Returns {label: version} after the change."""

    def edit(labels):
        if "canary" not in labels:
            raise VersionLabelError(f"{model_name} has no canary version to promote (labels: {labels or 'none'})")
        labels["stable"] = labels.pop("canary")

    return _edit_labels(base_dir, model_name, edit)


def drop_canary(base_dir, model_name):
    """Remove the `canary` label (a canary that is not to be promoted); its version is unloaded
    unless `stable` names it. Returns {label: version} after the change."""

    def edit(labels):
        if "canary" not in labels:
            raise VersionLabelError(f"{model_name} has no canary version (labels: {labels or 'none'})")
        del labels["canary"]

    return _edit_labels(base_dir, model_name, edit)


# ---------------------------------------------------------------------------- batching, monitoring
# Batching sizes (`batching_parameters`). Estimates, to start from; tune with the server's metrics.
# Activations: the largest tensors are the stride-2 ones of the first stage, 64 * width channels at
# a quarter of the input pixels (16 * width float32 per input pixel, 64 * width bytes); about three
# are alive at once, so ~192 * width bytes per input pixel (12.6 MB for width 1.0 at 256 x 256).
ACTIVATION_BYTES_PER_PIXEL = 192
BATCH_MEMORY_BUDGET = 512 * 2**20
# Latency of one image: the SavedModel at batch 1 on the 2-core CI machine (benchmarks/RESULTS.md,
# 16.7 / 35.4 / 86.7 ms for width 0.5 / 1.0 / 2.0 at 256 x 256): ~35 ms * width**1.2 * pixels / 256**2.
LATENCY_MS_AT_256 = 35.0
LATENCY_WIDTH_EXPONENT = 1.2
MAX_BATCH_SIZE = 64
MAX_SEQUENTIAL_BATCH_MS = 1000.0  # a batch whose images run one by one: its last image waits this at most


def _batches_crops(model, preprocessing):
    """True when `serving_default` runs a batch's images as one batch of centre crops."""
    return model_task(model) == "image_classification" and preprocessing.do_center_crop


def _floor_power_of_two(n):
    return 1 << (max(1, int(n)).bit_length() - 1)


def batching_parameters(model, preprocessing=None, num_batch_threads=None):
    """TF Serving's `BatchingParameters` for `model`'s `serving_default`, as a dict of field -> value.

    Sized from what the signature does (`resolve_preprocessing`) and the model's width:

    - A classifier with a centre crop runs its images as one batch of crops: `max_batch_size` is
      the largest power of two whose activations (`ACTIVATION_BYTES_PER_PIXEL * width * crop
      pixels` per image) fit `BATCH_MEMORY_BUDGET` (512 MiB), at most 64: 32 for width 1.0 at 256 x 256.
      `allowed_batch_sizes` grows by about 1.5 (1, 2, 3, 4, 6, 9, 13, 19, 28, 32 for 32): TF Serving pads a batch
      up to the next allowed size by repeating an image, so this bounds the wasted work to a third
      while keeping the number of batch shapes small.
    - A segmenter (or a classifier without a crop) runs the images of a batch one by one (they keep
      their own sizes): batching only merges requests into one call. `max_batch_size` keeps the
      last image of a batch within `MAX_SEQUENTIAL_BATCH_MS` (1 s) of estimated latency, and every
      size up to it is allowed (padding would run extra images for nothing).
    - `batch_timeout_micros`: a tenth of the estimated latency of one image, within TF Serving's
      1-10 ms CPU guideline, so waiting for a batch adds at most ~10% to a lone request.
    - `num_batch_threads`: the serving machine's cores (default: this machine's), and
      `max_enqueued_batches` the same, as TF Serving's batching guide advises for online serving
      (a full queue turns requests away instead of queueing them for long).

    A request with more images than `max_batch_size` is refused by the server: split it.
    """
    preprocessing = resolve_preprocessing(model, preprocessing)
    width = float(model.config.width_multiplier)
    if num_batch_threads is None:
        num_batch_threads = os.cpu_count() or 1
    if not isinstance(num_batch_threads, int) or isinstance(num_batch_threads, bool) or num_batch_threads < 1:
        raise ValueError(f"num_batch_threads must be a positive integer, received {num_batch_threads!r}")
    batched = _batches_crops(model, preprocessing)
    if batched:
        pixels = preprocessing.crop_height * preprocessing.crop_width
    else:
        pixels = preprocessing.shortest_edge**2  # at least: the longer side is longer
    latency_ms = LATENCY_MS_AT_256 * width**LATENCY_WIDTH_EXPONENT * pixels / 256**2
    if batched:
        per_image = ACTIVATION_BYTES_PER_PIXEL * width * pixels
        max_batch_size = min(MAX_BATCH_SIZE, _floor_power_of_two(BATCH_MEMORY_BUDGET / per_image))
        allowed, size = [], 1
        while size < max_batch_size:
            allowed.append(size)
            size = max(size + 1, int(size * 1.5))
        allowed.append(max_batch_size)
    else:
        max_batch_size = min(MAX_BATCH_SIZE, _floor_power_of_two(MAX_SEQUENTIAL_BATCH_MS / latency_ms))
        allowed = list(range(1, max_batch_size + 1))
    return {
        "max_batch_size": max_batch_size,
        "batch_timeout_micros": int(min(10_000, max(1_000, round(100 * latency_ms, -2)))),
        "max_enqueued_batches": num_batch_threads,
        "num_batch_threads": num_batch_threads,
        "allowed_batch_sizes": allowed,
    }


def batching_parameters_text(parameters, comment=None):
    """A `BatchingParameters` text proto (its scalar fields are `google.protobuf` wrappers:
    `max_batch_size { value: 32 }`), for `--batching_parameters_file`."""
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        lines.append(f"{name} {{ value: {int(parameters[name])} }}")
    lines.append(f"allowed_batch_sizes: [{', '.join(str(int(n)) for n in parameters['allowed_batch_sizes'])}]")
    return "\n".join(lines) + "\n"


def monitoring_config_text(path=PROMETHEUS_PATH):
    """A `MonitoringConfig` text proto exposing Prometheus metrics at `path` of the REST port."""
    return f'prometheus_config {{\n  enable: true\n  path: "{path}"\n}}\n'


def _batching_comment(model, preprocessing, parameters):
    preprocessing = resolve_preprocessing(model, preprocessing)
    if _batches_crops(model, preprocessing):
        size = f"{preprocessing.crop_height} x {preprocessing.crop_width} crops run as one batch"
    else:
        size = f"shortest edge {preprocessing.shortest_edge}, images run one by one"
    return (
        f"BatchingParameters for {type(model).__name__}, width {model.config.width_multiplier:g}, {size};"
        "\nsized by keras_mobilevitv2.export.batching_parameters (see its docstring); "
        "a starting point: tune with the\nserver's Prometheus metrics (monitoring.config)."
    )


def _write_if_absent(path, text):
    """Write `path` atomically unless it exists (a file the user tuned is kept). True if written."""
    from keras_mobilevitv2.outputs import OutputExistsError, atomic_file

    if os.path.exists(path):
        return False
    try:
        with atomic_file(path, overwrite=False) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OutputExistsError:  # a concurrent export wrote it first: theirs stays
        return False
    return True


def export_serving_bundle(
    model,
    base_dir,
    model_name,
    version=None,
    overwrite=False,
    preprocessing=None,
    warmup_images=None,
    server_base_dir=None,
    fold_batchnorm=True,
    max_image_pixels=MAX_IMAGE_PIXELS,
    label=None,
    num_batch_threads=None,
):
    """Write a TF Serving model version: `base_dir/model_name/<version>/` and `base_dir/models.config`.

    The version directory is the SavedModel of `export_saved_model` plus
    `assets.extra/tf_serving_warmup_requests` (a `serving_default` request per warmup image and
    one `predict_pixels` request) and `batching_params.pbtxt` (its `batching_parameters`, for
    `--enable_per_model_batching_parameters`). The base directory gets `models.config` (this model's
    entry: its base path, its version labels and a `specific` version policy listing the labelled
    versions), and, unless they exist, `batching_parameters.txt` (this model's sizes, for
    `--batching_parameters_file`) and `monitoring.config` (Prometheus metrics at
    `PROMETHEUS_PATH`). Nothing is ever lost to a crash or a concurrent export:

    - the version number is claimed first with `mkdir <name>/.claim-<version>` (atomic): two exports
      at once get two numbers (default) or one of them an `OutputExistsError` (explicit `version`);
    - the version is written to a hidden temporary directory (`.tmp-<version>-<pid>-<host>-*`, not
      all digits, so TF Serving ignores it) and renamed into place at the end; an existing version is
      replaced only with `overwrite`;
    - claims and temporary directories left by killed exports (their pid no longer running on this
      host; from another host, older than a day) are removed by the next export.

    Args:
        model: a `MobileViTV2ImageClassifier` or `MobileViTV2SemanticSegmenter`.
        base_dir: the model base directory the server reads (`--model_config_file` lives here).
        model_name: the served model's name (`/v1/models/<model_name>`).
        version: a positive int; default the largest existing (or claimed) version + 1.
        overwrite: replace an existing `version` (otherwise `OutputExistsError`, a
            `FileExistsError` and `ValueError`).
        preprocessing: as in `export_saved_model`.
        warmup_images: encoded images (bytes) or paths, one warmup request each; default
            `default_warmup_images()` (scikit-image's chelsea and coffee as JPEG, astronaut as PNG).
        server_base_dir: `base_dir` as the server sees it (e.g. "/models" inside a container);
            `models.config` points to `<server_base_dir>/<model_name>`. Default: `base_dir`,
            made absolute.
        fold_batchnorm: as in `export_saved_model` (False keeps the model's variables).
        max_image_pixels: as in `export_saved_model`.
        label: "stable" or "canary", the version label the new version gets; default "stable" for
            the model's first version, "canary" after. A label already in use is never moved to a
            new version (`VersionLabelError`, before anything is written): TF Serving would refuse
            it until the version is loaded. Promote a canary with `promote_canary`.
        num_batch_threads: the serving machine's cores, for `batching_parameters` (default: this
            machine's).

    Returns the version directory.
    """
    if not isinstance(model_name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", model_name):
        raise ValueError(f"model_name must be letters, digits, '_', '.', '-', received {model_name!r}")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise ValueError(f"version must be a positive integer, received {version!r}")
    preprocessing = resolve_preprocessing(model, preprocessing)
    base_dir = os.path.abspath(os.fspath(base_dir))
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise ValueError(f"{base_dir} exists and is not a directory")
    model_dir = os.path.join(base_dir, model_name)
    images = [_read_image_bytes(x) for x in warmup_images] if warmup_images is not None else default_warmup_images()
    if not images:
        raise ValueError("warmup_images must hold at least one encoded image")
    if label is not None:
        _check_label(label)
    # Fail before exporting when the label is taken; checked again under the lock at the end.
    _label_for_new_version(_model_entry(read_models_config(base_dir), model_name), model_name, version, label)
    batching = batching_parameters(model, preprocessing, num_batch_threads=num_batch_threads)
    batching_text = batching_parameters_text(batching, _batching_comment(model, preprocessing, batching))

    os.makedirs(model_dir, exist_ok=True)
    remove_stale_entries(model_dir)
    version, claim = _claim_version(model_dir, version, overwrite)
    version_dir = os.path.join(model_dir, str(version))
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp-{version}-{_owner_tag()}-", dir=model_dir)
    old_dir = None
    try:
        export_saved_model(
            model, tmp_dir, preprocessing=preprocessing, fold_batchnorm=fold_batchnorm,
            max_image_pixels=max_image_pixels,
        )
        _write_warmup(tmp_dir, model_name, images, preprocessing)
        with open(os.path.join(tmp_dir, PER_MODEL_BATCHING_PARAMETERS), "w", encoding="utf-8") as f:
            f.write(batching_text)
        apply_umask(tmp_dir)  # mkdtemp's 0700 would hide the version from a server running as another user
        if os.path.exists(version_dir):  # only with overwrite: _claim_version refused it otherwise
            old_dir = tempfile.mkdtemp(prefix=f".old-{version}-{_owner_tag()}-", dir=model_dir)
            os.rename(version_dir, os.path.join(old_dir, "v"))
        os.rename(tmp_dir, version_dir)  # fails on a non-empty directory: never replaces another version
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if old_dir is not None and not os.path.exists(version_dir):
            os.rename(os.path.join(old_dir, "v"), version_dir)  # put the replaced version back
        raise
    finally:
        if old_dir is not None:
            shutil.rmtree(old_dir, ignore_errors=True)
        shutil.rmtree(claim, ignore_errors=True)
    server_base_dir = base_dir if server_base_dir is None else os.fspath(server_base_dir)
    _write_if_absent(os.path.join(base_dir, BATCHING_PARAMETERS), batching_text)
    _write_if_absent(os.path.join(base_dir, MONITORING_CONFIG), monitoring_config_text())
    try:
        update_models_config(
            base_dir, model_name, f"{server_base_dir.rstrip('/')}/{model_name}", version=version, label=label
        )
    except VersionLabelError as err:  # a concurrent export took the label meanwhile
        raise VersionLabelError(f"{version_dir} was written but not labelled (not served): {err}") from None
    return version_dir


# ---------------------------------------------------------------------------- TFLite
def tflite_input_size(model):
    """A natural fixed input size for `model`: its preprocessing's crop (Apple's ImageNet models:
    256 x 256, VOC: 512 x 512), or a square of the shortest edge when it does not crop."""
    preprocessing = getattr(model, "preprocessing", None)
    if preprocessing is None:
        preprocessing = default_preprocessing(model)
    if preprocessing.do_center_crop:
        return preprocessing.crop_height, preprocessing.crop_width
    return preprocessing.shortest_edge, preprocessing.shortest_edge


class RepresentativeImageError(ValueError):
    """A representative image (int8 calibration) that cannot be read; the message names the file."""


def sample_photos():
    """The sample photos that ship with scikit-image (chelsea, coffee, astronaut) and matplotlib
    (grace_hopper), those installed; found without importing either package."""
    import importlib.util

    paths = []
    for package, name in SAMPLE_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = os.path.join(list(spec.submodule_search_locations)[0], name)
        if os.path.isfile(path):
            paths.append(path)
    return paths


def representative_image_files(representative_images=None):
    """The image files int8 calibration reads: the image files (by suffix) of the directory
    `representative_images` (recursively, sorted), a list of files as given, or `sample_photos()`."""
    from keras_mobilevitv2.extras import MissingExtraError

    if representative_images is None:
        paths = sample_photos()
        if not paths:
            raise MissingExtraError(
                "int8 quantization calibrates on real photos: pass representative_images (a directory), "
                "or install scikit-image for its sample photos",
                "samples",
            )
        return paths
    if isinstance(representative_images, (str, os.PathLike)):
        directory = os.fspath(representative_images)
        if not os.path.isdir(directory):
            raise RepresentativeImageError(f"representative_images {directory} is not a directory")
        paths = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(directory)
            for name in names
            if name.lower().endswith(REPRESENTATIVE_SUFFIXES)
        )
        if not paths:
            raise RepresentativeImageError(
                f"no image files ({', '.join(REPRESENTATIVE_SUFFIXES)}) in representative_images {directory}"
            )
        return paths
    paths = [os.fspath(p) for p in representative_images]
    if not paths:
        raise RepresentativeImageError("representative_images is an empty list")
    return paths


def preprocessing_at_size(preprocessing, height, width):
    """`preprocessing` giving (height, width) pixels: a crop at that size from the shortest edge
    scaled like the original's (288 / 256 for Apple's ImageNet models); without a crop (a
    segmenter), the shortest edge resized to max(height, width) and centre cropped."""
    if preprocessing.do_center_crop:
        ratio = preprocessing.shortest_edge / min(preprocessing.crop_height, preprocessing.crop_width)
        edge = max(1, round(min(height, width) * ratio), max(height, width))
    else:
        edge = max(height, width)
    return dataclasses.replace(
        preprocessing, do_resize=True, shortest_edge=edge, do_center_crop=True, crop_height=height, crop_width=width
    )


def representative_pixels(model, input_size, representative_images=None):
    """(N, H, W, 3) float32: the representative images preprocessed with the model's preprocessing
    at `input_size`, and their file paths. An unreadable file raises `RepresentativeImageError`."""
    paths = representative_image_files(representative_images)
    config = preprocessing_at_size(resolve_preprocessing(model), *input_size)
    pixels = []
    for path in paths:
        try:
            pixels.append(preprocess_image(path, config))
        except (OSError, ValueError, TypeError) as err:
            raise RepresentativeImageError(f"representative image {path}: {err}") from None
    return np.stack(pixels).astype(np.float32), paths


def int8_agreement(model, flatbuffer, pixel_values, num_threads=None):
    """How a TFLite model (`flatbuffer` bytes: the full-integer one of `export_tflite_int8`, or any
    other) agrees with `model` in float32 on `pixel_values` (N, H, W, 3), one image at a time.

    Returns a dict: `images`, the int8 file's `input` / `output` quantization (dtype, scale,
    zero point; scale 0 for float tensors) and `max_logit_error` (max |int8 - float32| of the
    logits) with `max_logit_error_over_std` (over the float32 logits' std); a classifier adds
    `top1_agreement` (the fraction of images with the same top class), a segmenter
    `pixel_agreement` (the fraction of pixels of the label maps at the input size that agree).
    """
    from keras_mobilevitv2.litert import interpreter, quantization_params, run_signature

    runner = interpreter(model_content=flatbuffer, num_threads=num_threads)
    signature = runner.get_signature_runner("serving_default")
    expected = np.stack([model(x[None], training=False).numpy()[0] for x in pixel_values])
    actual = np.stack([run_signature(runner, pixel_values=x[None])["logits"][0] for x in pixel_values])
    error = float(np.max(np.abs(actual - expected)))
    report = {
        "images": len(pixel_values),
        "input": quantization_params(signature.get_input_details()["pixel_values"]),
        "output": quantization_params(signature.get_output_details()["logits"]),
        "max_logit_error": error,
        "max_logit_error_over_std": error / float(np.std(expected) + 1e-12),
    }
    if model_task(model) == "image_classification":
        report["top1_agreement"] = float(np.mean(np.argmax(actual, -1) == np.argmax(expected, -1)))
    else:
        size = pixel_values.shape[1:3]
        same = label_map(tf.constant(actual), size).numpy() == label_map(tf.constant(expected), size).numpy()
        report["pixel_agreement"] = float(np.mean(same))
    return report


def tflite_report_path(path):
    """The JSON of the int8 agreement report beside a TFLite file: `model.tflite` -> `model.int8.json`."""
    stem = os.fspath(path)
    stem = stem[: -len(".tflite")] if stem.endswith(".tflite") else stem
    return f"{stem}.int8.json"


def export_tflite(
    model,
    path,
    quantization=None,
    input_size=(256, 256),
    overwrite=False,
    representative_images=None,
    int8_io=False,
):
    """Convert `model` to a TFLite flatbuffer at `path`, builtin ops only.

    The TFLite model takes preprocessed `pixel_values` float32 (1, H, W, 3) with (H, W) =
    `input_size` and returns `logits` (the model's output; no preprocessing, no softmax).

    Args:
        quantization: None (float32), "float16" (float16 weights), "dynamic_int8" (int8 weights,
            dynamic-range activations) or "int8" (full integer: int8 weights and activations,
            int8 builtin ops only, calibrated on `representative_images`).
        input_size: (height, width) of the fixed input.
        overwrite: replace an existing file at `path` (otherwise `OutputExistsError`). The file is
            written beside `path` and renamed into place: a crash leaves no half-written file.
        representative_images: "int8": the calibration photos, a directory (its image files,
            recursively) or a list of files; default `sample_photos()` (scikit-image's and
            matplotlib's, the `samples` extra). Preprocessed with the model's preprocessing at
            `input_size` (`preprocessing_at_size`), each also mirrored.
        int8_io: "int8": int8 input and output tensors (quantize the pixels with the input's
            scale and zero point, dequantize the logits; `litert.run_signature` does both)
            instead of float32 ones.

    With "int8", the agreement with the float32 model on the representative images
    (`int8_agreement`) is written beside the file (`tflite_report_path`: `model.int8.json`);
    `export_tflite_int8` returns it as a dict.

    Returns the path. Raises if the model needs an op outside TFLite's builtins (for "int8", an
    op without an int8 kernel).
    """
    path, _ = _export_tflite(model, path, quantization, input_size, overwrite, representative_images, int8_io)
    return path


def export_tflite_int8(model, path, input_size=(256, 256), overwrite=False, representative_images=None, int8_io=False):
    """`export_tflite(..., quantization="int8")`, returning its agreement report: the dict of
    `int8_agreement` plus `path`, `size_bytes`, `input_size`, `int8_io` and
    `representative_images` (the calibration files), as written to `tflite_report_path(path)`."""
    _, report = _export_tflite(model, path, "int8", input_size, overwrite, representative_images, int8_io)
    return report


def _export_tflite(model, path, quantization, input_size, overwrite, representative_images, int8_io):
    """(path, the int8 agreement report or None)."""
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {TFLITE_QUANTIZATIONS}, received {quantization!r}")
    is_size = isinstance(input_size, (tuple, list)) and len(input_size) == 2
    if not is_size or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size):
        raise ValueError(f"input_size must be (height, width), two positive ints, received {input_size!r}")
    if quantization != "int8" and (representative_images is not None or int8_io):
        raise ValueError(f"representative_images and int8_io apply to quantization='int8', received {quantization!r}")
    if not isinstance(int8_io, bool):
        raise ValueError(f"int8_io must be a bool, received {int8_io!r}")
    height, width = input_size
    model_task(model)
    from keras_mobilevitv2.outputs import atomic_file, check_can_write

    path = os.fspath(path)
    report_path = tflite_report_path(path) if quantization == "int8" else None
    check_can_write([path] + ([report_path] if report_path else []), overwrite)
    if quantization == "int8":  # every image read (and a bad one named) before converting
        pixels, image_paths = representative_pixels(model, input_size, representative_images)

    # The fused, frozen graph (`compile_for_inference`'s, the SavedModel's), traced at the fixed
    # input shape: its weights are constants, which the converter (and quantization) act on.
    from keras_mobilevitv2.inference import fused_graph

    forward = fused_graph(model)

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="pixel_values")])
    def predict(pixel_values):
        return {"logits": tf.cast(forward(pixel_values), tf.float32)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([predict.get_concrete_function()], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        # Each photo and its mirror image: the activation ranges of real, varied pictures.
        calibration = [x[None] for image in pixels for x in (image, image[:, ::-1])]
        converter.representative_dataset = lambda: ([x] for x in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = converter.inference_output_type = tf.int8
    flatbuffer = converter.convert()
    report = None
    if quantization == "int8":
        report = {
            "path": path,
            "size_bytes": len(flatbuffer),
            "input_size": [height, width],
            "int8_io": int8_io,
            "representative_images": image_paths,
            **int8_agreement(model, flatbuffer, pixels),
        }
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(flatbuffer)
    if report is not None:
        with atomic_file(report_path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path, report
