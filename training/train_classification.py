"""Train a MobileViTV2 image classifier on an ImageNet-style folder (recipe imagenet1k_mobilevitv2).

    python -m training.train_classification --data-dir /data/imagenet --model-dir runs/in1k
    python -m training.train_classification --data-dir /data/imagenet --model-dir runs/in1k-0.5 \\
        --width 0.5 --batch-size 64 --accumulate auto --set epochs=100
    python -m training.train_classification --data-dir /data/flowers --model-dir runs/flowers \\
        --init apple/mobilevitv2-1.0-imagenet1k-256 --set model.num_labels=102 --set data.global_batch_size=64

The data: `DATA_DIR/<train_split>/<class>/*` and `DATA_DIR/<eval_split>/<class>/*` (recipe
`data.train_split` / `data.eval_split`, "train" / "val"); the class count must equal
`model.num_labels`, and the sorted folder names become the model's labels. The training
pipeline is `training.imagenet_data` with the recipe's augmentations (RandomResizedCrop, flip,
RandAugment, RandomErasing, MixUp / CutMix, label smoothing); the loss is the cross-entropy with
those soft targets. See `training.cli` for the options and what a run writes.
"""

import argparse
import os
import sys

import keras

from training.cli import DataInfo, add_train_arguments, train


def _epoch_seed(recipe, epoch):
    """The pipeline seed of `epoch` (None keeps the pipeline unseeded); its seed+1 and seed+2 are used too."""
    seed = recipe.get("seed")
    return None if seed is None else seed + 10 * epoch


class ClassificationTask:
    """What `training.cli.train` needs to know about image classification."""

    name = "classification"
    recipe_task = "image_classification"
    default_recipe = "imagenet1k_mobilevitv2"

    def inspect_data(self, recipe, data_dir):
        from training.imagenet_data import list_class_folders

        train_dir = os.path.join(data_dir, recipe["data"]["train_split"])
        paths, _, names = list_class_folders(train_dir)
        num_labels = recipe["model"]["num_labels"]
        if len(names) != num_labels:
            raise ValueError(
                f"{train_dir} has {len(names)} class folders but model.num_labels is {num_labels}; "
                f"pass --set model.num_labels={len(names)}"
            )
        return DataInfo(num_examples=len(paths), class_names=tuple(names))

    def preprocessing(self, recipe):
        """Evaluation / serving preprocessing: the preset's, resized as the recipe evaluates."""
        from training.imagenet_data import ImageNetOptions

        return ImageNetOptions.from_recipe(recipe).preprocessing_config

    def build_model(self, recipe, data, source=None):
        """The preset's classifier at the recipe's width; labels named by the class folders, or
        by the `--init` model when it has as many."""
        from keras_mobilevitv2.image_classifier import MobileViTV2ImageClassifier
        from keras_mobilevitv2.models import preset_config

        model = recipe["model"]
        id2label = dict(enumerate(data.class_names))
        overrides = {"width_multiplier": model["width_multiplier"], "id2label": id2label}
        if source is not None:
            overrides["compat"] = source.config.compat
            if source.config.num_labels == len(id2label) and isinstance(source, MobileViTV2ImageClassifier):
                overrides["id2label"] = dict(source.config.id2label)
        config = preset_config(model["preset"], **overrides)
        return MobileViTV2ImageClassifier(config, preprocessing=self.preprocessing(recipe))

    def loss_fn(self, recipe):
        """Cross-entropy with the pipeline's soft targets (MixUp / CutMix / label smoothing)."""
        loss = recipe.get("loss", {})
        if loss.get("name", "categorical_crossentropy") != "categorical_crossentropy" or not loss.get("from_logits", True):
            raise ValueError(f"loss must be categorical_crossentropy from logits, received {loss!r}")
        smoothing = loss.get("label_smoothing", 0.0)

        def categorical_crossentropy(labels, logits):
            per_example = keras.losses.categorical_crossentropy(
                labels, keras.ops.cast(logits, "float32"), from_logits=True, label_smoothing=smoothing
            )
            return keras.ops.mean(per_example)

        return categorical_crossentropy

    def dataset_fn(self, recipe, data_dir, batch_size, skip_counter=None):
        """`fn(input_context, epoch)`: this input pipeline's shard of one training epoch."""
        from training.imagenet_data import ImageNetOptions, imagenet_folder_dataset

        def dataset(input_context, epoch):
            seed = _epoch_seed(recipe, epoch)
            options = ImageNetOptions.from_recipe(
                recipe,
                num_workers=input_context.num_input_pipelines,
                worker_index=input_context.input_pipeline_id,
                batch_size=batch_size,
                num_classes=recipe["model"]["num_labels"],
                seed=seed,
                deterministic=seed is not None,
            )
            return imagenet_folder_dataset(
                data_dir, recipe["data"]["train_split"], options, training=True, skip_counter=skip_counter
            )

        return dataset

    def evaluate(self, model, recipe, data_dir):
        from training.evaluate import classification_eval_dataset, evaluate_classification

        data = recipe["data"]
        dataset = classification_eval_dataset(model, data_dir, data["eval_split"], data.get("eval_batch_size", 100))
        return evaluate_classification(model, dataset)

    def report(self, metrics):
        from training.evaluate import report

        return report(metrics, "classification")


TASK = ClassificationTask()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m training.train_classification",
        description=__doc__.split("\n\n")[0],
        epilog="Outputs and resuming: see training/cli.py.",
    )
    add_train_arguments(parser, TASK.default_recipe)
    train(TASK, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
