"""synth.render: cameras, rasterizer backends and the conditioning / label maps.

    from synth.render import RenderConfig, RenderStage, render_maps, sample_cameras, sample_lights

Conventions (docs/rendering.md): OpenCV cameras (x right, y down, z forward), world-to-camera R, t, pixel
centres at integer + 0.5; depth in metres (PNG: uint16 mm, 0 = background).

Names resolve lazily, so importing `synth.render.config` (as every config schema does) does not load Warp.
"""

import importlib

_EXPORTS = {
    "Cameras": "camera",
    "Lights": "camera",
    "intrinsic_matrix": "camera",
    "orbit_pose": "camera",
    "sample_cameras": "camera",
    "sample_lights": "camera",
    "RasterBackend": "config",
    "RenderConfig": "config",
    "depth_to_png16_mm": "maps",
    "normals_to_png8": "maps",
    "png8_to_normals": "maps",
    "png16_mm_to_depth": "maps",
    "render_maps": "maps",
    "Fragments": "raster",
    "get_rasterizer": "raster",
    "RenderStage": "stage",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'synth.render' has no attribute {name!r}")
    return getattr(importlib.import_module(f"synth.render.{_EXPORTS[name]}"), name)
