"""HOSVD, truncation, decode and least-squares encode of the bilinear model (BabyFlow eq. 8-9)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import partial_tucker

from synth.facemodel import bilinear, threads
from tests._facemodels import synthetic_tensor

TENSOR = synthetic_tensor()
FULL = bilinear.hosvd(TENSOR, 1.0, 1.0)


def _all_meshes(h: bilinear.Hosvd) -> torch.Tensor:
    """Decode every (identity, expression) of the training tensor -> (n_id, n_ex, N, 3)."""
    n_id, n_ex = h.w_id.shape[0], h.w_ex.shape[0]
    w_id = h.w_id[:, None].expand(-1, n_ex, -1).reshape(n_id * n_ex, -1)
    w_ex = h.w_ex[None].expand(n_id, -1, -1).reshape(n_id * n_ex, -1)
    return bilinear.bilinear_decode(h.core, h.mean, w_id, w_ex).reshape(n_id, n_ex, -1, 3)


def test_full_rank_hosvd_reproduces_the_tensor() -> None:
    err = (_all_meshes(FULL).numpy() - TENSOR.vertices).__abs__().max()
    assert err < 1e-7  # metres: float32 round-off on a ~10 cm head
    # the mode factors are orthonormal (HOSVD)
    assert torch.allclose(FULL.w_id.T @ FULL.w_id, torch.eye(FULL.rank_id), atol=1e-5)
    assert torch.allclose(FULL.w_ex.T @ FULL.w_ex, torch.eye(FULL.rank_ex), atol=1e-5)
    # the mean is the mean of all training meshes
    assert np.allclose(
        FULL.mean.numpy(), TENSOR.vertices.reshape(-1, TENSOR.n_vertices * 3).mean(0), atol=1e-7
    )


def test_hosvd_matches_tensorly_partial_tucker() -> None:
    """TensorLy's HOSVD (partial_tucker on the id / expression modes, no HOOI sweeps) is the reference."""
    n_id, n_ex = TENSOR.n_identities, TENSOR.n_expressions
    centred = TENSOR.vertices.reshape(n_id, n_ex, -1).astype(np.float64) - FULL.mean.double().numpy()
    (core, (u_id, u_ex)), _ = partial_tucker(
        centred.transpose(2, 0, 1), rank=(FULL.rank_id, FULL.rank_ex), modes=[1, 2], n_iter_max=0
    )
    sign_id = np.sign((u_id * FULL.w_id.double().numpy()).sum(0))  # columns agree up to sign
    sign_ex = np.sign((u_ex * FULL.w_ex.double().numpy()).sum(0))
    assert np.allclose(u_id * sign_id, FULL.w_id.numpy(), atol=1e-5)
    assert np.allclose(u_ex * sign_ex, FULL.w_ex.numpy(), atol=1e-5)
    assert np.allclose(core * sign_id[:, None] * sign_ex, FULL.core.numpy(), atol=1e-7)


def test_truncation_keeps_the_requested_variance_and_reports_it() -> None:
    h = bilinear.hosvd(TENSOR, 0.9, 0.95)
    kept = h.kept()
    assert kept["variance_id"] >= 0.9 and kept["variance_ex"] >= 0.95
    # one mode fewer would not reach the target
    frac_id = np.cumsum(h.energy_id) / h.energy_id.sum()
    assert h.rank_id == 1 or frac_id[h.rank_id - 2] < 0.9
    assert kept["rank_id"] < kept["full_rank_id"]
    # truncated HOSVD = slices of the full one
    assert torch.allclose(h.core, FULL.core[:, : h.rank_id, : h.rank_ex])
    # HOSVD bound: the squared error is at most the discarded energy of both modes
    err2 = np.square(_all_meshes(h).numpy().astype(np.float64) - TENSOR.vertices).sum()
    bound = h.energy_id[h.rank_id :].sum() + h.energy_ex[h.rank_ex :].sum()
    assert 0 < err2 <= bound * (1 + 1e-4)


def test_rank_for_variance_drops_numerical_zeros() -> None:
    energy = np.array([10.0, 5.0, 1.0, 1e-20, 1e-22])
    assert bilinear.rank_for_variance(energy, 1.0) == 3
    assert bilinear.rank_for_variance(energy, 0.5) == 1
    assert bilinear.rank_for_variance(energy, 0.7) == 2


def test_the_common_component_is_kept_and_left_out_of_the_fraction() -> None:
    # expressions that all share one big identity field (component 0, constant over the mode) and differ
    # by small ones: the fraction is of the differences
    energy = np.array([1000.0, 5.0, 3.0, 2.0])
    assert bilinear.rank_for_variance(energy, 0.99) == 1  # 99.9 % of everything: the common one alone
    assert bilinear.rank_for_variance(energy, 0.99, common=0) == 4
    assert bilinear.rank_for_variance(energy, 0.5, common=0) == 2
    assert bilinear.rank_for_variance(np.array([9.0, 8.0, 1.0, 0.5]), 0.5, common=2) == 3  # always kept
    rng = np.random.default_rng(0)
    q = np.linalg.qr(np.hstack([np.ones((6, 1)), rng.normal(size=(6, 5))]))[0]
    assert bilinear.common_component(q[:, [1, 0, 2]]) == 1
    assert bilinear.common_component(q[:, 1:]) is None


def test_zero_coefficients_give_the_mean_face() -> None:
    w_ex = torch.randn(3, FULL.rank_ex, generator=torch.Generator().manual_seed(0))
    out = bilinear.bilinear_decode(FULL.core, FULL.mean, torch.zeros(3, FULL.rank_id), w_ex)
    assert torch.equal(out, FULL.mean.view(1, -1, 3).expand(3, -1, -1))


@settings(max_examples=25, deadline=None)
@given(
    a=st.floats(-3, 3),
    b=st.floats(-3, 3),
    seed=st.integers(0, 2**16),
)
def test_decode_is_linear_in_w_id_for_fixed_w_ex(a: float, b: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(2, 1, FULL.rank_id, generator=g, dtype=torch.float64)
    w_ex = torch.randn(1, FULL.rank_ex, generator=g, dtype=torch.float64)
    core, mean = FULL.core.double(), FULL.mean.double()

    def f(w: torch.Tensor) -> torch.Tensor:
        return bilinear.bilinear_decode(core, mean, w, w_ex) - mean.view(-1, 3)

    assert torch.allclose(f(a * w1 + b * w2), a * f(w1) + b * f(w2), atol=1e-12)


@pytest.fixture(params=["pinned", "unpinned"])
def kernels(request, monkeypatch) -> str:
    """The test runner is pinned (tests/conftest.py): OpenBLAS decodes calls of any multiple of 8 rows.
    Off the pinned path MKL's packed GEMM decodes calls of exactly BLOCK rows."""
    if request.param == "pinned":
        assert threads.pinned_kernels(), "the test runner is not on the pinned code path"
    else:
        monkeypatch.setattr(threads, "pinned_kernels", lambda: False)
        monkeypatch.setattr(bilinear, "pinned_kernels", lambda: False)
    return request.param


def _packed(kernels: str) -> torch.Tensor | None:
    if kernels == "pinned":
        return None
    core = bilinear.pack_core(FULL.core)
    # the packed path must exist wherever PyTorch has MKL (our CI), or these tests would test nothing
    assert core is not None or not torch.backends.mkl.is_available()
    return core


def test_blocked_decode_bytes_do_not_depend_on_the_batch(kernels: str) -> None:
    g = torch.Generator().manual_seed(0)
    w_id, w_ex = torch.randn(300, FULL.rank_id, generator=g), torch.randn(300, FULL.rank_ex, generator=g)
    pack = _packed(kernels)
    full = bilinear.bilinear_decode(FULL.core, FULL.mean, w_id, w_ex, True, pack)
    for rows in ([5], [0, 299], list(range(3, 20)), list(range(100, 237))):
        part = bilinear.bilinear_decode(FULL.core, FULL.mean, w_id[rows], w_ex[rows], True, pack)
        assert torch.equal(part, full[rows])
    assert torch.allclose(full, bilinear.bilinear_decode(FULL.core, FULL.mean, w_id, w_ex), atol=1e-6)


def test_blocked_decode_bytes_do_not_depend_on_the_thread_count(kernels: str) -> None:
    g = torch.Generator().manual_seed(1)
    w_id, w_ex = torch.randn(300, FULL.rank_id, generator=g), torch.randn(300, FULL.rank_ex, generator=g)
    pack = _packed(kernels)
    before = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(bilinear.bilinear_decode(FULL.core, FULL.mean, w_id, w_ex, True, pack))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0], out[1])


def test_blocked_decode_falls_back_to_the_differentiable_gemm_under_autograd(kernels: str) -> None:
    g = torch.Generator().manual_seed(2)
    w_id = torch.randn(3, FULL.rank_id, generator=g, requires_grad=True)
    w_ex = torch.randn(3, FULL.rank_ex, generator=g)
    out = bilinear.bilinear_decode(FULL.core, FULL.mean, w_id, w_ex, True, _packed(kernels))
    (grad,) = torch.autograd.grad(out.sum(), w_id)
    # d/dw_id of sum over all coordinates of C(w_id, w_ex): sum_v C[v, i, e] w_ex[e]
    expected = torch.einsum("vie,be->bi", FULL.core, w_ex)
    assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_fit_identity_recovers_the_training_rows() -> None:
    """A training identity's coefficients are the LS fit over all its expressions with the catalogue w_ex."""
    verts = torch.from_numpy(TENSOR.vertices[[2, 9]])  # (2, n_ex, N, 3)
    w_ex = FULL.w_ex[None].expand(2, -1, -1)
    w_id = bilinear.fit_identity(FULL.core, FULL.mean, w_ex, verts)
    assert torch.allclose(w_id, FULL.w_id[[2, 9]], atol=1e-5)


def test_training_meshes_reencode_within_five_hundredths_of_a_mm_at_full_rank() -> None:
    verts = torch.from_numpy(TENSOR.vertices.reshape(-1, TENSOR.n_vertices, 3))  # every training mesh
    w_id, w_ex = bilinear.encode(FULL.core, FULL.mean, verts, FULL.w_id, FULL.w_ex, iterations=100)
    err_mm = (bilinear.bilinear_decode(FULL.core, FULL.mean, w_id, w_ex) - verts).norm(dim=-1).max() * 1000
    assert err_mm < 0.05
    # the scale / sign convention: the code of a non-neutral training mesh is its catalogue row
    k = 1 * TENSOR.n_expressions + 3  # identity 1, expression 3
    cos = torch.nn.functional.cosine_similarity(w_ex[k], FULL.w_ex[3], dim=0)
    assert cos > 0.999
