"""TF Serving messages the tensorflow-serving-api wheel does not ship, built from their fields.

`BatchingParameters` (tensorflow_serving/servables/tensorflow/session_bundle_config.proto) and
`MonitoringConfig` / `PrometheusConfig` (tensorflow_serving/config/monitoring_config.proto), with
the field names, numbers and types of those files (TF Serving 2.21), so the tests can parse our
text protos with `google.protobuf.text_format` as strictly as the server does: an unknown field, a
wrong type or a scalar where a wrapper message is expected is a `ParseError`.

    BatchingParameters = message_class("BatchingParameters")
"""

from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2

try:
    from google.protobuf import message_factory

    _get_class = message_factory.GetMessageClass
except (ImportError, AttributeError):  # older protobuf
    from google.protobuf import reflection

    def _get_class(descriptor):
        return reflection.message_factory.MessageFactory().GetPrototype(descriptor)


_T = descriptor_pb2.FieldDescriptorProto
# message -> [(field name, number, type, label, type name of a message field)]
FIELDS = {
    "BatchingParameters": [
        ("max_batch_size", 1, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _T.TYPE_INT64, _T.LABEL_REPEATED, None),
        ("pad_variable_length_inputs", 7, _T.TYPE_BOOL, _T.LABEL_OPTIONAL, None),
        ("enable_large_batch_splitting", 8, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
    ],
    "PrometheusConfig": [
        ("enable", 1, _T.TYPE_BOOL, _T.LABEL_OPTIONAL, None),
        ("path", 2, _T.TYPE_STRING, _T.LABEL_OPTIONAL, None),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, ".tensorflow.serving.testcopy.PrometheusConfig"),
    ],
}
_PACKAGE = "tensorflow.serving.testcopy"  # not TF Serving's package: never clashes with a real pb2


def _pool():
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="tests/serving_protos.proto", package=_PACKAGE, syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    for name, fields in FIELDS.items():
        message = file.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name
    pool.Add(file)
    return pool


_POOL = _pool()


def message_class(name):
    """The message class of `name` ("BatchingParameters", "MonitoringConfig", "PrometheusConfig")."""
    return _get_class(_POOL.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
