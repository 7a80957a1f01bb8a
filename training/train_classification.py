"""Train a MobileViTV2 image classifier on an ImageNet-style folder (recipe imagenet1k_mobilevitv2).

    python -m training.train_classification --data-dir /data/flowers --model-dir runs/flowers \\
        --init mobilevitv2-1.0.keras --image-size 224 --epochs 20 --batch-size 32
    python -m training.train_classification --recipe imagenet1k_mobilevitv2 --data-dir /data/imagenet \\
        --model-dir runs/in1k-0.5 --width 0.5 --batch-size 64 --accumulate auto

The data: `DATA_DIR/<train_split>/<class>/*` and `DATA_DIR/<eval_split>/<class>/*` (recipe
`data.train_split` / `data.eval_split`, "train" / "val"); the class count (at least 2) is the
label count unless `--num-labels` is given, and the sorted folder names become the model's labels. The training
pipeline is `training.imagenet_data` with the recipe's augmentations (RandomResizedCrop, flip,
RandAugment, RandomErasing, MixUp / CutMix, label smoothing); the loss is the cross-entropy with
those soft targets. See `keras_mobilevitv2.cli.train` for the options and `training.run` for what a run writes.
"""

import os
import sys

from training.run import DataInfo, UserError


def _epoch_seed(recipe, epoch):
    """The pipeline seed of `epoch` (None keeps the pipeline unseeded); its seed+1 and seed+2 are used too."""
    seed = recipe.get("seed")
    return None if seed is None else seed + 10 * epoch


class ClassificationTask:
    """What `training.run.train` needs to know about image classification."""

    task_name = "image_classification"  # keras_mobilevitv2.tasks; also the recipes' `task`
    default_batch = 32  # images per step when neither --batch-size nor --recipe is given
    serving_name = "mobilevitv2_classification"  # the default TF Serving model name (kept: served names outlive releases)
    default_recipe = "imagenet1k_mobilevitv2"

    primary_metric = "top1"

    def resolve_image_size(self, recipe, base, image_size, was_set):
        """`--image-size N`: train at N, evaluate and serve an N crop of the shortest edge resized
        by the recipe's ratio (288 / 256); `--set data.image_size=N` alone does the same."""
        data, base_data = recipe["data"], base["data"]
        if image_size is not None:
            data["image_size"] = image_size
        size = data["image_size"]
        if size == base_data["image_size"] and image_size is None:
            return
        ratio = base_data["eval_shortest_edge"] / base_data["eval_crop_size"]
        if not was_set("data.eval_crop_size"):
            data["eval_crop_size"] = size
        if not was_set("data.eval_shortest_edge"):
            data["eval_shortest_edge"] = int(round(data["eval_crop_size"] * ratio))

    def image_size(self, recipe):
        return recipe["data"]["image_size"]

    def inspect_data(self, recipe, data_dir, labels_given=False):
        """The training images and classes; sets model.num_labels from the class folders unless
        given (a different count given is an error), and checks the evaluation folder."""
        from training.imagenet_data import list_class_folders

        data = recipe["data"]
        train_dir = os.path.join(data_dir, data["train_split"])
        if not os.path.isdir(train_dir):
            raise UserError(f"no training folder {train_dir} (expected {train_dir}/<class>/<image>, data.train_split)")
        paths, _, names = list_class_folders(train_dir)
        if len(names) < 2:
            raise UserError(f"{train_dir} has {len(names)} class folder ({', '.join(names)}): a classifier needs at least 2 classes")
        num_labels = recipe["model"]["num_labels"]
        notes = []
        if not labels_given:
            recipe["model"]["num_labels"] = num_labels = len(names)
            notes.append(f"{len(names)} labels from the class folders of {train_dir}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
        elif len(names) != num_labels:
            raise UserError(f"{train_dir} has {len(names)} class folders but {num_labels} labels were given")
        eval_dir = os.path.join(data_dir, data["eval_split"])
        if not os.path.isdir(eval_dir):
            raise UserError(f"no evaluation folder {eval_dir} (data.eval_split; the same class folders as {train_dir})")
        eval_names = list_class_folders(eval_dir)[2]
        if list(eval_names) != list(names):
            raise UserError(f"{eval_dir} has the class folders {eval_names[:5]}, {train_dir} has {names[:5]}: they must be the same")
        return DataInfo(num_examples=len(paths), class_names=tuple(names), notes=tuple(notes))

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
        overrides = {"width_multiplier": model["width_multiplier"], "id2label": id2label, "image_size": recipe["data"]["image_size"]}
        if source is not None:
            overrides["compat"] = source.config.compat
            if source.config.num_labels == len(id2label) and isinstance(source, MobileViTV2ImageClassifier):
                overrides["id2label"] = dict(source.config.id2label)
        config = preset_config(model["preset"], **overrides)
        return MobileViTV2ImageClassifier(config, preprocessing=self.preprocessing(recipe))

    def loss_fn(self, recipe):
        """Cross-entropy with the pipeline's soft targets (MixUp / CutMix / label smoothing)."""
        import keras

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
        from training.evaluate import classification_eval_dataset, count_images, evaluate_classification

        data = recipe["data"]
        dataset = classification_eval_dataset(model, data_dir, data["eval_split"], data.get("eval_batch_size", 100))
        return evaluate_classification(model, dataset, total=count_images(self.task_name, data_dir, data["eval_split"]))

    def report(self, metrics):
        from training.evaluate import report

        return report(metrics, self.task_name)


TASK = ClassificationTask()


def main(argv=None):
    """`python -m training.train_classification`: the command line lives in `keras_mobilevitv2.cli.train`."""
    from keras_mobilevitv2.cli.train import main as train_main

    return train_main(TASK, argv, prog="python -m training.train_classification", description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
