"""The package"s import graph: no circles, and every import goes down the layers of docs/DESIGN.md.

The graph is read from the source (every ``import`` and ``from ... import``, also the ones inside functions,
which are dependencies all the same). A module may import modules of its own package and of lower layers; two
packages of one layer do not import each other. Oracle: the graph of a copy of the package with one upward
import added fails the check (test_an_upward_import_is_caught).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Low to high. A name is a module or a package (then every module under it).
LAYERS = [
    ["render", "dreamfusion.errors"],  # render/: pure functions of tensors
    ["dreamfusion.io", "dreamfusion.settings",
     "dreamfusion.migrations"],  # earlier config.yaml and checkpoint formats, as plain data (imports errors only)
    ["dreamfusion.runfolder"],  # the run folder's layout and files: names and JSON, no training
    ["dreamfusion.world"],  # the embedded prior's primitives and scenes: the prior draws them, the scores grade by them
    ["dreamfusion.checkpoint", "dreamfusion.fields", "dreamfusion.guidance", "dreamfusion.report.plot"],
    ["dreamfusion.export", "dreamfusion.renderer"],  # they take a field: export writes it, the renderer renders it
    ["dreamfusion.world.scores"],  # an asset against its known scene (the true mesh is export's marching cubes)
    ["dreamfusion.refine"],  # the refine stage: a coarse field -> a DMTet surface at the exporter's level
    ["dreamfusion.train.config"],  # the trainer's sections (camera, loss): above what the loss terms come from
    ["dreamfusion.config"],  # assembles the components' sections
    ["dreamfusion.extensions", "dreamfusion.report", "dreamfusion.train"],
    ["dreamfusion.artifacts"],  # a run's artifacts from its config (calls export/, times the phases)
    ["dreamfusion.run"],
    ["dreamfusion.clip_eval", "dreamfusion.preview", "dreamfusion.viewer", "dreamfusion.batch"],
    ["dreamfusion.cli"],
    ["dreamfusion.__main__", "dreamfusion"],
]
# Beyond the layers: a field is a representation (issue 21): it renders nothing and knows no camera. Of render/ it
# imports only the tensor helpers that know neither cameras nor rendering, and they import no other render module.
CAMERA_FREE = ("render.splat_math", "render.latent", "render.tets")  # splat conventions; latent <-> RGB; tet grids


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in [*root.glob("dreamfusion/**/*.py"), *root.glob("render/**/*.py")]:
        if "configs" in path.parts:
            continue
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module named, names imported from it) of every import of the module ``name`` at ``path``, also those inside
    functions: ``import a.b`` -> ("a.b", []), ``from a.b import c, d`` -> ("a.b", ["c", "d"]), relative ones
    resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.append((module, [alias.name for alias in node.names]))
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the package modules it imports}, names resolved to the longest existing module."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for module, names in imports(name, path):
            for target in [f"{module}.{n}" for n in names] or [module]:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def _owner(module: str) -> tuple[int, str]:
    """(layer index, the layer entry it falls under): the longest entry that is the module or a package above it."""
    best = None
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if module == entry or module.startswith(entry + "."):
                if best is None or len(entry) > len(best[1]):
                    best = (index, entry)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _knows_cameras(source: str, target: str) -> bool:
    """A field, or a render module a field may import, importing a render module outside CAMERA_FREE."""
    field_side = _within(source, "dreamfusion.fields") or source in CAMERA_FREE
    return field_side and _within(target, "render") and target not in CAMERA_FREE


def violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    out = set()
    for source, targets in graph.items():
        layer, entry = _owner(source)
        for target in targets:
            t_layer, t_entry = _owner(target)
            if t_layer > layer or (t_layer == layer and t_entry != entry) or _knows_cameras(source, target):
                out.add((source, target))
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def unresolved_imports(root: Path = ROOT) -> set[tuple[str, str]]:
    """(module, imported name) of every import of this project's packages that names no module of the tree at
    ``root``: ``import a.b`` needs a.b, ``from a.b import c`` needs a.b. An editable install elsewhere would
    otherwise satisfy a stale import after a move, and the layer check drops names it cannot resolve."""
    mods = modules(root)
    return {(name, module) for name, path in mods.items() for module, _ in imports(name, path)
            if module.split(".")[0] in ("dreamfusion", "render") and module not in mods}


def test_every_import_names_a_module_of_the_tree():
    assert unresolved_imports() == set()


# The run folder's layout has one home (issue 29): no other module spells one of its paths in code (messages and
# docs may name the files).
RUN_FILES = {"config.yaml", "run.json", "metrics.jsonl", "checkpoints/last.pt", "last.pt", "error.log", "orbit.mp4",
             "report.html", "mesh/model.glb", "mesh/model.obj", "model.glb", "model.obj", "splats.ply", "triplane.npz"}
RUN_DIRS = {"checkpoints", "previews", "mesh", "paused"}


def run_folder_names(path: Path) -> list[str]:
    """The run-folder paths a module's code spells: a string that is one ("run.json"), one joined onto a path
    (run_dir / "previews") and one after a formatted value in an f-string (f"{rel}/orbit.mp4")."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value in RUN_FILES:
            found.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant) \
                and node.right.value in RUN_FILES | RUN_DIRS:
            found.append(f"line {node.lineno}: / {node.right.value!r}")
        elif isinstance(node, ast.JoinedStr):
            for before, part in zip(node.values, node.values[1:]):
                name = re.match(r"/([\w.]+)", part.value) if isinstance(part, ast.Constant) else None
                if isinstance(before, ast.FormattedValue) and name and name.group(1) in RUN_FILES | RUN_DIRS:
                    found.append(f"line {node.lineno}: {{...}}/{name.group(1)}")
    return found


def test_only_runfolder_names_run_folder_files():
    found = {name: names for name, path in modules().items()
             if name != "dreamfusion.runfolder" and (names := run_folder_names(path))}
    assert found == {}, f"run-folder file names outside dreamfusion/runfolder.py: {found}"


def test_a_spelled_run_folder_name_is_caught(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('"""Writes run.json."""\ndef f(d):\n    raise ValueError(f"no {d}/report.html: no run.json")\n'
                    '    return d / "previews", f"<a href={d}/orbit.mp4>", {"log": "error.log"}\n')
    assert sorted(run_folder_names(path)) == ["line 3: {...}/report.html", "line 4: 'error.log'",
                                              "line 4: / 'previews'", "line 4: {...}/orbit.mp4"]


def test_every_module_has_a_layer():
    for module in modules():
        _owner(module)


def test_no_upward_or_sideways_imports():
    found = violations(import_graph())
    assert found == set(), f"imports against the layers: {sorted(found)}"


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_an_upward_import_is_caught():
    graph = import_graph()
    graph["dreamfusion.errors"] = graph["dreamfusion.errors"] | {"dreamfusion.run"}
    assert ("dreamfusion.errors", "dreamfusion.run") in violations(graph)
    assert any("dreamfusion.errors" in c and "dreamfusion.run" in c for c in circles(graph))
    graph = import_graph()
    assert "render.splat_math" in graph["dreamfusion.fields.gaussian"]  # a camera-free helper is allowed
    graph["dreamfusion.fields.base"] = graph["dreamfusion.fields.base"] | {"render.volume", "render"}
    graph["render.splat_math"] = graph["render.splat_math"] | {"render.cameras"}  # a field would reach cameras
    assert {("dreamfusion.fields.base", "render.volume"), ("dreamfusion.fields.base", "render"),
            ("render.splat_math", "render.cameras")} <= violations(graph)
