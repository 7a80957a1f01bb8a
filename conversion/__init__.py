"""PyTorch checkpoints (Hugging Face, ml-cvnets, timm) <-> keras_mobilevitv2 models."""


def __getattr__(name):
    import importlib

    homes = {
        "convert_checkpoint": "conversion.convert",
        "build_model": "conversion.convert",
        "load_hf_state_dict": "conversion.hf",
        "model_to_hf_state_dict": "conversion.hf",
        "ConversionError": "conversion.hf",
        "CheckpointError": "conversion.sources",
        "export_to_transformers": "conversion.to_transformers",
    }
    if name in homes:
        return getattr(importlib.import_module(homes[name]), name)
    raise AttributeError(f"module 'conversion' has no attribute {name!r}")
