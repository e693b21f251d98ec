"""Guidance rules: what turns a model's predictions about renders into loss terms (``guidance.type``).

    sds.py        score distillation sampling (DreamFusion), its t schedule and weighting
    perp_neg.py   SDS with Perp-Neg's view-dependent negative prompts
    vsd.py        variational score distillation (ProlificDreamer): SDS against a LoRA's prediction
    clip.py       Dream Fields' CLIP similarity of augmented crops (augment.py)
    sdedit.py     an MSE to SDEdit-refined copies of the renders (DreamGaussian's texture stage)

A rule holds a model from guidance/models/ (the protocols of guidance/base.py) and knows nothing else about it.
"""
