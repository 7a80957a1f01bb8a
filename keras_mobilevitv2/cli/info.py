"""`mobilevitv2 info`: list the presets, or describe a preset or a saved model."""

import json
import os
import sys


def add_arguments(parser):
    parser.add_argument(
        "target",
        nargs="?",
        help="a preset name (see the list with no argument), a preset directory (save_to_preset) or a .keras "
        "model file; omit to list the presets",
    )
    parser.add_argument("--json", action="store_true", help="print the config as JSON")


def run(args):
    from keras_mobilevitv2.text import printable

    from keras_mobilevitv2.presets import PRESETS

    if args.target is None:
        width = max(len(n) for n in PRESETS)
        for name, preset in PRESETS.items():
            cfg = preset["config"]
            print(f"{name:<{width}}  {preset['task']:<22} width {cfg['width_multiplier']:<5} image {cfg['image_size']}")
        return 0
    if args.target in PRESETS or args.target.removeprefix("apple/") in PRESETS:
        from keras_mobilevitv2.models import from_preset

        model = from_preset(args.target)
    elif os.path.isfile(args.target) and args.target.endswith(".keras"):
        from keras_mobilevitv2.saving import load_model

        model = load_model(args.target)
    elif os.path.isfile(os.path.join(args.target, "config.json")) and os.path.isfile(
        os.path.join(args.target, "metadata.json")
    ):
        from keras_mobilevitv2.models import from_preset

        try:
            model = from_preset(args.target)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        print(f"error: {args.target!r} is neither a preset name, a preset directory nor a .keras file", file=sys.stderr)
        return 2
    from keras_mobilevitv2.tasks import task_class, task_of

    config = model.config.to_dict()
    if args.json:
        print(json.dumps(config, indent=2))
        return 0
    task = task_of(model)
    print(f"{type(model).__name__}: {model.count_params():,} parameters ({config['num_channels']} input channels)")
    print(f"  task: {task}")
    for key in task_class(task).summary_fields:  # the config fields the task's model uses
        print(f"  {key}: {config[key]}")
    if task != "backbone":
        labels = config["id2label"]
        print(f"  num_labels: {len(labels)} ({', '.join(printable(v, 40) for v in list(labels.values())[:5])}{', ...' if len(labels) > 5 else ''})")
    preprocessing = getattr(model, "preprocessing", None)
    if preprocessing is not None:
        print(f"  preprocessing: {preprocessing.to_dict()}")
    return 0
