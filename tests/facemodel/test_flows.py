"""RealNVP flows over the bilinear coefficients: one parametrised test over flows of several sizes runs
invertibility, log-det vs the autograd Jacobian, gradients and save/load; then PCA, Hutchinson and
determinism."""

import math

import pytest
import safetensors.torch
import torch

from synth.facemodel import threads
from synth.facemodel.config import FlowConfig
from synth.facemodel.flows import EVAL_EVERY, LatentFlow, _split, fit_pca, jacobian_frobenius, train_flow


def _skewed(n: int, k: int, seed: int) -> torch.Tensor:
    """(n, K) correlated, skewed coefficients at the scale of HOSVD factor rows (~1/sqrt(n))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g).exp() + 0.3 * torch.randn(n, k, generator=g) ** 2
    mix = torch.randn(k, k, generator=g)
    return (x @ mix) / math.sqrt(n)


FLOWS = {
    # name: (K, pca_variance, layers) -> D from 1 (zuko's element-wise transform) to several
    "D1": (3, 0.5, 2),
    "D2": (4, 0.8, 6),
    "D6": (8, 0.999, 6),
}


@pytest.fixture(scope="module", params=sorted(FLOWS))
def trained(request: pytest.FixtureRequest) -> tuple[LatentFlow, torch.Tensor]:
    k, variance, layers = FLOWS[request.param]
    w = _skewed(48, k, seed=1)
    config = FlowConfig(
        layers=layers, hidden=16, epochs=15, batch_size=16, pca_variance=variance, validation=0
    )
    flow, _ = train_flow(w, config, torch.Generator().manual_seed(0))
    return flow, w


def test_flow_invertibility_logdet_gradients_and_save_load(trained: tuple[LatentFlow, torch.Tensor]) -> None:
    flow, w = trained
    assert any(p.abs().sum() > 0 for p in flow.parameters())  # trained, not the identity init
    # 1. invertibility: z -> w -> z and (projected) w -> z -> w, to < 1e-5
    z = torch.randn(32, flow.dim_z, generator=torch.Generator().manual_seed(3))
    assert (flow.to_z(flow.to_w(z)) - z).abs().max() < 1e-5
    w_sub = flow.unwhiten(flow.whiten(w))  # w projected onto the PCA subspace
    assert (flow.to_w(flow.to_z(w_sub)) - w_sub).abs().max() < 1e-5
    # 2. log-density = base log-density + log|det J| (autograd) - sum log std (whitening), in float64
    flow64 = flow.double()
    # in float64 (FaceModel's dtype) the round trip is exact to round-off, PCA basis from float32 included
    z64 = z.double() * 3
    assert (flow64.to_z(flow64.to_w(z64)) - z64).abs().max() < 1e-10

    def f(x: torch.Tensor) -> torch.Tensor:
        return flow64.flow().transform(x)

    for i in range(3):
        u = flow64.whiten(w[i : i + 1].double())
        jac = torch.autograd.functional.jacobian(f, u)[0, :, 0, :]  # (D, D)
        expected = (
            torch.distributions.Normal(0.0, 1.0).log_prob(f(u)).sum()
            + torch.linalg.slogdet(jac).logabsdet
            - flow64.pca_std.log().sum()
        )
        assert torch.allclose(flow64.log_prob(w[i : i + 1].double()), expected, atol=1e-8)
    flow.float()
    # 3. gradients reach every parameter and are finite
    flow.requires_grad_(True)
    flow.zero_grad()
    (-flow.log_prob(w).mean()).backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    flow.requires_grad_(False)
    # 4. save / load through safetensors: same architecture, bit-identical outputs
    blob = safetensors.torch.save({k: v.contiguous() for k, v in flow.state_dict().items()})
    clone = LatentFlow.from_architecture(flow.architecture())
    clone.load_state_dict(safetensors.torch.load(blob), strict=True)
    assert torch.equal(clone.to_w(z), flow.to_w(z))
    assert torch.equal(clone.log_prob(w), flow.log_prob(w))


@pytest.mark.parametrize("pinned", [True, False])
def test_blocked_flow_outputs_do_not_depend_on_the_batch(
    trained: tuple[LatentFlow, torch.Tensor], pinned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pinned (the test runner): calls of any multiple of 8 rows; unpinned: calls of exactly BLOCK rows."""
    assert threads.pinned_kernels()
    monkeypatch.setattr(threads, "pinned_kernels", lambda: pinned)
    flow, _ = trained
    z = torch.randn(300, flow.dim_z, generator=torch.Generator().manual_seed(4))
    full = flow.to_w(z, block=True)
    for rows in ([0], [299, 3], list(range(10, 40)), list(range(100, 237))):
        assert torch.equal(flow.to_w(z[rows], block=True), full[rows])
        assert torch.equal(flow.to_z(full[rows], block=True), flow.to_z(full, block=True)[rows])


def test_pca_keeps_the_requested_variance() -> None:
    w = _skewed(200, 10, seed=2)
    mean, basis, std = fit_pca(w, 0.95)
    total = w.double().var(0).sum()
    assert std.double().square().sum() / total >= 0.95 - 1e-6
    assert std[:-1].double().square().sum() / total < 0.95  # the smallest such D
    assert torch.allclose(basis @ basis.T, torch.eye(basis.shape[0]), atol=1e-5)
    assert torch.allclose(mean, w.mean(0), atol=1e-6)


def test_hutchinson_estimates_the_jacobian_frobenius_norm(trained: tuple[LatentFlow, torch.Tensor]) -> None:
    flow, w = trained
    u0 = flow.whiten(w[:1]).double()
    flow64 = flow.double()
    u = u0.expand(4000, -1).clone().requires_grad_(True)  # one probe each on 4000 copies of one point
    est = jacobian_frobenius(flow64.flow().transform(u), u, torch.Generator().manual_seed(0), probes=1)
    jac = torch.autograd.functional.jacobian(lambda x: flow64.flow().transform(x), u0)[0, :, 0, :]
    flow.float()
    assert est.square().mean().sqrt().item() == pytest.approx(jac.norm().item(), rel=0.05)


def test_training_is_deterministic_for_a_seed_and_lowers_the_nll() -> None:
    w = _skewed(64, 6, seed=5)
    config = FlowConfig(hidden=16, epochs=15, batch_size=32, pca_variance=0.99, validation=0)
    runs = [train_flow(w, config, torch.Generator().manual_seed(7)) for _ in range(2)]
    other, _ = train_flow(w, config, torch.Generator().manual_seed(8))
    (a, stats_a), (b, _) = runs
    state_a, state_b, state_other = (m.state_dict().values() for m in (a, b, other))
    assert all(torch.equal(x, y) for x, y in zip(state_a, state_b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), state_other, strict=True))
    _, stats_0 = train_flow(
        w, FlowConfig(hidden=16, epochs=0, pca_variance=0.99, validation=0), torch.Generator()
    )
    assert stats_a["train_nll"] < stats_0["train_nll"]  # epochs=0 is the whitened Gaussian


def test_early_stopping_picks_the_best_validated_epoch_and_never_splits_a_group() -> None:
    w = _skewed(40, 6, seed=9)
    groups = [i // 3 for i in range(40)]  # e.g. an identity with its mirrored and symmetrised variants
    fit, val = _split(groups, 0.25, torch.Generator().manual_seed(0))
    assert {groups[i] for i in fit.tolist()}.isdisjoint({groups[i] for i in val.tolist()})
    assert len(fit) + len(val) == 40 and len({groups[i] for i in val.tolist()}) == 4  # 25 % of 14 groups
    config = FlowConfig(hidden=16, epochs=40, batch_size=64, pca_variance=0.99, validation=0.25)
    _, stats = train_flow(w, config, torch.Generator().manual_seed(1), groups=groups)
    curve = stats["validation"]["curve"]
    assert [e for e, _ in curve] == list(range(0, 41, EVAL_EVERY))
    best_epoch, best_nll = min(curve, key=lambda point: point[1])
    assert stats["epochs"] == stats["validation"]["best_epoch"] == best_epoch
    assert stats["validation"]["best_nll"] == best_nll
    assert _split([0, 0, 0], 0.5, torch.Generator()) is None  # one group: nothing to validate on
