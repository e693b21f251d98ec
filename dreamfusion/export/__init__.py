"""Export a trained field: mesh (marching cubes), colour (vertex or baked UV texture), files, orbit video.

Everything here is a function of arrays and callables (`density_fn`, `albedo_fn`), not of field classes; the
callables get their points on the device the caller names (`dev = field_device(field)`), never a default one:

    v, f = extract_mesh(field.density, field.bound, cfg.export.resolution, cfg.export.threshold, device=dev)
    v, f, uv, tex = bake_texture(v, f, lambda p: field(p)["albedo"], size=cfg.export.texture_size, device=dev)
    write_obj(run / "mesh/model.obj", v, f, uv, tex); write_glb(run / "mesh/model.glb", v, f, uv, tex)
    write_video(run / "orbit.mp4", stack_panels([rgb, normals_to_rgb(n), colorize_depth(d, a)]), fps)

A field's own files (triplane.npz, splats.ply) are ``write_field_files(field, run_dir)`` (field_files.py), the
one function here that knows the field classes.
"""
from dreamfusion.export.field_files import write_field_files
from dreamfusion.export.mesh import clean_mesh, decimate, density_grid, extract_mesh, optical_depth
from dreamfusion.export.texture import bake_albedo, bake_texture, unwrap, vertex_colors
from dreamfusion.export.video import colorize_depth, normals_to_rgb, stack_panels, write_video
from dreamfusion.export.writers import write_glb, write_obj

__all__ = [
    "density_grid", "optical_depth", "extract_mesh", "clean_mesh", "decimate",
    "vertex_colors", "unwrap", "bake_albedo", "bake_texture",
    "write_obj", "write_glb",
    "write_video", "stack_panels", "colorize_depth", "normals_to_rgb",
    "write_field_files",
]
