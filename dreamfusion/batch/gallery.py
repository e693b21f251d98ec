"""index.html of a batch folder: one card per prompt with its orbit video (or last preview), prompt, status,
step while it runs, scores and a link to the run's report.html. Plain HTML and CSS, relative links only, so the
folder can be moved or served as it is. An IoU under POOR_IOU (embedded prior) is flagged on the card."""

from __future__ import annotations

import html
from pathlib import Path

from ..io import atomic_write_text
from ..report.reading import POOR_IOU
from ..runfolder import PREVIEWS, REPORT, VIDEO

__all__ = ["write_gallery"]

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{padding:22px 28px;background:#1d2330;color:#fff}header h1{margin:0;font-size:21px}
header p{margin:6px 0 0;color:#c3c8d4}.grid{display:grid;gap:18px;padding:24px 28px;
grid-template-columns:repeat(auto-fill,minmax(260px,1fr))}.card{background:#fff;border-radius:10px;
overflow:hidden;box-shadow:0 1px 3px #0002}.card video,.card img,.card .empty{display:block;width:100%;
aspect-ratio:1;object-fit:contain;background:#fff}.card .empty{display:flex;align-items:center;
justify-content:center;color:#8a90a0;background:#eceef2}.body{padding:10px 14px 14px}
.prompt{font-weight:600;margin:0 0 6px}.badge{display:inline-block;padding:1px 8px;border-radius:9px;
font-size:12px;color:#fff}.done{background:#1f8a4c}.failed{background:#c0392b}.running{background:#2d6cdf}
.interrupted{background:#b7791f}.pending{background:#8a90a0}.meta{color:#5b6170;font-size:13px;margin:6px 0 0}
.error{color:#c0392b;font-size:13px;margin:6px 0 0;word-break:break-word}a{color:#2d6cdf}
.poor{color:#9a6700;font-weight:600}
"""


_NO_MEDIA = {"failed": "no video: the run failed", "interrupted": "no video: interrupted, rerun the batch to go on",
             "pending": "not started yet", "running": "no preview yet"}


def _media(run_dir: Path | None, rel: str | None, status: str) -> str:
    if run_dir is not None and (run_dir / VIDEO).is_file():
        return f'<video src="{html.escape(rel)}/{VIDEO}" muted loop autoplay playsinline></video>'
    previews = sorted((run_dir / PREVIEWS).glob("step_*.png")) if run_dir and (run_dir / PREVIEWS).is_dir() else []
    if previews:
        return f'<img src="{html.escape(rel)}/{PREVIEWS}/{previews[-1].name}" alt="last preview">'
    return f'<div class="empty">{html.escape(_NO_MEDIA.get(status, "no video"))}</div>'


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
