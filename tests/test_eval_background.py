"""What previews and the orbit video show the object over (issue 34): the run's training colour where that is fixed
(white, black, gray), else mid gray (learned, random, white_or_black, augment): renderer.eval_background.

Two failures of rendering them over white, whatever the run trained on: a white object vanished (the white sphere
demo's first frame: contrast 0.031 between centre and border), and fog that the training background hid showed as
a halo. Oracles: the composite's closed form, rgb = F + (1 - A) bg, with F the premultiplied colour and A the opacity:
a solid white (black) ball over mid gray differs from its border by exactly 0.5; fog whose premultiplied colour is
gray times its opacity (what training over gray cannot see) gives rgb = 0.5 over gray, and 1 - A / 2 over white.
"""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from dreamfusion.config import load_config
from dreamfusion.artifacts import export_video
from dreamfusion.fields import Field
from dreamfusion.renderer import Renderer, eval_background
from dreamfusion.renderer.backgrounds import KINDS
from render.cameras import orbit_cameras


class Ball(Field):
    """A solid ball of radius 0.5 (density 200, albedo ``colour``) in a shell of fog to radius 0.8 (density
    ``fog``, albedo gray 0.5: the fog a gray training background cannot see)."""

    def __init__(self, colour, fog: float = 0.0):
        super().__init__()
        self.bound, self.albedo_channels = 1.0, 3
        self.colour, self.fog = torch.tensor(colour), fog
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, points):
        r = points.norm(dim=-1)
        solid = r <= 0.5
        density = torch.where(solid, 200.0, torch.where(r <= 0.8, self.fog, 0.0)) + 0 * self.anchor
        albedo = torch.where(solid[:, None], self.colour.to(points), torch.full_like(points, 0.5))
        return {"density": density, "albedo": albedo}

    def param_groups(self, optim_cfg):
        return [{"name": "anchor", "params": [self.anchor], "lr": 0.0}]


def _cfg(background: str, side: int = 32):
    return load_config("demo", [f"render.background={background}", "render.eval_grid=0", "render.n_samples=96",
                                "export.video_frames=2", f"export.video_resolution={side}", "export.video_fps=2"])


@pytest.mark.parametrize("kind", KINDS)
def test_the_rule_keeps_a_fixed_training_colour_and_shows_the_others_over_mid_gray(kind):
    assert eval_background(kind) == (kind if kind in ("white", "black", "gray") else "gray")


def _contrast(frame: np.ndarray) -> float:
    """max over channels |mean of the central 8 x 8 px - mean of the 2 px border| of a [H, W, 3] image in [0, 1]."""
    s = frame.shape[0]
    centre = frame[s // 2 - 4:s // 2 + 4, s // 2 - 4:s // 2 + 4].reshape(-1, 3).mean(0)
    border = np.concatenate([frame[:2].reshape(-1, 3), frame[-2:].reshape(-1, 3),
                             frame[:, :2].reshape(-1, 3), frame[:, -2:].reshape(-1, 3)]).mean(0)
    return float(np.abs(centre - border).max())


@pytest.mark.parametrize("background", ["gray", "learned", "random", "white_or_black", "augment"])
@pytest.mark.parametrize("colour", [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)], ids=["white", "black"])
def test_a_white_and_a_black_object_stand_out_in_the_first_video_frame(tmp_path, colour, background):
    """The demo trains over gray; the other backgrounds are learned or drawn: a white and a black ball are both half
    the range away from their border in orbit.mp4's first frame (over white the white one was 0 away)."""
    path = export_video(Ball(colour), _cfg(background), tmp_path, "cpu")
    frame = imageio.get_reader(path, format="FFMPEG").get_data(0).astype(np.float64) / 255
    assert _contrast(frame) == pytest.approx(0.5, abs=0.03)  # H.264 at crf 18 moves a flat area by ~1/255


@pytest.mark.parametrize("colour", [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)], ids=["white", "black"])
def test_a_white_and_a_black_object_stand_out_in_the_previews(colour):
    """Previews render through Renderer.render_eval (train.write_preview): the same background, no codec."""
    cfg = _cfg("gray")
    field = Ball(colour)
    cams = orbit_cameras(1, cfg.camera.eval_elevation, cfg.camera.eval_distance, cfg.camera.eval_fovy, device="cpu")
    out = Renderer(cfg.render, field, "cpu").render_eval(field, cams, 32)
    assert _contrast(out["rgb"][0].numpy()) == pytest.approx(0.5, abs=1e-3)


def test_the_fog_the_training_background_hid_stays_hidden():
    """A red ball in a gray fog trained over gray: over gray the fog's pixels (0.02 < opacity < 0.9, outside the
    ball) are the background, 0.5 in every channel; over white (the old eval background) they were the halo,
    1 - A / 2, with the red ball's complementary colours beside it."""
    cfg = _cfg("gray")
    field = Ball((1.0, 0.0, 0.0), fog=1.5)
    cams = orbit_cameras(2, cfg.camera.eval_elevation, cfg.camera.eval_distance, cfg.camera.eval_fovy, device="cpu")
    out = Renderer(cfg.render, field, "cpu").render_eval(field, cams, 32)
    opacity = out["opacity"][..., 0]
    ring = (opacity > 0.02) & (opacity < 0.9)
    assert ring.sum() > 50  # the fog covers a ring of pixels around the ball
    assert torch.allclose(out["rgb"][ring], torch.full_like(out["rgb"][ring], 0.5), atol=1e-5)
    white = Renderer(_cfg("white").render, field, "cpu").render_eval(field, cams, 32)
    halo = 1 - white["opacity"][..., 0][ring] / 2
    assert torch.allclose(white["rgb"][ring], halo[:, None].expand(-1, 3), atol=1e-5)  # the closed form of the halo
