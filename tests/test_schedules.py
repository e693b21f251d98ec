"""Learning-rate warm-up (optim.lr_warmup_*, Dream Fields) in the real loop.

Oracle: Adam's first step moves every parameter with a non-zero gradient by exactly lr (m_hat / sqrt(v_hat)
= g / |g|), so after one `fit` step the MLP's output bias has moved by lr_warmup_start x network_lr.
"""

from __future__ import annotations

import pytest
import torch

from dreamfusion.config import load_config
from dreamfusion.errors import ConfigError
from dreamfusion.guidance import FunctionGuidance
from dreamfusion.train.optim import warmup_factor
from dreamfusion.train.trainer import Trainer

SMALL = ["device=cpu", "render.width=8", "render.height=8", "render.n_samples=8", "field.hashgrid.n_levels=2",
         "field.hashgrid.log2_hashmap_size=8", "field.hashgrid.base_resolution=4", "field.hidden_dim=8", "preview_every=0",
         "render.background=white", "render.albedo_warmup_steps=100", "camera.elevation_range=[10,20]"]


def test_warmup_factor_closed_form():
    cfg = load_config(None, ["optim.lr_warmup_steps=10", "optim.lr_warmup_start=0.2"]).optim
    assert [warmup_factor(s, cfg) for s in (0, 5, 10, 50)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    assert warmup_factor(0, load_config(None, []).optim) == 1.0  # off by default
    assert load_config("dreamfields").optim.lr_warmup_steps == 1500


@pytest.mark.parametrize("warmup, expected_scale", [(0, 1.0), (10, 0.1)])
def test_first_adam_step_moves_by_the_warmed_up_lr(tmp_path, warmup, expected_scale):
    cfg = load_config(None, SMALL + ["steps=1", f"optim.lr_warmup_steps={warmup}", "optim.network_lr=0.003"])
    guidance = FunctionGuidance(lambda rgb, cams, step, steps, generator=None: {"loss_sds": (rgb - 0.3).pow(2).sum()})
    trainer = Trainer(cfg, tmp_path, torch.device("cpu"), guidance)
    bias = trainer.field.mlp[-1].bias
    before = bias.detach().clone()
    trainer.fit()
    moved = (bias.detach() - before).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, 0.003 * expected_scale), rtol=1e-4, atol=1e-9)
    assert [g["lr"] for g in trainer.optimizer.param_groups if g["name"] == "network"] == [0.003]  # restored


def test_warmup_config_errors():
    with pytest.raises(ConfigError, match="lr_warmup_start"):
        load_config(None, ["optim.lr_warmup_start=0"])
    with pytest.raises(ConfigError, match="lr_warmup_steps"):
        load_config(None, ["optim.lr_warmup_steps=-1"])
