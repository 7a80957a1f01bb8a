"""from_pretrained: a local checkpoint or a Hugging Face hub id -> a Keras model, converted once and cached."""

import hashlib
import json
import os


from keras_mobilevitv2 import __version__
from keras_mobilevitv2.extras import NetworkError, require
from keras_mobilevitv2.saving import load_model

# Files of a Hugging Face MobileViTV2 repository that conversion reads.
HUB_FILES = ["config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin"]
KERAS_SUFFIX = ".keras"


def default_cache_dir():
    """`$KERAS_MOBILEVITV2_CACHE`, else `~/.cache/keras_mobilevitv2`."""
    return os.environ.get("KERAS_MOBILEVITV2_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_mobilevitv2"
    )


def _fingerprint(path, compat):
    """A key that changes when the checkpoint's files, the compat mode or this package change."""
    digest = hashlib.sha256(f"{__version__}|{compat}".encode())
    files = (
        sorted(os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))
        if os.path.isdir(path)
        else [path]
    )
    for name in files:
        digest.update(os.path.basename(name).encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


def _looks_like_hub_id(name):
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(name)


def download_from_hub(repo_id, revision=None, cache_dir=None):
    """Download a MobileViTV2 repository's config and weights with `huggingface_hub`; returns the local dir."""
    huggingface_hub = require(
        "huggingface_hub", f"downloading {repo_id!r} needs huggingface_hub (or pass a local directory / file)", "hub"
    )
    try:
        return huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_FILES, cache_dir=cache_dir
        )
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        reason = " ".join(str(e).split())  # the hub's own sentence, on one line
        raise NetworkError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {reason}). "
            "Check the name and the network, or download it elsewhere and pass the local directory."
        ) from None


def from_pretrained(name_or_path, compat=None, cache_dir=None, force_convert=False, revision=None, verbose=True):
    """A pretrained MobileViTV2 Keras model.

    `name_or_path` is a `.keras` file (loaded as is), a local checkpoint (Hugging Face directory or
    weight file, ml-cvnets `.pt`, timm file: see `conversion.convert_checkpoint`), or a hub id such as
    `apple/mobilevitv2-1.0-imagenet1k-256` (a preset name without `apple/` also works), downloaded
    with `huggingface_hub`. The converted model is cached under `cache_dir`
    (`default_cache_dir()`), keyed on the checkpoint's bytes and `compat`, so the second call
    loads it without converting again. `force_convert=True` converts and re-caches.
    """
    from conversion.convert import convert_checkpoint
    from keras_mobilevitv2.presets import PRESETS

    name = os.fspath(name_or_path)
    if name.endswith(KERAS_SUFFIX) and os.path.isfile(name):
        return load_model(name)
    if not os.path.exists(name):
        if name in PRESETS:
            name = f"apple/{name}"
        if not _looks_like_hub_id(name):
            raise FileNotFoundError(f"{name_or_path!r} is neither a local file or directory nor a hub id (org/name)")
        name = download_from_hub(name, revision=revision)
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    cached = os.path.join(cache_dir, f"{_fingerprint(name, compat)}{KERAS_SUFFIX}")
    if os.path.isfile(cached) and not force_convert:
        if verbose:
            print(f"[from_pretrained] loading the converted model cached at {cached}")
        return load_model(cached)
    model = convert_checkpoint(name, compat=compat, verbose=verbose)
    # Write beside, then rename: a crash never leaves a half-written cache entry behind.
    partial = cached + f".partial-{os.getpid()}{KERAS_SUFFIX}"
    try:
        model.save(partial)
        os.replace(partial, cached)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    with open(cached + ".json", "w", encoding="utf-8") as f:
        json.dump({"source": os.path.abspath(name), "compat": compat, "notes": model.conversion_notes}, f, indent=2)
    return model
