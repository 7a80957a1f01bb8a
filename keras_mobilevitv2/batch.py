"""Offline inference over many images: an Apache Beam pipeline with `RunInference`.

    from keras_mobilevitv2.batch import predict_batch
    predict_batch("model.keras", ["photos/*.jpg"], "out/run1-")                    # DirectRunner
    predict_batch("model.keras", ["gs://b/shards-*.tfrecord"], "gs://b/out/", input_format="tfrecord",
                  pipeline_args=["--runner=DataflowRunner", "--project=p", "--region=europe-west4"])

Inputs are file patterns (a file, or a glob Beam's file systems match: local, `gs://`, `s3://`, ...)
of encoded images (JPEG, PNG, BMP, GIF, WebP), or of TFRecord files of `tf.train.Example`s holding
the encoded image in a bytes feature (`image_feature`, default "image/encoded") and optionally a
name (`key_feature`, default "image/filename"; else "<file>@<sha1 of the record>").

Each image goes through `export.serving_functions(model)["serving_default"]`, the decoding,
preprocessing and post-processing graph of `mobilevitv2 predict` and of the exported SavedModel,
on batches of `min_batch_size` .. `max_batch_size` images (Beam's `BatchElements`). Images that
cannot be used (bytes of no known format, a header over `max_image_pixels`, a corrupt file, a record
without the feature) are counted and written to the errors output with the reason; the pipeline
goes on. Outputs, under `output_prefix`:

- `predictions-SSSSS-of-NNNNN.jsonl`: one JSON object per image. A classifier: `{"image", "top_k":
  [{"rank", "index", "label", "score"}]}`, as `predict.jsonl`. A segmenter: `{"image", "label_map",
  "height", "width", "class_fractions": {label: fraction}}`, where `label_map` is
  `<prefix>label_maps/<name>-<hash>.png`, the class index of every pixel at the image's size (8-bit
  PNG, 16-bit beyond 256 labels); a SavedModel's segmenter names the classes by index.
- `errors-SSSSS-of-NNNNN.jsonl`: `{"image", "error"}` per image that failed.

The model (`.keras`, anything `from_pretrained` reads, or a SavedModel directory of `mobilevitv2
export`) is loaded once per worker by `MobileViTV2ModelHandler`. Any Beam runner runs it through
the standard pipeline options (`pipeline_args`); the default is the DirectRunner.
"""

import hashlib
import json
import os
import re
import tempfile

import numpy as np

from keras_mobilevitv2.extras import require
from keras_mobilevitv2.preprocessing import MAX_IMAGE_PIXELS

beam = require("apache_beam", "batch inference runs on Apache Beam", "batch")
from apache_beam.io import fileio  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: E402

INPUT_FORMATS = ("images", "tfrecord")
DEFAULT_IMAGE_FEATURE = "image/encoded"
DEFAULT_KEY_FEATURE = "image/filename"
PREDICTIONS = "predictions"
ERRORS = "errors"
LABEL_MAPS = "label_maps"
METRICS_NAMESPACE = "mobilevitv2"


class BatchInputError(ValueError):
    """A bad argument of `predict_batch` (no matching input, an existing output, a bad option)."""


# ---------------------------------------------------------------------------- the model
class LoadedModel:
    """What `MobileViTV2ModelHandler.load_model` gives each worker: `predict(image_bytes batch)`,
    the task and {index: label}."""

    def __init__(self, predict, task, id2label):
        self.predict = predict
        self.task = task
        self.id2label = id2label


def _local_copy(path):
    """A local path for `path`: itself, or a temporary copy of a `.keras` file on a remote file
    system (`gs://...`), read through Beam's FileSystems."""
    if "://" not in path or os.path.exists(path):
        return path
    local = os.path.join(tempfile.mkdtemp(prefix="mobilevitv2-model-"), os.path.basename(path))
    with FileSystems.open(path) as source, open(local, "wb") as target:
        while chunk := source.read(1 << 24):
            target.write(chunk)
    return local


def load_model(model_path, top_k=5, max_image_pixels=MAX_IMAGE_PIXELS, compat=None):
    """`LoadedModel` of a SavedModel directory (its `serving_default` signature) or of anything
    `from_pretrained` reads (through `export.serving_functions`, as `mobilevitv2 predict`)."""
    import tensorflow as tf

    if tf.io.gfile.exists(f"{model_path.rstrip('/')}/saved_model.pb"):
        signature = tf.saved_model.load(model_path).signatures["serving_default"]
        outputs = signature.structured_outputs
        task = "image_classification" if "top_k_indices" in outputs else "semantic_segmentation"

        def predict(image_bytes):
            result = signature(image_bytes=image_bytes)
            if task == "image_classification":  # top_k was fixed at export: keep the first top_k
                result = {name: value[:, :top_k] if name.startswith("top_k") else value for name, value in result.items()}
            return result

        return LoadedModel(predict, task, None)

    from keras_mobilevitv2 import export
    from keras_mobilevitv2.hub import from_pretrained

    model = from_pretrained(_local_copy(model_path), compat=compat, verbose=False)
    task = export.model_task(model)
    predict = export.serving_functions(
        model, top_k=min(top_k, model.config.num_labels), max_image_pixels=max_image_pixels
    )["serving_default"]
    return LoadedModel(predict, task, dict(model.config.id2label))


def _reason(err):
    """The op's own message of a TF error: no `{{function_node ...}}`, no `[Op:...]`."""
    return err.message.split("}}")[-1].split("[Op:")[0].strip()


class MobileViTV2ModelHandler(ModelHandler):
    """A Beam `ModelHandler` of encoded images (bytes) -> one result dict per image.

    `load_model` runs once per worker (Beam shares the loaded model between the threads of a
    worker); `run_inference` runs a batch through `serving_default` and splits it per image. If
    the batch fails (an image whose header reads but whose data is corrupt), its images are run one
    by one so only the bad ones fail: their result is `{"error": reason}`.
    """

    def __init__(self, model_path, top_k=5, max_image_pixels=MAX_IMAGE_PIXELS, compat=None,
                 min_batch_size=1, max_batch_size=16):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.model_path = model_path
        self.top_k = top_k
        self.max_image_pixels = max_image_pixels
        self.compat = compat

    def load_model(self):
        from keras_mobilevitv2.logs import import_tensorflow

        import_tensorflow(verbose=False)
        return load_model(self.model_path, self.top_k, self.max_image_pixels, self.compat)

    def get_metrics_namespace(self):
        return METRICS_NAMESPACE

    def run_inference(self, batch, model, inference_args=None):
        import tensorflow as tf

        from keras_mobilevitv2.preprocessing import decode_image

        batch = list(batch)
        try:
            results = _split(model, model.predict(tf.constant(batch)), len(batch))
        except tf.errors.OpError:
            results = []
            for data in batch:
                try:
                    # Eagerly first, as `predict` does: the decoder's own message for a corrupt image
                    # (a graph's error names its nodes instead).
                    decode_image(data, max_pixels=self.max_image_pixels)
                    results += _split(model, model.predict(tf.constant([data])), 1)
                except tf.errors.OpError as err:
                    results.append({"error": f"cannot decode the image: {_reason(err)}"})
        return [PredictionResult(None, result) for result in results]


def _split(model, outputs, n):
    """Per-image results of one `serving_default` call on n images."""
    if model.task == "image_classification":
        indices = outputs["top_k_indices"].numpy()
        scores = outputs["top_k_scores"].numpy()
        labels = outputs["top_k_labels"].numpy()
        return [
            {"top_k": [
                {"rank": rank, "index": int(index), "label": label.decode("utf-8"), "score": float(score)}
                for rank, (index, score, label) in enumerate(zip(indices[i], scores[i], labels[i]), start=1)
            ]}
            for i in range(n)
        ]
    segmentation = outputs["segmentation"].numpy()
    sizes = outputs["image_size"].numpy()
    results = []
    for i in range(n):
        label_map = segmentation[i, : sizes[i, 0], : sizes[i, 1]]  # the image's own size: no padding
        results.append({"label_map": label_map, "class_fractions": class_fractions(label_map, model.id2label)})
    return results


def class_fractions(label_map, id2label=None):
    """{label: fraction of the pixels}, most frequent first (as `predict` reports them)."""
    counts = np.bincount(label_map.ravel())
    id2label = id2label or {}
    return {
        str(id2label.get(int(i), int(i))): float(counts[i] / label_map.size)
        for i in np.argsort(-counts, kind="stable") if counts[i] > 0
    }


# ---------------------------------------------------------------------------- pipeline steps
def _image_file(readable_file):
    return readable_file.metadata.path, readable_file.read()


class ParseExample(beam.DoFn):
    """(TFRecord file, serialized tf.train.Example) -> (name, image bytes); a record that is no
    Example or lacks the image feature goes to the "errors" output."""

    def __init__(self, image_feature, key_feature):
        self.image_feature = image_feature
        self.key_feature = key_feature

    def process(self, element):
        from google.protobuf.message import DecodeError
        from tensorflow.core.example import example_pb2

        filename, record = element
        fallback = f"{filename}@{hashlib.sha1(record).hexdigest()[:12]}"
        try:
            features = example_pb2.Example.FromString(record).features.feature
        except DecodeError:
            yield beam.pvalue.TaggedOutput(ERRORS, (fallback, "the record is not a tf.train.Example"))
            return
        key = fallback
        if self.key_feature in features and features[self.key_feature].bytes_list.value:
            key = features[self.key_feature].bytes_list.value[0].decode("utf-8", errors="replace")
        values = features[self.image_feature].bytes_list.value if self.image_feature in features else []
        if len(values) != 1:
            found = ", ".join(sorted(features)) or "none"
            yield beam.pvalue.TaggedOutput(
                ERRORS, (key, f"the Example has no single bytes feature {self.image_feature!r} (features: {found})")
            )
            return
        yield key, values[0]


class CheckImage(beam.DoFn):
    """(name, bytes) -> itself if the image header names a known format and at most
    `max_image_pixels` pixels (`preprocessing.check_image_size`, the check `decode_image` makes
    first), else to the "errors" output. Only the header is read here: data corrupt beyond it fails
    in `MobileViTV2ModelHandler.run_inference`, which then runs that batch image by image."""

    def __init__(self, max_image_pixels):
        self.max_image_pixels = max_image_pixels

    def setup(self):
        from keras_mobilevitv2.logs import import_tensorflow

        import_tensorflow(verbose=False)

    def process(self, element):
        import tensorflow as tf

        from keras_mobilevitv2.preprocessing import check_image_size

        key, data = element
        try:
            check_image_size(tf.constant(data), max_pixels=self.max_image_pixels)
        except tf.errors.OpError as err:
            yield beam.pvalue.TaggedOutput(ERRORS, (key, f"cannot decode the image: {_reason(err)}"))
            return
        yield key, data


def label_map_png(label_map):
    """(H, W) class indices -> PNG bytes, 8-bit (16-bit if an index is over 255)."""
    import tensorflow as tf

    dtype = np.uint8 if label_map.max(initial=0) < 256 else np.uint16
    return tf.io.encode_png(label_map.astype(dtype)[..., None]).numpy()


def label_map_name(key):
    """`<stem>-<8 hex of sha1(key)>.png`: readable, and distinct for distinct keys."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(key.rstrip("/")))[0]).strip("._")
    return f"{stem or 'image'}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:8]}.png"


class FormatResult(beam.DoFn):
    """(name, PredictionResult) -> a JSON line; a segmenter's label map is written as a PNG under
    `<output_prefix>label_maps/`. A failed image goes to the "errors" output."""

    def __init__(self, output_prefix):
        self.output_prefix = output_prefix
        self.predicted = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_predicted")

    def process(self, element):
        key, result = element
        inference = result.inference
        if "error" in inference:
            yield beam.pvalue.TaggedOutput(ERRORS, (key, inference["error"]))
            return
        self.predicted.inc()
        if "top_k" in inference:
            yield json.dumps({"image": key, "top_k": inference["top_k"]})
            return
        label_map = inference["label_map"]
        path = f"{self.output_prefix}{LABEL_MAPS}/{label_map_name(key)}"
        with FileSystems.create(path) as f:
            f.write(label_map_png(label_map))
        yield json.dumps({
            "image": key, "label_map": path, "height": int(label_map.shape[0]), "width": int(label_map.shape[1]),
            "class_fractions": inference["class_fractions"],
        })


def _error_line(element):
    key, reason = element
    return json.dumps({"image": key, "error": reason})


class _CountErrors(beam.DoFn):
    def __init__(self):
        self.failed = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "images_failed")

    def process(self, line):
        self.failed.inc()
        yield line


# ---------------------------------------------------------------------------- the pipeline
def _check_arguments(inputs, output_prefix, input_format, top_k, min_batch_size, max_batch_size, max_image_pixels):
    if isinstance(inputs, str):
        inputs = [inputs]
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise BatchInputError("inputs must name at least one file or file pattern")
    if input_format not in INPUT_FORMATS:
        raise BatchInputError(f"input_format must be one of {INPUT_FORMATS}, received {input_format!r}")
    for name, value in (("top_k", top_k), ("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size),
                        ("max_image_pixels", max_image_pixels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BatchInputError(f"{name} must be a positive integer, received {value!r}")
    if min_batch_size > max_batch_size:
        raise BatchInputError(f"min_batch_size {min_batch_size} is over max_batch_size {max_batch_size}")
    if not isinstance(output_prefix, (str, os.PathLike)) or not os.fspath(output_prefix):
        raise BatchInputError(f"output_prefix must be a path or path prefix, received {output_prefix!r}")
    return inputs


def _check_inputs_match(inputs):
    """Every pattern matches at least one file (checked here, before a runner starts)."""
    for pattern in inputs:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as err:  # noqa: BLE001 - Beam raises BeamIOError, or ValueError for an unknown scheme
            raise BatchInputError(f"cannot list {pattern}: {err}") from None
        if not matched:
            raise BatchInputError(f"no files match {pattern}")


def _check_outputs(output_prefix, overwrite):
    if overwrite:
        return
    patterns = [f"{output_prefix}{PREDICTIONS}-*", f"{output_prefix}{ERRORS}-*", f"{output_prefix}{LABEL_MAPS}/*"]
    for pattern, match in zip(patterns, FileSystems.match(patterns)):
        if match.metadata_list:
            from keras_mobilevitv2.outputs import OutputExistsError

            raise OutputExistsError(
                f"{match.metadata_list[0].path} exists (outputs of an earlier run under {output_prefix}); "
                "pass --overwrite (overwrite=True) or choose another output prefix"
            )


def build_pipeline(pipeline, model_path, inputs, output_prefix, input_format="images",
                   image_feature=DEFAULT_IMAGE_FEATURE, key_feature=DEFAULT_KEY_FEATURE, top_k=5,
                   min_batch_size=1, max_batch_size=16, max_image_pixels=MAX_IMAGE_PIXELS, compat=None):
    """Add the read -> check -> RunInference -> write steps to `pipeline` (see the module doc)."""
    if input_format == "images":
        named = (
            pipeline
            | "Patterns" >> beam.Create(inputs)
            | "Match" >> fileio.MatchAll()
            | "Open" >> fileio.ReadMatches()
            | "Read" >> beam.Map(_image_file)
        )
        bad_records = None
    else:
        parsed = (
            pipeline
            | "Patterns" >> beam.Create(inputs)
            | "ReadRecords" >> beam.io.ReadAllFromTFRecord(with_filename=True)
            | "ParseExamples" >> beam.ParDo(ParseExample(image_feature, key_feature)).with_outputs(ERRORS, main="images")
        )
        named, bad_records = parsed.images, parsed[ERRORS]
    checked = named | "CheckImages" >> beam.ParDo(CheckImage(max_image_pixels)).with_outputs(ERRORS, main="images")
    handler = MobileViTV2ModelHandler(
        model_path, top_k=top_k, max_image_pixels=max_image_pixels, compat=compat,
        min_batch_size=min_batch_size, max_batch_size=max_batch_size,
    )
    formatted = (
        checked.images
        | "RunInference" >> RunInference(KeyedModelHandler(handler))
        | "Format" >> beam.ParDo(FormatResult(output_prefix)).with_outputs(ERRORS, main="lines")
    )
    formatted.lines | "WritePredictions" >> beam.io.WriteToText(f"{output_prefix}{PREDICTIONS}", file_name_suffix=".jsonl")
    errors = [checked[ERRORS], formatted[ERRORS]] + ([bad_records] if bad_records is not None else [])
    (
        tuple(errors)
        | "AllErrors" >> beam.Flatten()
        | "ErrorLines" >> beam.Map(_error_line)
        | "CountErrors" >> beam.ParDo(_CountErrors())
        | "WriteErrors" >> beam.io.WriteToText(f"{output_prefix}{ERRORS}", file_name_suffix=".jsonl")
    )
    return pipeline


def predict_batch(model_path, inputs, output_prefix, input_format="images", image_feature=DEFAULT_IMAGE_FEATURE,
                  key_feature=DEFAULT_KEY_FEATURE, top_k=5, min_batch_size=1, max_batch_size=16,
                  max_image_pixels=MAX_IMAGE_PIXELS, compat=None, pipeline_args=None, overwrite=False):
    """Run the batch-inference pipeline and wait for it; returns {"predicted": n, "failed": m,
    "predictions": pattern, "errors": pattern} (counts from the runner's metrics; None if the
    runner reports none).

    Args:
        model_path: a `.keras` file (or anything `from_pretrained` reads), or a SavedModel directory.
        inputs: file patterns of images, or of TFRecords with `input_format="tfrecord"`.
        output_prefix: the outputs' path prefix (`out/` for a directory, `gs://b/run1-`, ...).
        image_feature, key_feature: the Example features holding the encoded image and its name.
        top_k: classes per image of a classifier.
        min_batch_size, max_batch_size: the batch sizes of `RunInference` (Beam's `BatchElements`).
        max_image_pixels: images whose header claims more pixels are errors, as in `predict`.
        compat: for a PyTorch checkpoint `from_pretrained` converts ("cvnets" or "transformers").
        pipeline_args: standard Beam pipeline options (`["--runner=FlinkRunner", ...]`); default
            DirectRunner.
        overwrite: replace the outputs of an earlier run under `output_prefix` (otherwise
            `OutputExistsError`).

    Raises `BatchInputError` (a ValueError) for a bad argument or an input pattern that matches
    no file.
    """
    model_path = os.fspath(model_path)
    output_prefix = os.fspath(output_prefix)
    inputs = _check_arguments(inputs, output_prefix, input_format, top_k, min_batch_size, max_batch_size,
                              max_image_pixels)
    if "://" not in model_path and not os.path.exists(model_path) and model_path.endswith((".keras", ".pt", ".safetensors")):
        raise FileNotFoundError(f"model file not found: {model_path}")
    _check_inputs_match(inputs)
    _check_outputs(output_prefix, overwrite)
    if "://" not in output_prefix and os.path.dirname(output_prefix):
        os.makedirs(os.path.dirname(output_prefix), exist_ok=True)
    options = PipelineOptions(list(pipeline_args or []))
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"
    pipeline = beam.Pipeline(options=options)
    build_pipeline(
        pipeline, model_path, inputs, output_prefix, input_format, image_feature, key_feature, top_k,
        min_batch_size, max_batch_size, max_image_pixels, compat,
    )
    result = pipeline.run()
    result.wait_until_finish()
    counts = {}
    try:
        for counter in result.metrics().query(beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
            counts[counter.key.metric.name] = counter.committed if counter.committed is not None else counter.attempted
    except (NotImplementedError, KeyError):  # a runner without metrics
        counts = {}
    return {
        "predicted": counts.get("images_predicted", 0 if counts else None),
        "failed": counts.get("images_failed", 0 if counts else None),
        "predictions": f"{output_prefix}{PREDICTIONS}-*.jsonl",
        "errors": f"{output_prefix}{ERRORS}-*.jsonl",
    }
