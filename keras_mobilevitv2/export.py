"""Production export: SavedModel with serving signatures, a TF Serving bundle, TFLite.

    from keras_mobilevitv2.export import export_saved_model, export_serving_bundle, export_tflite
    export_saved_model(model, "out/savedmodel")
    export_serving_bundle(model, "serving", "mobilevitv2")     # serving/mobilevitv2/1, models.config
    export_tflite(model, "out/model.tflite", quantization="float16")

SavedModel signatures (the same for `export_saved_model` and the serving bundle):

- `serving_default(image_bytes)`: `image_bytes` is a tf.string batch [None] of encoded JPEG, PNG,
  BMP, GIF or WebP images (the `_bytes` suffix lets TF Serving's REST API take `{"b64": ...}`). Each
  image is decoded (`preprocessing.decode_image`), preprocessed (`preprocessing.tf_preprocess`)
  and run in the graph; images of different sizes may share a batch.
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
(`segmenter.label_map`, the same numbers as resizing all logits then taking the argmax): the
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
from keras_mobilevitv2.segmenter import label_map
from keras_mobilevitv2.tasks import HEAD_TASK_NAMES, task_class, task_of
from keras_mobilevitv2.umask import apply_umask

SEGMENTATION_PAD_LABEL = -1  # label of the padding in a `serving_default` segmentation batch
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
PREPROCESSOR_FILE = "preprocessor_config.json"  # in assets.extra/ of every SavedModel
MODELS_CONFIG = "models.config"
TFLITE_QUANTIZATIONS = (None, "float16", "dynamic_int8")


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
    computed over tiles of rows (`segmenter.label_map`): the full-size float logits are never held."""
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


def update_models_config(base_dir, model_name, model_base_path):
    """Add or replace `model_name` in `base_dir/models.config` (TF Serving's `--model_config_file`),
    keeping the other models. Concurrent exports are serialised by a lock file (`fcntl.flock`), and
    the file is replaced atomically, so no update is lost. Returns the file's path."""
    import fcntl

    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from keras_mobilevitv2.outputs import atomic_file

    path = os.path.join(base_dir, MODELS_CONFIG)
    with open(os.path.join(base_dir, f".{MODELS_CONFIG}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        server_config = model_server_config_pb2.ModelServerConfig()
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                try:
                    text_format.Parse(f.read(), server_config)
                except text_format.ParseError as err:
                    raise ValueError(f"{path} is not a TF Serving model config ({err}); fix or remove it") from None
        configs = server_config.model_config_list.config
        entry = next((c for c in configs if c.name == model_name), None)
        if entry is None:
            entry = configs.add()
            entry.name = model_name
        entry.base_path = model_base_path
        entry.model_platform = "tensorflow"
        with atomic_file(path) as tmp:
            tmp.write_text(text_format.MessageToString(server_config), encoding="utf-8")
    return path


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
):
    """Write a TF Serving model version: `base_dir/model_name/<version>/` and `base_dir/models.config`.

    The version directory is the SavedModel of `export_saved_model` plus
    `assets.extra/tf_serving_warmup_requests` (a `serving_default` request per warmup image and
    one `predict_pixels` request). Nothing is ever lost to a crash or a concurrent export:

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
    update_models_config(base_dir, model_name, f"{server_base_dir.rstrip('/')}/{model_name}")
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


def export_tflite(model, path, quantization=None, input_size=(256, 256), overwrite=False):
    """Convert `model` to a TFLite flatbuffer at `path`, builtin ops only.

    The TFLite model takes preprocessed `pixel_values` float32 (1, H, W, 3) with (H, W) =
    `input_size` and returns `logits` (the model's output; no preprocessing, no softmax).

    Args:
        quantization: None (float32), "float16" (float16 weights) or "dynamic_int8" (int8 weights,
            dynamic-range activations).
        input_size: (height, width) of the fixed input.
        overwrite: replace an existing file at `path` (otherwise `OutputExistsError`). The file is
            written beside `path` and renamed into place: a crash leaves no half-written file.

    Returns the path. Raises if the model needs an op outside TFLite's builtins.
    """
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {TFLITE_QUANTIZATIONS}, received {quantization!r}")
    is_size = isinstance(input_size, (tuple, list)) and len(input_size) == 2
    if not is_size or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size):
        raise ValueError(f"input_size must be (height, width), two positive ints, received {input_size!r}")
    height, width = input_size
    model_task(model)
    from keras_mobilevitv2.outputs import atomic_file, check_can_write

    check_can_write([path], overwrite)

    # Traced at the fixed input shape; the converter folds the BatchNorms itself.
    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="pixel_values")])
    def predict(pixel_values):
        return {"logits": tf.cast(model(pixel_values, training=False), tf.float32)}

    # Through a SavedModel: the converter then freezes the variables into constants (from a
    # concrete function with the model as trackable object it keeps them as uninitialised
    # TFLite resource variables, and quantization has no constant weights to act on).
    with tempfile.TemporaryDirectory(prefix="mobilevitv2-tflite-") as saved_model_dir:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", predict)
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        flatbuffer = converter.convert()
    path = os.fspath(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(flatbuffer)
    return path
