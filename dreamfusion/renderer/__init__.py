"""The renderer: how a field becomes images. A field is a representation (dreamfusion/fields/); rendering it is
chosen here by its class: volume rendering (volume.py) for density fields, rasterization (splats.py) for
Gaussians. The renderer also owns the backgrounds (backgrounds.py), the empty-space skipping and nerfacc sampler
state (occupancy.py), the shading and light of training renders and the previews (core.py), and the views previews
and the video render (views.py: RGB of a latent field, baked.py: the field sampled once on a grid). Its config
section is config.py (``render``).

    renderer = Renderer(cfg.render, field, device)     # training: sampler state, config
    out = render_views(field, background, cameras, H, W, n_samples=..., shading=...)   # any field, one call
"""

from .backgrounds import LearnedBackground, build_background, eval_background, random_backgrounds, solid_background
from .baked import BakedField
from .config import RenderConfig
from .core import Renderer, pick_shading, preview_cameras, render_eval, render_views, render_views_chunked
from .occupancy import occupancy_grid, skip_grid
from .splats import render_splats
from .views import LatentAsRGB, eval_view, rgb_view
from .volume import render_volume

__all__ = ["Renderer", "RenderConfig", "render_eval", "render_views", "render_views_chunked", "render_volume",
           "render_splats", "occupancy_grid", "skip_grid", "eval_view", "rgb_view", "LatentAsRGB", "BakedField",
           "LearnedBackground", "build_background", "solid_background", "random_backgrounds", "eval_background",
           "pick_shading", "preview_cameras"]
