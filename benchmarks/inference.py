"""Inference speed of the Keras MobileViTV2 against transformers' PyTorch model, on this machine.

    python benchmarks/inference.py                       # widths 0.5/1.0/2.0, batch 1 and 8, + segmentation
    python benchmarks/inference.py --quick               # 3 repeats, fewer paths, width 0.5 and 1.0
    python benchmarks/inference.py --widths 1.0 --batch-sizes 8 --paths torch,compiled --repeats 10
    python benchmarks/inference.py --json results.json

For each configuration, in one process, on the same random inputs:

- torch: transformers' model (the reference), eval mode, `torch.inference_mode()`, NCHW;
  `torch channels_last` (with --torch-channels-last) is the same model in channels-last memory;
- eager: `model(x, training=False)`; predict: `model.predict(x, batch_size=B)`;
- tf.function / tf.function XLA: `tf.function(lambda x: model(x, training=False), jit_compile=...)`;
- compiled / compiled XLA: `keras_mobilevitv2.compile_for_inference(model, jit_compile=...)` (the
  BatchNorm-folded graph); compiled TFLite: `compile_for_inference(model, runtime="tflite")` (that
  graph converted for the input shape, run by TFLite's XNNPACK kernels, any batch);
- SavedModel: `keras_mobilevitv2.export.export_saved_model` (the folded graph, constant weights),
  reloaded, its `predict_pixels` signature (which also returns probabilities / top-k, or the
  segmenter's resized argmax);
  SavedModel compiled: `tf.saved_model.save` of the compiled function;
- TFLite fp32 / fp16 / int8 / full int8: `keras_mobilevitv2.export.export_tflite` (float32,
  float16 weights, dynamic-range int8, full-integer int8 calibrated on the sample photos), run with
  `keras_mobilevitv2.litert.interpreter` (LiteRT, else tf.lite) at batch 1 only (the export has a
  fixed (1, H, W, 3) input); the note gives the file's size;
- onnxruntime: `keras_mobilevitv2.onnx_export.export_onnx` (free batch and size) in an onnxruntime
  CPU session (skipped with a note when onnxruntime or tf2onnx is missing).

Both frameworks compute the same function: the PyTorch model's randomized weights are converted
to Keras (`benchmarks/common.py`) and the outputs are compared once before timing.

Columns: latency = median over `--repeats` calls after warm-up (in blocks interleaved across paths),
images/s = batch / latency, x torch = torch latency / latency (above 1: faster than the
reference), % peak = model FLOP/s / peak FLOP/s, with FLOPs = 2 x MACs counted analytically on
the reference (convs and linear layers) and peak = the best float32 2048x2048 matmul of the same
framework in the same run.
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (sets KERAS_BACKEND / TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)
import numpy as np  # noqa: E402

ALL_PATHS = (
    "torch",
    "torch channels_last",
    "eager",
    "predict",
    "tf.function",
    "tf.function XLA",
    "compiled",
    "compiled XLA",
    "compiled TFLite",
    "SavedModel",
    "SavedModel compiled",
    "TFLite fp32",
    "TFLite fp16",
    "TFLite int8",
    "TFLite full int8",
    "onnxruntime",
)
# XLA of the Keras model is 10-40x slower than everything else on CPU (its depthwise convolution);
# it and the channels-last torch model are opt-in.
DEFAULT_PATHS = tuple(p for p in ALL_PATHS if p not in ("torch channels_last", "tf.function XLA"))
QUICK_PATHS = ("torch", "eager", "predict", "tf.function", "compiled", "compiled TFLite", "SavedModel", "TFLite fp32")
TFLITE_QUANTIZATION = {
    "TFLite fp32": None, "TFLite fp16": "float16", "TFLite int8": "dynamic_int8", "TFLite full int8": "int8"
}
QUANTIZED_PATHS = ("TFLite fp16", "TFLite int8", "TFLite full int8")  # not held to the parity tolerance


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints a markdown table per run; see the module docstring.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Paths: " + ", ".join(ALL_PATHS),
    )
    parser.add_argument("--widths", default="0.5,1.0,2.0", help="comma-separated width multipliers (classification)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (classification)")
    parser.add_argument("--image-size", type=int, default=256, help="classification input size")
    parser.add_argument(
        "--segmentation",
        default="1.0",
        help="comma-separated widths of the 512x512, output-stride-16 DeepLabV3 runs (batch 1); 'none' to skip",
    )
    parser.add_argument("--segmentation-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per path (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per path first")
    parser.add_argument("--paths", default=None, help="comma-separated subset of the paths (default: all but "
                        "'torch channels_last' and 'tf.function XLA')")
    parser.add_argument("--torch-channels-last", action="store_true", help="add the 'torch channels_last' path")
    parser.add_argument("--quick", action="store_true", help="widths 0.5,1.0, 3 repeats, 1 warm-up, the main paths")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of TF, torch and TFLite "
                        "(default: one per core)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.widths = "0.5,1.0" if args.widths == parser.get_default("widths") else args.widths
        args.repeats = min(args.repeats, 3)
        args.warmup = min(args.warmup, 1)
        args.paths = args.paths or ",".join(QUICK_PATHS)
    paths = DEFAULT_PATHS if args.paths is None else tuple(p.strip() for p in args.paths.split(",") if p.strip())
    if args.torch_channels_last and "torch channels_last" not in paths:
        paths = paths + ("torch channels_last",)
    unknown = [p for p in paths if p not in ALL_PATHS]
    if unknown:
        parser.error(f"unknown paths {unknown}; choose from {', '.join(ALL_PATHS)}")
    if "torch" not in paths:
        paths = ("torch",) + paths  # the reference every ratio is taken against
    args.paths = paths
    args.widths = [float(w) for w in args.widths.split(",") if w.strip()]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    args.segmentation = (
        [] if args.segmentation.strip().lower() == "none" else [float(w) for w in args.segmentation.split(",") if w.strip()]
    )
    return args


# ---------------------------------------------------------------------------- paths
def _numpy_tree(outputs):
    import tensorflow as tf

    return tf.nest.map_structure(lambda t: t.numpy(), outputs)


def _saved_model_path(keras_model, directory, compiled):
    """The reloaded `predict_pixels` (export_saved_model) or a SavedModel of the compiled function."""
    import tensorflow as tf

    if compiled:
        import keras_mobilevitv2 as mv2

        module = tf.Module()
        module.infer = mv2.compile_for_inference(keras_model).function
        tf.saved_model.save(module, directory, signatures={"serving_default": module.infer})
        return tf.saved_model.load(directory).signatures["serving_default"]
    from keras_mobilevitv2.export import export_saved_model

    export_saved_model(keras_model, directory)
    return tf.saved_model.load(directory).signatures["predict_pixels"]


def _tflite_runner(keras_model, quantization, image_size, directory, threads):
    """(run(x), file size in bytes) of the `export_tflite` file of `quantization`, in LiteRT."""
    from keras_mobilevitv2.export import export_tflite
    from keras_mobilevitv2.litert import interpreter as make_interpreter

    path = export_tflite(
        keras_model, os.path.join(directory, f"model-{quantization}.tflite"), quantization=quantization,
        input_size=(image_size, image_size), overwrite=True,  # one file per quantization, rewritten per config
    )
    interpreter = make_interpreter(model_path=path, num_threads=threads or os.cpu_count())
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]

    def run(x):
        interpreter.set_tensor(input_index, x)
        interpreter.invoke()
        return interpreter.get_tensor(output_index)

    return run, os.path.getsize(path)


def _onnx_runner(keras_model, directory, threads):
    """run(x) of an onnxruntime session of the `export_onnx` file, and its size; None if not installed."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("tf2onnx") is None:
        return None, None
    from keras_mobilevitv2.onnx_export import export_onnx, onnx_session

    path = export_onnx(keras_model, os.path.join(directory, "onnx", "model.onnx"), overwrite=True)
    session = onnx_session(path, num_threads=threads or os.cpu_count())
    return (lambda x: session.run(None, {"pixel_values": x})[0]), os.path.getsize(path)


def build_paths(names, torch_model, keras_model, x, image_size, workdir, threads):
    """{path name: zero-argument callable that returns when its result is ready}, and notes (skipped
    paths, file sizes)."""
    import tensorflow as tf
    import torch

    import keras_mobilevitv2 as mv2

    batch = x.shape[0]
    nchw = common.to_nchw(x)
    x_tf = tf.constant(x)
    paths, notes = {}, {}
    for name in names:
        if name == "torch":
            paths[name] = lambda: common.torch_logits(torch_model, nchw)
        elif name == "torch channels_last":
            cl_model = __import__("copy").deepcopy(torch_model).to(memory_format=torch.channels_last)
            cl_input = nchw.contiguous(memory_format=torch.channels_last)
            paths[name] = lambda m=cl_model, i=cl_input: common.torch_logits(m, i)
        elif name == "eager":
            paths[name] = lambda: _numpy_tree(keras_model(x_tf, training=False))
        elif name == "predict":
            paths[name] = lambda: keras_model.predict(x, batch_size=batch, verbose=0)
        elif name in ("tf.function", "tf.function XLA"):
            fn = tf.function(lambda t: keras_model(t, training=False), jit_compile=name.endswith("XLA"))
            paths[name] = lambda fn=fn: _numpy_tree(fn(x_tf))
        elif name in ("compiled", "compiled XLA"):
            fn = mv2.compile_for_inference(keras_model, jit_compile=name.endswith("XLA"))
            paths[name] = lambda fn=fn: _numpy_tree(fn(x_tf))
        elif name == "compiled TFLite":
            fn = mv2.compile_for_inference(keras_model, runtime="tflite", num_threads=threads)
            paths[name] = lambda fn=fn: fn.tflite(x)  # numpy in and out
        elif name in ("SavedModel", "SavedModel compiled"):
            directory = os.path.join(workdir, name.replace(" ", "_"))
            signature = _saved_model_path(keras_model, directory, compiled=name.endswith("compiled"))
            kwargs_name = "pixel_values"
            paths[name] = lambda s=signature, k=kwargs_name: _numpy_tree(s(**{k: x_tf}))
        elif name in TFLITE_QUANTIZATION:
            if batch != 1:
                notes[name] = "batch 1 only"
                continue
            run, size = _tflite_runner(keras_model, TFLITE_QUANTIZATION[name], image_size, workdir, threads)
            paths[name] = lambda run=run: run(x)
            notes[name] = f"{size / 1e6:.1f} MB"
        elif name == "onnxruntime":
            run, size = _onnx_runner(keras_model, workdir, threads)
            if run is None:
                notes[name] = "onnxruntime / tf2onnx not installed (extra [onnx])"
                continue
            paths[name] = lambda run=run: run(x)
            notes[name] = f"{size / 1e6:.1f} MB"
        else:
            raise ValueError(name)
    return paths, notes


def check_paths(paths, reference, tolerance):
    """Relative error of each TF/TFLite path's logits against the torch reference (before timing)."""
    errors = {}
    for name, fn in paths.items():
        if name.startswith("torch"):
            continue
        out = fn()
        if isinstance(out, dict):  # a signature's outputs; "output_0" for the compiled SavedModel
            out = out["logits"] if "logits" in out else next(iter(out.values()))
        errors[name] = common.relative_error(out, reference)
        quantized = name in QUANTIZED_PATHS
        if not quantized and not errors[name] <= tolerance:
            raise AssertionError(f"path {name!r} disagrees with torch: max diff / std = {errors[name]:.2e} > {tolerance}")
    return errors


# ---------------------------------------------------------------------------- one configuration
def run_config(args, task, width, batch, image_size, output_stride, peaks, workdir):
    common.log(f"== {task} width {width} batch {batch} {image_size}x{image_size} output_stride {output_stride}")
    torch_model, keras_model = common.make_twins(task, width, output_stride=output_stride)
    parity = common.check_twins(torch_model, keras_model, image_size)
    macs = common.count_macs(torch_model, image_size)
    x = np.random.RandomState(1).rand(batch, image_size, image_size, 3).astype(np.float32)
    paths, notes = build_paths(args.paths, torch_model, keras_model, x, image_size, workdir, args.threads)
    reference = common.torch_logits(torch_model, common.to_nchw(x)).numpy()
    if reference.ndim == 4:
        reference = reference.transpose(0, 2, 3, 1)
    errors = check_paths(paths, reference, common.PARITY_TOLERANCE)
    times = common.interleaved_times(paths, repeats=args.repeats, warmup=args.warmup, log=common.log)
    torch_latency = common.median(times["torch"])
    rows = []
    model_name = f"{'cls' if task == 'image_classification' else 'seg os' + str(output_stride)} w{width} {image_size}px"
    for name in args.paths:
        row = {"model": model_name, "batch": batch, "path": name, "task": task, "width": width,
               "image_size": image_size, "output_stride": output_stride}
        if name not in times:
            row["note"] = notes.get(name, "not run")
            rows.append(row)
            continue
        latency = common.median(times[name])
        peak = peaks["torch" if name.startswith("torch") else "tensorflow"]
        row.update(
            latency_ms=latency * 1000,
            images_per_s=batch / latency,
            vs_torch=torch_latency / latency,
            peak_fraction=100.0 * 2 * macs * batch / latency / peak,
            max_rel_error=errors.get(name),
            times_ms=[t * 1000 for t in times[name]],
        )
        notes_of_path = [notes[name]] if name in notes else []
        if name in QUANTIZED_PATHS:
            notes_of_path.append(f"error {errors[name]:.1e} of std")
        if notes_of_path:
            row["note"] = ", ".join(notes_of_path)
        rows.append(row)
    common.log(f"   parity check {parity:.1e}; GMACs/image {macs / 1e9:.3f}")
    del keras_model, torch_model
    import keras

    keras.backend.clear_session()
    return rows, {"macs_per_image": macs, "parity": parity}


def main(argv=None):
    args = parse_args(argv)
    threads, info, peaks = common.start_run(args.threads)
    configs = [("image_classification", w, b, args.image_size, 32) for w in args.widths for b in args.batch_sizes]
    configs += [("semantic_segmentation", w, 1, args.segmentation_size, 16) for w in args.segmentation]
    workdir = tempfile.mkdtemp(prefix="mobilevitv2-bench-")
    rows, extras = [], {}
    try:
        for task, width, batch, size, stride in configs:
            config_rows, extra = run_config(args, task, width, batch, size, stride, peaks, workdir)
            rows += config_rows
            extras[f"{task} w{width} {size}px os{stride}"] = extra
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    columns = [
        ("model", "model", None),
        ("batch", "batch", "{}"),
        ("path", "path", None),
        ("latency_ms", "latency ms", "{:.1f}"),
        ("images_per_s", "images/s", "{:.1f}"),
        ("vs_torch", "x torch", "{:.2f}"),
        ("peak_fraction", "% peak", "{:.1f}"),
        ("note", "note", None),
    ]
    common.report(rows, columns, args, threads, info, peaks, models=extras)
    return rows


if __name__ == "__main__":
    main()
