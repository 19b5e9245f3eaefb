"""The batch photometric stage (`data/photometric.py`) against independent references:
torchvision's adjust_brightness / adjust_contrast / adjust_saturation applied per float image in
the drawn order, AlexNet's lighting computed in numpy (EIGVEC @ (alpha * EIGVAL)), the
normalisation in numpy, and scipy's tests for the draws (fixed seeds: deterministic).
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms.v2 import functional as TF

from resnext.data.photometric import EIGVAL, EIGVEC, Photometric, draw_photometric, photometric
from resnext.data.transforms import batch_augment

MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)


def images(n: int, c: int, seed: int, h: int = 9, w: int = 11) -> torch.Tensor:
    """Distinct images per index: noise over a per-image brightness, so means and greys differ."""
    rng = np.random.default_rng(seed)
    base = rng.integers(20, 200, (n, 1, 1, 1))
    noise = rng.integers(-50, 56, (n, c, h, w))
    return torch.from_numpy(np.clip(base + noise, 0, 255).astype(np.uint8))


def reference(x: torch.Tensor, p: Photometric, jitter: bool, lighting: bool, mean, std):
    """torchvision's functional ops, one image at a time in [0, 1], then lighting (RGB only)
    from numpy, then numpy's normalisation."""
    out = []
    for i in range(len(x)):
        img = x[i].float() / 255
        if jitter:
            for op in p.order[i].tolist():
                img = OPS[op](img, float(p.factors[i, op]))
        a = img.double().numpy()
        if lighting and x.shape[1] == 3:
            a = a + p.light[i].double().numpy()[:, None, None]
        out.append((a - np.array(mean)[:, None, None]) / np.array(std)[:, None, None])
    return np.stack(out)


def every_order(n: int, jitter: float, seed: int) -> Photometric:
    """All six orders in turn, factors drawn wide (clamping happens), random lighting offsets."""
    g = torch.Generator().manual_seed(seed)
    orders = torch.tensor(list(itertools.permutations(range(3))))
    order = orders[torch.arange(n) % 6]
    factors = max(0.0, 1 - jitter) + 2 * jitter * torch.rand(n, 3, generator=g)
    light = 0.1 * torch.randn(n, 3, generator=g)
    return Photometric(factors, order, light)


@pytest.mark.parametrize("n", [1, 5, 7, 12])
@pytest.mark.parametrize(("jitter", "lighting"), [(True, True), (True, False), (False, True)])
def test_every_order_equals_torchvisions_ops_per_image(n, jitter, lighting):
    """Batch sizes that are not multiples of the CPU chunk, each image its own factors and
    order (all six), ops that saturate at 0 and 255."""
    x = images(n, 3, seed=n)
    p = every_order(n, 0.9, seed=n)
    got = photometric(x, p, jitter, lighting, MEAN3, STD3)
    assert got.dtype == torch.float32 and got.shape == x.shape
    want = reference(x, p, jitter, lighting, MEAN3, STD3)
    np.testing.assert_allclose(got.double().numpy(), want, atol=2e-4, rtol=0)


@pytest.mark.parametrize("n", [3, 6])
def test_grey_images_take_brightness_and_contrast_and_no_lighting(n):
    """One channel: saturation is torchvision's no-op on grey, lighting is RGB only."""
    x = images(n, 1, seed=10 + n)
    p = every_order(n, 0.9, seed=n)
    got = photometric(x, p, True, True, (0.45,), (0.226,))
    want = reference(x, p, True, True, (0.45,), (0.226,))
    np.testing.assert_allclose(got.double().numpy(), want, atol=2e-4, rtol=0)


@pytest.mark.parametrize("c", [1, 3])
def test_without_jitter_and_lighting_it_is_the_normalisation(c):
    x = images(5, c, seed=c)
    p = every_order(5, 0.4, seed=0)
    mean, std = MEAN3[:c], STD3[:c]
    got = photometric(x, p, False, False, mean, std)
    want = (x.double().numpy() / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-5, rtol=0)


def test_the_pca_constants_are_alexnets_and_orthonormal():
    """fb.resnet.torch's (the paper's code) ImageNet PCA: eigenvalues and eigenvectors (columns),
    an orthonormal basis within the 4 printed digits."""
    np.testing.assert_array_equal(EIGVAL.numpy(), np.float32([0.2175, 0.0188, 0.0045]))
    published = [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
    np.testing.assert_array_equal(EIGVEC.numpy(), np.float32(published))
    v = EIGVEC.double().numpy()
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=2e-3)


@pytest.mark.parametrize("jitter", [0.4, 1.0, 1.5])
def test_factors_are_uniform_on_the_torchvision_range_and_orders_uniform(jitter):
    """Each factor uniform on [max(0, 1 - j), 1 + j] (KS), independent of the others; each row
    of `order` a permutation, the six equally likely (chi-square)."""
    n = 6000
    p = draw_photometric(n, jitter, 0.1, torch.Generator().manual_seed(int(jitter * 10)))
    low, high = max(0.0, 1 - jitter), 1 + jitter
    f = p.factors.double().numpy()
    assert f.shape == (n, 3) and f.min() >= low and f.max() <= high
    for k in range(3):
        assert stats.kstest(f[:, k], stats.uniform(low, high - low).cdf).pvalue > 0.001
    assert abs(np.corrcoef(f.T)[np.triu_indices(3, 1)]).max() < 0.05
    assert (p.order.sort(1).values == torch.arange(3)).all()
    perms = list(itertools.permutations(range(3)))
    counts = [int((p.order == torch.tensor(q)).all(1).sum()) for q in perms]
    assert sum(counts) == n and stats.chisquare(counts).pvalue > 0.001


@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_lighting_is_eigvec_at_alpha_times_eigval_with_normal_alpha(sigma):
    """Solving EIGVEC @ (alpha * EIGVAL) = offset in numpy gives alpha with three independent
    N(0, sigma^2) components (KS, p > 0.001)."""
    p = draw_photometric(4000, 0.4, sigma, torch.Generator().manual_seed(3))
    light = p.light.double().numpy()
    assert light.shape == (4000, 3)
    v, lam = EIGVEC.double().numpy(), EIGVAL.double().numpy()
    alpha = np.linalg.solve(v, light.T).T / lam
    for k in range(3):
        assert stats.kstest(alpha[:, k], stats.norm(0, sigma).cdf).pvalue > 0.001, k
    assert abs(np.corrcoef(alpha.T)[np.triu_indices(3, 1)]).max() < 0.05
    assert not draw_photometric(5, 0.4, 0.0, torch.Generator()).light.any()


def test_a_share_of_the_draws_is_the_same_rows():
    p = draw_photometric(6, 0.4, 0.1, torch.Generator().manual_seed(0))
    where = torch.tensor([4, 0, 5])
    part = p[where]
    for got, whole in ((part.factors, p.factors), (part.order, p.order), (part.light, p.light)):
        assert torch.equal(got, whole[where])


@pytest.mark.parametrize(("jitter", "lighting"), [(0.4, 0.1), (0.0, 0.1), (0.4, 0.0), (0.0, 0.0)])
def test_the_inception_batch_stage_is_the_step_draws_applied_as_torchvision(jitter, lighting):
    """`batch_augment`: the global batch's draws from the step's generator, this rank's rows
    (`where`), applied as torchvision's ops per image; lighting and jitter only when on."""
    cfg = SimpleNamespace(augment="inception", batch_size=8, color_jitter=jitter,
                          lighting=lighting, mean=MEAN3, std=STD3)  # fmt: skip
    where = torch.tensor([1, 2, 6])
    x = images(3, 3, seed=2)
    got = batch_augment(x, cfg, torch.Generator().manual_seed(5), where)
    p = draw_photometric(8, jitter, lighting, torch.Generator().manual_seed(5))[where]
    want = reference(x, p, jitter > 0, lighting > 0, MEAN3, STD3)
    np.testing.assert_allclose(got.double().numpy(), want, atol=2e-4, rtol=0)
