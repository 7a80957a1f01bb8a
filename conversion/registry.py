"""The checkpoint sources, registered in one place: adding a family is one module and one entry here.

A source module (as keras-hub's `convert_*.py` converters) defines:

- `NAME`: the format name in notes, reports and `--task`-style messages ("hf", "cvnets", "timm");
  `LABEL`: how error messages name its naming scheme ("ml-cvnets");
- detection: `STEM_KEY` (a compiled regex that only this naming's stem key matches),
  `STEM_EXAMPLE` (that key, for messages) and `ATTENTION_KEY` (the suffix of MobileViTV2's
  separable-attention projection, which MobileViT v1 lacks);
- renaming onto the Hugging Face names (`conversion/hf.py` maps those onto Keras): either
  `rename_key(key)`, or the table `MODULES` (rows of (source module regex, Hugging Face module
  template, leaf kind)), `LEAVES` ({leaf kind: {source leaf: Hugging Face leaf}}) and `DROPPED`
  ({source key prefix: why it has no counterpart}), applied by `conversion.sources.rename_by_table`;
- optionally `filter_state_dict(state_dict) -> state_dict`: a tensor transform for what renaming
  cannot express (timm's `checkpoint_filter_fn`), applied to the source's own keys first;
- optionally a `config.json` reader: `owns_config(config)` (is this dict mine?) and
  `read_config(config, config_path)` (the `conversion.sources.read_source_config` dict: the
  MobileViTV2Config fields it states, the unknown ones, preprocessing and notes);
- optionally `default_preprocessing()` -> (transformers `preprocessor_config.json` dict, note) for
  a file that carries none (else the task's `default_preprocessing_preset`);
- `DILATES_LOCAL_CONV`: whether the original model dilates the local conv of the dilated stages
  (ml-cvnets and timm do, transformers does not; `conversion.report` says so).

`conversion.sources` (detection, renaming, config) and `conversion.report` iterate `SOURCES`.
"""

from conversion import cvnets, hf_source, timm

# In the order error messages list them.
SOURCES = (hf_source, cvnets, timm)


def source_named(name):
    """The registered source module whose `NAME` is `name`, or None."""
    return next((source for source in SOURCES if source.NAME == name), None)
