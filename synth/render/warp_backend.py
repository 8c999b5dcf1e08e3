"""The Warp rasterizer: one NVIDIA Warp kernel source compiled for CPU and CUDA.

Three launches per batch:
1. `_project_kernel` (B, N): vertices -> (u, v, z) pixel coordinates and camera depth.
2. `_raster_kernel` (B, F): each triangle walks the pixel centres of its clamped bounding box (per row,
   only the span its edges allow, for triangles larger than a pixel) and `atomic_min`s a 64-bit key
   `(quantised depth << 24) | face id` into the pixel. The minimum key is the nearest surface, and for
   equal quantised depths the lowest face id, whatever order threads run in: the z-buffer is
   deterministic by construction (the CPU build runs serially; CUDA uses atomicMin).
3. `_resolve_kernel` (B, H, W): intersects the pixel-centre ray with the winning triangle in 3D, in
   float64, and writes the face id, perspective-correct barycentrics and depth (unquantised).

Depth is quantised to 2^-32 m (0.23 nm) over [0, 256) m in the key only; 24 bits of face id allow
16.7 M faces. On CPU the batch is split over `torch.get_num_threads()` Python threads: Warp calls its
compiled CPU kernels through ctypes, which releases the GIL, so the threads run in parallel.
"""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
import warp as wp
from torch import Tensor

import synth.quiet_warp  # noqa: F401  (silences Warp's banner before it initialises)
from synth.render.raster import NEAR_M, Fragments, check_inputs

FACE_BITS = 24
MAX_FACES = 1 << FACE_BITS
EMPTY_KEY = 0xFFFFFFFFFFFFFFFF
_DEPTH_SCALE = 4294967296.0  # 2^32 steps per metre
_DEPTH_QMAX = (1 << (64 - FACE_BITS)) - 1


@wp.func
def _edge(ax: float, ay: float, bx: float, by: float, px: float, py: float) -> float:
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax)


@wp.func
def _canonical_edge(ia: int, a: wp.vec3, ib: int, b: wp.vec3) -> wp.vec4:
    """Edge a->b as (A, B, x0, y0) with value A * (py - y0) - B * (px - x0) at pixel centre (px, py).

    Set up from the lower vertex id and negated (exactly: IEEE rounding is sign-symmetric) for the other
    direction, so the two triangles sharing an edge get exactly opposite values: a pixel centre on the
    edge is covered by both (inclusive test) and never by neither.
    """
    if ia < ib:
        return wp.vec4(b[0] - a[0], b[1] - a[1], a[0], a[1])
    return wp.vec4(-(a[0] - b[0]), -(a[1] - b[1]), b[0], b[1])


@wp.func
def _row_span(e: wp.vec4, r: float, o: float, x_a: int, x_b: int) -> wp.vec2i:
    """Narrow the pixel range [x_a, x_b] of a row to where o * (r - B * (px - x0)) >= 0, widened by one
    pixel for rounding; edges too close to horizontal (|B| < 0.01) do not narrow."""
    b = e[1] * o
    if wp.abs(b) < 0.01:
        return wp.vec2i(x_a, x_b)
    bound = e[2] + r / e[1] - 0.5  # the edge crosses the row at pixel index bound
    if b > 0.0:
        return wp.vec2i(x_a, wp.min(x_b, int(wp.floor(bound)) + 1))
    return wp.vec2i(wp.max(x_a, int(wp.ceil(bound)) - 1), x_b)


@wp.kernel
def _project_kernel(
    verts: wp.array2d(dtype=wp.vec3),
    intr: wp.array(dtype=wp.vec4),
    screen: wp.array2d(dtype=wp.vec3),
):
    b, n = wp.tid()
    p = verts[b, n]
    k = intr[b]
    screen[b, n] = wp.vec3(k[0] * p[0] / p[2] + k[2], k[1] * p[1] / p[2] + k[3], p[2])


@wp.kernel
def _raster_kernel(
    screen: wp.array2d(dtype=wp.vec3),
    faces: wp.array2d(dtype=wp.int32),
    near: float,
    width: int,
    height: int,
    keys: wp.array3d(dtype=wp.uint64),
):
    b, f = wp.tid()
    i0 = faces[f, 0]
    i1 = faces[f, 1]
    i2 = faces[f, 2]
    p0 = screen[b, i0]
    p1 = screen[b, i1]
    p2 = screen[b, i2]
    if p0[2] < near or p1[2] < near or p2[2] < near:
        return
    area2 = _edge(p0[0], p0[1], p1[0], p1[1], p2[0], p2[1])  # twice the signed area, pixels^2
    if area2 == 0.0:
        return
    # pixel index i is sampled at i + 0.5: covered indices satisfy lo - 0.5 <= i <= hi - 0.5
    x_lo = wp.max(int(wp.ceil(wp.min(wp.min(p0[0], p1[0]), p2[0]) - 0.5)), 0)
    x_hi = wp.min(int(wp.floor(wp.max(wp.max(p0[0], p1[0]), p2[0]) - 0.5)), width - 1)
    y_lo = wp.max(int(wp.ceil(wp.min(wp.min(p0[1], p1[1]), p2[1]) - 0.5)), 0)
    y_hi = wp.min(int(wp.floor(wp.max(wp.max(p0[1], p1[1]), p2[1]) - 0.5)), height - 1)
    iz0 = 1.0 / p0[2]
    iz1 = 1.0 / p1[2]
    iz2 = 1.0 / p2[2]
    e0 = _canonical_edge(i1, p1, i2, p2)  # opposite corner 0
    e1 = _canonical_edge(i2, p2, i0, p0)
    e2 = _canonical_edge(i0, p0, i1, p1)
    fkey = wp.uint64(f)
    # Large triangles test only a span of each row: where the edge functions have the triangle's sign, +1
    # pixel either side for rounding. The exact test below still decides, so the span only saves work.
    narrow = wp.abs(area2) > 2.0
    o = wp.sign(area2)
    for y in range(y_lo, y_hi + 1):
        py = float(y) + 0.5
        r0 = e0[0] * (py - e0[3])  # row terms of the edge functions
        r1 = e1[0] * (py - e1[3])
        r2 = e2[0] * (py - e2[3])
        x_a = x_lo
        x_b = x_hi
        if narrow:
            span = _row_span(e0, r0, o, x_a, x_b)
            span = _row_span(e1, r1, o, span[0], span[1])
            span = _row_span(e2, r2, o, span[0], span[1])
            x_a = span[0]
            x_b = span[1]
        for x in range(x_a, x_b + 1):
            px = float(x) + 0.5
            w0 = r0 - e0[1] * (px - e0[2])
            w1 = r1 - e1[1] * (px - e1[2])
            w2 = r2 - e2[1] * (px - e2[2])
            s = w0 + w1 + w2
            inside = (w0 >= 0.0 and w1 >= 0.0 and w2 >= 0.0 and s > 0.0) or (
                w0 <= 0.0 and w1 <= 0.0 and w2 <= 0.0 and s < 0.0
            )
            if inside:
                z = s / (w0 * iz0 + w1 * iz1 + w2 * iz2)
                zq = wp.min(wp.float64(z) * wp.float64(_DEPTH_SCALE), wp.float64(_DEPTH_QMAX))
                key = (wp.uint64(zq) << wp.uint64(FACE_BITS)) | fkey
                wp.atomic_min(keys, b, y, x, key)


@wp.func
def _resolve_pixel(
    verts: wp.array2d(dtype=wp.vec3),
    intr: wp.array(dtype=wp.vec4),
    faces: wp.array2d(dtype=wp.int32),
    keys: wp.array3d(dtype=wp.uint64),
    pix_to_face: wp.array3d(dtype=wp.int64),
    bary: wp.array3d(dtype=wp.vec3),
    zbuf: wp.array3d(dtype=wp.float32),
    b: int,
    y: int,
    x: int,
):
    key = keys[b, y, x]
    if key == wp.uint64(EMPTY_KEY):
        pix_to_face[b, y, x] = wp.int64(-1)
        bary[b, y, x] = wp.vec3(0.0, 0.0, 0.0)
        zbuf[b, y, x] = 0.0
        return
    f = int(key & wp.uint64(MAX_FACES - 1))
    # Intersect the pixel-centre ray with the winning triangle in 3D, in float64: its barycentrics are the
    # perspective-correct ones, and depth stays accurate on triangles seen at grazing angles.
    k = intr[b]
    ray = wp.vec3d(
        (wp.float64(x) + wp.float64(0.5) - wp.float64(k[2])) / wp.float64(k[0]),
        (wp.float64(y) + wp.float64(0.5) - wp.float64(k[3])) / wp.float64(k[1]),
        wp.float64(1.0),
    )
    p0 = wp.vec3d(verts[b, faces[f, 0]])
    p1 = wp.vec3d(verts[b, faces[f, 1]])
    p2 = wp.vec3d(verts[b, faces[f, 2]])
    n = wp.cross(p1 - p0, p2 - p0)
    hit = ray * (wp.dot(n, p0) / wp.dot(n, ray))
    nn = wp.dot(n, n)
    w0 = wp.dot(n, wp.cross(p1 - hit, p2 - hit)) / nn
    w1 = wp.dot(n, wp.cross(p2 - hit, p0 - hit)) / nn
    pix_to_face[b, y, x] = wp.int64(f)
    bary[b, y, x] = wp.vec3(wp.float32(w0), wp.float32(w1), wp.float32(wp.float64(1.0) - w0 - w1))
    zbuf[b, y, x] = wp.float32(hit[2])


@wp.kernel
def _resolve_kernel(
    verts: wp.array2d(dtype=wp.vec3),
    intr: wp.array(dtype=wp.vec4),
    faces: wp.array2d(dtype=wp.int32),
    keys: wp.array3d(dtype=wp.uint64),
    pix_to_face: wp.array3d(dtype=wp.int64),
    bary: wp.array3d(dtype=wp.vec3),
    zbuf: wp.array3d(dtype=wp.float32),
):
    # one thread per pixel (CUDA)
    b, y, x = wp.tid()
    _resolve_pixel(verts, intr, faces, keys, pix_to_face, bary, zbuf, b, y, x)


@wp.kernel
def _resolve_rows_kernel(
    verts: wp.array2d(dtype=wp.vec3),
    intr: wp.array(dtype=wp.vec4),
    faces: wp.array2d(dtype=wp.int32),
    keys: wp.array3d(dtype=wp.uint64),
    pix_to_face: wp.array3d(dtype=wp.int64),
    bary: wp.array3d(dtype=wp.vec3),
    zbuf: wp.array3d(dtype=wp.float32),
    width: int,
):
    # one thread per row (CPU): Warp's CPU launch costs tens of ns per thread, more than a pixel's work
    b, y = wp.tid()
    for x in range(width):
        _resolve_pixel(verts, intr, faces, keys, pix_to_face, bary, zbuf, b, y, x)


_load_lock = threading.Lock()
_loaded: set[str] = set()


def _ensure_loaded(device: str) -> None:
    """Compile / load the Warp modules of synth.render once per device, before threads launch kernels."""
    with _load_lock:
        if device not in _loaded:
            from synth.render import shading

            wp.load_module(__name__, device=device)
            wp.load_module(shading.__name__, device=device)
            _loaded.add(device)


def warp_device(dev: torch.device) -> str:
    """The Warp device name of a torch device (initialising Warp and loading this module on it once)."""
    wp.init()  # idempotent; needed before mapping torch devices to Warp devices
    name = str(wp.device_from_torch(dev))
    _ensure_loaded(name)
    return name


def run_chunks(dev: torch.device, b_count: int, run: Callable[[int, int], None]) -> None:
    """Call `run(lo, hi)` over the batch: on CUDA once on torch's current stream; on CPU over contiguous
    chunks in `torch.get_num_threads()` threads (each chunk writes only its own slice of the outputs)."""
    if b_count == 0:
        return
    if dev.type == "cuda":
        # torch's current stream: the outputs are ready for the torch ops that follow
        with wp.ScopedStream(wp.stream_from_torch(dev)):
            run(0, b_count)
        return
    threads = min(torch.get_num_threads(), b_count)
    if threads <= 1:
        run(0, b_count)
        return
    bounds = [(b_count * i // threads, b_count * (i + 1) // threads) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        for fut in [pool.submit(run, lo, hi) for lo, hi in bounds]:
            fut.result()


class WarpRasterizer:
    """`Rasterizer` on NVIDIA Warp (CPU or CUDA, following the device of the input tensors)."""

    name = "warp"

    def rasterize(
        self, verts_cam: Tensor, faces: Tensor, intrinsics: Tensor, height: int, width: int
    ) -> Fragments:
        check_inputs(verts_cam, faces, intrinsics, height, width)
        if faces.shape[0] > MAX_FACES:
            raise ValueError(f"the Warp rasterizer supports at most {MAX_FACES} faces, got {faces.shape[0]}")
        dev = verts_cam.device
        b_count = verts_cam.shape[0]
        verts = verts_cam.to(torch.float32).contiguous()
        intr = intrinsics.to(dev, torch.float32).contiguous()
        faces32 = faces.to(dev, torch.int32).contiguous()
        pix_to_face = torch.empty((b_count, height, width), dtype=torch.int64, device=dev)
        bary = torch.empty((b_count, height, width, 3), dtype=torch.float32, device=dev)
        zbuf = torch.empty((b_count, height, width), dtype=torch.float32, device=dev)
        if b_count == 0:
            return Fragments(pix_to_face, bary, zbuf)
        wp_device = warp_device(dev)
        wp_faces = wp.from_torch(faces32, dtype=wp.int32)
        n_faces = faces32.shape[0]

        def run(lo: int, hi: int) -> None:
            n = hi - lo
            screen = wp.empty((n, verts.shape[1]), dtype=wp.vec3, device=wp_device)
            wp_verts = wp.from_torch(verts[lo:hi], dtype=wp.vec3)
            wp_intr = wp.from_torch(intr[lo:hi], dtype=wp.vec4)
            wp.launch(_project_kernel, (n, verts.shape[1]), [wp_verts, wp_intr, screen], device=wp_device)
            outs = [
                wp.from_torch(pix_to_face[lo:hi], dtype=wp.int64),
                wp.from_torch(bary[lo:hi], dtype=wp.vec3),
                wp.from_torch(zbuf[lo:hi], dtype=wp.float32),
            ]
            res = [wp_verts, wp_intr, wp_faces]
            if wp_device != "cpu":
                keys = wp.full(
                    (n, height, width), value=wp.uint64(EMPTY_KEY), dtype=wp.uint64, device=wp_device
                )
                args = [screen, wp_faces, NEAR_M, width, height, keys]
                wp.launch(_raster_kernel, (n, n_faces), args, device=wp_device)
                wp.launch(_resolve_kernel, (n, height, width), [*res, keys, *outs], device=wp_device)
                return
            # CPU: one image at a time through one key buffer that stays in cache
            keys = wp.empty((1, height, width), dtype=wp.uint64, device=wp_device)
            for i in range(n):
                keys.fill_(wp.uint64(EMPTY_KEY))
                scr = screen[i : i + 1]
                wp.launch(
                    _raster_kernel, (1, n_faces), [scr, wp_faces, NEAR_M, width, height, keys], device="cpu"
                )
                res_i = [wp_verts[i : i + 1], wp_intr[i : i + 1], wp_faces]
                out_i = [o[i : i + 1] for o in outs]
                wp.launch(_resolve_rows_kernel, (1, height), [*res_i, keys, *out_i, width], device="cpu")

        run_chunks(dev, b_count, run)
        return Fragments(pix_to_face, bary, zbuf)
