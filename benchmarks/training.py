"""Training-step speed of the Keras MobileViTV2 against transformers' PyTorch model, on this machine.

    python benchmarks/training.py                        # widths 0.5 and 1.0, batch 32, 256x256
    python benchmarks/training.py --quick                # batch 8, 3 repeats
    python benchmarks/training.py --widths 0.5 --batch 16 --size 192 --json train.json

One training step = forward in training mode (BatchNorm on batch statistics), mean cross-entropy
over 1000 classes, gradients, one AdamW update (lr 1e-4, weight decay 0.05, betas 0.9/0.999,
eps 1e-8) of every trainable weight:

- torch: transformers' `MobileViTV2ForImageClassification`, `model.train()`, `torch.optim.AdamW`;
- keras tf.function: a `tf.function` step: `tf.GradientTape` around `model(x, training=True)`, the
  loss, `tape.gradient`, `keras.optimizers.AdamW.apply_gradients`;
- keras Trainer: the step of our `training.loop.Trainer` (what `train_classification` runs:
  `strategy.run` under the default strategy, gradient norm, the same AdamW; no clipping, EMA or
  accumulation), on a copy of the same weights.

Both start from the same randomized weights (converted from the PyTorch model, see
`benchmarks/common.py`) and see the same batch; the first step's losses are compared before timing.
Columns: step latency (median over `--repeats` steps after warm-up, alternating), images/s, x torch
(torch step time / ours; above 1 is faster), % peak (3 x forward FLOPs per image, the usual
estimate of forward + backward, over the framework's peak float32 matmul FLOP/s in this run).
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (sets KERAS_BACKEND / TF_CPP_MIN_LOG_LEVEL / OMP_WAIT_POLICY before imports)
import numpy as np  # noqa: E402

LEARNING_RATE = 1e-4
WEIGHT_DECAY = 0.05
ADAM_EPSILON = 1e-8  # torch's default (Keras' is 1e-7)
NUM_LABELS = 1000
LOSS_TOLERANCE = 1e-4  # relative difference of the first step's losses


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Prints a markdown table; see the module docstring.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--widths", default="0.5,1.0", help="comma-separated width multipliers")
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--repeats", type=int, default=4, help="timed steps per framework (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per framework first")
    parser.add_argument("--quick", action="store_true", help="batch 8, 3 repeats, 1 warm-up step")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of TF and torch "
                        "(default: one per core)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write every number to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch = 8 if args.batch == parser.get_default("batch") else args.batch
        args.repeats = min(args.repeats, 3)
        args.warmup = min(args.warmup, 1)
    args.widths = [float(w) for w in args.widths.split(",") if w.strip()]
    return args


def torch_step_fn(torch_model, x, y):
    import torch

    torch_model.train()
    optimizer = torch.optim.AdamW(
        torch_model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.999), eps=ADAM_EPSILON
    )
    images, labels = common.to_nchw(x), torch.from_numpy(y.astype(np.int64))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(torch_model(images).logits, labels)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def keras_step_fn(keras_model, x, y):
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.AdamW(
        learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, beta_1=0.9, beta_2=0.999, epsilon=ADAM_EPSILON
    )
    optimizer.build(keras_model.trainable_variables)
    images, labels = tf.constant(x), tf.constant(y.astype(np.int32))

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = keras_model(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        gradients = tape.gradient(loss, keras_model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, keras_model.trainable_variables))
        return loss

    return lambda: float(train_step(images, labels))


def trainer_step_fn(keras_model, x, y, model_dir):
    """Our `training.loop.Trainer` (the step `train_classification` runs): `strategy.run` under the
    default strategy, the same AdamW, no clipping, no EMA, no accumulation; on a copy of the weights."""
    import keras
    import tensorflow as tf

    model = type(keras_model)(keras_model.config)
    model(x[:1], training=False)
    model.set_weights(keras_model.get_weights())
    optimizer = keras.optimizers.AdamW(
        learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, beta_1=0.9, beta_2=0.999, epsilon=ADAM_EPSILON
    )

    def loss_fn(labels, logits):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    return common.trainer_step(model, optimizer, loss_fn, tf.constant(x), tf.constant(y.astype(np.int32)), model_dir)


def run_width(args, width, peaks):
    common.log(f"== training width {width} batch {args.batch} {args.size}x{args.size}")
    torch_model, keras_model = common.make_twins("image_classification", width, num_labels=NUM_LABELS)
    common.check_twins(torch_model, keras_model, args.size)
    macs = common.count_macs(torch_model, args.size)
    rng = np.random.RandomState(2)
    x = rng.rand(args.batch, args.size, args.size, 3).astype(np.float32)
    y = rng.randint(0, NUM_LABELS, size=args.batch)
    model_dir = tempfile.mkdtemp(prefix="mobilevitv2-bench-train-")
    paths = {
        "torch": torch_step_fn(torch_model, x, y),
        "keras Trainer": trainer_step_fn(keras_model, x, y, model_dir),  # copies the weights: build it first
        "keras tf.function": keras_step_fn(keras_model, x, y),
    }
    first = {name: step() for name, step in paths.items()}  # same weights, same batch: same loss
    loss_error = max(abs(first[name] - first["torch"]) / abs(first["torch"]) for name in paths)
    if not loss_error <= LOSS_TOLERANCE:
        raise AssertionError(f"first-step losses differ: {first} (relative {loss_error:.1e})")
    # A step takes seconds: what one framework's threads leave behind is noise; alternate step by step.
    times = common.interleaved_times(
        paths, repeats=args.repeats, warmup=max(args.warmup - 1, 0), log=common.log, rounds=args.repeats, block_warmup=False
    )
    torch_latency = common.median(times["torch"])
    rows = []
    for name, ts in times.items():
        latency = common.median(ts)
        peak = peaks["torch" if name == "torch" else "tensorflow"]
        rows.append(
            {
                "model": f"cls w{width} {args.size}px",
                "batch": args.batch,
                "path": name,
                "step_ms": latency * 1000,
                "images_per_s": args.batch / latency,
                "vs_torch": torch_latency / latency,
                "peak_fraction": 100.0 * 3 * 2 * macs * args.batch / latency / peak,
                "first_loss": first[name],
                "times_ms": [t * 1000 for t in ts],
            }
        )
    common.log(f"   first-step losses {first} (relative difference {loss_error:.1e}); GMACs/image {macs / 1e9:.3f}")
    shutil.rmtree(model_dir, ignore_errors=True)
    return rows


def main(argv=None):
    args = parse_args(argv)
    threads, info, peaks = common.start_run(args.threads)
    rows = []
    for width in args.widths:
        rows += run_width(args, width, peaks)
    columns = [
        ("model", "model", None),
        ("batch", "batch", "{}"),
        ("path", "path", None),
        ("step_ms", "step ms", "{:.0f}"),
        ("images_per_s", "images/s", "{:.1f}"),
        ("vs_torch", "x torch", "{:.2f}"),
        ("peak_fraction", "% peak", "{:.1f}"),
    ]
    common.report(rows, columns, args, threads, info, peaks)
    return rows


if __name__ == "__main__":
    main()
