"""DeltaTok: the change between two frames' VFM features as K continuous tokens.

encode(prev, cur) -> tokens; decode(tokens, prev) -> cur. A clip is tokenized in parallel with the
true previous features (teacher forcing); reconstruction runs closed loop, each frame decoded from
the previous *reconstruction*, as a video codec decodes from its own reference frame.

The encoder/decoder pair only sees (B, N, D) patch embeddings, so it is also the core of the
pixel-space DeltaToken (`tokenizer.pixel`), which embeds pixel patches instead of VFM features and
may give key frames their own, larger set of query slots.
"""

import torch
from einops import rearrange
from torch import nn

from deltaworld.tokenizer.blocks import Block, init_linear_weights
from deltaworld.tokenizer.rope import patch_rope_2d


class DeltaTok(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        depth: int = 12,
        num_tokens: int = 1,
        token_dim: int | None = None,
        mlp_ratio: float = 4.0,
        swiglu: bool = True,
        qk_norm: bool = True,
        gated_attn: bool = True,
        layer_scale_init: float = 1e-5,
        rope_theta: float = 100.0,
        init_std: float = 0.02,
        eps: float = 1e-5,
        encode_difference: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        # the encoder sees cur - prev in place of cur: same information, but its query slots pool the
        # change from step 0. Off in the reference; on for random-init demo features, whose change is
        # too content-dependent for the decoder to learn to read a token that pools cur itself
        self.encode_difference = encode_difference
        self.num_tokens = num_tokens
        self.token_dim = token_dim or dim
        self.rope_theta = rope_theta

        def blocks() -> nn.ModuleList:
            return nn.ModuleList(
                Block(
                    dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    swiglu=swiglu,
                    qk_norm=qk_norm,
                    gated_attn=gated_attn,
                    layer_scale_init=layer_scale_init,
                    eps=eps,
                )
                for _ in range(depth)
            )

        self.z_embed = nn.Embedding(num_tokens, dim)  # learned query slot(s) that become the tokens
        self.xy_embed = nn.Embedding(2, dim)  # type embedding: row 0 previous, row 1 current frame
        self.encoder_blocks = blocks()
        self.decoder_blocks = blocks()
        self.norm = nn.LayerNorm(dim, eps=eps)
        # linear bottleneck only when the token is narrower than the features
        bottleneck = self.token_dim != dim
        self.to_token = nn.Linear(dim, self.token_dim) if bottleneck else nn.Identity()
        self.from_token = nn.Linear(self.token_dim, dim) if bottleneck else nn.Identity()

        init_linear_weights(self, std=init_std)
        nn.init.trunc_normal_(self.z_embed.weight, std=init_std)
        nn.init.trunc_normal_(self.xy_embed.weight, std=init_std)

    def rope(
        self, grid: tuple[int, int], *, scale: float = 1.0, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return patch_rope_2d(grid, self.dim // self.num_heads, theta=self.rope_theta, scale=scale, device=device)

    def encode(
        self,
        prev: torch.Tensor,
        cur: torch.Tensor,
        grid: tuple[int, int],
        *,
        rope_scale: float = 1.0,
        slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """prev, cur (B, N, D) -> tokens (B, K, C); `slots` (K', D) replaces the K learned query
        slots (the pixel tokenizer's key frames use a larger set) and then K' tokens come out."""
        b = prev.shape[0]
        slots = self.z_embed.weight if slots is None else slots
        cos, sin = self.rope(grid, scale=rope_scale, device=prev.device)
        # previous and current token j share patch position j; the K slots are not rotated
        rope = (torch.cat((cos, cos)), torch.cat((sin, sin)))
        change = cur - prev if self.encode_difference else cur
        h = torch.cat(
            (slots.expand(b, -1, -1).to(prev.dtype), prev + self.xy_embed.weight[0], change + self.xy_embed.weight[1]),
            dim=1,
        )
        for block in self.encoder_blocks:
            h = block(h, rope)
        return self.to_token(self.norm(h[:, : slots.shape[0]]))

    def decode(
        self,
        tokens: torch.Tensor,
        prev: torch.Tensor,
        grid: tuple[int, int],
        *,
        rope_scale: float = 1.0,
    ) -> torch.Tensor:
        """tokens (B, K, C), prev (B, N, D) -> current features (B, N, D); any K (key frames)."""
        rope = self.rope(grid, scale=rope_scale, device=prev.device)
        h = torch.cat((self.from_token(tokens).to(prev.dtype), prev), dim=1)
        for block in self.decoder_blocks:
            h = block(h, rope)
        return h[:, tokens.shape[1] :]

    def tokenize(self, feats: torch.Tensor, grid: tuple[int, int], first_prev: torch.Tensor) -> torch.Tensor:
        """Tokens of a whole clip, parallel over time (teacher forcing).

        feats (B, T, N, D); first_prev (N, D) or (B, N, D): features the first frame is encoded
        against (a black frame's). Returns (B, T, K, C).
        """
        b, t = feats.shape[:2]
        first = first_prev.expand(b, *feats.shape[2:]).to(feats.dtype)
        prev = torch.cat((first[:, None], feats[:, :-1]), dim=1)  # (B, T, N, D)
        flat = "b t n d -> (b t) n d"
        tokens = self.encode(rearrange(prev, flat), rearrange(feats, flat), grid)
        return rearrange(tokens, "(b t) k c -> b t k c", b=b, t=t)

    def decode_rollout(self, tokens: torch.Tensor, grid: tuple[int, int], context: torch.Tensor) -> torch.Tensor:
        """Decode a token sequence closed loop: tokens (B, T, K, C), context (B, N, D) -> (B, T, N, D).

        Frame t is decoded from the decoded frame t-1 (the context for t = 0): how predicted
        tokens become features.
        """
        prev, out = context, []
        for t in range(tokens.shape[1]):
            prev = self.decode(tokens[:, t], prev, grid)
            out.append(prev)
        return torch.stack(out, dim=1)

    def reconstruct(
        self, feats: torch.Tensor, grid: tuple[int, int], context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codec-style closed loop: feats (B, T, N, D) from context (B, N, D).

        Each frame is encoded against the previous *reconstruction* and decoded from it, so the
        token corrects the drift it sees, as a video encoder codes against its decoded reference.
        Returns (tokens (B, T, K, C), reconstructions (B, T, N, D)).
        """
        prev, tokens, out = context, [], []
        for t in range(feats.shape[1]):
            token = self.encode(prev, feats[:, t], grid)
            prev = self.decode(token, prev, grid)
            tokens.append(token)
            out.append(prev)
        return torch.stack(tokens, dim=1), torch.stack(out, dim=1)
