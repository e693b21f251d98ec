"""What Perp-Neg's negatives do to an object's front under the embedded prior, measured (issue 31, point 5).

    python benchmarks/perp_neg_probe.py                                  # a white cube with a red front
    python benchmarks/perp_neg_probe.py --prompt "a yellow cube with a blue front" --noises 8
    python benchmarks/perp_neg_probe.py guidance.guidance_scale=20 --t 300       # settings (key=value) go first

Two tables. **Buckets**: per view label, how many of the prior's dataset views carry it and how many of the
prompt's images from those views show the front colour (any pixel more than half front-coloured), with the mean
share of front-coloured pixels among the object's. **Terms**: for cameras at elevation 15 and several azimuths,
at several t, with x0 the true object rendered from that camera ("truth") or the object with its front painted
the body colour ("erased"), over --noises draws of eps:

    d_pos = eps(pos) - eps_u, d_k = eps(neg_k) - eps_u, p_k = perp(d_k, d_pos)      (guidance/rules/perp_neg.py)
    eps_hat = eps_u + s (d_pos - sum_k w_k p_k)

columns: the weights w_1, w_2 (negatives in the rule's order), |d_pos|, cos(d_k, d_pos), sum_k w_k |p_k| / |d_pos|
(the negatives' size against the positive's), and the direction the SDS step moves x0 on the front's pixels
(those of the true front that the camera sees): the mean over those pixels of the step -(eps_hat - eps)'s RGB
component along the unit vector from the body colour to the front colour, for the positive term s d_pos, the
negative term -s sum_k w_k p_k, and for view-dependent SDS's classifier-free guidance s (eps(label) - eps_u) beside
them. Positive is toward the front colour. Rows average over the noise draws.

    python benchmarks/perp_neg_probe.py --sweep-r 15 30 --t 200 500    # how the prior answers r front + (1 - r) side

prints instead, for the erased x0 at those azimuths, the positive term's step on the front's pixels for the positive
r front + (1 - r) side at r = 1, 0.999, ..., 0 (docs/BENCHMARKS.md, "Perp-Neg on the bed explained").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from render.cameras import Cameras, camera_position, look_at  # noqa: E402

from dreamfusion.config import load_config  # noqa: E402
from dreamfusion.guidance import build_guidance, load_guidance_model  # noqa: E402
from dreamfusion.guidance.models.prior import BACKGROUNDS, load_scene_coverage  # noqa: E402
from dreamfusion.guidance.prompts import view_label  # noqa: E402
from dreamfusion.guidance.rules.perp_neg import perp_neg_prompts, perpendicular_component  # noqa: E402
from dreamfusion.world.primitives import COLOURS, parse_scene, scene_palette  # noqa: E402
from dreamfusion.world.renders import render_scene_coverage  # noqa: E402

BED_SIZE = ["render.n_samples=32"]  # benchmarks/prior_grid.py's bed settings (the prior is the demo's)


def cameras(azimuths: list[float], elevation: float = 15.0, distance: float = 2.4, fovy: float = 45.0) -> Cameras:
    n = len(azimuths)
    el, az = torch.full((n,), elevation), torch.tensor(azimuths, dtype=torch.float32)
    dist, fov = torch.full((n,), distance), torch.full((n,), fovy)
    return Cameras(look_at(camera_position(el, az, dist), None), torch.deg2rad(fov), el, az, dist)


def render(scene, cams: Cameras, resolution: int, background: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 [V, 3, R, R] in [-1, 1] of the scene, and the coverage [V, K, R, R] of its palette colours."""
    coverage = render_scene_coverage(scene, cams, resolution)
    palette = torch.tensor([COLOURS[c] for c in scene_palette(scene)])
    bg = torch.tensor(BACKGROUNDS[background])
    imgs = torch.einsum("vkhw,kc->vchw", coverage, palette) + (1 - coverage.sum(1, keepdim=True)) * bg[None, :, None, None]
    return imgs * 2 - 1, coverage


def buckets(model, scene) -> list[str]:
    """Per view label: dataset views, images showing the front colour, mean front share of the object's pixels."""
    cams, front_slot = model._cams, len(scene_palette(scene)) - 1
    coverage = load_scene_coverage(scene, cams, model.resolution)  # [V, K, R, R]
    shows = (coverage[:, front_slot] > 0.5).flatten(1).any(1)
    share = coverage[:, front_slot].flatten(1).sum(1) / coverage.sum(1).flatten(1).sum(1).clamp_min(1e-9)
    labels = view_label(cams.elevation, cams.azimuth)
    rows = ["| label | dataset views | images showing the front colour | mean front share of the object's pixels |",
            "|---|---|---|---|"]
    for label in ("front", "side", "back", "overhead"):
        idx = [i for i, x in enumerate(labels) if x == label]
        if idx:
            rows.append(f"| {label} | {len(idx)} | {int(shows[idx].sum())} ({float(shows[idx].float().mean()):.2f}) "
                        f"| {float(share[idx].mean()):.3f} |")
    return rows


def terms(guidance, cams: Cameras, x0: torch.Tensor, front_mask: torch.Tensor, toward: torch.Tensor, t: int,
          noises: int, seed: int) -> list[dict]:
    """Per camera: the module docstring's columns, averaged over `noises` draws of eps."""
    model, cfg = guidance.predictor, guidance.cfg
    s = cfg.guidance_scale
    uncond, label_cond = guidance.cond.for_cameras(cams, x0.shape[0])
    positive, negatives, weights = perp_neg_prompts(guidance.cond, cams, cfg.perp_neg)
    emb = torch.stack([uncond, positive, negatives[:, 0], negatives[:, 1], label_cond])
    abar = model.alphas_cumprod[t]
    g = torch.Generator().manual_seed(seed)
    acc: list[dict] = [dict() for _ in range(x0.shape[0])]
    for _ in range(noises):
        eps = torch.randn(x0.shape, generator=g)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        e = model.predict_eps(x_t, torch.full((x0.shape[0],), t), emb).double()
        d_pos = e[1] - e[0]
        d = [e[2] - e[0], e[3] - e[0]]
        p = [perpendicular_component(dk, d_pos) for dk in d]
        cfg_term = s * (e[4] - e[0])
        for b in range(x0.shape[0]):
            m = front_mask[b]
            along = lambda v: float((v[b] * toward.view(3, 1, 1)).sum(0)[m].mean()) if m.any() else float("nan")  # noqa: E731
            n_pos = float(d_pos[b].norm())
            row = {"|d_pos|": n_pos, "pos": along(-s * d_pos), "cfg": along(-cfg_term)}
            for k in range(2):  # the step is -(eps_hat - eps): each term's contribution is minus the term
                w = float(weights[b, k])
                row[f"cos{k}"] = float((d[k][b] * d_pos[b]).sum() / (d[k][b].norm() * n_pos + 1e-30))
                row[f"size{k}"] = abs(w) * float(p[k][b].norm()) / (n_pos + 1e-30)
                row[f"neg{k}"] = along(s * w * p[k])
            for key, v in row.items():
                acc[b][key] = acc[b].get(key, 0.0) + v / noises
    for b in range(x0.shape[0]):
        acc[b].update(w1=float(weights[b, 0]), w2=float(weights[b, 1]))
    return acc


def sweep_r(guidance, cams: Cameras, x0: torch.Tensor, front_mask: torch.Tensor, toward: torch.Tensor, t: int,
            noises: int, seed: int, rs: list[float]) -> list[list[float]]:
    """Per camera and r: the positive term's step on the front's pixels (the module docstring's "positive" column)
    for the positive r front + (1 - r) side, whatever the camera's azimuth: how the prior answers the interpolation."""
    model, s = guidance.predictor, guidance.cfg.guidance_scale
    uncond, _ = guidance.cond.for_cameras(cams, x0.shape[0])
    front, side = guidance.cond.cond["front"], guidance.cond.cond["side"]
    emb = torch.stack([uncond, *[(r * front + (1 - r) * side).expand_as(uncond) for r in rs]])
    abar, g = model.alphas_cumprod[t], torch.Generator().manual_seed(seed)
    out = [[0.0] * len(rs) for _ in range(x0.shape[0])]
    for _ in range(noises):
        eps = torch.randn(x0.shape, generator=g)
        e = model.predict_eps(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, torch.full((x0.shape[0],), t), emb).double()
        for b in range(x0.shape[0]):
            for i in range(len(rs)):
                step = -s * (e[1 + i, b] - e[0, b])
                out[b][i] += float((step * toward.view(3, 1, 1)).sum(0)[front_mask[b]].mean()) / noises
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="a white cube with a red front")
    ap.add_argument("--azimuths", nargs="+", type=float, default=[0, 30, 60, 90, 120, 150, 180])
    ap.add_argument("--t", nargs="+", type=int, default=[100, 300, 500, 700, 900])
    ap.add_argument("--noises", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep-r", nargs="+", type=float, default=None, metavar="AZIMUTH",
                    help="instead of the terms table: the positive term's step vs r at these azimuths (erased x0)")
    ap.add_argument("overrides", nargs="*", help="extra key=value settings (the demo config with the bed's sizes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("demo", [f"prompt={args.prompt}", *BED_SIZE, "guidance.type=perp_neg", *args.overrides])
    model = load_guidance_model(cfg, "cpu")
    guidance = build_guidance(cfg, "cpu", model)
    scene = parse_scene(args.prompt)
    part = scene.parts[0]
    if len(scene.parts) != 1 or part.front is None:
        raise SystemExit("perp_neg_probe: the prompt must be an object with a front ('a white cube with a red front')")
    print(f"# {args.prompt} | guidance scale {cfg.guidance.guidance_scale} | prior {cfg.guidance.prior.views} views "
          f"at {model.resolution} px | weights f_fs {cfg.guidance.perp_neg.f_fs} f_sf {cfg.guidance.perp_neg.f_sf} "
          f"f_sb {cfg.guidance.perp_neg.f_sb} f_fsb {cfg.guidance.perp_neg.f_fsb}\n")
    print("\n".join(buckets(model, scene)) + "\n")
    cams = cameras(args.azimuths)
    truth, coverage = render(scene, cams, model.resolution, cfg.render.background)
    erased_scene = scene._replace(parts=(part._replace(front=part.colour),))  # the front painted the body colour
    erased = render(erased_scene, cams, model.resolution, cfg.render.background)[0]
    front_mask = coverage[:, -1] > 0.5  # the true front's pixels seen by each camera
    toward = torch.tensor(COLOURS[part.front], dtype=torch.float64) - torch.tensor(COLOURS[part.colour], dtype=torch.float64)
    toward = toward / toward.norm()
    if args.sweep_r:
        rs = [1.0, 0.999, 0.99, 0.9, 0.67, 0.5, 0.0]
        sweep_cams = cameras(args.sweep_r)
        _, cover = render(scene, sweep_cams, model.resolution, cfg.render.background)
        plain = render(erased_scene, sweep_cams, model.resolution, cfg.render.background)[0]
        print("| azimuth | t | " + " | ".join(f"r = {r}" for r in rs) + " |")
        print("|---|---|" + "---|" * len(rs))
        for t in args.t:
            steps = sweep_r(guidance, sweep_cams, plain.float(), cover[:, -1] > 0.5, toward, t, args.noises, args.seed, rs)
            for b, row in enumerate(steps):
                print(f"| {args.sweep_r[b]:.0f} | {t} | " + " | ".join(f"{v:+.2f}" for v in row) + " |", flush=True)
        return 0
    print("| x0 | azimuth | front px | t | abs(d_pos) | w_1 | cos(d_1, d_pos) | w_1 abs(p_1) / abs(d_pos) | w_2 | "
          "cos(d_2, d_pos) | w_2 abs(p_2) / abs(d_pos) | step on front px: positive | negative 1 | negative 2 | "
          "view-dependent CFG |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name, x0 in (("truth", truth), ("erased", erased)):
        for t in args.t:
            for b, r in enumerate(terms(guidance, cams, x0.float(), front_mask, toward, t, args.noises, args.seed)):
                if not front_mask[b].any():
                    continue  # the camera sees none of the front
                print(f"| {name} | {args.azimuths[b]:.0f} | {int(front_mask[b].sum())} | {t} | {r['|d_pos|']:.3g} | "
                      f"{r['w1']:.2f} | {r['cos0']:.2f} | {r['size0']:.3g} | {r['w2']:.2f} | {r['cos1']:.2f} | "
                      f"{r['size1']:.3g} | {r['pos']:+.2f} | {r['neg0']:+.2f} | {r['neg1']:+.2f} | {r['cfg']:+.2f} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
