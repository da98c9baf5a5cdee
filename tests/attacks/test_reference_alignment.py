"""Our APGD follows the reference implementation (pyautoattack's APGD) where it differed without
reason, and pgd keeps the first adversarial point its docstring promises."""
from __future__ import annotations

import torch

import benchmark  # noqa: F401
from benchmark.attacks.apgd import RHO, _checkpoints, _l1_checkpoints, checkpoint
from benchmark.attacks.pgd import pgd


def _reference_checkpoints(n: int) -> list[int]:
    """The iterations (from 1) where pyautoattack's APGD checks the step size, from its own
    counters (n_iter_2, size_decr, n_iter_min of an APGDAttack built for n iterations)."""
    from pyautoattack.autopgd_base import APGDAttack

    a = APGDAttack(torch.nn.Identity(), n_iter=n, norm="Linf", eps=0.1, device="cpu")
    k, counter, out = a.n_iter_2, 0, []
    for i in range(n):
        counter += 1
        if counter == k:
            out.append(i + 1)
            k = max(k - a.size_decr, a.n_iter_min)
            counter = 0
    return out


def test_checkpoint_schedule_matches_the_reference_for_small_and_large_budgets():
    for n in (3, 5, 8, 12, 20, 40, 100, 250):
        assert _checkpoints(n) == _reference_checkpoints(n), n
    assert _l1_checkpoints(20) == [5, 9, 12, 14, 16, 18, 19, 20]  # L1: the paper's fractions (see apgd.py)


def _state(n_incr: float, window: int) -> dict[str, torch.Tensor]:
    return {"n_incr": torch.tensor([n_incr]), "ck_halved": torch.tensor([True]), "ck_loss": torch.tensor([0.0]),
            "best_loss": torch.tensor([1.0]), "eta": torch.tensor([0.2]), "cur": torch.full((1, 2), 0.5),
            "prev": torch.full((1, 2), 0.3), "best_x": torch.full((1, 2), 0.7), "grad": torch.zeros(1, 2),
            "best_grad": torch.ones(1, 2)}


def test_oscillation_test_is_at_most_rho():
    """Exactly RHO of the steps increased the loss: the reference halves (``<=``)."""
    st = _state(RHO * 4, 4)
    assert bool(checkpoint(st, 4)) and torch.isclose(st["eta"], torch.tensor([0.1])).all()
    st = _state(RHO * 4 + 1, 4)
    assert not bool(checkpoint(st, 4)) and torch.isclose(st["eta"], torch.tensor([0.2])).all()


def test_restart_keeps_momentum_towards_the_best_point():
    st = _state(0, 4)
    checkpoint(st, 4)
    assert torch.equal(st["cur"], st["best_x"]) and torch.equal(st["grad"], st["best_grad"])
    assert torch.equal(st["prev"], torch.full((1, 2), 0.3))  # the previous iterate, not the best point


class Band(torch.nn.Module):
    """Two classes; class 1 wins only while the mean pixel is within 0.1 of 0.6."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.flatten(1).mean(1)
        d = (0.01 - (t - 0.6) ** 2) * 100 * self.w
        return torch.stack([torch.zeros_like(d), d], 1)


def test_pgd_keeps_the_first_adversarial_iterate():
    """0.3 -> 0.55 (adversarial) -> 0.8 (correct again): the last iterate is not adversarial, the
    first one is, and pgd must return it."""
    model = Band()
    x, y = torch.full((1, 1, 2, 2), 0.3), torch.tensor([0])
    assert int(model(x).argmax(1)) == 0
    x_adv = pgd(model, x, y, eps=0.5, norm="Linf", steps=2, step_size=0.25, random_init=False)
    assert int(model(x_adv).argmax(1)) == 1 and torch.allclose(x_adv, torch.full_like(x, 0.55))
