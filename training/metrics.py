"""Evaluation metrics: top-k accuracy, and the confusion matrix behind mean IoU.

    from training import metrics
    counts = metrics.confusion_matrix(masks, predictions, num_classes=21)   # in-graph, (C, C) int64
    total += counts.numpy()                                                # accumulate over the set
    print(metrics.mean_iou(total), metrics.iou_table(total, class_names))

The confusion matrix counts pixels: row = true class, column = predicted class; pixels labelled
`ignore_index` (VOC's 255 "void" boundary) are left out. From it, per class c:

    IoU_c = C[c, c] / (sum of row c + sum of column c - C[c, c])

A class that is neither present nor predicted anywhere has no IoU (NaN) and is left out of the mean,
as in the usual VOC evaluation.
"""

import numpy as np
import tensorflow as tf


# ----------------------------------------------------------------------------- classification
def top_k_correct(labels, logits, k):
    """How many of the batch's true classes are among the `k` highest logits (int64 scalar).

    `labels` are class indices (B,) or one-hot / soft vectors (B, L), whose argmax is the class.
    """
    logits = tf.convert_to_tensor(logits)
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2:
        labels = tf.argmax(labels, axis=-1)
    hits = tf.math.in_top_k(tf.cast(labels, tf.int32), tf.cast(logits, tf.float32), k)
    return tf.reduce_sum(tf.cast(hits, tf.int64))


# ------------------------------------------------------------------------------- segmentation
def confusion_matrix(labels, predictions, num_classes, ignore_index=255):
    """(num_classes, num_classes) int64 pixel counts, rows true class, columns predicted class.

    `labels` and `predictions` are integer maps of the same shape; pixels whose label is
    `ignore_index` are left out. Any other label outside [0, num_classes) is an error.
    """
    labels = tf.reshape(tf.cast(labels, tf.int64), [-1])
    predictions = tf.reshape(tf.cast(predictions, tf.int64), [-1])
    keep = tf.not_equal(labels, ignore_index)
    labels = tf.boolean_mask(labels, keep)
    predictions = tf.boolean_mask(predictions, keep)
    checks = [
        tf.debugging.assert_less(labels, tf.constant(num_classes, tf.int64), message="label >= num_classes"),
        tf.debugging.assert_non_negative(labels, message="negative label"),
        tf.debugging.assert_less(predictions, tf.constant(num_classes, tf.int64), message="prediction >= num_classes"),
    ]
    with tf.control_dependencies(checks):
        index = labels * num_classes + predictions
    counts = tf.math.bincount(index, minlength=num_classes * num_classes, maxlength=num_classes * num_classes, dtype=tf.int64)
    return tf.reshape(counts, [num_classes, num_classes])


def iou_per_class(confusion):
    """IoU of each class from a confusion matrix; NaN for a class neither present nor predicted."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(confusion):
    """The mean of `iou_per_class` over the classes that have one (NaN if none has)."""
    iou = iou_per_class(confusion)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(confusion):
    """Correctly labelled pixels over all counted pixels."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def iou_table(confusion, class_names):
    """A text table: one row per class (name, IoU in %, ground-truth pixels), then the mean."""
    confusion = np.asarray(confusion)
    if len(class_names) != confusion.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {confusion.shape[0]}-class confusion matrix")
    iou = iou_per_class(confusion)
    pixels = confusion.sum(axis=1)
    width = max(12, max(len(str(n)) for n in class_names))
    lines = [f"{'class':<{width}}  {'IoU %':>7}  {'pixels':>12}", "-" * (width + 23)]
    for name, value, count in zip(class_names, iou, pixels):
        shown = "    n/a" if np.isnan(value) else f"{100 * value:7.2f}"
        lines.append(f"{name:<{width}}  {shown}  {int(count):>12}")
    lines.append("-" * (width + 23))
    lines.append(f"{'mean IoU':<{width}}  {100 * mean_iou(confusion):7.2f}")
    return "\n".join(lines)
