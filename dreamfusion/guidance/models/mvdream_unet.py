"""MVDream's multi-view UNet as diffusers' UNet2DConditionModel: its camera input, its joined-view self-attention
and the key names of its two published layouts.

MVDream (Shi et al. 2023, arXiv 2308.16512; github.com/bytedance/MVDream) is Stable Diffusion 2.1-base's UNet with
two changes, both read from bytedance/MVDream:

- a camera embedding: ``mvdream/ldm/modules/diffusionmodules/openaimodel.py`` (MultiViewUNetModel) builds
  ``camera_embed = Sequential(linear(camera_dim, 4 * model_channels), SiLU, linear(...))`` and its forward adds
  ``camera_embed(camera)`` to the timestep embedding; ``configs/sd-v2-base.yaml`` sets ``camera_dim: 16`` (the
  flattened 4x4 camera-to-world matrix) and ``model_channels: 320`` (so 16 -> 1280 -> 1280). diffusers'
  ``class_embed_type="projection"`` is the same structure: ``TimestepEmbedding(16, 1280)`` = linear_1, SiLU,
  linear_2 (diffusers/models/embeddings.py), added to the timestep embedding (unet_2d_condition.py);
- joined views: ``mvdream/ldm/modules/attention.py`` (BasicTransformerBlock3D) rearranges the tokens
  ``(b f) l c -> b (f l) c`` with f = num_frames around ``attn1`` (self-attention) only and back after it;
  cross-attention and the feed-forward stay per view. ``JoinedViews`` does that around any attn1 processor.

Cameras (``mvdream_cameras``): MVDream reads the camera-to-world matrix in its own world frame, normalised to the
unit sphere (``mvdream/camera_utils.py``: ``create_camera_to_world_matrix`` puts a y-up OpenGL camera at
(cos e sin a, sin e, cos e cos a), ``convert_opengl_to_blender`` left-multiplies by ``[[1,0,0],[0,0,-1],[0,1,0]]``
(y-up to z-up), ``normalize_camera`` divides the translation by its norm, then flattens row-major to 16).
threestudio-mvdream (``guidance/mvdream_guidance.py``, ``get_camera_cond``) feeds threestudio's own z-up
camera-to-world matrices through ``normalize_camera`` alone ("the input of threestudio is already blender
coordinate system"); threestudio puts azimuth a at (cos e cos a, cos e sin a, sin e) (threestudio-mvdream
``data/uncond_multiview.py``) with a = 0 the front, which is MVDream's formula at azimuth a + 90 -- the start
azimuth of MVDream's own sampling script (``scripts/t2i.py``: ``--camera_azim`` default 90). This project's world
(y up, front +z, azimuth a at (cos e sin a, sin e, cos e cos a)) maps onto that frame by the axis permutation
(x, y, z) -> (z, x, y), so its front (azimuth 0) is threestudio-mvdream's front.

Key names (``original_to_diffusers`` / ``diffusers_to_original``): the original checkpoint
(``sd-v2.1-base-4view.pt``, loaded whole by ``mvdream/model_zoo.py`` into LatentDiffusionInterface, whose UNet sits
at ``model.diffusion_model``) names the UNet's tensors ldm-style (input_blocks / middle_block / output_blocks,
time_embed, camera_embed, out); the diffusers-layout copy (ashawkey/mvdream_diffusers
``convert_mvdream_to_diffusers.py``: its own MultiViewUNetModel in ``mv_unet.py`` loads the same tensors with the
``model.diffusion_model.`` prefix dropped) keeps those names under ``unet/``. Both convert to UNet2DConditionModel
names with one name table built from the UNet's shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...errors import ModelNotFoundError

__all__ = ["WORLD_TO_MVDREAM", "mvdream_cameras", "JoinedViews", "join_views", "diffusers_unet_config",
           "original_to_diffusers", "diffusers_to_original", "ORIGINAL_PREFIX"]

WORLD_TO_MVDREAM = ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
"""Rows of the rotation taking this project's world (y up, front +z) to MVDream's camera frame: (x, y, z) -> (z, x, y)."""
ORIGINAL_PREFIX = "model.diffusion_model."
"""Where the original checkpoint keeps the UNet (mvdream/ldm/interface.py: ``self.model = DiffusionWrapper(unet)``)."""


def mvdream_cameras(c2w: Tensor) -> Tensor:
    """c2w [B, 4, 4] (this project's world, OpenGL camera axes) -> MVDream's camera input [B, 16]: the world
    rotated into MVDream's frame (``WORLD_TO_MVDREAM``), the translation scaled to unit length, flattened row by
    row (module docstring). Float32, on c2w's device."""
    if c2w.ndim != 3 or c2w.shape[-2:] != (4, 4):
        raise ValueError(f"mvdream_cameras: c2w must be [B, 4, 4], got {tuple(c2w.shape)}")
    c2w = c2w.float()
    rotation = torch.eye(4, device=c2w.device)
    rotation[:3, :3] = torch.tensor(WORLD_TO_MVDREAM, device=c2w.device)
    out = rotation @ c2w
    t = out[:, :3, 3]
    out = torch.cat([out[:, :3, :3], (t / (t.norm(dim=-1, keepdim=True) + 1e-8))[..., None]], dim=-1)
    out = torch.cat([out, c2w.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(c2w.shape[0], 1, 4)], dim=1)
    return out.reshape(-1, 16)


class JoinedViews:
    """A self-attention processor over the tokens of ``n_views`` consecutive views at once: hidden states
    [B n, L, C] -> [B, n L, C] -> ``inner`` (the stock processor: sdpa or classic) -> back to [B n, L, C]."""

    def __init__(self, inner: Any, n_views: int):
        self.inner, self.n_views = inner, n_views

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        if encoder_hidden_states is not None or hidden_states.ndim != 3:
            raise ValueError("JoinedViews joins the views of a self-attention over [B, L, C] tokens only")
        batch, length, channels = hidden_states.shape
        n = self.n_views
        if batch % n:
            raise ValueError(f"a batch of {batch} views does not split into groups of n_views={n}")
        joined = hidden_states.reshape(batch // n, n * length, channels)
        out = self.inner(attn, joined, None, attention_mask, **kwargs)
        return out.reshape(batch, length, channels)


def join_views(unet, n_views: int) -> None:
    """Wrap every ``attn1`` (self-attention) processor of ``unet`` in JoinedViews(n_views), in place; a processor
    already wrapped gets the new n_views around its own inner processor."""
    processors = {}
    for name, processor in unet.attn_processors.items():
        if ".attn1." in name:
            processor = JoinedViews(processor.inner if isinstance(processor, JoinedViews) else processor, n_views)
        processors[name] = processor
    unet.set_attn_processor(processors)


# -- the UNet's shape and its tensors' names ---------------------------------------------------------------------

def diffusers_unet_config(mv: dict) -> dict:
    """The config of a diffusers-layout copy's ``unet/config.json`` (MultiViewUNetModel's arguments, ldm names:
    model_channels, channel_mult, attention_resolutions, num_res_blocks, num_head_channels, context_dim,
    transformer_depth, camera_dim) -> UNet2DConditionModel's config for the same network."""
    try:
        channels = [mv["model_channels"] * m for m in mv["channel_mult"]]
        attention = [2 ** level in mv["attention_resolutions"] for level in range(len(channels))]
        heads = [c // mv["num_head_channels"] for c in channels]  # diffusers' attention_head_dim counts heads here
        return {"sample_size": mv.get("image_size", 32), "in_channels": mv["in_channels"],
                "out_channels": mv["out_channels"], "layers_per_block": mv["num_res_blocks"],
                "block_out_channels": channels, "attention_head_dim": heads,
                "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
                "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
                "cross_attention_dim": mv["context_dim"],
                "transformer_layers_per_block": mv.get("transformer_depth", 1),
                "use_linear_projection": True, "class_embed_type": "projection",
                "projection_class_embeddings_input_dim": mv["camera_dim"]}
    except (KeyError, TypeError) as exc:
        raise ModelNotFoundError(f"the MVDream unet/config.json lacks {exc} (a MultiViewUNetModel config holds "
                                 f"model_channels, channel_mult, attention_resolutions, ...)") from None


_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
"""ldm ResBlock -> diffusers ResnetBlock2D (in_layers = norm, SiLU, conv; out_layers = norm, SiLU, dropout, conv)."""


def _blocks(config: dict) -> list[tuple[str, str, bool]]:
    """(ldm prefix, diffusers prefix, is a resnet) for every block of a UNet2DConditionModel config; attention
    blocks keep their inner names (norm, proj_in, transformer_blocks.*, proj_out) in both layouts."""
    levels, per = len(config["block_out_channels"]), config["layers_per_block"]
    table = [("time_embed.0", "time_embedding.linear_1", False), ("time_embed.2", "time_embedding.linear_2", False),
             ("camera_embed.0", "class_embedding.linear_1", False),
             ("camera_embed.2", "class_embedding.linear_2", False),
             ("input_blocks.0.0", "conv_in", False), ("out.0", "conv_norm_out", False), ("out.2", "conv_out", False),
             ("middle_block.0", "mid_block.resnets.0", True), ("middle_block.1", "mid_block.attentions.0", False),
             ("middle_block.2", "mid_block.resnets.1", True)]
    for level, kind in enumerate(config["down_block_types"]):
        for j in range(per):
            block = 1 + level * (per + 1) + j
            table.append((f"input_blocks.{block}.0", f"down_blocks.{level}.resnets.{j}", True))
            if kind.startswith("CrossAttn"):
                table.append((f"input_blocks.{block}.1", f"down_blocks.{level}.attentions.{j}", False))
        if level < levels - 1:
            table.append((f"input_blocks.{(level + 1) * (per + 1)}.0.op", f"down_blocks.{level}.downsamplers.0.conv",
                          False))
    for level, kind in enumerate(config["up_block_types"]):
        attention = kind.startswith("CrossAttn")
        for k in range(per + 1):
            block = level * (per + 1) + k
            table.append((f"output_blocks.{block}.0", f"up_blocks.{level}.resnets.{k}", True))
            if attention:
                table.append((f"output_blocks.{block}.1", f"up_blocks.{level}.attentions.{k}", False))
            if k == per and level < levels - 1:
                table.append((f"output_blocks.{block}.{2 if attention else 1}.conv",
                              f"up_blocks.{level}.upsamplers.0.conv", False))
    return table


def _renamed(key: str, ordered: list[tuple[str, str, bool]], resnet: dict) -> str | None:
    """``key`` renamed by the longest table prefix it starts with (a resnet's inner names through ``resnet``)."""
    for old, new, is_resnet in ordered:
        if key.startswith(old + "."):
            rest = key[len(old) + 1:]
            if is_resnet:
                inner, _, leaf = rest.rpartition(".")
                if inner not in resnet:
                    return None
                rest = f"{resnet[inner]}.{leaf}"
            return f"{new}.{rest}"
    return None


def _rename(state: dict, table: list[tuple[str, str, bool]], resnet: dict, what: str) -> dict:
    """Every key of ``state`` renamed (``_renamed``); a key the table has no place for is one ModelNotFoundError line."""
    ordered = sorted(table, key=lambda row: -len(row[0]))
    out = {}
    for key, value in state.items():
        name = _renamed(key, ordered, resnet)
        if name is None:
            raise ModelNotFoundError(f"{what} holds '{key}', which this UNet's shape has no place for: "
                                     f"the checkpoint and the UNet config come from different models")
        out[name] = value
    return out


def original_to_diffusers(state: dict, config: dict, prefix: str = ORIGINAL_PREFIX) -> dict:
    """The UNet tensors of an MVDream state dict in ldm names (those under ``prefix``: ``model.diffusion_model.``
    in the original checkpoint, nothing in the diffusers-layout copy's unet/) -> UNet2DConditionModel names."""
    unet = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not unet:
        raise ModelNotFoundError(f"the MVDream checkpoint holds no UNet tensors under '{prefix}' "
                                 f"(is it MVDream's sd-v2.1-base-4view.pt?)")
    return _rename(unet, _blocks(config), _RESNET, "the MVDream checkpoint")


def diffusers_to_original(state: dict, config: dict, prefix: str = ORIGINAL_PREFIX) -> dict:
    """The inverse of ``original_to_diffusers``: UNet2DConditionModel tensors -> ldm names under ``prefix``."""
    table = [(new, old, r) for old, new, r in _blocks(config)]
    back = {v: k for k, v in _RESNET.items()}
    return {prefix + k: v for k, v in _rename(state, table, back, "the UNet state dict").items()}
