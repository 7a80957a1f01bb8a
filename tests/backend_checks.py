"""The model on one Keras backend, run by tests/test_backends.py as `KERAS_BACKEND=<name> python
tests/backend_checks.py <work dir>` in a process of its own.

The work dir holds what the parent (TensorFlow) process wrote: `manifest.json` (each task's config),
`inputs.npy`, and per task `<task>.keras`, `<task>.weights.h5` (every weight and BatchNorm statistic
randomized) and `<task>.tf.<output>.npy` (TensorFlow's outputs on the inputs). Every check runs,
whatever failed before it; the results go to `<work dir>/results.<backend>.json` as
{check: {"ok": bool, "detail": str}}, so the parent reports each failure by name. The checks, per
task: `import` (the model modules import no TensorFlow), `build` (output shapes), `weights_h5` and
`keras_file` (TensorFlow's outputs within 1e-4 of their std), `predict`, `save` (a `.keras` file of
this backend, `<task>.<backend>.keras`, that the parent loads on TensorFlow), and for the
classifier and the segmenter `fit` (2 steps: finite loss, weights moved).
"""

import json
import os
import sys
import traceback

import numpy as np

TASKS = ("backbone", "classifier", "segmenter")
TOLERANCE = 1e-4  # max |difference| / std of TensorFlow's output


def check_names():
    """Every check this script reports, in order."""
    names = ["import"]
    for task in TASKS:
        names += [f"{task}/{step}" for step in ("build", "weights_h5", "keras_file", "predict", "save")]
    return names + ["classifier/fit", "segmenter/fit"]


def build(task, config):
    from keras_mobilevitv2.backbone import MobileViTV2Backbone
    from keras_mobilevitv2.config import MobileViTV2Config
    from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
    from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter

    cls = {"backbone": MobileViTV2Backbone, "classifier": MobileViTV2ImageClassifier, "segmenter": MobileViTV2SemanticSegmenter}
    return cls[task](MobileViTV2Config.from_dict(config))


def named_outputs(outputs):
    """{name: array}: the backbone's dict flattened (`hidden_states.0` ..), a task's logits as `logits`."""
    import keras

    if not isinstance(outputs, dict):
        return {"logits": keras.ops.convert_to_numpy(outputs)}
    named = {}
    for key, value in outputs.items():
        if isinstance(value, (list, tuple)):
            named.update({f"{key}.{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(value)})
        else:
            named[key] = keras.ops.convert_to_numpy(value)
    return named


def max_rel_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape}, TensorFlow's {expected.shape}")
    return float(np.max(np.abs(actual - expected)) / (np.std(expected) + 1e-12))


def compare(outputs, expected):
    """Raise naming the outputs that differ from TensorFlow's; returns the worst relative error."""
    got = named_outputs(outputs)
    if sorted(got) != sorted(expected):
        raise AssertionError(f"outputs {sorted(got)}, TensorFlow's {sorted(expected)}")
    errors = {name: max_rel_error(got[name], expected[name]) for name in expected}
    bad = {name: error for name, error in errors.items() if not error <= TOLERANCE}
    if bad:
        raise AssertionError(f"outputs differ from TensorFlow's by more than {TOLERANCE} of their std: {bad}")
    return max(errors.values())


def expected_shapes(task, config, batch, size):
    """The output shapes the architecture implies, derived from the config alone."""
    from keras_mobilevitv2.config import MobileViTV2Config, stage_widths

    config = MobileViTV2Config.from_dict(config)
    widths = stage_widths(config)
    os_ = config.output_stride
    strides = [2, 4, 8, 16, 32]  # stem /2, then stages 1 .. 5; dilated stages keep the resolution
    sides = [size // min(s, os_) for s in strides]
    hidden = {f"hidden_states.{i}": (batch, sides[i], sides[i], widths[f"stage{i + 1}"]) for i in range(5)}
    if task == "backbone":
        return {**hidden, "last_hidden_state": hidden["hidden_states.4"], "pooler_output": (batch, widths["stage5"])}
    if task == "classifier":
        return {"logits": (batch, config.num_labels)}
    return {"logits": (batch, size // os_, size // os_, config.num_labels)}


def weights_moved(before, model):
    import keras

    after = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    moved = sum(not np.array_equal(a, b) for a, b in zip(before, after))
    if moved == 0:
        raise AssertionError("no trainable weight changed")
    return f"{moved} of {len(after)} trainable weights changed"


def main(work_dir):
    import keras

    backend = keras.backend.backend()
    manifest = json.load(open(os.path.join(work_dir, "manifest.json")))
    x = np.load(os.path.join(work_dir, "inputs.npy"))
    results = {}

    def run(name, fn):
        try:
            detail = fn()
            results[name] = {"ok": True, "detail": "" if detail is None else str(detail)}
        except Exception as err:  # recorded, reported by the parent under the check's name
            tail = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
            results[name] = {"ok": False, "detail": f"{type(err).__name__}: {err}\n{tail}"[-3000:]}

    def imports():
        import importlib

        for module in ("backbone", "image_classifier", "segmenter", "saving"):
            importlib.import_module(f"keras_mobilevitv2.{module}")
            if "tensorflow" in sys.modules:
                raise AssertionError(f"importing keras_mobilevitv2.{module} on {backend} imported TensorFlow")

    run("import", imports)
    models = {}

    def need(task, kind, check):
        if (task, kind) not in models:
            raise RuntimeError(f"not run: it needs the model of {task}/{check}, which failed")
        return models[task, kind]

    for task in TASKS:
        config = manifest[task]["config"]
        expected = {name: np.load(os.path.join(work_dir, f"{task}.tf.{name}.npy")) for name in manifest[task]["outputs"]}

        def built():
            model = models[task, "built"] = build(task, config)
            shapes = {k: tuple(v.shape) for k, v in named_outputs(model(x[:1], training=False)).items()}
            if shapes != expected_shapes(task, config, 1, x.shape[1]):
                raise AssertionError(f"output shapes {shapes}, expected {expected_shapes(task, config, 1, x.shape[1])}")

        def from_weights_h5():
            model = models[task, "h5"] = build(task, config)
            model.load_weights(os.path.join(work_dir, f"{task}.weights.h5"))
            return f"max error / std {compare(model(x, training=False), expected):.2e}"

        def from_keras_file():
            from keras_mobilevitv2.saving import load_model

            model = models[task, "keras"] = load_model(os.path.join(work_dir, f"{task}.keras"))
            return f"max error / std {compare(model(x, training=False), expected):.2e}"

        def predicted():
            outputs = need(task, "keras", "keras_file").predict(x, batch_size=2, verbose=0)
            return f"max error / std {compare(outputs, expected):.2e}"

        def saved():
            need(task, "keras", "keras_file").save(os.path.join(work_dir, f"{task}.{backend}.keras"))

        run(f"{task}/build", built)
        run(f"{task}/weights_h5", from_weights_h5)
        run(f"{task}/keras_file", from_keras_file)
        run(f"{task}/predict", predicted)
        run(f"{task}/save", saved)

    def fit(task):
        from keras_mobilevitv2.config import MobileViTV2Config
        from keras_mobilevitv2.segmenter import SegmentationLoss

        model = need(task, "h5", "weights_h5")
        rng = np.random.default_rng(0)
        num_labels = MobileViTV2Config.from_dict(manifest[task]["config"]).num_labels
        labels = rng.integers(0, num_labels, (len(x),) + ((x.shape[1], x.shape[2]) if task == "segmenter" else ()))
        if task == "segmenter":
            labels[:, :8] = 255  # ignored pixels
            loss = SegmentationLoss()
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
        before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        history = model.fit(x, labels, batch_size=len(x) // 2, epochs=1, verbose=0).history["loss"]
        if len(history) != 1 or not np.isfinite(history[0]):
            raise AssertionError(f"loss {history}")
        steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        if steps != 2:
            raise AssertionError(f"{steps} optimizer steps, expected 2")
        return f"loss {history[0]:.4f}; {weights_moved(before, model)}"

    for task in ("classifier", "segmenter"):
        run(f"{task}/fit", lambda: fit(task))
    missing = set(check_names()) ^ set(results)
    assert not missing, missing
    with open(os.path.join(work_dir, f"results.{backend}.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
