"""DeltaWorld: generative world models on delta tokens (entry points; the maths lives in the rooms
`tokenizer`, `worldmodel`, `data` and `eval`)."""

__version__ = "0.1.0"
