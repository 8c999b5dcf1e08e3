"""Surface attributes from fragments as Warp kernels: vertex normals, interpolated normals, Lambert shading.

Any backend's `Fragments` go through these kernels (CPU and CUDA). They only gather — vertex normals sum
their incident faces through a fixed adjacency list instead of scattering with atomics — so the results
are bit-identical whatever the thread count or GPU scheduling. (A vectorised PyTorch version of the same
gathers took ~40 ms per 512 px image on 2 busy CPU threads; these kernels take ~4 CPU-ms.)
"""

import torch
import warp as wp
from torch import Tensor

import synth.quiet_warp  # noqa: F401  (silences Warp's banner before it initialises)
from synth.render.camera import Lights
from synth.render.raster import Fragments
from synth.render.warp_backend import run_chunks, warp_device


@wp.kernel
def _face_normals_kernel(
    verts: wp.array2d(dtype=wp.vec3),
    faces: wp.array2d(dtype=wp.int32),
    face_normals: wp.array2d(dtype=wp.vec3),
):
    b, f = wp.tid()
    p0 = verts[b, faces[f, 0]]
    face_normals[b, f] = wp.cross(verts[b, faces[f, 1]] - p0, verts[b, faces[f, 2]] - p0)  # |n| = 2 area


@wp.kernel
def _vertex_normals_kernel(
    face_normals: wp.array2d(dtype=wp.vec3),
    offsets: wp.array(dtype=wp.int32),
    incident: wp.array(dtype=wp.int32),
    vertex_normals: wp.array2d(dtype=wp.vec3),
):
    b, v = wp.tid()
    acc = wp.vec3(0.0, 0.0, 0.0)
    for k in range(offsets[v], offsets[v + 1]):
        acc = acc + face_normals[b, incident[k]]
    length = wp.length(acc)
    if length > 0.0:
        acc = acc / length
    vertex_normals[b, v] = acc


@wp.func
def _shade_pixel(
    verts: wp.array2d(dtype=wp.vec3),
    faces: wp.array2d(dtype=wp.int32),
    face_normals: wp.array2d(dtype=wp.vec3),
    vertex_normals: wp.array2d(dtype=wp.vec3),
    pix_to_face: wp.array3d(dtype=wp.int64),
    bary: wp.array3d(dtype=wp.vec3),
    light: wp.array(dtype=wp.vec4),
    normals: wp.array3d(dtype=wp.vec3),
    shaded: wp.array3d(dtype=wp.uint8),
    b: int,
    y: int,
    x: int,
):
    f = int(pix_to_face[b, y, x])
    if f < 0:
        normals[b, y, x] = wp.vec3(0.0, 0.0, 0.0)
        shaded[b, y, x] = wp.uint8(0)
        return
    w = bary[b, y, x]
    i0 = faces[f, 0]
    n = (
        w[0] * vertex_normals[b, i0]
        + w[1] * vertex_normals[b, faces[f, 1]]
        + w[2] * vertex_normals[b, faces[f, 2]]
    )
    # a pixel seeing the back of a face (through an opening of the mesh) gets the normal of that side
    if wp.dot(face_normals[b, f], verts[b, i0]) > 0.0:
        n = -n
    length = wp.length(n)
    if length > 0.0:
        n = n / length
    normals[b, y, x] = n
    lt = light[b]
    lam = wp.max(wp.dot(n, wp.vec3(lt[0], lt[1], lt[2])), 0.0)
    value = wp.clamp(lt[3] + (1.0 - lt[3]) * lam, 0.0, 1.0)
    shaded[b, y, x] = wp.uint8(int(wp.floor(value * 255.0 + 0.5)))


@wp.kernel
def _shade_kernel(
    verts: wp.array2d(dtype=wp.vec3),
    faces: wp.array2d(dtype=wp.int32),
    face_normals: wp.array2d(dtype=wp.vec3),
    vertex_normals: wp.array2d(dtype=wp.vec3),
    pix_to_face: wp.array3d(dtype=wp.int64),
    bary: wp.array3d(dtype=wp.vec3),
    light: wp.array(dtype=wp.vec4),
    normals: wp.array3d(dtype=wp.vec3),
    shaded: wp.array3d(dtype=wp.uint8),
):
    # one thread per pixel (CUDA)
    b, y, x = wp.tid()
    _shade_pixel(
        verts, faces, face_normals, vertex_normals, pix_to_face, bary, light, normals, shaded, b, y, x
    )


@wp.kernel
def _shade_rows_kernel(
    verts: wp.array2d(dtype=wp.vec3),
    faces: wp.array2d(dtype=wp.int32),
    face_normals: wp.array2d(dtype=wp.vec3),
    vertex_normals: wp.array2d(dtype=wp.vec3),
    pix_to_face: wp.array3d(dtype=wp.int64),
    bary: wp.array3d(dtype=wp.vec3),
    light: wp.array(dtype=wp.vec4),
    normals: wp.array3d(dtype=wp.vec3),
    shaded: wp.array3d(dtype=wp.uint8),
    width: int,
):
    # one thread per row (CPU): Warp's CPU launch costs tens of ns per thread, more than a pixel's work
    b, y = wp.tid()
    for x in range(width):
        _shade_pixel(
            verts, faces, face_normals, vertex_normals, pix_to_face, bary, light, normals, shaded, b, y, x
        )


def vertex_face_adjacency(faces: Tensor, n_verts: int) -> tuple[Tensor, Tensor]:
    """faces (F, 3) -> CSR `(offsets (N + 1,), incident (3F,))` int32: vertex v's faces, ascending, are
    `incident[offsets[v]:offsets[v + 1]]` (a face appears once per corner that is v)."""
    flat = faces.reshape(-1).to(torch.int64)  # (3F,) vertex of each corner
    order = torch.argsort(flat, stable=True)  # corners grouped by vertex, faces ascending within a vertex
    incident = (order // 3).to(torch.int32)
    counts = torch.bincount(flat, minlength=n_verts)
    offsets = torch.zeros(n_verts + 1, dtype=torch.int64, device=faces.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets.to(torch.int32), incident


def shade_fragments(
    frags: Fragments, verts_cam: Tensor, faces: Tensor, lights: Lights
) -> tuple[Tensor, Tensor]:
    """Interpolated normals and Lambert shading of rasterized meshes.

    frags: fragments of verts_cam (B, N, 3) camera-frame metres; faces (F, 3) counter-clockwise seen from
    outside; lights: B directional lights in the camera frame. Returns normals (B, H, W, 3) float32
    camera-frame unit vectors (perspective-correct interpolation of area-weighted vertex normals, turned
    towards the camera where the back of a face is seen; 0 background) and shaded (B, H, W) uint8 =
    round(255 * (ambient + (1 - ambient) * max(0, n . l))), 0 background.
    """
    dev = verts_cam.device
    b_count, height, width = frags.pix_to_face.shape
    n_verts, n_faces = verts_cam.shape[1], faces.shape[0]
    verts = verts_cam.to(torch.float32).contiguous()
    faces32 = faces.to(dev, torch.int32).contiguous()
    offsets, incident = vertex_face_adjacency(faces32, n_verts)
    light = torch.cat([lights.direction, lights.ambient[:, None]], dim=1).to(dev, torch.float32).contiguous()
    p2f = frags.pix_to_face.to(torch.int64).contiguous()
    bary = frags.bary.to(torch.float32).contiguous()
    normals = torch.empty((b_count, height, width, 3), dtype=torch.float32, device=dev)
    shaded = torch.empty((b_count, height, width), dtype=torch.uint8, device=dev)
    wp_device = warp_device(dev)
    wp_faces = wp.from_torch(faces32, dtype=wp.int32)
    wp_offsets = wp.from_torch(offsets, dtype=wp.int32)
    wp_incident = wp.from_torch(incident, dtype=wp.int32)

    def run(lo: int, hi: int) -> None:
        n = hi - lo
        wv = wp.from_torch(verts[lo:hi], dtype=wp.vec3)
        fn = wp.empty((n, n_faces), dtype=wp.vec3, device=wp_device)
        vn = wp.empty((n, n_verts), dtype=wp.vec3, device=wp_device)
        wp.launch(_face_normals_kernel, (n, n_faces), [wv, wp_faces, fn], device=wp_device)
        wp.launch(_vertex_normals_kernel, (n, n_verts), [fn, wp_offsets, wp_incident, vn], device=wp_device)
        args = [
            wv,
            wp_faces,
            fn,
            vn,
            wp.from_torch(p2f[lo:hi], dtype=wp.int64),
            wp.from_torch(bary[lo:hi], dtype=wp.vec3),
            wp.from_torch(light[lo:hi], dtype=wp.vec4),
            wp.from_torch(normals[lo:hi], dtype=wp.vec3),
            wp.from_torch(shaded[lo:hi], dtype=wp.uint8),
        ]
        if wp_device == "cpu":
            wp.launch(_shade_rows_kernel, (n, height), [*args, width], device=wp_device)
        else:
            wp.launch(_shade_kernel, (n, height, width), args, device=wp_device)

    run_chunks(dev, b_count, run)
    return normals, shaded
