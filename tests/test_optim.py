"""vaelab.optim: the shared L-BFGS minimiser."""

import torch

from vaelab.optim import lbfgs_minimum


def test_lbfgs_finds_a_quadratic_s_exact_minimum_and_rosenbrock_s():
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -2.0], dtype=torch.float64)
    found = lbfgs_minimum(
        lambda x: 0.5 * x @ a @ x - b @ x,
        torch.zeros(2, dtype=torch.float64),
        max_iter=100,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
    )
    torch.testing.assert_close(found, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-9)  # a x = b
    assert not found.requires_grad

    def rosenbrock(x):  # not convex; its one minimum is (1, 1)
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    found = lbfgs_minimum(
        rosenbrock,
        torch.tensor([-1.2, 1.0], dtype=torch.float64),
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
    )
    torch.testing.assert_close(found, torch.ones(2, dtype=torch.float64), rtol=1e-6, atol=1e-6)
