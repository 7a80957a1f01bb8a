"""What the inference and training benchmarks share: threads, twin models, timing, FLOPs, tables.

Twin models: transformers' PyTorch MobileViTV2 with every weight and buffer randomized
(`tests.conftest.randomize_torch_module`), written with `save_pretrained` and converted with
`conversion.convert.convert_checkpoint(dir, compat="transformers")`, so both frameworks compute
the same function on the same inputs; `check_twins` asserts it before anything is timed.

Timing is interleaved in blocks (`interleaved_times`): a few rounds, in each every path runs a
block of back-to-back calls after one untimed call, so each path is timed in its steady state and
load from other processes on the machine hits every path alike. Reported: the median.

PyTorch runs with its defaults (OpenMP threads spin a while after each call, then sleep). Its
OpenMP is sensitive to a loaded machine: a spinning thread waits at every barrier for a
descheduled partner (with OMP_WAIT_POLICY=ACTIVE beside TF in this process, 2.5 s instead of
45 ms a call); OMP_WAIT_POLICY=PASSIVE avoids that but halves its batch-1 speed on a quiet machine.
Measure when the load average is low.

FLOPs are counted analytically on the PyTorch reference: forward hooks on every `nn.Conv2d` and
`nn.Linear` give multiply-accumulates = output elements x (input channels / groups) x kernel area
(x in_features for a linear layer); FLOPs = 2 x MACs. Element-wise work (norms, activations, the
attention's score-weighted sum) is not counted.
"""

import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

PARITY_TOLERANCE = 1e-4  # max |keras - torch| / std(torch), as in tests/test_parity_transformers.py
from keras_mobilevitv2.tasks import HEAD_TASK_NAMES as TASKS  # noqa: E402


def log(message):
    """Progress on stderr; the tables go to stdout."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- threads
def configure_threads(threads=None):
    """Give TensorFlow (intra-op), PyTorch and TFLite the same number of compute threads; call before
    either framework runs an op. None keeps each framework's default (one per core). The inter-op
    pools keep their defaults: setting TF's to 1 made no difference measurable on this shared machine.
    Returns the settings, for the report.
    """
    import tensorflow as tf
    import torch

    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        torch.set_num_threads(threads)
    return {
        "tf_intra_op_threads": threads if threads is not None else "default (one per core)",
        "tf_inter_op_threads": "default",
        "torch_threads": torch.get_num_threads(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset (oneDNN on)"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
    }


# ---------------------------------------------------------------------------- machine
def machine_info():
    """CPU model, core count, library versions, load average."""
    import keras
    import tensorflow as tf
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")
                    flags = " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "nproc": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# ---------------------------------------------------------------------------- twin models
def _hf_classes():
    import transformers

    from keras_mobilevitv2.tasks import task_class

    return {task: getattr(transformers, task_class(task).hf_architecture) for task in TASKS}


def make_twins(task, width, output_stride=32, num_labels=None, seed=0):
    """(torch model in eval mode, Keras model): the same randomized weights in both frameworks."""
    import transformers

    from conversion.convert import convert_checkpoint
    from tests.conftest import randomize_torch_module

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, received {task!r}")
    if num_labels is None:
        num_labels = 1000 if task == "image_classification" else 21
    config = transformers.MobileViTV2Config(
        width_multiplier=width, output_stride=output_stride, num_labels=num_labels
    )
    torch_model = randomize_torch_module(_hf_classes()[task](config), seed).eval()
    with tempfile.TemporaryDirectory(prefix="mobilevitv2-bench-") as directory:
        torch_model.save_pretrained(directory)
        keras_model = convert_checkpoint(directory, compat="transformers", verbose=False)
    return torch_model, keras_model


def torch_logits(torch_model, nchw):
    import torch

    with torch.inference_mode():
        return torch_model(nchw).logits


def to_nchw(nhwc):
    import torch

    return torch.from_numpy(np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2)))


def relative_error(actual, expected):
    """max |actual - expected| / std(expected)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / (np.std(expected) + 1e-12))


def check_twins(torch_model, keras_model, image_size, seed=0):
    """Assert both models compute the same logits on one random image; returns the relative error."""
    x = np.random.RandomState(seed).rand(1, image_size, image_size, 3).astype(np.float32)
    expected = torch_logits(torch_model, to_nchw(x)).numpy()
    if expected.ndim == 4:
        expected = expected.transpose(0, 2, 3, 1)
    error = relative_error(np.asarray(keras_model(x, training=False)), expected)
    if not error <= PARITY_TOLERANCE:
        raise AssertionError(f"Keras and PyTorch twins disagree: max diff / std = {error:.2e} > {PARITY_TOLERANCE}")
    return error


# ---------------------------------------------------------------------------- FLOPs
def count_macs(torch_model, image_size):
    """Multiply-accumulates of one forward pass of one image (convs and linear layers; see above)."""
    import torch

    total = [0]

    def conv_hook(module, inputs, output):
        kh, kw = module.kernel_size
        total[0] += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module, inputs, output):
        total[0] += output.numel() * module.in_features

    handles = []
    for module in torch_model.modules():
        if isinstance(module, torch.nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        torch_logits(torch_model, torch.zeros(1, 3, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def peak_flops(sizes=(512, 1024, 2048), repeats=10):
    """Best float32 matmul FLOP/s of TensorFlow and of PyTorch, {"tensorflow": ..., "torch": ...}.

    The best over square sizes `sizes` and `repeats` interleaved calls each: a peak, so the
    fastest call counts (other load on the machine only ever slows a call down).
    """
    import tensorflow as tf
    import torch

    tf_matmul = tf.function(lambda x, y: tf.matmul(x, y))
    best = {"tensorflow": 0.0, "torch": 0.0}
    rng = np.random.RandomState(0)
    for size in sizes:
        a = rng.rand(size, size).astype(np.float32)
        b = rng.rand(size, size).astype(np.float32)
        tf_a, tf_b = tf.constant(a), tf.constant(b)
        torch_a, torch_b = torch.from_numpy(a), torch.from_numpy(b)
        paths = {
            "tensorflow": lambda: tf_matmul(tf_a, tf_b).numpy(),
            "torch": lambda: torch.mm(torch_a, torch_b),
        }
        times = interleaved_times(paths, repeats=repeats, warmup=2)
        for name, ts in times.items():
            best[name] = max(best[name], 2.0 * size**3 / min(ts))
    return best


# ---------------------------------------------------------------------------- timing
def interleaved_times(paths, repeats, warmup=2, log=None, rounds=3, block_warmup=True):
    """{name: [seconds, ...]}: `repeats` timed calls of each path, back to back in blocks.

    First `warmup` untimed calls of each path. Then `rounds` rounds; in each, every path (the order
    rotating) makes one untimed call (`block_warmup`) and then its share of the timed calls, back
    to back. Blocks measure each path's steady state (the untimed call absorbs what the previous
    path leaves behind: PyTorch's OpenMP threads spin after a call, TF's pool wakes up); rounds
    spread slow changes of the machine's load over every path alike. Each callable must return
    only when its result is ready.
    """
    names = list(paths)
    for name in names:
        start = time.perf_counter()
        for _ in range(warmup):
            paths[name]()
        if log and warmup:
            log(f"  warm-up {name}: {(time.perf_counter() - start) / max(warmup, 1) * 1000:.0f} ms/call")
    rounds = max(1, min(rounds, repeats))
    times = {name: [] for name in names}
    for r in range(rounds):
        share = repeats // rounds + (1 if r < repeats % rounds else 0)
        for i in range(len(names)):
            name = names[(i + r) % len(names)]
            if block_warmup:
                paths[name]()
            for _ in range(share):
                start = time.perf_counter()
                paths[name]()
                times[name].append(time.perf_counter() - start)
    return times


def trainer_step(model, optimizer, loss_fn, images, labels, model_dir, **loop_options):
    """A zero-argument callable: one `training.loop.Trainer.train_step` (the step the train commands
    run) on the same batch every time, under the default strategy; it returns the step's loss.
    `loop_options` are `LoopConfig` fields (clipnorm, ema_decay, ...)."""
    import tensorflow as tf

    from training.loop import LoopConfig, Trainer

    strategy = tf.distribute.get_strategy()
    config = LoopConfig(model_dir=model_dir, epochs=1, steps_per_epoch=1, global_batch_size=len(images), **loop_options)
    trainer = Trainer(model, optimizer, loss_fn, strategy, config)
    iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((images, labels)).repeat()))
    return lambda: trainer.train_step(iterator)[0]


def median(values):
    return float(np.median(values))


# ---------------------------------------------------------------------------- a run
def start_run(threads=None):
    """Set the threads, then log the machine and measure the peak matmul: (threads, info, peaks)."""
    threads = configure_threads(threads)
    info = machine_info()
    log(f"machine: {info}")
    log(f"threads: {threads}")
    peaks = peak_flops()
    log("peak matmul GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items()))
    return threads, info, peaks


def report(rows, columns, args, threads, info, peaks, **extra):
    """Print the run's header line and table; with `args.json`, write every number there too."""
    print(f"\npeak float32 matmul: TF {peaks['tensorflow'] / 1e9:.1f} GFLOP/s, torch {peaks['torch'] / 1e9:.1f} GFLOP/s; "
          f"{args.repeats} repeats, median; threads {threads}; load average at start {info['load_average']}\n")
    print(format_table(rows, columns))
    if args.json:
        payload = {"machine": info, "threads": threads, "peak_flops": peaks, "args": vars(args), **extra, "rows": rows}
        write_json(args.json, payload)
        log(f"wrote {args.json}")


# ---------------------------------------------------------------------------- output
def format_table(rows, columns):
    """A markdown table of `rows` (dicts) with `columns` [(key, header, format)]."""
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if f is None else "---:" for _, _, f in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("" if value is None else (str(value) if fmt is None else fmt.format(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path, payload):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=str)
