"""index.html of a batch folder: one card per prompt with its orbit video (or last preview's front view), prompt,
status, step while it runs, scores and a link to the run's report.html. Plain HTML and CSS, relative links only, so
the folder can be moved or served as it is. An IoU under POOR_IOU (embedded prior) is flagged on the card.

A card shows its picture at the size it was rendered (export.video_resolution, preview_resolution from the run's
config.yaml), never stretched: a 128 px demo video stays sharp, and the page loads no more than the run wrote."""

from __future__ import annotations

import html
from pathlib import Path

from ..io import atomic_write_text
from ..report.reading import POOR_IOU
from ..runfolder import CONFIG, PREVIEWS, REPORT, VIDEO

__all__ = ["write_gallery"]

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{padding:22px 28px;background:#1d2330;color:#fff}header h1{margin:0;font-size:21px}
header p{margin:6px 0 0;color:#c3c8d4}.grid{display:grid;gap:18px;padding:24px 28px;
grid-template-columns:repeat(auto-fill,minmax(260px,1fr))}.card{background:#fff;border-radius:10px;
overflow:hidden;box-shadow:0 1px 3px #0002}.media{display:flex;align-items:center;justify-content:center;
padding:12px;background:#eceef2}.media video,.media img{display:block;max-width:100%;height:auto}
.media img.front{object-fit:cover;object-position:0 0}.card .empty{display:flex;align-items:center;
justify-content:center;width:100%;aspect-ratio:1;color:#8a90a0}.body{padding:10px 14px 14px}
.prompt{font-weight:600;margin:0 0 6px}.badge{display:inline-block;padding:1px 8px;border-radius:9px;
font-size:12px;color:#fff}.done{background:#1f8a4c}.failed{background:#c0392b}.running{background:#2d6cdf}
.interrupted{background:#b7791f}.pending{background:#8a90a0}.meta{color:#5b6170;font-size:13px;margin:6px 0 0}
.error{color:#c0392b;font-size:13px;margin:6px 0 0;word-break:break-word}a{color:#2d6cdf}
.poor{color:#9a6700;font-weight:600}
"""


_NO_MEDIA = {"failed": "no video: the run failed", "interrupted": "no video: interrupted, rerun the batch to go on",
             "pending": "not started yet", "running": "no preview yet"}


def _sizes(run_dir: Path) -> tuple[int | None, int | None, int]:
    """(video side, preview side, video panels) from the run's config.yaml; None where it cannot be read."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG))
        export = cfg.get("export") or {}
        video, preview = export.get("video_resolution"), cfg.get("preview_resolution")
        panels = len(export.get("video_panels") or ["rgb"])
    except Exception:  # noqa: BLE001 - no config.yaml, or one that does not parse: the picture keeps its own size
        return None, None, 1
    return (video if isinstance(video, int) else None), (preview if isinstance(preview, int) else None), panels


def _media(run_dir: Path | None, rel: str | None, status: str) -> str:
    """The orbit video at its size; else the last preview's first view (front) at its size; else why neither."""
    video_side, preview_side, panels = _sizes(run_dir) if run_dir is not None else (None, None, 1)
    if run_dir is not None and (run_dir / VIDEO).is_file():
        size = f' width="{video_side * panels}" height="{video_side}"' if video_side else ""
        return (f'<div class="media"><video src="{html.escape(rel)}/{VIDEO}"{size} muted loop autoplay playsinline>'
                f'</video></div>')
    previews = sorted((run_dir / PREVIEWS).glob("step_*.png")) if run_dir and (run_dir / PREVIEWS).is_dir() else []
    if previews:  # four views side by side: a square of the preview's height shows the front one, unscaled
        size = f' width="{preview_side}" height="{preview_side}" class="front"' if preview_side else ""
        return (f'<div class="media"><img src="{html.escape(rel)}/{PREVIEWS}/{previews[-1].name}"{size} '
                f'alt="last preview"></div>')
    return f'<div class="media"><div class="empty">{html.escape(_NO_MEDIA.get(status, "no video"))}</div></div>'


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else f"{int(value // 60)} min {value % 60:.0f} s"


def _card(batch_dir: Path, row: dict) -> str:
    rel = row.get("run_dir")
    run_dir = batch_dir / rel if rel else None
    status = row["status"]
    facts = []
    if status == "running" and row.get("step") is not None:
        facts.append(f"step {row['step']}")
    if row.get("seconds") is not None:
        facts.append(_seconds(row["seconds"]))
    if row.get("iou") is not None and row["iou"] < POOR_IOU:
        facts.append(f'<span class="poor" title="under {POOR_IOU}: the mesh matches the prompt\'s object poorly; '
                     f'train longer (steps=...)">IoU {row["iou"]:.3f} (poor)</span>')
    elif row.get("iou") is not None:
        facts.append(f"IoU {row['iou']:.3f}")
    if row.get("albedo_err") is not None:
        facts.append(f"colour err {row['albedo_err']:.3f}")
    if row.get("seed") is not None:
        facts.append(f"seed {row['seed']}")
    links = []
    if run_dir is not None and (run_dir / REPORT).is_file():
        links.append(f'<a href="{html.escape(rel)}/{REPORT}">report</a>')
    if run_dir is not None and run_dir.is_dir():
        links.append(f'<a href="{html.escape(rel)}/">run folder</a>')
    error = f'<p class="error">{html.escape(row["error"])}</p>' if row.get("error") else ""
    lines = [f'<p class="meta">{" · ".join(items)}</p>' for items in (facts,) if items]
    lines += [error] + [f'<p class="meta">{" · ".join(items)}</p>' for items in (links,) if items]
    return (f'<div class="card" data-status="{status}">{_media(run_dir, rel, status)}<div class="body">'
            f'<p class="prompt">{html.escape(row["prompt"])}</p><span class="badge {status}">{status}</span>'
            f'{"".join(lines)}</div></div>')


def write_gallery(batch_dir: Path, batch: dict) -> Path:
    """Write batch_dir/index.html from batch.json's contents."""
    batch_dir = Path(batch_dir)
    counts = ", ".join(f"{n} {k}" for k, n in batch["counts"].items() if n)
    cards = "\n".join(_card(batch_dir, row) for row in batch["runs"])
    title = f"dreamfusion batch: {Path(batch['prompts_file']).name}"
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head>'
            f'<body><header><h1>{html.escape(title)}</h1><p>{len(batch["runs"])} prompts: {counts} · config '
            f'{html.escape(str(batch["config"] or "dreamfusion"))} · updated {batch["updated"]}</p></header>'
            f'<main class="grid">\n{cards}\n</main></body></html>\n')
    return atomic_write_text(batch_dir / "index.html", page)
