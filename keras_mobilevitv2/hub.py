"""from_pretrained: a local checkpoint or a Hugging Face hub id -> a Keras model, converted once and cached.

A name is a hub id only when it cannot be a local path: nothing exists there, it has the `owner/name`
form, no leading `./`, `../`, `/` or `~`, no file suffix (`.keras`, `.pt`, `.safetensors`, ...) and
its first part is not an existing local directory. Anything else that does not exist is
`NotFoundError` ("not found: PATH"), never a network error.

Each cache entry is `<key>.keras` beside `<key>.json`; the key digests the source's bytes, `compat`
and this package's version, and the JSON records the source's digest and the entry's own. An entry
whose bytes or record do not match (truncated, corrupt, replaced by another model) is never
returned: it is converted again and rewritten (each file written beside and renamed into place).
"""

import hashlib
import json
import logging
import os
import re

from keras_mobilevitv2 import __version__
from keras_mobilevitv2.extras import NetworkError, require
from keras_mobilevitv2.saving import load_model

logger = logging.getLogger(__name__)

# Files of a Hugging Face MobileViTV2 (transformers or timm) repository that conversion reads.
HUB_FILES = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*-of-*.bin",
]
KERAS_SUFFIX = ".keras"
HF_HANDLE = "hf://"

# A name ending so is a file the user meant to read locally, never a hub id.
LOCAL_SUFFIXES = (
    ".keras", ".pt", ".pth", ".tar", ".bin", ".safetensors", ".ckpt", ".h5", ".json", ".npz", ".pkl", ".onnx",
)
_HUB_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class NotFoundError(FileNotFoundError, ValueError):
    """A local path that does not exist (and cannot be a hub id)."""


class HubError(NetworkError, ValueError):
    """A hub repository that could not be downloaded: one message, no chained tracebacks."""


class CacheError(ValueError):
    """A cache entry that cannot be used or rewritten; the message says how to clear it."""


def default_cache_dir():
    """`$KERAS_MOBILEVITV2_CACHE`, else `~/.cache/keras_mobilevitv2`."""
    return os.environ.get("KERAS_MOBILEVITV2_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_mobilevitv2"
    )


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_digest(path):
    """sha256 over the file names and bytes of a checkpoint file or directory (its top-level files)."""
    digest = hashlib.sha256()
    files = (
        sorted(os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
        if os.path.isdir(path)
        else [path]
    )
    for name in files:
        digest.update(os.path.basename(name).encode() + b"\0")
        digest.update(_sha256_file(name).encode())
    return digest.hexdigest()


def _cache_key(digest, compat):
    return hashlib.sha256(f"{__version__}|{compat}|{digest}".encode()).hexdigest()[:24]


def looks_like_hub_id(name):
    """True when `name` can only be a hub repository id (see the module docstring)."""
    if os.path.exists(name) or "\\" in name or name.startswith((".", "/", "~")) or os.path.isabs(name):
        return False
    parts = name.split("/")
    if len(parts) != 2 or not all(_HUB_PART.fullmatch(p) and ".." not in p for p in parts):
        return False
    if name.lower().endswith(LOCAL_SUFFIXES):
        return False
    return not os.path.isdir(parts[0])


def _not_found(name):
    return NotFoundError(
        f"not found: {name} (neither a local file or directory nor a hub id owner/name; a hub id has no "
        "file suffix and no leading ./ or /)"
    )


def download_from_hub(repo_id, revision=None, cache_dir=None, allow_patterns=None):
    """Download a repository's config and weights with `huggingface_hub`; returns the local directory.

    Raises:
        MissingExtraError: huggingface_hub is not installed.
        HubError: the hub is unreachable (offline, no network), or the
            repository / revision does not exist. The message says how to pass a local copy.
    """
    local_hint = (
        f"Download it where the hub is reachable (e.g. `hf download {repo_id} --local-dir DIR`) and pass "
        "the local directory or weight file instead"
    )
    huggingface_hub = require(
        "huggingface_hub", f"downloading {repo_id!r} needs huggingface_hub (or pass a local directory / file)", "hub"
    )
    try:
        return huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=list(allow_patterns or HUB_FILES), cache_dir=cache_dir
        )
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        reason = " ".join(str(e).split())  # the hub's own sentence, on one line
        raise HubError(
            f"could not download {repo_id!r} from the Hugging Face hub: the hub was unreachable or the "
            f"repository is not available ({type(e).__name__}: {reason}). {local_hint}."
        ) from None


def resolve_name(name_or_path, revision=None, allow_patterns=None):
    """(local path, hub id or None): `name_or_path` itself when it exists, else a downloaded snapshot."""
    from keras_mobilevitv2.presets import PRESETS

    name = os.fspath(name_or_path)
    if os.path.exists(name):
        return name, None
    if name.startswith(HF_HANDLE):
        name = name[len(HF_HANDLE):]
    elif name in PRESETS:
        name = f"apple/{name}"
    if not looks_like_hub_id(name):
        raise _not_found(os.fspath(name_or_path))
    return download_from_hub(name, revision=revision, allow_patterns=allow_patterns), name


def _write_atomically(path, write):
    partial = f"{path}.partial-{os.getpid()}{os.path.splitext(path)[1]}"
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _entry_problem(entry, record_path, digest, compat):
    """Why the cache entry cannot be returned, or None when it is intact and of this source."""
    if not os.path.isfile(record_path):
        return f"its record {record_path} is missing"
    try:
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
        expected = (record["source_sha256"], record["entry_sha256"], record["compat"], record["package_version"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its record {record_path} is unreadable ({type(e).__name__})"
    if expected[0] != digest or expected[2] != compat or expected[3] != __version__:
        return "its record names another source, compat or package version"
    if _sha256_file(entry) != expected[1]:
        return "its bytes differ from the ones recorded (truncated, corrupt or replaced)"
    return None


def from_pretrained(name_or_path, compat=None, cache_dir=None, force_convert=False, revision=None, verbose=True):
    """A pretrained MobileViTV2 Keras model.

    `name_or_path` is a `.keras` file (loaded as is), a local checkpoint (Hugging Face or timm
    directory or weight file, ml-cvnets `.pt`: see `conversion.convert_checkpoint`), or a hub id such
    as `apple/mobilevitv2-1.0-imagenet1k-256` or `timm/mobilevitv2_050.cvnets_in1k` (also with an
    `hf://` prefix; a preset name without `apple/` also works), downloaded with `huggingface_hub`.
    The converted model is cached under `cache_dir` (`default_cache_dir()`), keyed on the
    checkpoint's bytes and `compat`; an entry that fails its digest check is converted again.
    `force_convert=True` converts and re-caches.

    Raises:
        NotFoundError (FileNotFoundError, ValueError): a local path that does not exist.
        HubError (ValueError, OSError): the hub could not be reached or has no such repository.
        CheckpointError / ConversionError (ValueError): the checkpoint cannot be converted.
    """
    from conversion.convert import convert_checkpoint

    name = os.fspath(name_or_path)
    if name.endswith(KERAS_SUFFIX) and os.path.isfile(name):
        return load_model(name)
    local, _ = resolve_name(name, revision=revision)
    cache_dir = os.fspath(cache_dir or default_cache_dir())
    os.makedirs(cache_dir, exist_ok=True)
    digest = source_digest(local)
    cached = os.path.join(cache_dir, f"{_cache_key(digest, compat)}{KERAS_SUFFIX}")
    record_path = cached + ".json"
    if os.path.exists(cached) and not force_convert:
        problem = _entry_problem(cached, record_path, digest, compat)
        if problem is None:
            if verbose:
                print(f"[from_pretrained] loading the converted model cached at {cached}")
            return load_model(cached)
        logger.warning("cache entry %s is not used: %s; converting again", cached, problem)
        if verbose:
            print(f"[from_pretrained] cache entry {cached} is not used: {problem}; converting again")
    model = convert_checkpoint(local, compat=compat, verbose=verbose)
    try:
        _write_atomically(cached, model.save)
        record = {
            "source": os.path.abspath(local),
            "source_sha256": digest,
            "entry_sha256": _sha256_file(cached),
            "compat": compat,
            "package_version": __version__,
            "notes": model.conversion_notes,
        }

        def write_record(path):
            with open(path, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=2)

        _write_atomically(record_path, write_record)
    except OSError as e:
        raise CacheError(
            f"could not write the cache entry {cached} ({e.strerror or e}); remove {cached} and {record_path} "
            f"or pass another cache_dir / set KERAS_MOBILEVITV2_CACHE"
        ) from None
    return model
