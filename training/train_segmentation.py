"""Train a MobileViTV2 DeepLabV3 segmenter on PASCAL VOC 2012 (recipe voc_deeplabv3_mobilevitv2).

    python -m training.train_segmentation --data-dir /data/VOCdevkit/VOC2012 --model-dir runs/voc \\
        --init runs/in1k/model.keras --batch-size 8 --epochs 10
    python -m training.train_segmentation --recipe voc_deeplabv3_mobilevitv2 --data-dir /data/VOCdevkit/VOC2012 \\
        --model-dir runs/voc --init mobilevitv2-1.0-imagenet1k-256 --batch-size 8 --accumulate auto

The data: the VOC2012 folder, training ids from `ImageSets/Segmentation/<data.train_split>.txt`
(train_aug with `data.mask_dir` SegmentationClassAug, the SBD-augmented set, as ml-cvnets, when
the folder has them; else the stock train list with SegmentationClass), evaluation on
`<data.eval_split>` (val) at full resolution. The recipe fine-tunes from an ImageNet classifier
(`model.init_from`): its backbone is reused under a new DeepLabV3 head. The loss is the per-pixel
cross-entropy of the logits resized to the mask, 255 ignored (`segmenter.segmentation_loss`).
ml-cvnets adds an auxiliary head's loss (`loss.aux_weight`); this model has no auxiliary head, so
that term is left out. See `keras_mobilevitv2.cli.train` for the options and `training.run` for what a run writes.
"""

import dataclasses
import os
import sys

from training.run import DataInfo, UserError


def _epoch_seed(recipe, epoch):
    """The pipeline seed of `epoch` (None keeps the pipeline unseeded); its seed+1 is used too."""
    seed = recipe.get("seed")
    return None if seed is None else seed + 10 * epoch


class SegmentationTask:
    """What `training.run.train` needs to know about semantic segmentation."""

    task_name = "semantic_segmentation"  # keras_mobilevitv2.tasks; also the recipes' `task`
    default_batch = 8  # images per step when neither --batch-size nor --recipe is given
    serving_name = "mobilevitv2_segmentation"  # the default TF Serving model name (kept: served names outlive releases)
    default_recipe = "voc_deeplabv3_mobilevitv2"

    primary_metric = "mean_iou"

    def resolve_image_size(self, recipe, base, image_size, was_set):
        """`--image-size N`: train on N x N crops (data.crop_size), serve with the shortest edge at N."""
        if image_size is not None:
            recipe["data"]["crop_size"] = image_size

    def image_size(self, recipe):
        return recipe["data"]["crop_size"]

    def inspect_data(self, recipe, data_dir, labels_given=False):
        """The training ids. A stock VOC2012 tree has no train_aug list / SegmentationClassAug: the
        recipe's SBD split is used when both are there, else ImageSets/Segmentation/train.txt with
        SegmentationClass (the notes say which). The evaluation list must exist too."""
        from training.voc_data import list_voc_split

        data = recipe["data"]
        notes = []
        split, mask_dir = data["train_split"], data.get("mask_dir", "SegmentationClass")
        lists = os.path.join(data_dir, "ImageSets", "Segmentation")
        if not os.path.isdir(os.path.join(data_dir, "JPEGImages")) or not os.path.isdir(lists):
            raise UserError(f"{data_dir} is not a VOC2012 folder (expected JPEGImages/ and ImageSets/Segmentation/)")
        has_sbd = os.path.isfile(os.path.join(lists, f"{split}.txt")) and os.path.isdir(os.path.join(data_dir, mask_dir))
        if has_sbd:
            notes.append(f"training on {split} ({mask_dir})")
        elif split == "train_aug" and os.path.isfile(os.path.join(lists, "train.txt")):
            data["train_split"], data["mask_dir"] = "train", "SegmentationClass"
            notes.append(
                f"no {split} list / {mask_dir} (the SBD-augmented set) in {data_dir}: training on the stock "
                "VOC2012 train list with SegmentationClass masks"
            )
        images, _ = list_voc_split(data_dir, data["train_split"], data.get("mask_dir", "SegmentationClass"))
        list_voc_split(data_dir, data["eval_split"], data.get("mask_dir", "SegmentationClass"))
        if recipe["model"]["num_labels"] < 2:
            raise UserError(f"a segmenter needs at least 2 classes, received {recipe['model']['num_labels']} labels")
        return DataInfo(num_examples=len(images), notes=tuple(notes))

    def preprocessing(self, recipe):
        """Serving preprocessing: the preset's scaling, the shortest edge resized to the training
        crop size, no centre crop (a label map must cover the whole image)."""
        from keras_mobilevitv2.preprocessing import PreprocessingConfig

        preset = PreprocessingConfig.from_preset(recipe["model"]["preset"])
        return dataclasses.replace(preset, do_center_crop=False, shortest_edge=recipe["data"]["crop_size"])

    def build_model(self, recipe, data, source=None):
        """The preset's segmenter with the recipe's width, output stride and ASPP."""
        from keras_mobilevitv2.models import preset_config
        from keras_mobilevitv2.presets import get_preset
        from keras_mobilevitv2.segmenter import MobileViTV2SemanticSegmenter

        model = recipe["model"]
        overrides = {
            "width_multiplier": model["width_multiplier"],
            "output_stride": model["output_stride"],
            "aspp_out_channels": model["aspp_out_channels"],
            "atrous_rates": list(model["atrous_rates"]),
            "aspp_dropout_prob": model["aspp_dropout_prob"],
            "image_size": recipe["data"]["crop_size"],
        }
        preset_labels = get_preset(model["preset"])["config"].get("id2label", {})
        if len(preset_labels) != model["num_labels"]:
            overrides["num_labels"] = model["num_labels"]
        if source is not None:
            overrides["compat"] = source.config.compat
        if model.get("aux_head"):
            print("[train] model.aux_head: this segmenter has no auxiliary head; loss.aux_weight is not used", flush=True)
        config = preset_config(model["preset"], **overrides)
        return MobileViTV2SemanticSegmenter(config, preprocessing=self.preprocessing(recipe))

    def loss_fn(self, recipe):
        """Per-pixel cross-entropy over the labelled pixels of the micro-batch."""
        from keras_mobilevitv2.segmenter import segmentation_loss

        loss = recipe.get("loss", {})
        if loss.get("name", "sparse_categorical_crossentropy") != "sparse_categorical_crossentropy":
            raise ValueError(f"loss.name must be sparse_categorical_crossentropy, received {loss.get('name')!r}")
        ignore_index = loss.get("ignore_index", 255)

        def pixel_crossentropy(masks, logits):
            return segmentation_loss(masks, logits, ignore_index=ignore_index)

        return pixel_crossentropy

    def dataset_fn(self, recipe, data_dir, batch_size, skip_counter=None):
        """`fn(input_context, epoch)`: this input pipeline's shard of one training epoch."""
        from training.voc_data import VOCOptions, voc_dataset

        def dataset(input_context, epoch):
            seed = _epoch_seed(recipe, epoch)
            options = VOCOptions.from_recipe(
                recipe,
                num_workers=input_context.num_input_pipelines,
                worker_index=input_context.input_pipeline_id,
                batch_size=batch_size,
                num_classes=recipe["model"]["num_labels"],
                seed=seed,
                deterministic=seed is not None,
            )
            return voc_dataset(data_dir, recipe["data"]["train_split"], options, training=True, skip_counter=skip_counter)

        return dataset

    def evaluate(self, model, recipe, data_dir):
        from training.evaluate import count_images, evaluate_segmentation, segmentation_eval_dataset

        data = recipe["data"]
        ignore_index = recipe.get("loss", {}).get("ignore_index", 255)
        mask_dir = data.get("mask_dir", "SegmentationClass")
        dataset = segmentation_eval_dataset(model, data_dir, data["eval_split"], mask_dir, ignore_index)
        total = count_images(self.task_name, data_dir, data["eval_split"], mask_dir=mask_dir)
        return evaluate_segmentation(model, dataset, ignore_index, total=total)

    def report(self, metrics):
        from training.evaluate import report

        return report(metrics, self.task_name)


TASK = SegmentationTask()


def main(argv=None):
    """`python -m training.train_segmentation`: the command line lives in `keras_mobilevitv2.cli.train`."""
    from keras_mobilevitv2.cli.train import main as train_main

    return train_main(TASK, argv, prog="python -m training.train_segmentation", description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
