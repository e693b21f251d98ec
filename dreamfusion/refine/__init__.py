"""The refine stage (Magic3D's fine stage, DreamGaussian's stage 2): a coarse run's field becomes a DMTet surface
(fields/dmtet.py) rendered by rasterization (renderer/mesh.py), then optimised further.

    convert.py   the coarse field -> the DMTet SDF at the exporter's surface level, and the texture fitted to the
                 coarse albedo, so that the refine stage starts from the coarse run's mesh

The stage as users run it (``python -m dreamfusion refine RUN_DIR``) is run.py's ``refine``.
"""

from .convert import coarse_sdf, convert_field, convert_into, fit_texture

__all__ = ["coarse_sdf", "convert_field", "convert_into", "fit_texture"]
