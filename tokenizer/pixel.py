"""Pixel-space DeltaToken: a causal video codec whose tokens are the change between frames.

Frames are cut into p x p patches and embedded; the *same* delta encoder/decoder core as DeltaTok
(`tokenizer.deltatok.DeltaTok`, held as `self.core`) turns (reference, current) patch embeddings into
K tokens of C channels, and (tokens, reference) back into the current frame. The reference is the
previous *reconstruction* (closed loop, like a codec's reference frame), so encoder and decoder
hold the same state and drift is corrected by the next token. Key frames (frame 0, and every G
frames when `key_interval` is set) are coded against a black frame, optionally with their own,
larger set of query slots (`key_tokens`), which resets drift.

An optional diffusion decoder (`tokenizer.diffusion.PatchDenoiser`) refines the displayed frame;
the reference stays the deterministic reconstruction, so the token stream never depends on which
decoder the receiver picks.
"""

import os

import torch
from einops import rearrange
from torch import nn

from deltaworld.tokenizer.deltatok import DeltaTok
from deltaworld.tokenizer.diffusion import PatchDenoiser
from deltaworld.tokenizer.rope import patch_rope_2d


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float32 in [-1, 1] (what the tokenizer sees)."""
    if frames.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    return frames.float() / 127.5 - 1.0


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """float frames in [-1, 1] -> uint8 (clamped, rounded)."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def is_key_frame(t: int, key_interval: int | None) -> bool:
    """Frame t is coded against black: frame 0, and every `key_interval` frames if set."""
    return t == 0 or (key_interval is not None and t % key_interval == 0)


def frame_token_counts(num_frames: int, num_tokens: int, key_tokens: int | None, key_interval: int | None) -> list[int]:
    """Tokens per frame of a clip (from a config alone, without building the model)."""
    return [(key_tokens or num_tokens) if is_key_frame(t, key_interval) else num_tokens for t in range(num_frames)]


class PixelDeltaToken(nn.Module):
    def __init__(
        self,
        *,
        patch_size: int = 16,
        channels: int = 3,
        dim: int = 768,
        num_heads: int = 12,
        depth: int = 12,
        num_tokens: int = 8,
        token_dim: int = 16,
        key_tokens: int | None = None,
        key_interval: int | None = None,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1e-5,
        rope_theta: float = 100.0,
        init_std: float = 0.02,
        pos_features: int = 32,
        diffusion: dict | None = None,
    ) -> None:
        super().__init__()
        if key_interval is not None and key_interval < 1:
            raise ValueError(f"key_interval must be >= 1 or null, got {key_interval}")
        if key_tokens is not None and key_tokens < 1:
            raise ValueError(f"key_tokens must be >= 1 or null, got {key_tokens}")
        self.patch_size, self.channels = patch_size, channels
        self.num_tokens, self.token_dim = num_tokens, token_dim
        self.key_tokens, self.key_interval = key_tokens or num_tokens, key_interval
        patch_dim = channels * patch_size**2
        self.core = DeltaTok(
            dim=dim,
            num_heads=num_heads,
            depth=depth,
            num_tokens=num_tokens,
            token_dim=token_dim,
            mlp_ratio=mlp_ratio,
            layer_scale_init=layer_scale_init,
            rope_theta=rope_theta,
            init_std=init_std,
        )
        self.patch_embed = nn.Linear(patch_dim, dim)
        self.patch_norm = nn.LayerNorm(dim)  # unit-scale inputs, as the VFM features the core was built for
        # absolute position: a pixel patch carries none (a black key-frame reference is the same
        # everywhere, and RoPE is only relative); Fourier features of the normalised patch centre
        # keep it independent of the frame size
        self.pos_features = pos_features
        self.pos_embed = nn.Linear(pos_features, dim)
        # a key frame's own, larger budget of query slots (frame 0 carries the whole scene)
        self.key_embed = nn.Embedding(key_tokens, dim) if key_tokens else None
        # separate heads: rebuilding a frame from black and correcting the previous one are different
        # maps, and sharing one would pull the delta frames away from their reference
        self.head, self.key_head = (nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, patch_dim)) for _ in range(2))
        for embed in (self.patch_embed, self.pos_embed):
            nn.init.trunc_normal_(embed.weight, std=init_std)
            nn.init.zeros_(embed.bias)
        if self.key_embed is not None:
            nn.init.trunc_normal_(self.key_embed.weight, std=init_std)
        # zero heads: an untrained decoder outputs its reference (copy-last), and learns the delta
        for head in (self.head, self.key_head):
            nn.init.zeros_(head[1].weight)
            nn.init.zeros_(head[1].bias)
        self.denoiser = PatchDenoiser(patch_dim=patch_dim, token_dim=token_dim, **diffusion) if diffusion else None

    # ---- layout ---------------------------------------------------------------------------------

    def is_key(self, t: int) -> bool:
        return is_key_frame(t, self.key_interval)

    def tokens_at(self, t: int) -> int:
        return self.key_tokens if self.is_key(t) else self.num_tokens

    def token_counts(self, num_frames: int) -> list[int]:
        """Tokens of each frame of a clip: the 1D sequence is their concatenation."""
        return frame_token_counts(num_frames, self.num_tokens, self.key_tokens, self.key_interval)

    @property
    def uniform(self) -> bool:
        """Every frame has K tokens, so a clip's tokens stack to (B, T, K, C)."""
        return self.key_tokens == self.num_tokens

    def grid(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"frame size {height}x{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, 3 p p)."""
        self.grid(*frames.shape[-2:])
        return rearrange(frames, "b c (h p) (w q) -> b (h w) (p q c)", p=self.patch_size, q=self.patch_size)

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, 3 p p) -> (B, 3, H, W)."""
        p = self.patch_size
        return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid[0], w=grid[1], p=p, q=p)

    def black(self, batch: int, num_patches: int, device: torch.device | None = None) -> torch.Tensor:
        """Patches (B, N, 3 p p) of a black frame: the reference of key frames."""
        return torch.full((batch, num_patches, self.channels * self.patch_size**2), -1.0, device=device)

    # ---- one frame ------------------------------------------------------------------------------

    def embed(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patches (B, N, 3 p p) -> core inputs (B, N, D): content + absolute position."""
        half = self.pos_features // 2  # the RoPE table's angles: F/4 frequencies per axis
        cos, sin = patch_rope_2d(grid, self.pos_features, device=patches.device)  # (N, F), halves repeat
        fourier = torch.cat((cos[:, :half], sin[:, :half]), -1)  # (N, F)
        return self.patch_norm(self.patch_embed(patches)) + self.pos_embed(fourier.to(patches.dtype))

    def encode_patches(self, ref: torch.Tensor, cur: torch.Tensor, grid: tuple[int, int], *, key: bool) -> torch.Tensor:
        """ref, cur patches (B, N, 3 p p) -> tokens (B, K_t, C)."""
        slots = self.key_embed.weight if key and self.key_embed is not None else None
        return self.core.encode(self.embed(ref, grid), self.embed(cur, grid), grid, slots=slots)

    def decode_patches(
        self, tokens: torch.Tensor, ref: torch.Tensor, grid: tuple[int, int], *, key: bool
    ) -> torch.Tensor:
        """tokens (B, K_t, C), ref patches (B, N, 3 p p) -> deterministic reconstruction patches."""
        head = self.key_head if key else self.head
        return ref + head(self.core.decode(tokens, self.embed(ref, grid), grid))

    def reference(self, t: int, prev: torch.Tensor | None, black: torch.Tensor) -> torch.Tensor:
        """What frame t is coded against: `black` for key frames, else the previous reconstruction."""
        if self.is_key(t):
            return black
        if prev is None:
            raise ValueError(f"frame {t} is not a key frame but there is no previous reconstruction")
        return prev

    def decode_frame(
        self, tokens: torch.Tensor, prev: torch.Tensor | None, t: int, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Decoder side of a codec step: frame t's tokens (B, K_t, C) and the previous reconstruction
        patches (None before frame 0) -> its deterministic reconstruction patches (B, N, P)."""
        black = self.black(tokens.shape[0], grid[0] * grid[1], tokens.device)
        return self.decode_patches(tokens, self.reference(t, prev, black), grid, key=self.is_key(t))

    def code_frame(
        self, cur: torch.Tensor, prev: torch.Tensor | None, t: int, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One closed-loop codec step on patches: returns (tokens (B, K_t, C), reconstruction
        patches (B, N, P), the reference used). Both the batch path and the streaming sessions
        call this, so they agree exactly."""
        ref = self.reference(t, prev, self.black(*cur.shape[:2], cur.device).to(cur.dtype))
        key = self.is_key(t)
        tokens = self.encode_patches(ref, cur, grid, key=key)
        return tokens, self.decode_patches(tokens, ref, grid, key=key), ref

    def refine(
        self,
        det: torch.Tensor,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        *,
        steps: int = 4,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The diffusion decoder's sample for a frame: det patches (B, N, P) + its tokens -> patches."""
        if self.denoiser is None:
            raise ValueError("this tokenizer has no diffusion decoder (built with diffusion=null)")
        return self.denoiser.sample(det, tokens, grid, steps=steps, generator=generator)

    # ---- whole clips (batch path) -------------------------------------------------------------------

    def encode_video(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-loop coding of a clip: frames (B, T, 3, H, W) in [-1, 1] -> (tokens (B, L, C),
        deterministic reconstructions (B, T, 3, H, W)); L = sum(token_counts(T)), frame-major."""
        grid = self.grid(*frames.shape[-2:])
        prev, tokens, recons = None, [], []
        for t in range(frames.shape[1]):
            token, prev, _ = self.code_frame(self.patchify(frames[:, t]), prev, t, grid)
            tokens.append(token)
            recons.append(self.unpatchify(prev, grid))
        return torch.cat(tokens, 1), torch.stack(recons, 1)

    def split_tokens(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """A clip's 1D tokens (B, L, C) -> one (B, K_t, C) per frame."""
        counts, total, t = [], 0, 0
        while total < tokens.shape[1]:
            counts.append(self.tokens_at(t))
            total, t = total + counts[-1], t + 1
        if total != tokens.shape[1]:
            raise ValueError(f"{tokens.shape[1]} tokens do not split into frames of {counts} tokens")
        return list(tokens.split(counts, dim=1))

    def frame_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, T, K, C); only when every frame has K tokens (no larger key frames)."""
        if not self.uniform:
            raise ValueError(
                f"key frames carry {self.key_tokens} tokens and other frames {self.num_tokens}: the clip "
                "does not stack to (B, T, K, C); use a tokenizer with key_tokens=null for a world model"
            )
        return rearrange(tokens, "b (t k) c -> b t k c", k=self.num_tokens)

    def decode_video(
        self,
        tokens: torch.Tensor,
        size: tuple[int, int],
        *,
        start: int = 0,
        prev: torch.Tensor | None = None,
        decoder: str = "deterministic",
        steps: int = 4,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Frames (B, T, 3, H, W) in [-1, 1] from per-frame tokens (B, T, K, C) or a list of
        (B, K_t, C); frame i has index start + i (key-frame schedule) and the first one is decoded
        from `prev` frames (B, 3, H, W) unless it is a key frame. decoder: deterministic|diffusion."""
        if decoder not in ("deterministic", "diffusion"):
            raise ValueError(f"decoder must be 'deterministic' or 'diffusion', got {decoder!r}")
        grid = self.grid(*size)
        frames = tokens.unbind(1) if torch.is_tensor(tokens) else tokens
        ref = None if prev is None else self.patchify(prev)
        out = []
        for i, token in enumerate(frames):
            ref = self.decode_frame(token, ref, start + i, grid)
            shown = self.refine(ref, token, grid, steps=steps, generator=generator) if decoder == "diffusion" else ref
            out.append(self.unpatchify(shown, grid))
        return torch.stack(out, 1)


def load_pixel_tokenizer(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[PixelDeltaToken, dict]:
    """Frozen tokenizer and its metadata from a file written by `deltaworld train experiment=pixel_*`
    (or a pixel world-model export, which carries it under `tokenizer.`); its config is checked
    against `tokenizer.schema` before anything is built."""
    from deltaworld.tokenizer.checkpoint import load_weights, read_metadata, strip_prefix
    from deltaworld.tokenizer.schema import PIXEL_TOKENIZER, checked_config, expect_kind

    meta = read_metadata(path)
    kind = expect_kind(path, meta, ("pixel_tokenizer", "pixel_world"), "deltaworld train experiment=pixel_cpu")
    model = PIXEL_TOKENIZER.fn(**checked_config(path, meta, "tokenizer", PIXEL_TOKENIZER))
    weights = load_weights(path)
    model.load_state_dict(strip_prefix(weights, "tokenizer.") if kind == "pixel_world" else weights)
    return model.requires_grad_(False).eval().to(device), meta
