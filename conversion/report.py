"""The parity report: a converted Keras model against its source run in PyTorch, on one seeded input.

The PyTorch reference is always transformers' MobileViTV2 holding the source's tensors (after
renaming, for ml-cvnets and timm sources: the renaming is proven against the original code in the
tests). Where transformers computes something else than ml-cvnets / timm - the local depthwise conv
of the dilated stages at output stride 8 / 16 - `patch_cvnets_dilation` sets that conv's dilation
and padding in the transformers model, so the reference reproduces the original architecture;
the report says when it did.

    report = parity_report(keras_model, hf_state_dict, source="ckpt.pt", source_format="cvnets")
    print(format_report(report))

Needs torch and transformers (`available()` says whether they are installed).
"""

import importlib.util
import time

import numpy as np

from conversion import hf_source
from conversion.hf import BACKBONE_PREFIX
from conversion.registry import source_named
from conversion.to_transformers import architecture, dilated_local_convs, transformers_config_dict
from keras_mobilevitv2.tasks import BACKBONE, task_of

# Max |Keras - PyTorch| / std(PyTorch) under which a conversion counts as exact in float32.
TOLERANCE = 1e-4
DEFAULT_SIZE = 256
SEED = 0


def available():
    """True when torch and transformers can be imported (the report needs both)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def patch_cvnets_dilation(torch_model, config):
    """Dilate the local conv of transformers' dilated stages as ml-cvnets does; returns what changed.

    transformers' `MobileViTV2Layer` builds `conv_kxk` with dilation 1 at every output stride;
    ml-cvnets' `MobileViTBlockv2` gives its `local_rep.0` the stage's dilation (2 at output stride
    16 in the last stage; 2 and 4 in the last two at 8). Padding follows as `(k - 1) // 2 * d`.
    """
    prefix = "" if _is_bare_backbone(torch_model) else BACKBONE_PREFIX
    changes = []
    for path, dilation in dilated_local_convs(config).items():
        conv = torch_model.get_submodule(prefix + path).convolution
        padding = (conv.kernel_size[0] - 1) // 2 * dilation
        conv.dilation = (dilation, dilation)
        conv.padding = (padding, padding)
        changes.append(f"{prefix}{path}: dilation {dilation}, padding {padding}")
    return changes


def _is_bare_backbone(torch_model):
    return type(torch_model).__name__ == architecture(BACKBONE)


def reference_model(config, task, hf_state_dict):
    """transformers' model of `task` holding `hf_state_dict` (Hugging Face names, numpy arrays).

    Built on the meta device and loaded with `assign=True`, strict: the PyTorch parameters share
    memory with the numpy arrays, so the reference costs no second copy of the weights.
    """
    import torch
    import transformers

    hf_config = transformers.MobileViTV2Config(**transformers_config_dict(config, task))
    with torch.device("meta"):
        torch_model = getattr(transformers, architecture(task))(hf_config)
    tensors = {}
    for key, value in hf_state_dict.items():
        if task == "backbone":
            key = key.removeprefix(BACKBONE_PREFIX)
        value = np.asarray(value)
        tensors[key] = torch.from_numpy(value) if value.flags.writeable else torch.tensor(value)
    for key, buffer in torch_model.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in tensors:
            tensors[key] = torch.zeros((), dtype=buffer.dtype)
    torch_model.load_state_dict(tensors, strict=True, assign=True)
    return torch_model.eval()


def input_size(model, config):
    """(height, width, note): the preprocessing crop (or 256), made exact for both references.

    ml-cvnets resizes a feature map that is not a multiple of the patch size, transformers crops it;
    with compat="cvnets" the size is rounded up to a multiple of patch * output_stride so that the
    PyTorch reference computes the same function.
    """
    preprocessing = getattr(model, "preprocessing", None)
    size = (preprocessing.crop_height, preprocessing.crop_width) if preprocessing is not None else (DEFAULT_SIZE,) * 2
    if config.compat != "cvnets":
        return size[0], size[1], None
    patch_h, patch_w = config.patch_hw
    multiples = (patch_h * config.output_stride, patch_w * config.output_stride)
    exact = tuple(-(-s // m) * m for s, m in zip(size, multiples))
    if exact == size:
        return size[0], size[1], None
    return exact[0], exact[1], (
        f"input {size[0]}x{size[1]} rounded up to {exact[0]}x{exact[1]} (a multiple of patch size x output "
        "stride): at other sizes ml-cvnets resizes feature maps that transformers crops"
    )


def _difference(actual, expected):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"Keras output shape {actual.shape} differs from the PyTorch reference's {expected.shape}")
    max_abs = float(np.max(np.abs(actual - expected)))
    std = float(np.std(expected))
    return {
        "shape": list(actual.shape),
        "max_abs_diff": max_abs,
        "reference_std": std,
        "max_abs_diff_over_std": max_abs / (std + 1e-12),
    }


def compare(model, torch_model, pixel_values):
    """{output name: difference} of the Keras model against the PyTorch one on NHWC `pixel_values`."""
    import torch

    task = task_of(model)
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(pixel_values.transpose(0, 3, 1, 2)), output_hidden_states=True)
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731  (B, C, H, W) -> (B, H, W, C)
    backbone = model if task == "backbone" else model.backbone
    features = backbone(pixel_values)
    outputs = {}
    if task == "image_classification":
        outputs["logits"] = _difference(model(pixel_values), ref.logits.numpy())
    elif task == "semantic_segmentation":
        outputs["logits"] = _difference(model(pixel_values), nhwc(ref.logits))
    else:
        outputs["last_hidden_state"] = _difference(features["last_hidden_state"], nhwc(ref.last_hidden_state))
    for i, (ours, theirs) in enumerate(zip(features["hidden_states"], ref.hidden_states)):
        outputs[f"hidden_states[{i}]"] = _difference(ours, nhwc(theirs))
    return outputs


def parity_report(model, hf_state_dict=None, source=None, source_format=None, reference_dir=None, seed=SEED):
    """Compare `model` with transformers' MobileViTV2 in PyTorch; a JSON-ready dict.

    Args:
        model: the Keras classifier, segmenter or backbone.
        hf_state_dict: the source's tensors under Hugging Face names (`conversion.sources.load_as_hf`);
            the reference is built from them. When the Keras model has compat="cvnets" and output
            stride 8 / 16, the reference's local convs are dilated (`patch_cvnets_dilation`) to
            compute ml-cvnets' architecture, as the Keras model does (for an HF source the report
            notes that stock transformers differs there).
        source, source_format: recorded in the report ("hf", "cvnets", "timm", "keras").
        reference_dir: instead of `hf_state_dict`, a transformers model directory (an export) loaded
            with `from_pretrained`, unpatched: what a transformers user of the export gets.
        seed: of the uniform [0, 1) input (pixel values as the model takes them: already preprocessed).
    """
    import torch
    import transformers

    if (hf_state_dict is None) == (reference_dir is None):
        raise ValueError("give exactly one of hf_state_dict and reference_dir")
    start = time.perf_counter()
    task = task_of(model)
    config = model.config
    notes = []
    dilated = dilated_local_convs(config)
    if reference_dir is not None:
        torch_model = getattr(transformers, architecture(task)).from_pretrained(reference_dir).eval()
        reference = f"transformers {architecture(task)}.from_pretrained({str(reference_dir)!r}), stock"
        patches = []
        if config.compat == "cvnets" and dilated:
            notes.append("compat='cvnets' at output_stride < 32: stock transformers is expected to differ")
    else:
        torch_model = reference_model(config, task, hf_state_dict)
        reference = f"transformers {architecture(task)} holding the checkpoint's tensors (strict load)"
        patches = patch_cvnets_dilation(torch_model, config) if config.compat == "cvnets" else []
        source = source_named(source_format)
        if patches:
            notes.append(
                "transformers does not dilate the local conv of the dilated stages, ml-cvnets and timm do: "
                "the reference's conv_kxk were patched to ml-cvnets' dilation, as the Keras model "
                "(compat='cvnets') computes"
                + ("; --compat transformers reproduces stock transformers instead" if source is hf_source else "")
            )
        elif dilated and source is not None and source.DILATES_LOCAL_CONV:
            notes.append(
                f"compat='transformers': the Keras model and the reference follow transformers, which at "
                f"output_stride {config.output_stride} does not dilate the local conv as the original "
                f"{source_format} model does"
            )
    height, width, size_note = input_size(model, config)
    if size_note:
        notes.append(size_note)
    pixel_values = np.random.RandomState(seed).rand(1, height, width, config.num_channels).astype("float32")
    outputs = compare(model, torch_model, pixel_values)
    worst = max(item["max_abs_diff_over_std"] for item in outputs.values())
    return {
        "source": None if source is None else str(source),
        "source_format": source_format,
        "task": task,
        "compat": config.compat,
        "reference": reference,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "reference_patches": patches,
        "notes": notes,
        "input": {
            "shape_nhwc": list(pixel_values.shape),
            "seed": seed,
            "distribution": "numpy RandomState(seed).rand: uniform [0, 1) float32 pixel values (model input space)",
        },
        "outputs": outputs,
        "max_abs_diff_over_std": worst,
        "tolerance_over_std": TOLERANCE,
        "passed": worst <= TOLERANCE,
        "seconds": round(time.perf_counter() - start, 2),
    }


def format_report(report):
    """The report as lines for a terminal."""
    lines = [
        f"parity: Keras vs PyTorch ({report['reference']}), input {report['input']['shape_nhwc']} "
        f"seed {report['input']['seed']}"
    ]
    lines += [f"  reference patched: {patch}" for patch in report["reference_patches"]]
    lines += [f"  note: {note}" for note in report["notes"]]
    for name, item in report["outputs"].items():
        lines.append(
            f"  {name:18s} max |diff| {item['max_abs_diff']:.3e}   std {item['reference_std']:.3e}   "
            f"max |diff| / std {item['max_abs_diff_over_std']:.3e}"
        )
    verdict = "PASS" if report["passed"] else "FAIL"
    lines.append(
        f"  {verdict}: worst {report['max_abs_diff_over_std']:.3e} of std (tolerance {report['tolerance_over_std']:.0e})"
    )
    return "\n".join(lines)
