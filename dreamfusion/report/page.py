"""report.html as one string: every image, the video, the mesh and the 3D viewer's script are inside it
(data: URIs and inline <script>), because a page opened from file:// may not fetch anything, and a
Content-Security-Policy says so to the browser. Sections: header, result (3D view + orbit video),
previews, curves, time per phase, config, files."""
from __future__ import annotations

import base64
import json
import math
import os
import shlex
from datetime import datetime, timezone
from html import escape
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

from dreamfusion.report.plot import line_plot
from dreamfusion.runfolder import REPORT
from dreamfusion.report.reading import MISSING, POOR_IOU, RunFolder, files_with_sizes, flatten, format_size, series

__all__ = ["render_page"]

EMBED_LIMIT = 64 * 2**20  # a mesh or video larger than this is linked, not embedded
MIN_VIEW_PX = 256  # each preview view is shown at least this wide
VIEWS = ("front", "right", "back", "left")
TITLES = {"loss": "loss", "grad_norm": "SDS gradient norm", "t": "diffusion t", "sec_per_step": "seconds per step"}
Y_LABELS = {"grad_norm": "norm", "t": "t", "sec_per_step": "seconds"}  # the rest are losses
# The viewer compiles a WebAssembly decoder ('wasm-unsafe-eval'); nothing may come from outside the page.
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'wasm-unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; media-src data: blob:; connect-src data: blob:; worker-src blob:")


def _static(name: str) -> str:
    return (files("dreamfusion.report") / name).read_text(encoding="utf-8")


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _link(rel: str) -> str:
    return f'<a href="{escape(quote(rel))}"><code>{escape(rel)}</code></a>'


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min {sec} s"


def _value(v) -> str:
    return "not in the current defaults" if v is MISSING else json.dumps(v, ensure_ascii=False)


def _absent(what: str) -> str:
    return f'<div class="absent">{escape(what)}</div>'


def _header(run: RunFolder) -> str:
    info, cfg = run.info, run.config or {}
    prompt = info.get("prompt") or cfg.get("prompt") or run.path.name
    status = str(info.get("status") or "unknown")
    badge = status if status in ("done", "running", "failed", "interrupted") else "unknown"
    meta = []
    if "config" in info:
        meta.append(f"config <b>{escape(str(info['config'] or 'dreamfusion'))}</b>")
    meta += [f"{k} <b>{escape(str(info[k]))}</b>" for k in ("field", "guidance", "device") if info.get(k) is not None]
    if info.get("step") is not None:
        meta.append(f"step <b>{info['step']}</b>" + (f" of {info['steps']}" if info.get("steps") else ""))
    if info.get("started"):
        meta.append(f"started {escape(str(info['started']))}")
    seconds = info.get("seconds") or {}
    if seconds:
        meta.append(f"{_duration(sum(v for v in seconds.values() if isinstance(v, (int, float))))} in all")
    out = [f'<header><h1>{escape(str(prompt))}<span class="badge {badge}">{escape(status)}</span></h1>']
    if info.get("negative_prompt"):
        out.append(f'<div class="meta">negative prompt: {escape(str(info["negative_prompt"]))}</div>')
    out.append(f'<div class="meta">{"".join(f"<span>{m}</span>" for m in meta)}</div>')
    if info.get("coarse_run"):  # a refine run: link its coarse run's report
        coarse = Path(str(info["coarse_run"]))
        link = os.path.relpath(coarse / REPORT, run.path) if coarse.is_absolute() == run.path.is_absolute() else coarse
        out.append(f'<div class="meta">refines <a href="{escape(str(link))}">{escape(coarse.name)}</a></div>')
    numbers = {k: v for k, v in (info.get("metrics") or {}).items() if isinstance(v, (int, float))}
    if numbers:
        out.append('<div class="numbers">' + "".join(f"<div>{escape(k)}<b>{v:.4g}</b></div>"
                                                      for k, v in numbers.items()) + "</div>")
    if numbers.get("iou", 1.0) < POOR_IOU:
        out.append(f'<div class="poor">IoU {numbers["iou"]:.3f} is poor (under {POOR_IOU}): the mesh matches the '
                   f"prompt's object badly; train longer (steps=...) or try another seed</div>")
    if info.get("error"):
        out.append(f'<div class="error">{escape(str(info["error"]))}</div>')
    if run.notes:
        out.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in run.notes) + "</ul>")
    return "".join(out) + "</header>"


def _embedded(run: RunFolder, name: str, what: str) -> tuple[Path | None, str]:
    """(path, "") when the artifact can be embedded, else (None, the HTML saying why not)."""
    path = run.artifact(name)
    if path is None:
        return None, _absent(f"{what}: not produced")
    size = path.stat().st_size
    if size > EMBED_LIMIT:
        rel = path.relative_to(run.path.resolve()).as_posix()
        return None, f'<div class="absent">{what} is {format_size(size)}, too large to embed: open {_link(rel)}</div>'
    return path, ""


def _result(run: RunFolder) -> str:
    glb, mesh_html = _embedded(run, "glb", "mesh")
    if glb is not None:
        mesh_html = (f'<model-viewer id="mesh" src="{_data_uri(glb, "model/gltf-binary")}" camera-controls '
                     f'auto-rotate interaction-prompt="none" shadow-intensity="0" alt="the exported mesh">'
                     f'</model-viewer><p class="hint">drag to orbit, scroll to zoom</p>')
    mp4, video_html = _embedded(run, "video", "orbit video")
    if mp4 is not None:
        video_html = (f'<video id="orbit" src="{_data_uri(mp4, "video/mp4")}" controls loop muted autoplay '
                      f'playsinline></video>')
    return (f'<section><h2>Result</h2><div class="pair"><div><h3>Mesh</h3>{mesh_html}</div>'
            f'<div><h3>Orbit video</h3>{video_html}</div></div></section>')


def _why_no_previews(run: RunFolder) -> str:
    """Why a run folder has no previews, from its config and run.json."""
    cfg, step = run.config or {}, run.info.get("step")
    every, steps = cfg.get("preview_every"), cfg.get("steps")
    if not isinstance(every, int):
        return "previews: not produced"
    if every <= 0:
        return "previews: not produced (preview_every=0 turns them off)"
    if isinstance(steps, int) and every > steps:
        return (f"previews: not produced (preview_every={every} is more than steps={steps}: "
                f"set preview_every={max(1, steps // 8)} for 8 of them)")
    if isinstance(step, int) and step < every:
        return f"previews: not produced (the run stopped at step {step}, before the first preview at step {every})"
    if step is None and run.info.get("status") in ("failed", "interrupted"):
        return f"previews: not produced (the run {run.info['status']} before its first preview at step {every})"
    return "previews: not produced (no previews/step_*.png in the run folder)"


def _previews(run: RunFolder) -> str:
    if not run.previews:
        return f'<section><h2>Previews over training</h2>{_absent(_why_no_previews(run))}</section>'
    figures, labels = [], []
    for i, (step, png, width) in enumerate(run.previews):
        view = max(width / len(VIEWS), 1.0)
        scale = 1 if view >= MIN_VIEW_PX else math.ceil(MIN_VIEW_PX / view)
        labels.append(f"step {step}" + (f" (shown {scale}\u00d7)" if scale > 1 else ""))
        shown, hidden = width * scale, "" if i == len(run.previews) - 1 else " hidden"
        pixelated = ' class="pixelated"' if scale > 1 else ""
        figures.append(
            f'<figure data-label="{escape(labels[-1])}"{hidden}>'
            f'<div class="views" style="width:{shown}px">{"".join(f"<span>{v}</span>" for v in VIEWS)}</div>'
            f'<img src="{_data_uri(png, "image/png")}" width="{shown}" alt="preview at {escape(labels[-1])}"'
            f'{pixelated}></figure>')
    last = len(run.previews) - 1
    scrub = (f'<div class="scrub"><input type="range" min="0" max="{last}" value="{last}" '
             f'aria-label="preview step"><output>{escape(labels[-1])}</output></div>')
    return f'<section><h2>Previews over training</h2><div class="previews">{scrub}{"".join(figures)}</div></section>'


def _curves(run: RunFolder) -> str:
    curves = series(run.metrics)
    if not curves:
        return f'<section><h2>Training curves</h2>{_absent("metrics.jsonl: not produced")}</section>'
    plots = "".join(line_plot(xs, ys, TITLES.get(name, name), y_label=Y_LABELS.get(name, "loss"), smooth=name != "t")
                    for name, (xs, ys) in curves.items())
    return f'<section><h2>Training curves</h2><div class="plots">{plots}</div></section>'


def _phases(run: RunFolder) -> str:
    seconds = {k: float(v) for k, v in (run.info.get("seconds") or {}).items() if isinstance(v, (int, float))}
    if not seconds:
        return f'<section><h2>Time per phase</h2>{_absent("timings: not recorded")}</section>'
    total, top = sum(seconds.values()), max(seconds.values()) or 1.0
    rows = "".join(f'<tr><td><code>{escape(k)}</code></td><td style="width:50%"><div class="bar" '
                   f'style="width:{100 * v / top:.1f}%"></div></td><td class="num">{v:.1f} s</td>'
                   f'<td class="num">{100 * v / (total or 1.0):.0f}%</td></tr>' for k, v in seconds.items())
    rows += f'<tr><th>total</th><td></td><td class="num"><b>{_duration(total)}</b></td><td></td></tr>'
    return (f'<section><h2>Time per phase</h2><table><tr><th>phase</th><th></th><th>seconds</th><th>share</th>'
            f'</tr>{rows}</table></section>')


def command_line(run: RunFolder) -> str | None:
    """A shell command that runs this run again: ``python -m dreamfusion [--config NAME] key=value ...``, each
    argument quoted for a POSIX shell; the prompt and seed are added where the overrides lack them (a batch
    run's come from its prompts file). None without run.json's config name."""
    if "config" not in run.info:
        return None
    overrides = [str(o) for o in run.info.get("overrides") or [] if not str(o).startswith("resume=")]
    keys = {o.split("=", 1)[0] for o in overrides}
    prompt = run.info.get("prompt") if run.info.get("prompt") is not None else (run.config or {}).get("prompt")
    if "prompt" not in keys and prompt:
        overrides.append(f"prompt={prompt}")
    seed = (run.config or {}).get("seed")
    if "seed" not in keys and seed is not None and "seed" in run.diff:
        overrides.append(f"seed={seed}")
    name = run.info.get("config")
    argv = ["python", "-m", "dreamfusion", *(["--config", str(name)] if name else []), *overrides]
    return " ".join(shlex.quote(a) for a in argv)


def _config(run: RunFolder) -> str:
    if run.config is None:
        return f'<section><h2>Config</h2>{_absent("config.yaml: not produced")}</section>'
    out = ['<section class="config"><h2>Config</h2>']
    command = command_line(run)
    if command:
        out.append(f'<p>run it again: <code class="command">{escape(command)}</code></p>')
    name = escape(str(run.info.get("config") or "dreamfusion"))
    if run.diff:
        rows = "".join(f'<tr class="changed"><td>{escape(k)}</td><td>{escape(_value(flatten(run.config)[k]))}</td>'
                       f'<td>{escape(_value(d))}</td></tr>' for k, d in run.diff.items())
        out.append(f"<p>{len(run.diff)} setting(s) differ from the defaults of config <b>{name}</b>:</p>"
                   f"<table><tr><th>key</th><th>this run</th><th>default</th></tr>{rows}</table>")
    elif "config" in run.info and not any("defaults" in n for n in run.notes):
        out.append(f"<p>Every setting is the default of config <b>{name}</b>.</p>")
    rows = "".join(f'<tr class="{"changed" if k in run.diff else ""}"><td>{escape(k)}</td>'
                   f'<td>{escape(_value(v))}</td></tr>' for k, v in flatten(run.config).items())
    out.append(f"<details><summary>full config ({len(flatten(run.config))} keys, config.yaml)</summary>"
               f"<table>{rows}</table></details></section>")
    return "".join(out)


def _files(run: RunFolder) -> str:
    names = {v: k for k, v in (run.info.get("artifacts") or {}).items() if isinstance(v, str)}
    listed = files_with_sizes(run.path)
    groups: dict[str, list[tuple[str, int]]] = {}
    for rel, size in listed:
        groups.setdefault(rel.rsplit("/", 1)[0] + "/" if "/" in rel else rel, []).append((rel, size))
    rows = []
    for key, members in groups.items():
        if len(members) > 6:  # e.g. previews/: one row for the folder
            rows.append(f'<tr><td></td><td>{_link(key)} ({len(members)} files)</td>'
                        f'<td class="num">{format_size(sum(s for _, s in members))}</td></tr>')
            continue
        rows += [f'<tr><td>{escape(names.get(rel, ""))}</td><td>{_link(rel)}</td><td class="num">{format_size(size)}'
                 f'</td></tr>' for rel, size in members]
    present = {rel for rel, _ in listed}
    rows += [f'<tr><td>{escape(name)}</td><td><code>{escape(rel)}</code> not produced</td><td></td></tr>'
             for rel, name in names.items() if rel not in present]
    return (f'<section><h2>Files</h2><table><tr><th>artifact</th><th>path</th><th>size</th></tr>{"".join(rows)}'
            f'</table></section>')


def render_page(run: RunFolder) -> str:
    vendored = json.loads(_static("vendor/VENDORED.json"))
    viewer = vendored["bundles"][0]
    script = _static("vendor/model-viewer.min.js")
    if "</script" in script.lower():
        raise RuntimeError("the vendored viewer contains '</script': re-run tools/report-viewer/vendor.sh")
    prompt = run.info.get("prompt") or (run.config or {}).get("prompt") or run.path.name
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(str(prompt))} \u2014 dreamfusion report</title><style>{_static('static/report.css')}</style>",
        "</head><body><main>", _header(run), _result(run), _previews(run), _curves(run), _phases(run),
        _config(run), _files(run),
        f"<footer>dreamfusion report of <code>{escape(run.path.name)}</code>, built {built}. 3D view: "
        f"{escape(viewer['name'])} {escape(viewer['version'])} ({escape(viewer['license'])}; three.js MIT, lit "
        f"BSD-3-Clause), inlined: licenses in dreamfusion/report/vendor/LICENSES.txt.</footer></main>",
        f"<script>{script}</script><script>{_static('static/report.js')}</script></body></html>"])
