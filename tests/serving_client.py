"""Replay TF Serving requests against a SavedModel in a fresh process, as the server would.

    python tests/serving_client.py SAVED_MODEL_DIR REQUESTS.tfrecord OUT.npz

REQUESTS is a TFRecord of `tensorflow_serving.apis.prediction_log_pb2.PredictionLog`s (the
format of `assets.extra/tf_serving_warmup_requests`). Each `PredictRequest` is parsed back with the
serving protos, its input `TensorProto`s turned into arrays with `tf.make_ndarray`, and the
SavedModel signature it names is called with them by input name. OUT.npz holds, for request i,
`i/signature`, `i/model_name`, `i/out/<output>` (tf.string outputs as unicode) and, if the call
failed, `i/error_type` and `i/error` (the exception's class name and message).

Imports neither keras nor keras_mobilevitv2: only what a serving process has.
"""

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


def main(saved_model_dir, requests_path, out_path):
    loaded = tf.saved_model.load(saved_model_dir)
    results = {}
    for i, record in enumerate(tf.data.TFRecordDataset(requests_path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        results[f"{i}/signature"] = np.array(request.model_spec.signature_name or "serving_default")
        results[f"{i}/model_name"] = np.array(request.model_spec.name)
        signature = loaded.signatures[request.model_spec.signature_name or "serving_default"]
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
