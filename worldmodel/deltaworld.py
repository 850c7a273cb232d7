"""DeltaWorld: a generative world model over per-frame token sets (K tokens of C channels).

A hypothesis is one Gaussian noise vector per predicted frame; its K queries are that vector plus a
learned slot embedding (K > 1), so the K tokens of a frame come from one draw and stay coherent.
Training supervises only the best of N hypotheses (best-of-N / multiple-choice learning); sampling
draws fresh noise per step, M hypotheses in one batched forward per step.

Key-frame layout (the pixel DeltaToken seed: a 24-token first frame, 8 tokens after, 24 + 119 x 8 =
976 tokens for 120 frames): with `key_tokens` K0 != K a clip is its 1D token sequence (B, L, C),
L = K0 + (T - 1) K, frame-major as the tokenizer emits it. The key frame's K0 tokens enter the
context as K0 keys at frame 0's time, unpadded; nothing else changes, since frame 0 is always
context and never predicted (a rollout starts from a context, and teacher forcing predicts frames
1..T-1), so every query still asks for a K-token frame. Not pad-and-mask: padding every frame to
K0 would triple the context of the seed's layout (2,880 keys instead of 976) and make every frame
predict K0 - K dead slots; not a key-frame query slot set: its slots would never be trained. A key
frame after frame 0 (a tokenizer's `key_interval`) is not a layout this model reads.
"""

from collections.abc import Callable

import torch
from einops import rearrange, repeat
from torch import nn

from deltaworld.worldmodel.predictor import KVCache, Predictor, causal_mask

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # elementwise


class DeltaWorld(nn.Module):
    def __init__(
        self,
        *,
        token_dim: int,
        tokens_per_frame: int = 1,
        key_tokens: int | None = None,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        rope_dim: int = 60,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1e-5,
        query_std: float = 0.02,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        if key_tokens is not None and key_tokens < 1:
            raise ValueError(f"key_tokens must be >= 1 or null, got {key_tokens}")
        self.token_dim, self.tokens_per_frame, self.query_std = token_dim, tokens_per_frame, query_std
        # frame 0's tokens (K0) in a clip's 1D sequence; no weights depend on it (see the module docstring)
        self.key_tokens = key_tokens or tokens_per_frame
        self.predictor = Predictor(
            dim=dim,
            context_dim=token_dim,
            depth=depth,
            num_heads=num_heads,
            rope_dim=rope_dim,
            mlp_ratio=mlp_ratio,
            layer_scale_init=layer_scale_init,
            init_std=query_std,
        )
        # K = 1 keeps the reference key set (a released checkpoint has no slot embedding)
        self.slot_embed = nn.Embedding(tokens_per_frame, dim) if tokens_per_frame > 1 else None
        # the deterministic baseline: N = 1 with one learned query instead of noise (reference key)
        self.q_embed = nn.Embedding(1, dim) if deterministic else None
        for embedding in (self.slot_embed, self.q_embed):
            if embedding is not None:
                nn.init.trunc_normal_(embedding.weight, std=query_std)

    @property
    def dim(self) -> int:
        return self.predictor.dim

    @property
    def deterministic(self) -> bool:
        return self.q_embed is not None

    def draw_noise(
        self, shape: tuple[int, ...], *, device=None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One noise vector per hypothesis: (*shape, dim) with std `query_std` (the paper's 0.02)."""
        device = device if device is not None else self.predictor.head.weight.device
        return torch.randn(*shape, self.dim, device=device, generator=generator) * self.query_std

    def queries(self, noise: torch.Tensor) -> torch.Tensor:
        """noise (..., dim) -> queries (..., K, dim)."""
        if self.q_embed is not None:
            noise = self.q_embed.weight[0].expand_as(noise)
        q = noise[..., None, :]
        return q if self.slot_embed is None else q + self.slot_embed.weight

    def token_frames(self, num_frames: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Frame index (L,) of each token of a clip's 1D sequence (K0 tokens of frame 0, then K per
        frame): `values[:, token_frames(T)]` spreads per-frame values (B, T, ...) onto the tokens."""
        counts = torch.full((num_frames,), self.tokens_per_frame, device=device)
        counts[0] = self.key_tokens
        return torch.arange(num_frames, device=device).repeat_interleave(counts)

    def frames_of(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Frame index (L,) of each token of a clip's T tokens in either form, per frame (B, T, K, C)
        or the 1D sequence (B, L, C) of this model's layout (L = K0 + (T - 1) K, frame-major)."""
        if tokens.dim() == 4 and tokens.shape[1] == num_frames:
            return torch.arange(num_frames, device=tokens.device).repeat_interleave(tokens.shape[2])
        frames = self.token_frames(num_frames, tokens.device)
        if tokens.dim() != 3 or tokens.shape[1] != len(frames):
            raise ValueError(
                f"tokens {tuple(tokens.shape)} of {num_frames} frames are neither (B, {num_frames}, K, C) nor the "
                f"1D sequence (B, {len(frames)}, C) of {self.key_tokens} key-frame tokens + "
                f"{self.tokens_per_frame} a frame after"
            )
        return frames

    def sequence(self, tokens: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A clip's tokens in either form (`frames_of`) at frame times (B, T) -> (tokens (B, L, C),
        their times (B, L), their frame indices (L,)): what the predictor attends to."""
        frames = self.frames_of(tokens, times.shape[1])
        flat = rearrange(tokens, "b t k c -> b (t k) c") if tokens.dim() == 4 else tokens
        return flat, times[:, frames], frames

    def split_first_frame(self, tokens: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A clip's tokens of T frames in either form -> (every frame but the last, in the same form;
        every frame but the first (B, T-1, K, C)): teacher forcing's context and targets."""
        self.frames_of(tokens, num_frames)  # the layout is checked before it is cut
        if tokens.dim() == 4:
            return tokens[:, :-1], tokens[:, 1:]
        k = self.tokens_per_frame
        return tokens[:, :-k], rearrange(tokens[:, self.key_tokens :], "b (t k) c -> b t k c", k=k)

    def context_cache(self, tokens: torch.Tensor, times: torch.Tensor) -> KVCache:
        """Project context tokens (B, T, K, C) or a 1D sequence (B, L, C) at frame times (B, T) once for every block."""
        flat, token_times, _ = self.sequence(tokens, times)
        return self.predictor.context_cache(flat, token_times)

    def extend_cache(self, cache: KVCache, tokens: torch.Tensor, times: torch.Tensor) -> KVCache:
        """Append frames of tokens (B, F, K, C) at times (B, F) to a cache."""
        flat, token_times, _ = self.sequence(tokens, times)
        return self.predictor.extend_cache(cache, flat, token_times)

    def predict(
        self,
        queries: torch.Tensor,
        times: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        context_times: torch.Tensor | None = None,
        cache: KVCache | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """queries (B, F, S, K, dim) for F frames at `times` (B, F), S hypotheses each, attending to
        context tokens (B, Tk, K, C) or a 1D sequence (B, L, C) at `context_times` (B, Tk), or a
        cache -> tokens (B, F, S, K, C).

        causal: teacher forcing, where query frame i is the frame after context frame i and may
        see context frames 0..i only.
        """
        b, f, s, k, _ = queries.shape
        mask = None
        if causal:
            if context is None:
                raise ValueError("causal prediction needs the context tokens")
            frames_q = torch.arange(f, device=queries.device).repeat_interleave(s * k) + 1
            mask = causal_mask(frames_q, self.sequence(context, context_times)[2])
        if cache is None:
            cache = self.context_cache(context, context_times)
        out = self.predictor(
            rearrange(queries, "b f s k d -> b (f s k) d"),  # frame-major, as the reference
            times.repeat_interleave(s * k, dim=1),
            cache=cache,
            mask=mask,
        )
        return rearrange(out, "b (f s k) c -> b f s k c", f=f, s=s)

    @torch.no_grad()
    def hypothesis_losses(
        self,
        noise: torch.Tensor,
        context: torch.Tensor,
        context_times: torch.Tensor,
        targets: torch.Tensor,
        target_times: torch.Tensor,
        loss_fn: LossFn,
    ) -> torch.Tensor:
        """Score hypotheses noise (B, F, S, dim) for target frames (B, F, K, C) at target_times
        (B, F), target i seeing context frames 0..i (in either form of `frames_of`), in one pass
        without gradient -> (B, F, S)."""
        preds = self.predict(
            self.queries(noise), target_times, context=context, context_times=context_times, causal=True
        )
        return loss_fn(preds.float(), targets[:, :, None].expand_as(preds).float()).flatten(3).mean(-1)

    def teacher_forced_loss(
        self,
        tokens: torch.Tensor,
        times: torch.Tensor,
        *,
        num_hypotheses: int,
        loss_fn: LossFn,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Best-of-N loss over a clip: every frame 1..T-1 predicted from the true tokens before it.

        tokens (B, T, K, C) or the 1D sequence (B, L, C) of a key-frame layout, times (B, T)
        seconds. N hypotheses per frame are scored without gradient; only the arg-min one is re-run
        with gradient. Returns (loss, stats) where stats holds the best-of-N and mean-over-hypotheses
        losses of the scoring pass (their gap shows whether hypotheses stay diverse).
        """
        if self.deterministic and num_hypotheses != 1:
            raise ValueError(
                f"the deterministic world model has one learned query; got num_hypotheses={num_hypotheses}"
            )
        b, t = times.shape
        if t < 2:
            raise ValueError(f"teacher forcing needs clips of at least 2 frames, got {t}")
        context, targets = self.split_first_frame(tokens, t)
        context_times, target_times = times[:, :-1], times[:, 1:]
        noise = self.draw_noise((b, t - 1, num_hypotheses), device=tokens.device, generator=generator)
        stats = {}
        if num_hypotheses > 1:
            losses = self.hypothesis_losses(
                noise, context, context_times, targets, target_times, loss_fn
            )  # (B, T-1, N)
            best = losses.argmin(-1)
            noise = torch.gather(noise, 2, repeat(best, "b t -> b t 1 d", d=self.dim))
            stats = {"loss_best_of_n": losses.min(-1).values.mean(), "loss_mean_hypothesis": losses.mean()}
        preds = self.predict(
            self.queries(noise), target_times, context=context, context_times=context_times, causal=True
        )
        loss = loss_fn(preds[:, :, 0].float(), targets.float()).mean()
        return loss, stats

    @torch.no_grad()
    def rollout(
        self,
        context: torch.Tensor,
        context_times: torch.Tensor,
        future_times: torch.Tensor,
        *,
        samples: int,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        use_cache: bool = True,
        feedback: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Autoregressive sampling of M hypotheses, one batched forward per step.

        context tokens (B, Tc, K, C) or a 1D sequence (B, L, C) at context_times (B, Tc);
        future_times (B, H) any spacing;
        noise (B, M, H, dim) overrides the draws (fresh noise per step otherwise);
        feedback(step, tokens (BM, 1, K, C)) -> tokens edits each prediction before it is output and
        becomes context (e.g. writes given actions into their channels: `worldmodel.actions`).
        Returns tokens (B, M, H, K, C); hypotheses are expanded batch-major (row b * M + m).
        """
        b, horizon = future_times.shape
        if noise is None:
            noise = self.draw_noise((b, samples, horizon), device=context.device, generator=generator)
        noise = rearrange(noise, "b m h d -> (b m) h d")
        expand = lambda x: x.repeat_interleave(samples, dim=0)  # noqa: E731
        tokens, times, future = expand(context), expand(context_times), expand(future_times)
        # project the context once per clip, not once per hypothesis
        cache = [(expand(k), expand(v)) for k, v in self.context_cache(context, context_times)] if use_cache else None
        out = []
        for step in range(horizon):
            when = future[:, step : step + 1]
            queries = self.queries(noise[:, step : step + 1, None])  # (BM, 1, 1, K, dim)
            if use_cache:
                pred = self.predict(queries, when, cache=cache)[:, :, 0]  # (BM, 1, K, C)
            else:
                pred = self.predict(queries, when, context=tokens, context_times=times)[:, :, 0]
            if feedback is not None:
                pred = feedback(step, pred)
            if use_cache:
                cache = self.extend_cache(cache, pred, when)
            else:
                grown = pred if tokens.dim() == 4 else pred.flatten(1, 2)  # a 1D sequence grows by K tokens
                tokens, times = torch.cat((tokens, grown), 1), torch.cat((times, when), 1)
            out.append(pred[:, 0])
        return rearrange(torch.stack(out, 1), "(b m) h k c -> b m h k c", m=samples)
