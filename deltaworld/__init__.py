"""DeltaWorld: generative world models on delta tokens.

The maths lives in the rooms `deltaworld.tokenizer`, `deltaworld.worldmodel`, `deltaworld.data` and
`deltaworld.eval`; the command-line entry points in this package. The names below are the curated
Python API, imported on first use so that `import deltaworld` stays cheap and changes nothing.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    # models: frozen VFM, feature-space tokenizer, token space, world model, pixel codec
    "build_backbone": "deltaworld.tokenizer.backbone",
    "DeltaTok": "deltaworld.tokenizer.deltatok",
    "DeltaTokens": "deltaworld.worldmodel.spaces",
    "DeltaWorld": "deltaworld.worldmodel.deltaworld",
    "PixelDeltaToken": "deltaworld.tokenizer.pixel",
    "EncoderSession": "deltaworld.tokenizer.streaming",
    "DecoderSession": "deltaworld.tokenizer.streaming",
    # exports written by `deltaworld train`, `heads` and `import-official`
    "load_tokenizer": "deltaworld.tokenizer.checkpoint",
    "load_world": "deltaworld.worldmodel.checkpoint",
    "load_pixel_tokenizer": "deltaworld.tokenizer.pixel",
    "load_heads": "deltaworld.eval.heads",
    # sampling and the dense forecasting benchmark
    "sample_futures": "deltaworld.worldmodel.sampling",
    "forecasting_methods": "deltaworld.eval.benchmark",
    "run_benchmark": "deltaworld.eval.benchmark",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'deltaworld' has no attribute '{name}'")
    value = getattr(import_module(_API[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
