"""The reference implementation's weight layouts: checking a released state dict against a module,
and Hugging Face `DINOv3ViTModel` weights -> timm's DINOv3 (`Eva`) layout.

DeltaTok's parameter names are the reference's (`tokenizer/blocks.py`), so its released checkpoint
needs no renaming, only checking: a truncated or foreign file is refused naming its first bad key.
"""

from collections.abc import Iterable

import torch
from torch import nn

PATCH_EMBED = "embeddings.patch_embeddings.weight"  # marks a Hugging Face DINOv3 state dict
FROZEN_BACKBONE = ("backbone.",)  # a full reference DeltaTok state dict also holds its frozen backbone


class OfficialCheckpointError(ValueError):
    """A released checkpoint whose keys or shapes do not fit the configured architecture."""


def match_state_dict(
    weights: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    *,
    source: str,
    ignore: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """`weights` checked against `expected` (a module's state dict): every expected key present with
    its shape, nothing else except keys under the `ignore` prefixes (frozen modules stored alongside).
    Raises OfficialCheckpointError naming the first missing or mismatched key, in module order."""
    ignore = tuple(ignore)
    for key, value in expected.items():
        if key not in weights:
            missing = sum(k not in weights for k in expected)
            raise OfficialCheckpointError(
                f"{source}: missing key '{key}' (shape {tuple(value.shape)}); {missing} of "
                f"{len(expected)} expected keys are absent: a truncated file, or not this kind of checkpoint"
            )
        if weights[key].shape != value.shape:
            raise OfficialCheckpointError(
                f"{source}: key '{key}' has shape {tuple(weights[key].shape)}, the configured "
                f"architecture needs {tuple(value.shape)}"
            )
    extra = [k for k in weights if k not in expected and not k.startswith(ignore)]
    if extra:
        raise OfficialCheckpointError(
            f"{source}: unexpected key '{extra[0]}' ({len(extra)} keys the configured architecture "
            f"does not have): a foreign checkpoint, or the config does not match it"
        )
    return {k: weights[k] for k in expected}


def deltatok_dims(weights: dict[str, torch.Tensor], *, source: str) -> tuple[int, int]:
    """(feature width, heads) of a reference DeltaTok state dict: z_embed is (1, D) and the q/k
    LayerNorm spans one head, D / heads channels."""
    for key in ("z_embed.weight", "encoder_blocks.0.attention.q_norm.weight"):
        if key not in weights:
            raise OfficialCheckpointError(f"{source}: missing key '{key}': not a reference DeltaTok checkpoint")
    dim = weights["z_embed.weight"].shape[-1]
    return dim, dim // weights["encoder_blocks.0.attention.q_norm.weight"].shape[0]


def hf_prefix(keys: Iterable[str]) -> str | None:
    """The prefix of a Hugging Face DINOv3 model inside a state dict ('' for the model's own file,
    'backbone.' in the reference wrapper, 'backbone.backbone.' inside its DeltaTok), None if absent."""
    found = [k.removesuffix(PATCH_EMBED) for k in keys if k.endswith(PATCH_EMBED)]
    return min(found, key=len) if found else None


def hf_dinov3_to_timm(weights: dict[str, torch.Tensor], model: nn.Module, *, source: str) -> dict[str, torch.Tensor]:
    """A Hugging Face DINOv3ViTModel state dict (under any prefix) -> the state dict of timm DINOv3
    `model`, checked key by key.

    q/k/v projections fuse into `attn.qkv`; a key bias (absent in DINOv3) would add the same logit to
    every key of a query and cancel in softmax, so it is dropped. A timm variant without q/v biases
    (`vit_base_patch16_dinov3`) accepts them only when they are zero (the released ViT-B's are)."""
    prefix = hf_prefix(weights)
    if prefix is None:
        raise OfficialCheckpointError(f"{source}: no '{PATCH_EMBED}' key: not a Hugging Face DINOv3 checkpoint")
    hf = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    if any(".mlp.gate_proj." in k for k in hf):
        raise OfficialCheckpointError(f"{source}: gated-MLP DINOv3 (ViT-H+/7B) conversion is not supported")
    expected = model.state_dict()
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise OfficialCheckpointError(
                f"{source}: missing key '{prefix}{key}': a truncated or foreign DINOv3 checkpoint"
            )
        used.add(key)
        return hf[key]

    out = {
        "cls_token": take("embeddings.cls_token"),
        "reg_token": take("embeddings.register_tokens"),
        "patch_embed.proj.weight": take(PATCH_EMBED),
        "patch_embed.proj.bias": take("embeddings.patch_embeddings.bias"),
        "norm.weight": take("norm.weight"),
        "norm.bias": take("norm.bias"),
    }
    renames = {
        "attention.o_proj": "attn.proj",
        "norm1": "norm1",
        "norm2": "norm2",
        "mlp.up_proj": "mlp.fc1",
        "mlp.down_proj": "mlp.fc2",
    }
    for i in range(len(model.blocks)):
        src, dst = f"layer.{i}.", f"blocks.{i}."
        out[f"{dst}attn.qkv.weight"] = torch.cat([take(f"{src}attention.{n}_proj.weight") for n in "qkv"])
        for n in "qv":
            bias = take(f"{src}attention.{n}_proj.bias")
            if f"{dst}attn.{n}_bias" in expected:
                out[f"{dst}attn.{n}_bias"] = bias
            elif bias.any():
                raise OfficialCheckpointError(
                    f"{source}: '{prefix}{src}attention.{n}_proj.bias' is non-zero but the timm model has no "
                    f"q/v biases: use the '_qkvb' variant of the backbone name"
                )
        for a, b in renames.items():
            out[f"{dst}{b}.weight"] = take(f"{src}{a}.weight")
            out[f"{dst}{b}.bias"] = take(f"{src}{a}.bias")
        out[f"{dst}gamma_1"] = take(f"{src}layer_scale1.lambda1")
        out[f"{dst}gamma_2"] = take(f"{src}layer_scale2.lambda1")
    # the mask token only serves masked pre-training; RoPE frequencies are recomputed
    unused = [k for k in hf if k not in used and not k.endswith(("mask_token", "k_proj.bias", "inv_freq"))]
    if unused:
        raise OfficialCheckpointError(
            f"{source}: unexpected key '{prefix}{unused[0]}': the checkpoint does not fit the configured "
            f"backbone ({len(model.blocks)} blocks)"
        )
    return match_state_dict(out, expected, source=source)
