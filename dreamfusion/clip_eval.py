"""CLIP score and CLIP R-precision of finished runs (Dream Fields §5; DreamFusion Table 1).

    python -m dreamfusion eval RUN_DIR [RUN_DIR ...] --clip-model ID_OR_FOLDER [--views N] [--json PATH]

Each run's field is rendered from N views on the evaluation orbit (the run's eval elevation, distance
and fovy; azimuths offset by 17 degrees from the preview / video azimuths), on white, and embedded with
the *evaluation* CLIP (use a different CLIP than the one that guided the run, e.g. ViT-B/32 for runs
guided by B/16, or the score grades itself). With unit image embeddings x_rv and prompt embeddings y_r:

    CLIP score (run r)   = 100 * mean_v cos(x_rv, y_r)
    R-precision (run r)  = mean_v [ cos(x_rv, y_r) >= max_j cos(x_rv, y_j) ]    (top-1 retrieval among
                           the prompts of all evaluated runs; identical prompts count as the same class)

The table goes to stderr, the JSON report to stdout or to --json PATH.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from torch import Tensor

from render.cameras import Cameras, camera_position, look_at

from .errors import UserError
from .runfolder import CONFIG, is_run_folder

__all__ = ["evaluate_runs", "r_precision", "clip_scores", "eval_cameras", "render_run", "evaluate"]

EVAL_AZIMUTH_OFFSET = 17.0  # degrees: never one of the preview azimuths (multiples of 90) for fewer than 360 views


def r_precision(image_emb: Tensor, text_emb: Tensor) -> tuple[Tensor, float]:
    """image_emb [R, V, D], text_emb [R, D] (run r's prompt in row r) -> (per_run [R], mean over runs).

    View v of run r counts as retrieved when its cosine with prompt r is at least its cosine with every
    prompt (so runs that share a prompt do not compete). Embeddings need not be unit length.
    """
    if image_emb.ndim != 3 or text_emb.ndim != 2 or image_emb.shape[0] != text_emb.shape[0] \
            or image_emb.shape[2] != text_emb.shape[1]:
        raise ValueError(f"r_precision: need image_emb [R, V, D] and text_emb [R, D], got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    x = torch.nn.functional.normalize(image_emb.double(), dim=-1)
    y = torch.nn.functional.normalize(text_emb.double(), dim=-1)
    sim = torch.einsum("rvd,jd->rvj", x, y)  # [R, V, R]
    own = sim.diagonal(dim1=0, dim2=2).T  # [R, V]: sim[r, v, r]
    hit = (own >= sim.max(dim=-1).values).double()  # [R, V]
    per_run = hit.mean(1)
    return per_run.float(), float(per_run.mean())


def clip_scores(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """100 * mean over views of cos(image_emb[r, v], text_emb[r]): [R, V, D], [R, D] -> [R]."""
    x = torch.nn.functional.normalize(image_emb.double(), dim=-1)
    y = torch.nn.functional.normalize(text_emb.double(), dim=-1)
    return (100.0 * (x * y[:, None]).sum(-1).mean(1)).float()


def eval_cameras(n: int, elevation: float, distance: float, fovy_deg: float, device=None) -> Cameras:
    """n cameras on the evaluation orbit: azimuth -180 + 17 + 360 k / n degrees (wrapped), looking at the origin."""
    if n <= 0:
        raise ValueError(f"eval_cameras: n must be positive, got {n}")
    azimuth = -180.0 + EVAL_AZIMUTH_OFFSET + 360.0 * torch.arange(n, dtype=torch.float32) / n
    azimuth = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    elevation_t = torch.full((n,), float(elevation))
    distance_t = torch.full((n,), float(distance))
    c2w = look_at(camera_position(elevation_t, azimuth, distance_t))
    cams = Cameras(c2w, torch.full((n,), math.radians(fovy_deg)), elevation_t, azimuth, distance_t)
    return cams.to(device) if device is not None else cams


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist: pass folders made by python -m dreamfusion")
    if not is_run_folder(run_dir):
        raise UserError(f"'{run_dir}' is not a run folder (no {CONFIG})")


@torch.no_grad()
def render_run(run_dir: Path, views: int, resolution: int, device: torch.device) -> tuple[str, Tensor]:
    """(prompt, images [V, R, R, 3]) of a run: its last checkpoint on the evaluation orbit, white background."""
    from .renderer import render_views_chunked, rgb_view
    from .run import load_run

    _check_run_dir(Path(run_dir))
    loaded = load_run(run_dir, device)
    loaded.field.eval()
    c = loaded.cfg.camera
    cams = eval_cameras(views, c.eval_elevation, c.eval_distance, c.eval_fovy, device=device)
    out = render_views_chunked(rgb_view(loaded.field), None, cams, resolution, resolution,
                               n_samples=loaded.cfg.render.n_samples, views_per_chunk=1, background_kind="white")
    return loaded.cfg.prompt, out["rgb"].clamp(0.0, 1.0)


@torch.no_grad()
def evaluate(run_dirs: list[Path], clip, views: int = 8, resolution: int | None = None,
             *, device: torch.device | str) -> tuple[dict, Tensor, Tensor]:
    """(report, image_emb [R, V, D], text_emb [R, D]) for the runs, with a loaded FrozenCLIP ``clip``."""
    device = torch.device(device)
    side = resolution or clip.input_size
    prompts, image_emb = [], []
    for run_dir in run_dirs:
        prompt, images = render_run(Path(run_dir), views, side, device)  # [V, H, W, 3]
        prompts.append(prompt)
        image_emb.append(clip.embed_images(images.permute(0, 3, 1, 2)))  # [V, D]
    image_emb_t = torch.stack(image_emb)  # [R, V, D]
    text_emb = clip.embed_text(prompts)  # [R, D]
    scores = clip_scores(image_emb_t, text_emb)
    per_run, mean_r = r_precision(image_emb_t, text_emb)
    runs = [{"run": str(d), "prompt": p, "clip_score": float(s), "r_precision": float(r)}
            for d, p, s, r in zip(run_dirs, prompts, scores.tolist(), per_run.tolist())]
    report = {"views": views, "resolution": side, "unique_prompts": len(set(prompts)), "runs": runs,
              "mean": {"clip_score": float(scores.mean()), "r_precision": mean_r}}
    return report, image_emb_t, text_emb


def format_table(report: dict) -> str:
    """The report as an aligned text table, one row per run and a mean row."""
    rows = [(r["run"], r["prompt"], f"{r['clip_score']:.2f}", f"{100 * r['r_precision']:.1f}") for r in report["runs"]]
    rows.append(("mean", "", f"{report['mean']['clip_score']:.2f}", f"{100 * report['mean']['r_precision']:.1f}"))
    header = ("run", "prompt", "CLIP score", "R-precision %")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    note = (f"{report['views']} views at {report['resolution']} px, {report['unique_prompts']} distinct prompt(s); "
            f"chance R-precision is {100 / report['unique_prompts']:.1f} %")
    return "\n".join(lines + [note])


def evaluate_runs(runs: list[Path], clip_model: str, views: int = 8, resolution: int | None = None,
                  json_path: Path | None = None, device: str = "auto") -> int:
    """The ``eval`` command's work: the table to stderr, the JSON report to ``json_path`` or stdout; returns 0.
    UserErrors propagate to the CLI (one line, exit status 2)."""
    from .guidance.models.clip import FrozenCLIP
    from .run import resolve_device

    runs = [Path(r) for r in runs]
    for run_dir in runs:  # fail before the model load
        _check_run_dir(run_dir)
    device = resolve_device(device)
    clip = FrozenCLIP.load(clip_model, device=device, role="evaluation")
    report, _, _ = evaluate(runs, clip, views, resolution, device=device)
    report = {"clip_model": clip_model, **report}
    print(format_table(report), file=sys.stderr)
    text = json.dumps(report, indent=2)
    if json_path is None:
        print(text)
    else:
        json_path = Path(json_path)
        try:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(text + "\n")
        except OSError as exc:
            raise UserError(f"cannot write --json '{json_path}' ({exc.strerror or exc})") from None
        print(f"wrote {json_path}", file=sys.stderr)
    return 0
