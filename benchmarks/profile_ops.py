"""Where the time of one inference goes: per-op-type time of the folded TensorFlow graph.

    python benchmarks/profile_ops.py                     # width 1.0, batch 8, 256x256 classifier
    python benchmarks/profile_ops.py --width 0.5 --batch 1

Builds the graph in a TF1-style `Session` (grappler's fusions apply as in a `tf.function`), runs
it with `FULL_TRACE` step statistics after warm-up, and sums each executed node's time by op type.
The graph is the folded one of `compile_for_inference` (weights as constants; the Keras model's
variables cannot enter a TF1 graph). Op times are summed over both threads, so they can add up to
more than the wall time; the shares are what matter. A measurement, not a test: nothing is asserted.
"""

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402  (sets KERAS_BACKEND / TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)
import numpy as np  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--runs", type=int, default=5, help="traced runs (after 3 untimed ones); times are averaged")
    parser.add_argument("--top", type=int, default=15, help="op types to list")
    return parser.parse_args(argv)


def op_times(run_metadata):
    """{(op type, node name): microseconds} of one traced run, over every device and thread."""
    times = collections.Counter()
    for device in run_metadata.step_stats.dev_stats:
        for node in device.node_stats:
            if node.node_name in ("_SOURCE", "_SINK"):
                continue
            op = node.timeline_label.split("=", 1)[-1].split("(")[0].strip() or node.node_name
            times[(op, node.node_name)] += node.all_end_rel_micros
    return times


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    import keras_mobilevitv2 as mv2
    from keras_mobilevitv2.inference import fused_graph

    model = mv2.MobileViTV2ImageClassifier(mv2.MobileViTV2Config(width_multiplier=args.width))
    x = np.random.RandomState(0).rand(args.batch, args.size, args.size, 3).astype(np.float32)
    folded = fused_graph(model)  # reads the weights eagerly, as numpy
    graph = tf.Graph()
    with graph.as_default():
        pixels = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="pixel_values")
        output = folded(pixels)
    totals = collections.Counter()
    with tf.compat.v1.Session(graph=graph) as session:
        for _ in range(3):
            session.run(output, {pixels: x})
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        walls = []
        for _ in range(args.runs):
            metadata = tf.compat.v1.RunMetadata()
            session.run(output, {pixels: x}, options=options, run_metadata=metadata)
            totals.update(op_times(metadata))
            stats = [n for d in metadata.step_stats.dev_stats for n in d.node_stats]
            start = min(n.all_start_micros for n in stats)
            walls.append(max(n.all_start_micros + n.all_end_rel_micros for n in stats) - start)
    by_op = collections.Counter()
    for (op, _), micros in totals.items():
        by_op[op] += micros / args.runs
    total = sum(by_op.values())
    print(f"\nfolded graph, width {args.width}, batch {args.batch}, {args.size}x{args.size}: "
          f"wall {np.median(walls) / 1000:.1f} ms (traced), op time {total / 1000:.1f} ms over all threads, "
          f"{len({name for _, name in totals})} nodes\n")
    print("| op type | ms | share |")
    print("|---|---:|---:|")
    for op, micros in by_op.most_common(args.top):
        print(f"| {op} | {micros / 1000:.1f} | {100 * micros / total:.1f}% |")
    rest = total - sum(m for _, m in by_op.most_common(args.top))
    print(f"| (other) | {rest / 1000:.1f} | {100 * rest / total:.1f}% |")
    return by_op


if __name__ == "__main__":
    main()
