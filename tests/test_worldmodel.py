"""DeltaWorld predictor and best-of-N selection on tiny random models."""

import torch

from tokenizer.blocks import LayerScale
from tokenizer.losses import feature_loss
from worldmodel.best_of_n import causal_mask, select_best_queries
from worldmodel.predictor import Predictor


def tiny_predictor() -> Predictor:
    torch.manual_seed(0)
    p = Predictor(dim=32, context_dim=24, depth=2, num_heads=2, rope_dim=12)
    for m in p.modules():  # O(1) weights and branches (as the reference vectors) so every input matters
        if isinstance(m, LayerScale):
            m.lambda1.data.fill_(0.5)
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features**-0.5)
    return p.eval()


def irregular_times(b: int, t: int) -> torch.Tensor:
    return torch.cumsum(torch.rand(b, t) * 0.3 + 0.04, 1) - 0.04


@torch.no_grad()
def test_causal_mask_blocks_future_tokens():
    p = tiny_predictor()
    ctx, times, q = torch.randn(2, 5, 24), irregular_times(2, 6), torch.randn(2, 5, 32)
    mask = causal_mask(torch.arange(5) + 1, torch.arange(5))
    out = p(q, times[:, 1:], context=ctx, pos_k=times[:, :5], mask=mask)
    changed = ctx.clone()
    changed[:, 3:] += 5.0  # tokens of frames 3, 4
    out2 = p(q, times[:, 1:], context=changed, pos_k=times[:, :5], mask=mask)
    torch.testing.assert_close(out[:, :3], out2[:, :3])  # predictions of frames 1..3
    assert not torch.allclose(out[:, 3:], out2[:, 3:])


@torch.no_grad()
def test_kv_cache_equals_uncached():
    p = tiny_predictor()
    ctx, times, q = torch.randn(2, 6, 24), irregular_times(2, 7), torch.randn(2, 1, 32)
    cache = p.context_cache(ctx[:, :4], times[:, :4])
    cache = p.extend_cache(cache, ctx[:, 4:5], times[:, 4:5])
    cache = p.extend_cache(cache, ctx[:, 5:6], times[:, 5:6])
    cached = p(q, times[:, 6:7], cache=cache)
    full = p(q, times[:, 6:7], context=ctx, pos_k=times[:, :6])
    torch.testing.assert_close(cached, full, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_timestamps_matter_but_only_relatively():
    p = tiny_predictor()
    ctx, times, q = torch.randn(2, 4, 24), irregular_times(2, 5), torch.randn(2, 1, 32)
    out = p(q, times[:, 4:], context=ctx, pos_k=times[:, :4])
    later_target = p(q, times[:, 4:] + 0.2, context=ctx, pos_k=times[:, :4])
    assert (out - later_target).abs().max() > 1e-3
    shifted = p(q, times[:, 4:] + 3.0, context=ctx, pos_k=times[:, :4] + 3.0)
    torch.testing.assert_close(shifted, out, atol=2e-4, rtol=0)  # fp32 angle rounding only


@torch.no_grad()
def test_best_of_n_picks_the_brute_force_argmin():
    p = tiny_predictor()
    b, t, s = 2, 4, 6
    queries, ctx = torch.randn(b, t, s, 32) * 0.5, torch.randn(b, t, 24)
    targets, times = torch.randn(b, t, 24), irregular_times(b, t + 1)
    loss_fn = feature_loss("smooth_l1", beta=0.1)
    best, losses, argmin = select_best_queries(p, queries, ctx, targets, times[:, 1:], times[:, :-1], loss_fn)
    brute = torch.empty(b, t, s)
    for hyp in range(s):
        for frame in range(t):  # one hypothesis, one frame, only its own past
            pred = p(queries[:, frame, hyp][:, None], times[:, frame + 1][:, None],
                     context=ctx[:, : frame + 1], pos_k=times[:, : frame + 1])
            brute[:, frame, hyp] = loss_fn(pred[:, 0], targets[:, frame]).mean(-1)
    torch.testing.assert_close(losses, brute, atol=1e-5, rtol=1e-4)
    assert torch.equal(argmin, brute.argmin(-1))
    for i in range(b):
        for frame in range(t):
            torch.testing.assert_close(best[i, frame], queries[i, frame, argmin[i, frame]])
