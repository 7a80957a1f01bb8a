"""Replay TF Serving requests against a SavedModel in a fresh process, as the server would.

    python tests/serving_client.py SAVED_MODEL_DIR REQUESTS.tfrecord OUT.npz

REQUESTS is a TFRecord of `tensorflow_serving.apis.prediction_log_pb2.PredictionLog`s (the
format of `assets.extra/tf_serving_warmup_requests`), or a `.json` file holding the body of one
REST `:predict` request, decoded as TF Serving's REST API documents it (`api_rest.md`, "Encoding
binary values"): `{"signature_name": ..., "instances": [...]}` (row format; an instance of a
one-input signature is the value itself or `{input_name: value}`) or `{"inputs": {name: [...]}}`
(columnar), where a value `{"b64": "..."}` of a tf.string input is base64-decoded. Each `PredictRequest` is parsed back with the
serving protos, its input `TensorProto`s turned into arrays with `tf.make_ndarray`, and the
SavedModel signature it names is called with them by input name. OUT.npz holds, for request i,
`i/signature`, `i/model_name`, `i/out/<output>` (tf.string outputs as unicode) and, if the call
failed, `i/error_type` and `i/error` (the exception's class name and message).

Imports neither keras nor keras_mobilevitv2: only what a serving process has.
"""

import base64
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402


def _storable(array):
    """tf.string outputs (bytes objects) -> unicode, so the .npz loads without pickle."""
    array = np.asarray(array)
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[str])(array)
    return array


def _rest_value(value, dtype):
    """One JSON value of a tensor, as TF Serving decodes it: `{"b64": s}` (only key) for tf.string."""
    if isinstance(value, list):
        return [_rest_value(v, dtype) for v in value]
    if isinstance(value, dict):
        if dtype != tf.string or set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ValueError(f"a JSON object as a tensor value must be {{'b64': str}} for a tf.string input: {value}")
        return base64.b64decode(value["b64"], validate=True)
    return value.encode("utf-8") if dtype == tf.string else value


def rest_requests(path, loaded):
    """[(model name, signature name, {input: array})] of a REST predict body (see the module doc)."""
    with open(path, encoding="utf-8") as f:
        body = json.load(f)
    signature_name = body.get("signature_name", "serving_default")
    specs = loaded.signatures[signature_name].structured_input_signature[1]
    if "instances" in body:
        names = list(specs)
        # As TF Serving: an instance is {input: value} if it is an object other than {"b64": ...}.
        rows = [row if isinstance(row, dict) and set(row) != {"b64"} else {names[0]: row} for row in body["instances"]]
        columns = {name: [row[name] for row in rows] for name in names}
    else:
        columns = body["inputs"]
    inputs = {
        name: np.array(_rest_value(value, specs[name].dtype), dtype=object if specs[name].dtype == tf.string else None)
        for name, value in columns.items()
    }
    return [(os.path.basename(path), signature_name, inputs)]


def pb_requests(path):
    """[(model name, signature name, {input: array})] of a TFRecord of PredictionLogs."""
    requests = []
    for record in tf.data.TFRecordDataset(path):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        requests.append((request.model_spec.name, request.model_spec.signature_name or "serving_default", inputs))
    return requests


def main(saved_model_dir, requests_path, out_path):
    loaded = tf.saved_model.load(saved_model_dir)
    results = {}
    requests = rest_requests(requests_path, loaded) if requests_path.endswith(".json") else pb_requests(requests_path)
    for i, (model_name, signature_name, inputs) in enumerate(requests):
        results[f"{i}/signature"] = np.array(signature_name)
        results[f"{i}/model_name"] = np.array(model_name)
        signature = loaded.signatures[signature_name]
        try:
            outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
        except Exception as err:  # recorded for the test to assert on
            results[f"{i}/error_type"] = np.array(type(err).__name__)
            results[f"{i}/error"] = np.array(str(err))
            continue
        for name, value in outputs.items():
            results[f"{i}/out/{name}"] = _storable(value.numpy())
    np.savez(out_path, **results)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
