"""Guidance models: the frozen networks the rules read (``guidance.model_type``), and what serves them.

    stable_diffusion.py   Stable Diffusion (latent diffusion, CLIP text encoder)
    deepfloyd.py          DeepFloyd IF stage I (pixel diffusion, T5 text encoder)
    mvdream.py            MVDream (multi-view SD 2.1: camera-conditioned, views joined in self-attention)
    mvdream_unet.py       its UNet as diffusers': cameras in MVDream's frame, joined attention, key names
    prior.py              the embedded prior: the exact denoiser of a rendered image set (dreamfusion/world/)
    clip.py               CLIP (Dream Fields' rule, the ``eval`` command)
    prediction.py         epsilon / v / x0 predictions -> eps, for every UNet wrapper
    fastpaths.py          dtype, channels_last, attention and compile switches of a UNet
    hub.py                loading a model from a hub id or a local folder
    ddim.py               the DDIM sampler (the ``preview`` command)

The diffusion models are ``NoisePredictor``s (guidance/base.py).
"""
