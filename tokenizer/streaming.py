"""Causal streaming sessions for the pixel DeltaToken: one frame in, its tokens out (encoder), and
one frame's tokens in, the frame out (decoder).

The only state is the previous deterministic reconstruction (the codec's reference frame) and the
frame counter (for the key-frame schedule): memory is constant per step, whatever the stream's
length. Both sessions run `PixelDeltaToken.code_frame` / `decode_patches`, the steps of the batch
path, so streaming output equals `encode_video` / `decode_video` exactly.
"""

import torch

from deltaworld.tokenizer.pixel import PixelDeltaToken, to_unit


class EncoderSession:
    """`push(frame)` -> that frame's tokens; `reconstruction` is what the decoder will show."""

    def __init__(self, model: PixelDeltaToken) -> None:
        self.model = model
        self.t = 0
        self.prev: torch.Tensor | None = None  # (B, N, P) patches of the last reconstruction
        self.grid: tuple[int, int] | None = None

    @torch.no_grad()
    def push(self, frame: torch.Tensor) -> torch.Tensor:
        """frame uint8 (B, 3, H, W) or float in [-1, 1] -> tokens (B, K_t, C)."""
        frame = to_unit(frame) if frame.dtype == torch.uint8 else frame
        grid = self.model.grid(*frame.shape[-2:])
        if self.grid is not None and grid != self.grid:
            raise ValueError(f"frame {self.t} has patch grid {grid}, the stream started with {self.grid}")
        self.grid = grid
        tokens, self.prev, _ = self.model.code_frame(self.model.patchify(frame), self.prev, self.t, grid)
        self.t += 1
        return tokens

    @property
    def reconstruction(self) -> torch.Tensor:
        """The last deterministic reconstruction (B, 3, H, W) in [-1, 1]."""
        if self.prev is None:
            raise ValueError("no frame pushed yet")
        return self.model.unpatchify(self.prev, self.grid)


class DecoderSession:
    """`push(tokens)` -> the frame (B, 3, H, W) in [-1, 1]; decoder='diffusion' shows the diffusion
    decoder's sample (drawn from a generator seeded once per session), the reference stays
    deterministic so either choice decodes the same token stream."""

    def __init__(
        self,
        model: PixelDeltaToken,
        size: tuple[int, int],
        *,
        decoder: str = "deterministic",
        steps: int = 4,
        seed: int = 0,
    ) -> None:
        if decoder not in ("deterministic", "diffusion"):
            raise ValueError(f"decoder must be 'deterministic' or 'diffusion', got {decoder!r}")
        self.model, self.decoder, self.steps = model, decoder, steps
        self.grid = model.grid(*size)
        self.t = 0
        self.prev: torch.Tensor | None = None
        self.generator: torch.Generator | None = None
        self.seed = seed

    @torch.no_grad()
    def push(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, K_t, C) of the next frame -> frame (B, 3, H, W)."""
        if tokens.shape[1] != self.model.tokens_at(self.t):
            raise ValueError(f"frame {self.t} takes {self.model.tokens_at(self.t)} tokens, got {tokens.shape[1]}")
        self.prev = self.model.decode_frame(tokens, self.prev, self.t, self.grid)
        self.t += 1
        shown = self.prev
        if self.decoder == "diffusion":
            if self.generator is None:
                self.generator = torch.Generator(device=tokens.device).manual_seed(self.seed)
            shown = self.model.refine(self.prev, tokens, self.grid, steps=self.steps, generator=self.generator)
        return self.model.unpatchify(shown, self.grid)
