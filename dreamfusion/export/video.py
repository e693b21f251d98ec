"""Orbit videos: H.264 .mp4 writing and the per-frame panels (rgb | normal | depth) that go in them.

Frames are uint8 [N, H, W, 3], row 0 = top (docs/DESIGN.md). The encoder is the ffmpeg binary that the
imageio-ffmpeg wheel bundles, so writing works offline.
"""
from __future__ import annotations

import errno
import os
import shutil

import numpy as np

from dreamfusion.io import atomic_path

__all__ = ["write_video", "stack_panels", "colorize_depth", "normals_to_rgb"]


def _numpy(x) -> np.ndarray:
    """numpy view of an array or a (CPU or CUDA, possibly grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_frames(frames, name: str = "frames") -> np.ndarray:
    frames = _numpy(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected {name} uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 30, crf: int = 18) -> None:
    """H.264 (libx264, yuv420p, `crf` quality) .mp4 of frames uint8 [N, H, W, 3].

    yuv420p needs even sides, so an odd height / width is padded by repeating the last row / column
    (the video is then [H + H % 2, W + W % 2]). Written atomically (dreamfusion.io.atomic_path). `+faststart` puts the index first so browsers can stream it.
    """
    import imageio.v2 as imageio

    frames = _check_frames(frames)
    if len(frames) == 0:
        raise ValueError("write_video needs at least one frame")
    n, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=1, quality=None,
                                    output_params=["-crf", str(int(crf)), "-movflags", "+faststart"])
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
        _check_mp4(tmp)


def _check_mp4(path: str | os.PathLike) -> None:
    """An OSError unless ``path`` is a whole .mp4: top-level boxes (4-byte size, 4-byte type; size 1: a 64-bit
    size follows, 0: to the end) that end at the file's end, a ``moov`` among them. ffmpeg that runs out of disk
    says so on stderr and leaves a cut file, but imageio does not raise: this catches it before the rename."""
    end, seen, at = os.path.getsize(path), set(), 0
    with open(path, "rb") as fh:
        while at + 8 <= end:
            fh.seek(at)
            head = fh.read(16)
            size, kind = int.from_bytes(head[:4], "big"), head[4:8]
            size = int.from_bytes(head[8:16], "big") if size == 1 else (end - at if size == 0 else size)
            if size < 8:
                break
            seen.add(kind)
            at += size
    if at != end or b"moov" not in seen:
        full = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < 2**20
        raise OSError(errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC) if full else
                      "ffmpeg wrote an incomplete video")


def stack_panels(panels: list[np.ndarray]) -> np.ndarray:
    """Side by side: k arrays uint8 [N, H, W_i, 3] -> [N, H, sum W_i, 3] (left to right in list order)."""
    if not panels:
        raise ValueError("stack_panels needs at least one panel")
    panels = [_check_frames(p, f"panel {i}") for i, p in enumerate(panels)]
    first = panels[0].shape
    for i, p in enumerate(panels):
        if p.shape[:2] != first[:2]:
            raise ValueError(f"panel {i} has shape {p.shape}; every panel needs N, H = {first[:2]}")
    return np.concatenate(panels, axis=2)


# Polynomial fit of Google's Turbo colormap (A. Mikhailov, 2019, Apache-2.0): value in [0, 1] -> RGB.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])


def _turbo(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)[..., None]
    powers = x ** np.arange(6)                       # [..., 6]: 1, x, ..., x^5
    return np.clip(powers @ _TURBO.T, 0.0, 1.0)     # [..., 3]


def colorize_depth(depth: np.ndarray, opacity: np.ndarray, background: float = 1.0) -> np.ndarray:
    """Depth [N, H, W] (or [N, H, W, 1]) -> uint8 [N, H, W, 3] with the Turbo colormap, near = red.

    The range is the min / max depth over pixels with opacity > 0.5 in *all* frames, so colours mean
    the same distance through a video. Colour is blended over a grey `background` level by opacity
    (same shape as depth).
    """
    depth, opacity = _numpy(depth).astype(np.float64), _numpy(opacity).astype(np.float64)
    if depth.ndim == 4 and depth.shape[3] == 1:
        depth = depth[..., 0]
    if opacity.ndim == 4 and opacity.shape[3] == 1:
        opacity = opacity[..., 0]
    if depth.ndim != 3 or opacity.shape != depth.shape:
        raise ValueError(f"expected depth and opacity [N, H, W], got {depth.shape} and {opacity.shape}")
    solid = opacity > 0.5
    if solid.any():
        near, far = depth[solid].min(), depth[solid].max()
    else:
        near, far = 0.0, 1.0
    t = (depth - near) / max(far - near, 1e-8)
    rgb = _turbo(1.0 - t)
    alpha = np.clip(opacity, 0.0, 1.0)[..., None]
    rgb = rgb * alpha + background * (1.0 - alpha)
    return np.round(rgb * 255.0).astype(np.uint8)


def normals_to_rgb(normal: np.ndarray) -> np.ndarray:
    """Normals [N, H, W, 3] in [-1, 1] (world frame) -> uint8 RGB = round(255 (n + 1) / 2); zero -> grey."""
    normal = _numpy(normal).astype(np.float64)
    if normal.ndim != 4 or normal.shape[3] != 3:
        raise ValueError(f"expected normal [N, H, W, 3], got {normal.shape}")
    return np.round(np.clip((normal + 1.0) * 0.5, 0.0, 1.0) * 255.0).astype(np.uint8)
