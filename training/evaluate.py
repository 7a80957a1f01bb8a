"""Evaluate a MobileViTV2 model: top-1 / top-5 on an ImageNet-style folder, mean IoU on PASCAL VOC.

    python -m training.evaluate --model run/model.keras --data-dir /data/imagenet --task image_classification
    python -m training.evaluate --model run/model.keras --data-dir /data/VOCdevkit/VOC2012 --task semantic_segmentation
    mobilevitv2 evaluate --model ... (the same options; the command line is `keras_mobilevitv2.cli.evaluate`)

Images are prepared with the model's own `preprocessing` (saved with it), so a model is measured
the way it is served:

- classification: `data_dir/<split>/<class>/*` (or a flat folder with `--label-file`), class
  indices from the sorted folder names; resize the shortest edge, centre crop, normalise
  (`tf_preprocess`). Top-1 and top-5 accuracy (top-5 needs at least 5 classes).
- segmentation: the VOC list `ImageSets/Segmentation/<split>.txt`, full-resolution images,
  normalised only; the logits are resized bilinearly to the mask and arg-maxed. The pixels are
  counted in a confusion matrix (`training.metrics`) with the 255 boundary ignored; the result
  is the mean IoU, the pixel accuracy and a per-class IoU table named by the model's id2label.
"""

import os
import sys
import time

from keras_mobilevitv2.tasks import HEAD_TASK_NAMES, canonical_task


# ------------------------------------------------------------------------------ progress
class Progress:
    """Evaluation progress: a bar on a terminal, else a plain line every `every` seconds."""

    def __init__(self, total, what="images", every=10.0):
        self.total, self.what, self.every = total, what, every
        self.done, self.start, self.last = 0, time.perf_counter(), time.perf_counter()
        self.bar = None
        if sys.stdout.isatty():
            import keras

            self.bar = keras.utils.Progbar(total, unit_name=what)

    def update(self, n):
        self.done += n
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(min(self.done, self.total or self.done))
        elif now - self.last >= self.every or (self.total and self.done >= self.total):
            rate = self.done / max(now - self.start, 1e-9)
            print(f"[evaluate] {self.done}/{self.total or '?'} {self.what} ({rate:.1f}/s)", flush=True)
            self.last = now


# ------------------------------------------------------------------------------ metrics over a set
def evaluate_classification(model, dataset, top_k=5, total=None):
    """Top-1 (and top-`top_k` when the model has that many classes) over `(images, labels)`.

    Labels may be class indices or one-hot vectors. Returns {"top1", "top5", "images"}.
    `total`: the image count, for the progress display (None: no progress shown).
    """
    import numpy as np
    import tensorflow as tf

    from training import metrics

    progress = Progress(total) if total else None
    num_labels = model.config.num_labels
    ks = (1, top_k) if num_labels >= top_k else (1,)

    @tf.function(reduce_retracing=True)
    def counts(images, labels):
        logits = model(images, training=False)
        return [metrics.top_k_correct(labels, logits, k) for k in ks], tf.shape(images, out_type=tf.int64)[0]

    correct = np.zeros(len(ks), np.int64)
    images = 0
    for batch_images, batch_labels in dataset:
        hits, n = counts(batch_images, batch_labels)
        correct += np.array([int(h) for h in hits])
        images += int(n)
        if progress is not None:
            progress.update(int(n))
    if images == 0:
        raise ValueError("the evaluation set is empty")
    result = {"top1": float(correct[0] / images), "images": images}
    if len(ks) == 2:
        result[f"top{top_k}"] = float(correct[1] / images)
    return result


def evaluate_segmentation(model, dataset, ignore_index=255, total=None):
    """Mean IoU, pixel accuracy and per-class IoU over `(images, masks)` batches.

    Returns {"mean_iou", "pixel_accuracy", "per_class_iou": {name: IoU or None}, "images",
    "confusion_matrix": rows true class, columns predicted}. `total`: the image count, for the
    progress display (None: no progress shown).
    """
    import numpy as np
    import tensorflow as tf

    from keras_mobilevitv2.segmenter import resize_logits
    from training import metrics

    progress = Progress(total) if total else None

    num_classes = model.config.num_labels

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32),
            tf.TensorSpec([None, None, None], tf.uint8),
        ]
    )
    def counts(images, masks):
        logits = tf.cast(model(images, training=False), tf.float32)
        shape = tf.shape(masks)
        predictions = tf.argmax(resize_logits(logits, (shape[1], shape[2])), axis=-1)
        return metrics.confusion_matrix(masks, predictions, num_classes, ignore_index)

    confusion = np.zeros((num_classes, num_classes), np.int64)
    images = 0
    for batch_images, batch_masks in dataset:
        confusion += counts(batch_images, batch_masks).numpy()
        images += int(batch_images.shape[0])
        if progress is not None:
            progress.update(int(batch_images.shape[0]))
    if images == 0:
        raise ValueError("the evaluation set is empty")
    names = class_names(model)
    iou = metrics.iou_per_class(confusion)
    return {
        "mean_iou": metrics.mean_iou(confusion),
        "pixel_accuracy": metrics.pixel_accuracy(confusion),
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(names, iou)},
        "images": images,
        "confusion_matrix": confusion.tolist(),
    }


def class_names(model):
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


# ------------------------------------------------------------------------------ datasets
def _model_preprocessing(model, task):
    from keras_mobilevitv2.preprocessing import PreprocessingConfig

    preprocessing = getattr(model, "preprocessing", None)
    if preprocessing is not None:
        return preprocessing
    if task == "semantic_segmentation":
        return PreprocessingConfig(do_center_crop=False)
    return PreprocessingConfig()


def classification_eval_dataset(model, data_dir, split="val", batch_size=50, label_file=None):
    """`data_dir/<split>` batches prepared with the model's preprocessing, labels one-hot."""
    from training.imagenet_data import ImageNetOptions, imagenet_folder_dataset, list_class_folders

    num_labels = model.config.num_labels
    if label_file is None:
        found = len(list_class_folders(os.path.join(data_dir, split))[2])
        if found != num_labels:
            raise ValueError(f"{os.path.join(data_dir, split)} has {found} class folders but the model has {num_labels} labels")
    options = ImageNetOptions(
        batch_size=batch_size,
        eval_batch_size=batch_size,
        num_classes=num_labels,
        preprocessing=_model_preprocessing(model, "image_classification"),
        deterministic=True,
    )
    return imagenet_folder_dataset(data_dir, split, options, training=False, label_file=label_file)


def segmentation_eval_dataset(model, data_dir, split="val", mask_dir="SegmentationClass", ignore_index=255):
    """Full-resolution VOC `(image, mask)` batches of one, normalised (`normalize_pixels`) as the
    model's preprocessing says; its resizing is left out so the masks keep their pixels."""
    from training.voc_data import VOCOptions, voc_dataset

    preprocessing = _model_preprocessing(model, "semantic_segmentation")
    options = VOCOptions(
        batch_size=1,
        eval_batch_size=1,
        mask_dir=mask_dir,
        num_classes=model.config.num_labels,
        ignore_index=ignore_index,
        preprocessing=preprocessing,
        deterministic=True,
    )
    return voc_dataset(data_dir, split, options, training=False)


def evaluate(model, task, data_dir, split="val", batch_size=50, label_file=None, mask_dir="SegmentationClass", ignore_index=255):
    """The metrics dict of `model` on a dataset folder (see the module docstring).

    `task`: "image_classification" or "semantic_segmentation"."""
    task = canonical_task(task)
    total = count_images(task, data_dir, split, label_file, mask_dir)
    if task == "image_classification":
        dataset = classification_eval_dataset(model, data_dir, split, batch_size, label_file)
        return evaluate_classification(model, dataset, total=total)
    if task == "semantic_segmentation":
        dataset = segmentation_eval_dataset(model, data_dir, split, mask_dir, ignore_index)
        return evaluate_segmentation(model, dataset, ignore_index, total=total)
    raise ValueError(f"task must be one of {', '.join(HEAD_TASK_NAMES)}, received {task!r}")


def count_images(task, data_dir, split="val", label_file=None, mask_dir="SegmentationClass"):
    """The images of an evaluation set (for the progress display)."""
    if task == "semantic_segmentation":
        from training.voc_data import list_voc_split

        return len(list_voc_split(data_dir, split, mask_dir)[0])
    if label_file is not None:
        return None
    from training.imagenet_data import list_class_folders

    return len(list_class_folders(os.path.join(data_dir, split))[0])


def report(result, task):
    """The metrics as printable text."""
    import numpy as np

    from keras_mobilevitv2.text import printable
    from training import metrics

    if task == "image_classification":
        text = f"top-1 {100 * result['top1']:.2f}%"
        if "top5" in result:
            text += f"  top-5 {100 * result['top5']:.2f}%"
        return text + f"  ({result['images']} images)"
    names = [printable(name, 40) for name in result["per_class_iou"]]  # a checkpoint's labels: no escape bytes
    table = metrics.iou_table(np.array(result["confusion_matrix"]), names)
    return f"{table}\npixel accuracy {100 * result['pixel_accuracy']:.2f}%  ({result['images']} images)"


def main(argv=None):
    """`python -m training.evaluate`: the command line lives in `keras_mobilevitv2.cli.evaluate`."""
    from keras_mobilevitv2.cli.evaluate import main as evaluate_main

    return evaluate_main(argv)


if __name__ == "__main__":
    sys.exit(main())
