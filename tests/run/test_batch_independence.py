"""A cell's numbers do not depend on the batch size: every random draw of our attacks comes from
(seed, example index) (benchmark/attacks/_draws.py), every decision is per example, and every
model call runs on fixed-size micro-batches (benchmark/attacks/batching.py), so the same cell
attacked in batches of 1, 5 and all examples gives identical outcomes and identical adversarial
images, bit for bit, on any CPU.  Before, random starts were drawn per batch and apgd-mm polished a
share of each batch (outcomes moved with --batch-size), and later an AVX-512 CPU's kernels for a
batch of 1 and of 1,000 gave an example other last bits (its adversarial image moved)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import benchmark  # noqa: F401
from benchmark.attacks import run_attack
from benchmark.attacks._draws import Draws
from benchmark.attacks.batching import fixed_batch
from benchmark.data import datasets
from benchmark.registry import DEFAULT_REGISTRY, Registry
from benchmark.run.evaluate import attack_outcome
from helpers import train_tiny_mlp

torch.set_num_threads(1)

THREATS = ["digits-linf", "digits-l2", "digits-l1", "digits-rotation-translation", "digits-pixel-flow",
           "digits-brightness-contrast", "digits-jpeg", "digits-stadv", "digits-recolor", "digits-ppgd", "digits-lpa"]


@pytest.fixture(scope="module")
def setup():
    model = train_tiny_mlp(epochs=6)
    x, y = datasets.load_id("digits", "test")
    return model, x[:24], y[:24], Registry(DEFAULT_REGISTRY, check_files=False)


@pytest.mark.parametrize("tid", THREATS)
def test_same_outcomes_at_three_batch_sizes(setup, tid):
    model, x, y, reg = setup
    threat = reg.threat(tid)
    outs = [attack_outcome(model, x, y, threat, seed=3, batch_size=bs, checks=False) for bs in (1, 5, 1000)]
    ref = outs[0]
    assert ref.robust_correct.sum() < ref.clean_correct.sum() or tid == "digits-brightness-contrast", tid  # it attacks
    for o in outs[1:]:
        assert np.array_equal(o.robust_correct, ref.robust_correct), tid
        assert torch.equal(o.x_adv, ref.x_adv), (tid, float((o.x_adv - ref.x_adv).abs().max()))


def test_checks_and_escalation_do_not_depend_on_batch_size(setup):
    """The trust checks and what they act on run at the cell level: same result at any batch size."""
    model, x, y, reg = setup
    threat = reg.threat("digits-linf")
    a = attack_outcome(model, x, y, threat, seed=0, batch_size=5)
    b = attack_outcome(model, x, y, threat, seed=0, batch_size=1000)
    assert np.array_equal(a.robust_correct, b.robust_correct) and a.broken_by == b.broken_by
    assert a.checks["black_box"]["broken"] == b.checks["black_box"]["broken"]


def test_an_example_draws_the_same_numbers_in_any_batch():
    d = Draws(7, [3, 10, 42], 3)
    u = d.rand((5,), "start", 0)
    assert torch.equal(d.take(torch.tensor([2])).rand((5,), "start", 0)[0], u[2])
    assert torch.equal(Draws(7, [42], 1).rand((5,), "start", 0)[0], u[2])
    assert not torch.equal(d.rand((5,), "start", 1), u)  # another purpose, other numbers
    assert not torch.equal(Draws(8, [3, 10, 42], 3).rand((5,), "start", 0), u)  # another seed too
    assert (u >= 0).all() and (u < 1).all()


def test_attacks_number_examples_by_their_cell_index(setup):
    """Attacking examples 10..19 alone with their cell indices gives what they get inside the cell."""
    model, x, y, reg = setup
    model = fixed_batch(model)  # as the evaluator calls it
    threat = reg.threat("digits-linf")
    full = run_attack(model, x, y, threat, seed=1, index=np.arange(len(x)))
    part = run_attack(model, x[10:20], y[10:20], threat, seed=1, index=np.arange(10, 20))
    assert torch.equal(full[10:20], part)


def test_run_grid_results_identical_at_three_batch_sizes(tiny_registry, tmp_path):
    """The whole path (plan, run_grid, checks that act, result files) at --batch-size 1, 13, 1000."""
    import json

    from benchmark.run import plan
    from benchmark.run.evaluate import run_grid

    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny", n_examples=40)
    stored = {}
    for bs in (1, 13, 1000):
        run_grid(cells, reg, tmp_path / str(bs), progress=False, batch_size=bs)
        stored[bs] = {c.filename: json.loads((tmp_path / str(bs) / c.filename).read_text()) for c in cells}
    for bs in (1, 13):
        for name, r in stored[bs].items():
            ref = stored[1000][name]
            assert (r["clean_correct"], r["robust_correct"], r["broken_by"]) == \
                (ref["clean_correct"], ref["robust_correct"], ref["broken_by"]), (bs, name)
