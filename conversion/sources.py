"""Read a MobileViTV2 PyTorch checkpoint from any source into Hugging Face names, safely.

    state_dict = read_checkpoint("mobilevitv2-0.5.pt")        # name -> float32 numpy array
    fmt = detect_format(state_dict)                            # "hf" | "cvnets" | "timm"
    hf_state_dict = to_hf_state_dict(state_dict, fmt)          # transformers' key names
    config, task, notes = infer_config(hf_state_dict)          # or read_hf_config(path)
    check_shapes(hf_state_dict, config)                        # every tensor agrees with the config

or all at once: `load_as_hf(path)`. Tensors keep their PyTorch layout (OIHW convolutions,
(out, in) linear weights); laying them out for Keras is the converter's job (`conversion/hf.py`).

Pickled PyTorch files are only ever read with `torch.load(weights_only=True)`: a file that needs to
import or run anything else is refused, and nothing in it is executed.
"""

import argparse
import json
import logging
import math
import os
import re
import sys
import warnings

import numpy as np

from conversion import hf_source, registry, timm
from conversion.registry import source_named
from keras_mobilevitv2.config import MobileViTV2Config, make_divisible, stage_widths
from keras_mobilevitv2.extras import install_hint
from keras_mobilevitv2.tasks import TASK_NAMES, task_class

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is not a MobileViTV2, or disagrees with its config."""


SAFETENSORS_EXTENSIONS = (".safetensors",)
TORCH_EXTENSIONS = (".bin", ".pt", ".pth", ".pth.tar")

# Hugging Face model directory: weight files in the order transformers prefers them.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# Keys that wrap a state dict in training checkpoints (ml-cvnets, timm, generic PyTorch loops).
PLAIN_WRAPPERS = ("state_dict", "model", "model_state_dict")
EMA_WRAPPERS = ("model_ema", "state_dict_ema", "ema_state_dict")

# Prefixes that wrap every key: DataParallel / DistributedDataParallel, torch.compile.
MODULE_PREFIXES = ("module.", "_orig_mod.")

# Classes allowed by the weights-only unpickler on top of torch's defaults. timm's training
# checkpoints store their command line as an argparse.Namespace; rebuilding one only sets
# attributes, it runs no code.
SAFE_EXTRA_GLOBALS = (argparse.Namespace,)

TASKS = TASK_NAMES  # the registry's names (keras_mobilevitv2.tasks)
BACKBONE_PREFIX = "mobilevitv2."

# width_multiplier values tried when inferring a config from tensor shapes (released: 0.5 .. 2.0).
WIDTH_CANDIDATES = tuple(k / 16 for k in range(4, 65))
FFN_MULTIPLIER_CANDIDATES = tuple(range(1, 9))

# Output stride and ASPP rates are not stored in the weights: what ml-cvnets' Pascal VOC DeepLabV3
# recipe (and transformers' conversion script) use.
DEFAULT_SEGMENTATION_OUTPUT_STRIDE = 16
DEFAULT_ATROUS_RATES = (6, 12, 18)


# ================================================================== reading files
def read_checkpoint(path, prefer_ema=False):
    """Read the tensors of a checkpoint file or Hugging Face model directory.

    Accepts `.safetensors` (read with safetensors' numpy API, no torch needed), `.bin` / `.pt` /
    `.pth` / `.pth.tar` (torch.load with weights_only=True) and a directory holding
    `model.safetensors` or `pytorch_model.bin` (possibly sharded). Training checkpoints are
    unwrapped (`state_dict`, `model`, `model_state_dict`; with `prefer_ema`, the EMA copy
    `model_ema` / `state_dict_ema` / `ema_state_dict` when present), `module.` prefixes stripped.

    Returns:
        dict of name -> float32 numpy array, in file order, without `num_batches_tracked`.

    Raises:
        CheckpointError: missing, empty, truncated or corrupt file, a pickle that would run code,
            no tensors, a non-string key, a sparse / meta / non-float tensor, NaN or infinite
            values, a negative BatchNorm running variance, or an unsupported file type.
    """
    return read_checkpoint_with_notes(path, prefer_ema)[0]


def read_checkpoint_with_notes(path, prefer_ema=False):
    """`read_checkpoint`, and sentences saying which files and which state dict were read."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = _hf_directory_weight_files(path)
    elif os.path.exists(path):
        files = [path]
    else:
        raise CheckpointError(f"checkpoint {path} does not exist")

    raw, notes = {}, []
    if len(files) > 1:
        notes.append(f"{len(files)} shards: {', '.join(os.path.basename(f) for f in files)}")
    for file in files:
        tensors, note = _read_file(file, prefer_ema)
        raw.update(tensors)
        if note and note not in notes:
            notes.append(note)
    state_dict = _strip_module_prefixes(raw)
    del raw
    out = {}
    # Pop as we convert: a half-precision tensor is freed as soon as its float32 copy exists, so
    # the two are never both held for the whole checkpoint.
    for key in list(state_dict):
        value = state_dict.pop(key)
        if key.endswith("num_batches_tracked"):
            continue
        out[key] = _checked_values(_to_float32(value, key, path), key, path)
    if not out:
        raise CheckpointError(f"{path} holds no weight tensors")
    return out, notes


def _checked_values(array, key, path):
    """Refuse weights no trained model holds: NaN / Inf anywhere, a negative BatchNorm variance."""
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise CheckpointError(f"{path}: tensor {key} holds {bad} NaN or infinite values; refusing to convert it")
    if key.endswith("running_var") and array.size and float(array.min()) < 0:
        raise CheckpointError(
            f"{path}: tensor {key} (a BatchNorm running variance) has negative entries (min {float(array.min()):.3g}); "
            "refusing to convert it"
        )
    return array


def _config_path(path):
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, "config.json")


def _read_json_object(config_path):
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{config_path} cannot be read: {e.strerror or e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object, found {type(config).__name__}")
    return config


is_timm_config = timm.owns_config  # a timm hub `config.json`, not transformers'


def read_hf_config(path):
    """The Hugging Face `config.json` in a model directory or beside a weight file, or None.

    A timm `config.json` is not a Hugging Face one: None (see `read_source_config`).
    """
    path = os.fspath(path)
    config_path = _config_path(path)
    if not os.path.isfile(config_path):
        return None
    config = _read_json_object(config_path)
    if not hf_source.owns_config(config):
        return None
    model_type = config.get("model_type", "mobilevitv2")
    if model_type != "mobilevitv2":
        raise CheckpointError(f"{config_path} describes a {model_type!r} model, not 'mobilevitv2'")
    return config


def _known_config_fields():
    code = MobileViTV2Config.__init__.__code__
    return set(code.co_varnames[1 : code.co_argcount])


def split_config_fields(config, origin):
    """(fields MobileViTV2Config takes, unknown fields kept aside) of a Hugging Face config dict.

    transformers' bookkeeping keys (`architectures`, versions, ...) are dropped silently; any other
    field we do not know (one a later transformers may add) is returned apart, with a warning.
    """
    known = _known_config_fields()
    fields, unknown = {}, {}
    for key, value in config.items():
        if key in known:
            fields[key] = value
        elif key in MobileViTV2Config._IGNORED_HF_KEYS or key.startswith("_"):
            continue
        else:
            unknown[key] = value
    if unknown:
        warnings.warn(
            f"{origin}: fields unknown to MobileViTV2Config kept aside, not used: {', '.join(sorted(unknown))}",
            UserWarning,
            stacklevel=3,
        )
    return fields, unknown


def read_source_config(path):
    """What the `config.json` beside the weights (or in the directory) says, whichever hub wrote it.

    Returns:
        dict with `kind` ("hf", "timm" or None when there is no config.json), `path`, `fields`
        (MobileViTV2Config fields it states), `unknown` (fields kept aside), `preprocessing` (a
        `preprocessor_config.json`-style dict from a timm `pretrained_cfg`, else None) and `notes`.
    """
    path = os.fspath(path)
    config_path = _config_path(path)
    out = {"kind": None, "path": config_path, "fields": {}, "unknown": {}, "preprocessing": None, "notes": []}
    if not os.path.isfile(config_path):
        return out
    config = _read_json_object(config_path)
    return source_for_config(config).read_config(config, config_path)


def source_for_config(config):
    """The registered source whose `owns_config` claims a `config.json` dict (`conversion.registry`)."""
    owners = [source for source in registry.SOURCES if getattr(source, "owns_config", None) and source.owns_config(config)]
    if len(owners) != 1:  # the registered sources' configs are disjoint: a programming error, not the user's
        raise RuntimeError(f"config.json claimed by {len(owners)} checkpoint sources: {[s.NAME for s in owners]}")
    return owners[0]


def _hf_directory_weight_files(directory):
    for name in HF_WEIGHT_FILES:
        candidate = os.path.join(directory, name)
        if not os.path.isfile(candidate):
            continue
        if not name.endswith(".index.json"):
            return [candidate]
        try:
            with open(candidate, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            shards = list(dict.fromkeys(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{candidate} is not a valid shard index: {e!r}") from None
        return [_shard_path(directory, candidate, shard) for shard in shards]
    raise CheckpointError(f"directory {directory} holds none of {', '.join(HF_WEIGHT_FILES)}")


def _shard_path(directory, index, shard):
    """A shard named by an index: a plain file name in the index's own directory, nothing else."""
    if (
        not isinstance(shard, str)
        or not shard
        or shard != os.path.basename(shard)
        or "\\" in shard
        or shard in (".", "..")
    ):
        raise CheckpointError(
            f"{index}: weight_map names the shard {shard!r}; a shard must be a file name in the index's "
            "own directory (no path separators, no '..')"
        )
    return os.path.join(directory, shard)


def _read_file(path, prefer_ema):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    lower = path.lower()
    if lower.endswith(SAFETENSORS_EXTENSIONS):
        reader = _read_safetensors
    elif lower.endswith(TORCH_EXTENSIONS):
        reader = _read_torch
    else:
        supported = ", ".join(SAFETENSORS_EXTENSIONS + TORCH_EXTENSIONS)
        raise CheckpointError(f"{path}: unsupported checkpoint type (expected {supported} or a model directory)")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    return _unwrap(reader(path), path, prefer_ema)


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from None
    except TypeError as e:
        if "bfloat16" not in str(e):
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    return _read_safetensors_bfloat16(path)


# safetensors dtype -> numpy dtype, for the raw reader below.
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def _read_safetensors_bfloat16(path):
    """numpy has no bfloat16: decode a file holding bf16 tensors by hand.

    Layout: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
    then the raw data. A bfloat16 is the upper half of a float32.
    """
    with open(path, "rb") as f:
        data = f.read()
    out = {}
    try:
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
        body = memoryview(data)[8 + header_size :]  # slices of a memoryview copy nothing
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if info["dtype"] == "BF16":
                array = (np.frombuffer(body[begin:end], dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif info["dtype"] in _SAFETENSORS_DTYPES:
                dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
                array = np.frombuffer(body[begin:end], dtype=dtype)
            else:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            out[name] = array.reshape(info["shape"])
    except (ValueError, KeyError, TypeError) as e:  # JSON, offsets or shape inconsistent
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e!r}") from None
    return out


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs PyTorch, or convert it to .safetensors first: {install_hint('torch')}"
        ) from None
    import pickle

    try:
        with torch.serialization.safe_globals(list(SAFE_EXTRA_GLOBALS)):
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        message = str(e)
        if "Weights only load failed" not in message:
            raise CheckpointError(f"{path} is not a readable PyTorch file (truncated or corrupt?): {message}") from None
        raise CheckpointError(
            f"refused to load {path}: it is a pickle that needs more than tensors and plain containers "
            f"to be read ({_weights_only_reason(message)}). It was NOT executed: PyTorch checkpoints are "
            "only opened with torch.load(weights_only=True), because unpickling anything else can run "
            "arbitrary code. If you trust the file, re-save just its tensors, e.g. "
            "torch.save(model.state_dict(), 'weights.pt') or safetensors.torch.save_file(...)."
        ) from None
    except Exception as e:  # noqa: BLE001 - a garbage file makes the unpickler fail in any way (IndexError, ...)
        detail = str(e).split("\n")[0] or type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch file (truncated or corrupt?): {type(e).__name__}: {detail}"
        ) from None


def _weights_only_reason(message):
    """The one line of torch's weights-only error that says what was rejected."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s+Please use|\n\s*\n\s*Check|$)", message, re.DOTALL)
    reason = match.group(1) if match else message.split("\n")[0]
    return " ".join(reason.split())


def _is_tensor(value):
    torch = sys.modules.get("torch")  # loaded whenever a torch file was read
    return isinstance(value, np.ndarray) or (torch is not None and torch.is_tensor(value))


def _unwrap(obj, path, prefer_ema):
    """(the state dict inside a loaded object, a note saying where it was found).

    The object itself when it holds tensors, else the one under a known training-checkpoint key;
    the note names that key and the other copies the file holds (model / EMA).
    """
    where = []
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
        if any(_is_tensor(v) for v in obj.values()):
            tensors = {}
            for k, v in obj.items():
                if not _is_tensor(v):
                    continue
                if not isinstance(k, str):
                    raise CheckpointError(
                        f"{path}: a tensor is stored under the key {k!r} ({type(k).__name__}); state dict keys must be strings"
                    )
                tensors[k] = v
            if not where:
                return tensors, f"{os.path.basename(path)}: a plain state dict"
            return tensors, f"{os.path.basename(path)}: state dict under {' > '.join(where)}"
        wrappers = EMA_WRAPPERS + PLAIN_WRAPPERS if prefer_ema else PLAIN_WRAPPERS + EMA_WRAPPERS
        found = [k for k in wrappers if isinstance(obj.get(k), dict) and obj[k]]
        if not found:
            break
        others = [k for k in found[1:] if (k in EMA_WRAPPERS) != (found[0] in EMA_WRAPPERS)]
        label = f"{found[0]!r} ({'EMA' if found[0] in EMA_WRAPPERS else 'model'} weights"
        if others:
            label += f"; the file also holds {', '.join(map(repr, others))}, " + (
                "the model weights" if found[0] in EMA_WRAPPERS else "the EMA weights: prefer_ema=True / --prefer-ema takes them"
            )
        where.append(label + ")")
        if found[0] in EMA_WRAPPERS and not prefer_ema:
            logger.warning("%s: no plain weights, reading the EMA weights under %r", path, found[0])
        obj = obj[found[0]]
    keys = list(obj)[:10] if isinstance(obj, dict) else []
    raise CheckpointError(
        f"{path} holds no tensors: top-level keys {keys} (looked for tensors, or a state dict under "
        f"{', '.join(PLAIN_WRAPPERS + EMA_WRAPPERS)})"
    )


def _strip_module_prefixes(state_dict):
    changed = True
    while changed and state_dict:
        changed = False
        for prefix in MODULE_PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                changed = True
    return state_dict


def _to_float32(value, key, path):
    if not isinstance(value, np.ndarray):  # a torch tensor
        if value.layout != sys.modules["torch"].strided:
            raise CheckpointError(f"{path}: tensor {key} is a {value.layout} tensor; weights must be dense")
        if value.device.type != "cpu":  # map_location="cpu" leaves only meta tensors elsewhere
            raise CheckpointError(
                f"{path}: tensor {key} is on the {value.device.type} device and holds no data; weights must be real tensors"
            )
        if not value.is_floating_point():
            raise CheckpointError(f"{path}: tensor {key} has dtype {value.dtype}; weights must be floating point")
        return value.detach().to("cpu").float().numpy()
    # ml_dtypes (imported with TensorFlow) registers bfloat16 with numpy, outside np.floating.
    if not (np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"):
        raise CheckpointError(f"{path}: tensor {key} has dtype {value.dtype}; weights must be floating point")
    return value.astype(np.float32, copy=False)


# ============================================================== format detection
def detect_format(state_dict):
    """The `NAME` of the registered source ("hf", "cvnets", "timm") whose key names a MobileViTV2
    state dict follows: its stem key (`STEM_KEY`), and its separable-attention key (`ATTENTION_KEY`)."""
    keys = list(state_dict)
    found = [source.NAME for source in registry.SOURCES if any(source.STEM_KEY.fullmatch(k) for k in keys)]
    if len(found) != 1:
        what = "no known MobileViTV2 stem" if not found else f"stems of several formats ({found})"
        expected = ", ".join(f"{source.LABEL} {source.STEM_EXAMPLE!r}" for source in registry.SOURCES)
        raise CheckpointError(
            f"not a MobileViTV2 checkpoint: {what} among its {len(keys)} keys; expected one of "
            f"{expected}. Keys seen: {_preview(keys)}"
        )
    fmt = found[0]
    # MobileViTV2's separable (linear) self-attention: one qkv projection with 1 + 2 * d outputs.
    # MobileViT v1 shares the stem names but not these.
    attention = source_named(fmt).ATTENTION_KEY
    if not any(k.endswith("." + attention) for k in keys):
        raise CheckpointError(
            f"the keys follow {fmt} naming but hold no MobileViTV2 separable-attention weights "
            f"('*.{attention}'); is it MobileViT v1 or another model? "
            f"Keys seen: {_preview(keys)}"
        )
    return fmt


def _preview(keys, n=6):
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"{shown}{f', ... ({len(keys)} in all)' if len(keys) > n else ''}"


# ================================================================= renaming
def to_hf_state_dict(state_dict, fmt):
    """Rename a state dict to transformers' MobileViTV2 key names; values are passed through.

    Backbone keys always carry the `mobilevitv2.` prefix (a bare `MobileViTV2Model` saves them
    without it). Source keys with no transformers counterpart (ml-cvnets' auxiliary segmentation
    head) are dropped and logged; any other key without a rule raises.
    """
    renamed, dropped = _to_hf(state_dict, fmt)
    for message in dropped:
        logger.warning(message)
    return renamed


def _to_hf(state_dict, fmt):
    """(renamed state dict, one message per group of dropped keys).

    The source's `filter_state_dict` hook (when it has one) first transforms what renaming cannot
    express; then its `rename_key`, or its `MODULES` / `LEAVES` / `DROPPED` table, names the keys."""
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    source = source_named(fmt)
    if source is None:
        names = ", ".join(source.NAME for source in registry.SOURCES)
        raise CheckpointError(f"unknown checkpoint format {fmt!r}, expected one of {names}")
    if getattr(source, "filter_state_dict", None) is not None:
        state_dict = source.filter_state_dict(state_dict)
    if getattr(source, "rename_key", None) is not None:
        return {source.rename_key(k): v for k, v in state_dict.items()}, []
    renamed, dropped = rename_by_table(state_dict, source, fmt)
    messages = []
    for prefix, why in source.DROPPED.items():
        matched = [k for k in dropped if k.startswith(prefix)]
        if matched:
            messages.append(f"dropped {len(matched)} {fmt} keys {prefix}*: {why}")
    return renamed, messages


def rename_by_table(state_dict, table, source_name):
    """Apply a source module's `MODULES` / `LEAVES` / `DROPPED` table.

    Returns (renamed state dict, dropped keys). Every other key must be renamed by exactly one
    row, and no two keys may land on the same name.
    """
    rows = [(re.compile(pattern + r"\.(?P<leaf>.+)"), template, kind) for pattern, template, kind in table.MODULES]
    renamed, dropped, unknown = {}, [], []
    for key, value in state_dict.items():
        if key.startswith(tuple(table.DROPPED)):
            dropped.append(key)
            continue
        targets = []
        for pattern, template, kind in rows:
            match = pattern.fullmatch(key)
            if match and match["leaf"] in table.LEAVES[kind]:
                targets.append(f"{match.expand(template)}.{table.LEAVES[kind][match['leaf']]}")
        if not targets:
            unknown.append(key)
            continue
        if len(targets) > 1:
            raise CheckpointError(f"{source_name} key {key!r} matches several renaming rules: {targets}")
        if targets[0] in renamed:
            raise CheckpointError(f"two {source_name} keys map to {targets[0]!r}, the second is {key!r}")
        renamed[targets[0]] = value
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} {source_name} keys have no MobileViTV2 (Hugging Face) counterpart: {_preview(unknown, 8)}"
        )
    return renamed, dropped


# ===================================================== expected shapes, config
def detect_task(hf_state_dict):
    """"image_classification", "semantic_segmentation" or "backbone", from the head keys."""
    has_classifier = any(k.startswith("classifier.") for k in hf_state_dict)
    has_segmentation = any(k.startswith("segmentation_head.") for k in hf_state_dict)
    if has_classifier and has_segmentation:
        raise CheckpointError("the checkpoint holds both a classifier and a segmentation head")
    if has_segmentation:
        return "semantic_segmentation"
    return "image_classification" if has_classifier else "backbone"


def expected_hf_shapes(config, task):
    """{Hugging Face key: shape} for a config and task, as transformers' state_dict() orders them.

    Computed from `stage_widths` alone (no torch); `num_batches_tracked` is left out.
    """
    config = _as_config(config)
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, received {task!r}")
    widths = stage_widths(config)
    k = config.conv_kernel_size
    shapes = {}

    def conv(name, out_ch, in_ch, kernel=1, bias=False):
        shapes[f"{name}.convolution.weight"] = (out_ch, in_ch, kernel, kernel)
        if bias:
            shapes[f"{name}.convolution.bias"] = (out_ch,)

    def conv_bn(name, out_ch, in_ch, kernel=1):
        conv(name, out_ch, in_ch, kernel)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.normalization.{leaf}"] = (out_ch,)

    def norm(name, channels):
        shapes[f"{name}.weight"] = (channels,)
        shapes[f"{name}.bias"] = (channels,)

    def inverted_residual(name, in_ch, out_ch):
        hidden = make_divisible(int(round(in_ch * config.expand_ratio)), 8)
        conv_bn(f"{name}.expand_1x1", hidden, in_ch)
        conv_bn(f"{name}.conv_3x3", hidden, 1, 3)  # depthwise
        conv_bn(f"{name}.reduce_1x1", out_ch, hidden)

    p = BACKBONE_PREFIX
    conv_bn(f"{p}conv_stem", widths["stem"], config.num_channels, 3)
    inverted_residual(f"{p}encoder.layer.0.layer.0", widths["stem"], widths["stage1"])
    inverted_residual(f"{p}encoder.layer.1.layer.0", widths["stage1"], widths["stage2"])
    inverted_residual(f"{p}encoder.layer.1.layer.1", widths["stage2"], widths["stage2"])
    previous = widths["stage2"]
    for index, stage in enumerate((3, 4, 5)):
        name = f"{p}encoder.layer.{stage - 1}"
        channels, d = widths[f"stage{stage}"], widths[f"attn{stage}"]
        ffn = int((config.ffn_multiplier * d) // 16 * 16)
        inverted_residual(f"{name}.downsampling_layer", previous, channels)
        conv_bn(f"{name}.conv_kxk", channels, 1, k)  # depthwise
        conv(f"{name}.conv_1x1", d, channels)
        for j in range(config.n_attn_blocks[index]):
            block = f"{name}.transformer.layer.{j}"
            norm(f"{block}.layernorm_before", d)
            conv(f"{block}.attention.qkv_proj", 1 + 2 * d, d, bias=True)
            conv(f"{block}.attention.out_proj", d, d, bias=True)
            norm(f"{block}.layernorm_after", d)
            conv(f"{block}.ffn.conv1", ffn, d, bias=True)
            conv(f"{block}.ffn.conv2", d, ffn, bias=True)
        norm(f"{name}.layernorm", d)
        conv_bn(f"{name}.conv_projection", channels, d)
        previous = channels

    if task == "image_classification" and config.num_labels > 0:
        shapes["classifier.weight"] = (config.num_labels, widths["stage5"])
        shapes["classifier.bias"] = (config.num_labels,)
    elif task == "semantic_segmentation":
        aspp = config.aspp_out_channels
        conv_bn("segmentation_head.aspp.convs.0", aspp, widths["stage5"])
        for branch in (1, 2, 3):
            conv_bn(f"segmentation_head.aspp.convs.{branch}", aspp, widths["stage5"], 3)
        conv_bn("segmentation_head.aspp.convs.4.conv_1x1", aspp, widths["stage5"])
        conv_bn("segmentation_head.aspp.project", aspp, 5 * aspp)
        conv("segmentation_head.classifier", config.num_labels, aspp, bias=True)
    return shapes


def _as_config(config):
    if isinstance(config, MobileViTV2Config):
        return config
    try:
        return MobileViTV2Config.from_dict(dict(config))
    except ValueError as e:
        raise CheckpointError(f"invalid MobileViTV2 config: {e}") from None


def check_shapes(hf_state_dict, config):
    """Raise CheckpointError unless the tensors are exactly those of `config` (dict or MobileViTV2Config).

    Names the first tensor (in model order) whose shape disagrees, else the missing and unexpected keys.
    """
    config = _as_config(config)
    task = detect_task(hf_state_dict)
    expected = expected_hf_shapes(config, task)
    summary = (
        f"width_multiplier={config.width_multiplier}, n_attn_blocks={config.n_attn_blocks}, "
        f"ffn_multiplier={config.ffn_multiplier}, num_labels={config.num_labels}"
        + (f", aspp_out_channels={config.aspp_out_channels}" if task == "semantic_segmentation" else "")
    )
    for key, shape in expected.items():
        if key in hf_state_dict and tuple(hf_state_dict[key].shape) != shape:
            raise CheckpointError(
                f"tensor {key} has shape {tuple(hf_state_dict[key].shape)} in the checkpoint but the config "
                f"({summary}) expects {shape}"
            )
    missing = [k for k in expected if k not in hf_state_dict]
    unexpected = [k for k in hf_state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors the config ({summary}) needs are missing: {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors have no place in a {task} model: {_preview(unexpected)}")
        raise CheckpointError("; ".join(parts))


def infer_config(hf_state_dict):
    """Read the hyper-parameters off the tensor shapes of a Hugging Face-named state dict.

    Returns:
        (config_dict, task, notes): `config_dict` holds only what differs from or must be stated
        over `MobileViTV2Config`'s defaults (HF `config.json` field names); `task` is one of
        `TASKS`; `notes` are sentences saying what was inferred and what was assumed.

    Raises:
        CheckpointError: a tensor needed for inference is missing, or no config reproduces
            every tensor shape.
    """
    sd = hf_state_dict
    task = detect_task(sd)
    notes = []

    def shape(key):
        if key not in sd:
            raise CheckpointError(f"cannot infer the config: the checkpoint has no tensor {key}")
        return tuple(sd[key].shape)

    p = BACKBONE_PREFIX + "encoder.layer."
    stem = shape(BACKBONE_PREFIX + "conv_stem.convolution.weight")
    found = {
        "stem": stem[0],
        "stage1": shape(p + "0.layer.0.reduce_1x1.convolution.weight")[0],
        "stage2": shape(p + "1.layer.0.reduce_1x1.convolution.weight")[0],
    }
    n_attn_blocks = []
    for stage in (3, 4, 5):
        found[f"stage{stage}"] = shape(f"{p}{stage - 1}.downsampling_layer.reduce_1x1.convolution.weight")[0]
        found[f"attn{stage}"] = shape(f"{p}{stage - 1}.conv_1x1.convolution.weight")[0]
        block = re.compile(rf"{re.escape(p)}{stage - 1}\.transformer\.layer\.(\d+)\.")
        n_attn_blocks.append(len({m.group(1) for m in map(block.match, sd) if m}))

    width = next(
        (w for w in WIDTH_CANDIDATES if stage_widths(MobileViTV2Config(width_multiplier=w)) == found), None
    )
    if width is None:
        raise CheckpointError(
            f"no width_multiplier in {WIDTH_CANDIDATES[0]}..{WIDTH_CANDIDATES[-1]} gives the widths found "
            f"({found}) with the default base_attn_unit_dims; pass an explicit config"
        )
    notes.append(
        f"width_multiplier {width}: stem {found['stem']}, stages "
        f"{'/'.join(str(found[f'stage{s}']) for s in range(1, 6))}, attention "
        f"{'/'.join(str(found[f'attn{s}']) for s in (3, 4, 5))} channels"
    )
    notes.append(f"n_attn_blocks {n_attn_blocks}: transformer layers counted in stages 3, 4, 5")

    d = found["attn3"]
    ffn = shape(f"{p}2.transformer.layer.0.ffn.conv1.convolution.weight")[0]
    ffn_multiplier = next((m for m in FFN_MULTIPLIER_CANDIDATES if int((m * d) // 16 * 16) == ffn), None)
    if ffn_multiplier is None:
        raise CheckpointError(f"FFN width {ffn} for attention width {d} matches no integer ffn_multiplier")
    notes.append(f"ffn_multiplier {ffn_multiplier}: FFN width {ffn} for attention width {d}")

    config = {
        "num_channels": stem[1],
        "width_multiplier": width,
        "n_attn_blocks": n_attn_blocks,
        "ffn_multiplier": ffn_multiplier,
        "conv_kernel_size": shape(f"{p}2.conv_kxk.convolution.weight")[-1],
    }
    if task == "image_classification":
        config["num_labels"] = shape("classifier.weight")[0]
        notes.append(f"num_labels {config['num_labels']}: rows of classifier.weight")
    elif task == "semantic_segmentation":
        config["num_labels"] = shape("segmentation_head.classifier.convolution.weight")[0]
        config["aspp_out_channels"] = shape("segmentation_head.aspp.project.convolution.weight")[0]
        config["output_stride"] = DEFAULT_SEGMENTATION_OUTPUT_STRIDE
        config["atrous_rates"] = list(DEFAULT_ATROUS_RATES)
        notes.append(f"num_labels {config['num_labels']}: output channels of segmentation_head.classifier")
        notes.append(f"aspp_out_channels {config['aspp_out_channels']}: output channels of the ASPP projection")
        notes.append(
            f"output_stride {DEFAULT_SEGMENTATION_OUTPUT_STRIDE} and atrous_rates {list(DEFAULT_ATROUS_RATES)} "
            "are not stored in the weights: assumed ml-cvnets' Pascal VOC DeepLabV3 recipe; set them "
            "explicitly if the model was trained otherwise"
        )
    else:
        notes.append("no classification or segmentation head: a bare backbone")
    notes.append(f"task {task}")
    check_shapes(sd, config)
    return config, task, notes


def _overlay(base, top):
    """`base` with `top`'s fields; labels move together (a new num_labels drops the old names)."""
    merged = dict(base)
    if "id2label" in top or "num_labels" in top:
        for key in ("id2label", "label2id", "num_labels"):
            if key not in top:
                merged.pop(key, None)
    merged.update(top)
    return merged


def _overrides_dict(config):
    if config is None:
        return {}
    if isinstance(config, MobileViTV2Config):
        fields = config.to_dict()
        fields.pop("model_type", None)
        return fields
    if not isinstance(config, dict):
        raise CheckpointError(f"config must be a MobileViTV2Config, a dict or a config.json path, received {type(config).__name__}")
    return dict(config)


def _build_config(fields, origin):
    try:
        return MobileViTV2Config.from_dict(fields)
    except (ValueError, TypeError, AttributeError) as e:  # a wrongly typed field fails in any of these ways
        raise CheckpointError(f"invalid MobileViTV2 config ({origin}): {e}") from None


def resolve_config(hf_state_dict, task, source_config=None, overrides=None):
    """(config dict, notes): the checkpoint's config, completed from the tensors, `overrides` on top.

    In order: a Hugging Face `config.json` when there is one, else the hyper-parameters inferred
    from the tensor shapes with what a timm `config.json` states (class count, labels); then the
    fields of `overrides` (a partial dict is fine: the rest stays inferred). A classifier or
    segmenter that names no classes of its own gets the public label set of its head size
    (ImageNet-1k for 1000 classes, PASCAL VOC for 21 segmentation classes). The result is
    checked against every tensor shape.
    """
    from keras_mobilevitv2.labels import LABEL_SETS, default_labels, is_placeholder

    source_config = source_config or {"kind": None, "fields": {}, "path": None}
    top = _overrides_dict(overrides)
    notes, origins = [], []
    if source_config["kind"] == "hf":
        base = dict(source_config["fields"])
        notes.append("config from config.json")
        origins.append(source_config["path"])
    else:
        try:
            base, _, inferred = infer_config(hf_state_dict)
            notes += inferred
        except CheckpointError:
            if not top:
                raise
            base = {}
            notes.append("the config could not be inferred from the tensors; the given config is used with the defaults")
        if source_config["kind"] == "timm":
            base = _overlay(base, source_config["fields"])
            notes += source_config.get("notes", [])
            origins.append(source_config["path"])
    if top:
        base = _overlay(base, top)
        notes.append(f"given config overrides: {', '.join(sorted(top))}")
        origins.append("the given config")
    config = _build_config(base, " + ".join(origins) or "inferred from the tensors")
    if task != "backbone" and is_placeholder(config.id2label):
        name, id2label = default_labels(task, config.num_labels)
        if name is not None:
            base = _overlay(base, {"id2label": id2label})
            config = _build_config(base, "labels")
            notes.append(
                f"labels: the checkpoint names none of its {config.num_labels} classes; the {name} label set "
                f"(keras_mobilevitv2/labels/{LABEL_SETS[name][0]}) applied"
            )
        else:
            notes.append(f"labels: none in the checkpoint, LABEL_0 .. LABEL_{config.num_labels - 1}")
    check_shapes(hf_state_dict, config)
    return config.to_dict(), notes


def default_preprocessing(path, fmt, task, source_config=None):
    """(transformers `preprocessor_config.json` dict or None, note): what images need, and where it comes from.

    A `preprocessor_config.json` beside the weights, else a timm config's `pretrained_cfg`, else the
    default of the source: timm's `mobilevitv2_*` pretrained_cfg for timm files, Apple's ImageNet /
    PASCAL VOC preset for the others.
    """
    from keras_mobilevitv2.presets import get_preset

    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    candidate = os.path.join(directory, PREPROCESSOR_CONFIG)
    if os.path.isfile(candidate):
        return _read_json_object(candidate), f"preprocessing from {PREPROCESSOR_CONFIG} ({candidate})"
    source_config = source_config or {}
    if "preprocessing_note" in source_config:  # the config.json said (a timm pretrained_cfg)
        return source_config.get("preprocessing"), source_config["preprocessing_note"]
    source = source_named(fmt)
    if getattr(source, "default_preprocessing", None) is not None:
        return source.default_preprocessing()
    preset = task_class(task).default_preprocessing_preset
    processor = get_preset(preset)["preprocessing"]
    return processor, (
        f"preprocessing assumed (the checkpoint carries none): Apple's {preset} processor, shortest edge "
        f"{processor['size']['shortest_edge']}, centre crop {processor['crop_size']['height']}, "
        f"{processor['resample']}, rescale 1/255, RGB -> BGR"
    )


PREPROCESSOR_CONFIG = "preprocessor_config.json"


def load_source(path, config=None, prefer_ema=False):
    """Everything conversion needs from a checkpoint, as a dict.

    Keys: `hf_state_dict`, `config` (a complete config dict), `task`, `format`, `notes` (what was
    detected, which state dict was used, every inferred or assumed value), `preprocessing` (a
    `preprocessor_config.json` dict or None), `unknown_config_fields` (kept aside).
    """
    path = os.fspath(path)
    state_dict, read_notes = read_checkpoint_with_notes(path, prefer_ema=prefer_ema)
    fmt = detect_format(state_dict)
    hf_state_dict, dropped = _to_hf(state_dict, fmt)
    notes = [f"{path}: {fmt} checkpoint, {len(state_dict)} tensors"] + read_notes + dropped
    del state_dict
    task = detect_task(hf_state_dict)
    source_config = read_source_config(path)
    if source_config["kind"] == "hf":
        notes += source_config["notes"]
    config_dict, config_notes = resolve_config(hf_state_dict, task, source_config, config)
    notes += config_notes
    preprocessing, note = default_preprocessing(path, fmt, task, source_config)
    if note:
        notes.append(note)
    return {
        "hf_state_dict": hf_state_dict,
        "config": config_dict,
        "task": task,
        "format": fmt,
        "notes": notes,
        "preprocessing": preprocessing,
        "preprocessing_note": note,
        "unknown_config_fields": source_config.get("unknown", {}),
    }


def load_as_hf(path, config=None, prefer_ema=False):
    """read_checkpoint -> detect_format -> to_hf_state_dict -> config -> check_shapes, in one call.

    The config is the `config.json` beside the file (or in the model directory), else inferred from
    the tensor shapes; the fields of `config` (a partial dict, a MobileViTV2Config) override it.

    Returns:
        (hf_state_dict, config_dict, task, fmt, notes)
    """
    source = load_source(path, config=config, prefer_ema=prefer_ema)
    return source["hf_state_dict"], source["config"], source["task"], source["format"], source["notes"]
