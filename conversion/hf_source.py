"""The Hugging Face (transformers) checkpoint source: `MobileViTV2For*` / `MobileViTV2Model` state dicts.

Its key names are the canonical ones every other source is renamed onto (`conversion/hf.py` maps
them onto the Keras variables), so renaming only adds the `mobilevitv2.` prefix a bare
`MobileViTV2Model` saves its backbone without. Its `config.json` holds transformers'
`MobileViTV2Config` fields, which are ours. See `conversion/registry.py` for the contract.
"""

import re

from conversion.hf import BACKBONE_PREFIX

NAME = "hf"
LABEL = "hf"  # as error messages name the naming scheme
# Detection: a key only this naming's stem has, and MobileViTV2's separable (linear) attention.
STEM_KEY = re.compile(r"(mobilevitv2\.)?conv_stem\.convolution\.weight")
STEM_EXAMPLE = "mobilevitv2.conv_stem.convolution.weight"
ATTENTION_KEY = "attention.qkv_proj.convolution.weight"
# transformers never dilates the local conv of the dilated stages (ml-cvnets and timm do).
DILATES_LOCAL_CONV = False


def rename_key(key):
    """The Hugging Face key of `key`: itself, with the backbone prefix a bare backbone leaves out."""
    if key.startswith(("conv_stem.", "encoder.")):
        return BACKBONE_PREFIX + key
    return key


def owns_config(config):
    """A transformers `config.json` (a timm one has `architecture` and no `model_type`)."""
    return "model_type" in config or "architecture" not in config


def read_config(config, config_path):
    """What a transformers `config.json` says: its MobileViTV2Config fields, the unknown ones apart.

    Returns the `read_source_config` dict (`kind`, `path`, `fields`, `unknown`, `preprocessing`, `notes`).
    """
    from conversion.sources import CheckpointError, split_config_fields

    model_type = config.get("model_type", "mobilevitv2")
    if model_type != "mobilevitv2":
        raise CheckpointError(f"{config_path} describes a {model_type!r} model, not 'mobilevitv2'")
    fields, unknown = split_config_fields(config, config_path)
    notes = [f"config.json fields kept aside (unknown): {', '.join(sorted(unknown))}"] if unknown else []
    return {"kind": NAME, "path": config_path, "fields": fields, "unknown": unknown, "preprocessing": None, "notes": notes}
