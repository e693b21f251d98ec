"""Variational score distillation (ProlificDreamer, Wang et al. 2023, arXiv 2305.16213).

SDS compares the prior's guided noise with the injected noise; VSD compares it with the noise predicted by a
second diffusion model that learns the distribution of the field's own renders: a LoRA of the frozen UNet,
conditioned on the camera (its pose through a small MLP added to the time embedding, ProlificDreamer §4.1):

    grad      = w(t) (eps_hat(x_t, t, y) - eps_lora(x_t, t, y, c))                 (paper eq. 9; the rule of sds.py)
    loss_lora = mean || eps_lora(x'_t', t', y, c') - eps' ||^2,  x'_t' from sg(x0), t' ~ U{0..T-1},
                c' = 0 with probability guidance.vsd.camera_dropout                   (paper eq. 8, Algorithm 1)

eps_hat is classifier-free guided with guidance.guidance_scale (7.5 is ProlificDreamer's); the LoRA is read at
scale 1 (its conditional branch). The LoRA (peft, on the attention projections) and the camera MLP are the
guidance's trainable state: in the trainer's Adam at guidance.vsd.lr, in the checkpoint, restored on resume. With
a v- or x0-predicting model the LoRA learns that model's target (v = sqrt(abar) eps - sqrt(1 - abar) x0, or x0) and its
eps is recovered from it by the model wrapper's predict_eps, as the frozen model's is (guidance/models/prediction.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import UserError
from ..models.prediction import prediction_target
from ..base import UNetNoisePredictor
from .sds import SDSGuidance, sample_timesteps

__all__ = ["VSDGuidance", "camera_features", "camera_keep_mask"]

ADAPTER = "dreamfusion_vsd"
_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def camera_features(cameras: Any, batch: int, device) -> Tensor:
    """[B, 16]: each camera-to-world matrix flattened (the camera condition of the LoRA)."""
    if cameras is None:
        raise ValueError("VSD conditions its LoRA on the cameras: got None")
    return cameras.c2w.reshape(batch, 16).to(device=device, dtype=torch.float32)


def camera_keep_mask(batch: int, dropout: float, generator: torch.Generator | None, device) -> Tensor:
    """[B, 1] float: 1 keeps a view's camera condition, 0 drops it (probability ``dropout``); one uniform draw per
    view from ``generator`` (on its device, else on ``device``), returned on ``device``."""
    draw = generator.device if generator is not None else device
    return (torch.rand(batch, 1, generator=generator, device=draw) >= dropout).float().to(device)


def _import_peft():
    try:
        from peft import LoraConfig
    except ImportError:
        raise UserError('guidance.type=vsd needs peft for the LoRA: pip install "dreamfusion[vsd]"') from None
    return LoraConfig


class VSDGuidance(SDSGuidance):
    """SDS with a learned reference noise (module docstring) on a UNetNoisePredictor (guidance.type=vsd, Stable
    Diffusion: guidance/config.py VSDConfig.check). Its section is guidance.vsd."""

    def __init__(self, predictor: UNetNoisePredictor, cfg, prompt: str, negative_prompt: str = ""):
        unet = predictor.unet
        super().__init__(predictor, cfg, prompt, negative_prompt)
        v = cfg.vsd
        LoraConfig = _import_peft()
        if ADAPTER in getattr(unet, "peft_config", {}):  # a loaded model serving another prompt before: start afresh
            unet.delete_adapters(ADAPTER)
        with torch.random.fork_rng(devices=[]):  # the same LoRA init in every run, the global RNG untouched
            torch.manual_seed(0)
            unet.add_adapter(LoraConfig(r=v.lora_rank, lora_alpha=v.lora_rank, init_lora_weights="gaussian",
                                        target_modules=_TARGETS), adapter_name=ADAPTER)
            width = unet.time_embedding.linear_2.out_features
            self.camera_mlp = nn.Sequential(nn.Linear(16, width), nn.SiLU(), nn.Linear(width, width))
        self.unet = unet
        self.lora = {name: p for name, p in unet.named_parameters() if "lora_" in name}
        for p in self.lora.values():
            p.data = p.data.float()  # Adam on fp32 weights even when the UNet runs in half precision
        self.camera_mlp.to(predictor.device)
        nn.init.zeros_(self.camera_mlp[2].weight)  # a fresh LoRA starts as the frozen model, camera or not
        nn.init.zeros_(self.camera_mlp[2].bias)
        self._adapters(False)

    # -- the trainable state ------------------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        return [{"name": "vsd_lora", "params": [*self.lora.values(), *self.camera_mlp.parameters()],
                 "lr": self.cfg.vsd.lr}]

    def state_dict(self) -> dict:
        state = {f"lora.{k}": p.detach().clone() for k, p in self.lora.items()}
        state.update({f"camera.{k}": v.detach().clone() for k, v in self.camera_mlp.state_dict().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise UserError(f"the checkpoint's VSD state does not match this LoRA ({len(state)} tensors, expected "
                            f"{len(expected)}): resume with the run's own guidance.vsd settings")
        with torch.no_grad():
            for k, p in self.lora.items():
                p.copy_(state[f"lora.{k}"])
            self.camera_mlp.load_state_dict({k[len("camera."):]: v for k, v in state.items() if k.startswith("camera.")})

    # -- the LoRA as a noise predictor ----------------------------------------------------------------------
    @contextmanager
    def _lora(self):
        """The UNet with the LoRA switched on and the camera MLP as its class embedding; off again after."""
        self._adapters(True)
        self.unet.class_embedding = self.camera_mlp
        try:
            yield
        finally:
            self.unet.class_embedding = None
            self._adapters(False)

    def _adapters(self, on: bool) -> None:
        """Switch the LoRA on or off. peft also flips its weights' requires_grad, and autograd drops the gradient
        of a leaf that no longer requires it by the time backward runs: the LoRA stays trainable either way."""
        self.unet.enable_adapters() if on else self.unet.disable_adapters()
        for p in self.lora.values():
            p.requires_grad_(True)

    def reference_noise(self, x_t: Tensor, t: Tensor, cameras: Any, eps: Tensor) -> Tensor:
        """eps [B, C, h, w] from the LoRA at each view's camera (predict_eps converts a v or x0 output)."""
        batch = x_t.shape[0]
        _, cond = self.cond.for_cameras(cameras, batch)
        camera = camera_features(cameras, batch, x_t.device)
        with self._lora():
            return self.predictor.predict_eps(x_t, t, cond[None], class_labels=camera)[0].float()

    def __call__(self, images: Tensor, cameras: Any, step: int, total_steps: int,
                 generator: torch.Generator | None = None) -> dict[str, Tensor | float]:
        terms = super().__call__(images, cameras, step, total_steps, generator)
        terms["loss_lora"] = self.lora_loss(images, cameras, generator)
        return terms

    def lora_loss(self, images: Tensor, cameras: Any, generator: torch.Generator | None = None) -> Tensor:
        """The LoRA's denoising loss on the renders (detached): gradient only into the LoRA and the camera MLP."""
        with torch.no_grad():
            x0 = self.predictor.encode(images.detach()).float()
        batch = x0.shape[0]
        num_t = self.predictor.alphas_cumprod.shape[0]
        t = sample_timesteps(batch, 0.0, 1.0, num_t, generator).to(x0.device)
        draw = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=draw).to(x0.device)
        keep = camera_keep_mask(batch, self.cfg.vsd.camera_dropout, generator, x0.device)  # [B, 1]
        abar_t = self.predictor.alphas_cumprod.to(x0.device)[t]  # [B]
        abar = abar_t.view(batch, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        target = prediction_target(x0, noise, abar_t, self.predictor.prediction_type)  # eps, v or x0
        _, cond = self.cond.for_cameras(cameras, batch)
        camera = camera_features(cameras, batch, x0.device) * keep
        with self._lora(), torch.enable_grad():
            hidden = cond.to(device=self.predictor.device, dtype=self.predictor.dtype)
            pred = self.unet(x_t.to(self.predictor.dtype), t, encoder_hidden_states=hidden, class_labels=camera).sample
        return ((pred.float() - target) ** 2).mean()
