"""The reference benchmark's non-Lp threats: StAdv, ReColorAdv, PPGD and LPA (with LPIPS).

Every attack runs through the registry path on the real digits with a tiny MLP trained in about
a second, the shipped digits LPIPS network and two shipped zoo models.  Invariants: inside the
bound (flow, colour function, LPIPS measured with the same network) and in [0, 1]; a zero budget
leaves the images (and accuracy) unchanged; more budget never raises robust accuracy; a standard
model breaks far more than an adversarially trained one.  The LPIPS projection's gradients are
checked against brute force on tiny inputs.
"""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from benchmark.attacks import lpips as L
from benchmark.attacks import run_attack
from benchmark.attacks.perceptual import bisection_projection, newton_projection, _jtj
from benchmark.attacks.recolor import luv_to_rgb, recolor, recolor_apply, rgb_to_luv
from benchmark.attacks.stadv import flow_loss, flow_warp, identity_grid, project_flow, stadv
from benchmark.data import datasets
from benchmark.models.load import load_model
from benchmark.models.zoo import set_network_sha256
from benchmark.registry import DEFAULT_REGISTRY, FrozenMap, Registry, ThreatSpec
from helpers import frozen_mlp_and_correct_test_images

REG = Registry(DEFAULT_REGISTRY, check_files=False)
NETWORK = REG.threat("digits-ppgd").params["network"]


@pytest.fixture(scope="module")
def setup():
    return frozen_mlp_and_correct_test_images(80)


@pytest.fixture(scope="module")
def net():
    return L.load_network(NETWORK, REG.threat("digits-ppgd").path)


def threat(kind: str, attack: str, path: str = "", **params) -> ThreatSpec:
    return ThreatSpec(id=f"test-{attack}", kind=kind, attack=attack, params=FrozenMap(params), path=path)


def lpips_threat(attack: str, bound: float) -> ThreatSpec:
    return threat("lpips", attack, REG.threat("digits-ppgd").path, bound=bound, network=NETWORK)


def acc(model, xa, y) -> float:
    with torch.no_grad():
        return (model(xa).argmax(1) == y).float().mean().item()


CASES = {  # the threat at a budget, cheap settings, budgets in increasing order (0 first)
    "stadv": (lambda b: threat("stadv", "stadv", bound=b), {"steps": 15}, [0, 0.02, 0.05, 0.15]),
    "recolor": (lambda b: threat("recolor", "recolor", bound=b), {"steps": 15, "lr": 0.03}, [0, 0.1, 0.3, 0.6]),
    "ppgd": (lambda b: lpips_threat("ppgd", b), {"steps": 5, "cg_steps": 3}, [0, 0.05, 0.2, 0.5]),
    "lpa": (lambda b: lpips_threat("lpa", b), {"steps": 5, "binary_steps": 2}, [0, 0.05, 0.2, 0.5]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_zero_budget_range_and_monotone(setup, name):
    model, x, y = setup
    make, args, budgets = CASES[name]
    x0 = run_attack(model, x, y, make(budgets[0]), attack=name, **args)
    assert torch.equal(x0, x), "a zero budget must leave the images unchanged"
    accs = [acc(model, x0, y)]
    assert accs[0] == 1.0
    for b in budgets[1:]:
        xa = run_attack(model, x, y, make(b), attack=name, **args)
        assert xa.shape == x.shape and xa.min() >= 0 and xa.max() <= 1
        accs.append(acc(model, xa, y))
    assert all(a >= b for a, b in zip(accs, accs[1:])), f"{name}: robust accuracy rose with budget: {accs}"
    assert accs[-1] < 0.3, f"{name}: the largest budget should break a standard model: {accs}"


def test_stadv_flow_stays_in_the_box_and_reproduces_the_images(setup):
    model, x, y = setup
    xa, flow = stadv(model, x, y, bound=0.05, steps=15, return_flow=True)
    assert flow.abs().max() <= 0.05 + 1e-7
    grid = identity_grid(len(x), 16, 16) + flow
    assert grid.abs().max() <= 1 + 1e-6, "every sampling position stays inside the image's outer edges"
    # align_corners=False: the border pixel centres sit half a pixel (1/16) inside the edge, so
    # 0.05 never reaches it on 16x16, while 0.1 is clipped there, to 1/16 (as the reference clips its grid)
    out = project_flow(torch.full((1, 16, 16, 2), 0.05), 0.05)  # everything pushed right and down
    assert torch.equal(out, torch.full_like(out, 0.05))
    out = project_flow(torch.full((1, 16, 16, 2), 0.1), 0.1)
    assert torch.allclose(out[0, :, -1, 0], torch.full((16,), 1 / 16)) and (out[0, :-1, :-1] == 0.1).all()
    assert torch.allclose(flow_warp(x, flow), xa, atol=1e-6)
    assert flow_loss(torch.zeros_like(flow)).max() < 0.011  # a zero flow: only the 1e-10 terms
    assert (flow_loss(flow) > flow_loss(torch.zeros_like(flow))).any()


def test_stadv_geometry_is_the_references():
    """The reference's grid: ``affine_grid`` of the identity without ``align_corners`` (False), and
    ``grid_sample`` reading zeros outside: a border pixel flowed to the edge is half padding."""
    ident = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    ref = torch.nn.functional.affine_grid(ident, (1, 1, 16, 16), align_corners=False)
    assert torch.allclose(identity_grid(1, 16, 16), ref, atol=1e-6)
    x = torch.ones(1, 1, 16, 16)
    flow = torch.zeros(1, 16, 16, 2)
    flow[0, :, -1, 0] = 1 / 16  # the right column to the image's right edge
    warped = flow_warp(x, flow)
    assert torch.allclose(warped[0, 0, :, -1], torch.full((16,), 0.5)) and (warped[0, 0, :, :-1] == 1).all()


def test_flow_loss_repeats_the_edge_as_the_reference():
    """StAdv's flow loss by brute force, as the reference's shift matrices count it: each pixel and
    each of its 4 neighbours, a missing neighbour at the border being the pixel itself."""
    flow = torch.randn(2, 3, 4, 2)
    want = torch.zeros(2)
    for n in range(2):
        for i in range(3):
            for j in range(4):
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    q = (min(max(i + di, 0), 2), min(max(j + dj, 0), 3))
                    want[n] += ((flow[n, i, j] - flow[n, q[0], q[1]]).pow(2).sum() + 1e-10).sqrt()
    assert torch.allclose(flow_loss(flow), want, rtol=1e-5)


def test_recolor_function_stays_in_the_box_and_reproduces_the_images(setup):
    model, x, y = setup
    xa, disp = recolor(model, x, y, bound=0.2, steps=15, lr=0.03, return_params=True)
    assert disp.shape == (len(x), 1, 1, 16) and disp.abs().max() <= 0.2 + 1e-7
    assert torch.allclose(recolor_apply(x, disp), xa, atol=1e-6)


def test_recolor_on_colour_images():
    """Three channels: the CIELUV grid, the identity round-trips, one function per image."""
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(3, 3, 6, 6, generator=gen)
    assert torch.allclose(luv_to_rgb(rgb_to_luv(rgb)), rgb, atol=1e-4)
    assert torch.allclose(recolor_apply(rgb, torch.zeros(3, 3, 16, 32, 32)), rgb, atol=1e-4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 36, 4))
    y = model(rgb).argmax(1)
    xa, disp = recolor(model, rgb, y, bound=0.06, steps=5, return_params=True)
    assert disp.shape == (3, 3, 16, 32, 32) and disp.abs().max() <= 0.06 + 1e-7
    assert xa.min() >= 0 and xa.max() <= 1 and torch.allclose(recolor_apply(rgb, disp), xa, atol=1e-6)
    # the same colour maps to the same colour everywhere in an image
    flat = torch.full((1, 3, 4, 4), 0.4)
    shifted = recolor_apply(flat, disp[:1])
    assert torch.allclose(shifted, shifted[:, :, :1, :1].expand_as(shifted), atol=1e-6)


@pytest.mark.parametrize("attack", ["ppgd", "lpa"])
def test_perceptual_attacks_stay_inside_the_lpips_ball(setup, net, attack):
    model, x, y = setup
    make, args, _ = CASES[attack]
    xa = run_attack(model, x, y, make(0.2), attack=attack, **args)
    d = L.lpips(net, x, xa)
    assert d.max() <= 0.2 * (1 + 1e-5), f"LPIPS {d.max():.6f} > 0.2"
    assert xa.min() >= 0 and xa.max() <= 1


@pytest.mark.parametrize("tid", ["digits-stadv", "digits-recolor", "digits-ppgd", "digits-lpa"])
def test_digits_entries_break_a_standard_model_far_more_than_an_adversarially_trained_one(tid):
    x, y = datasets.load_id("digits", "test")
    x, y = x[:60], y[:60]
    t = REG.threat(tid)
    assert t.reference_set
    robust = {}
    for mid in ("cnn-standard", "cnn-pgd-0.15"):
        m = load_model(REG.model(mid), REG)
        xa = run_attack(m, x, y, t, seed=0)
        robust[mid] = acc(m, xa, y)
    assert robust["cnn-pgd-0.15"] >= robust["cnn-standard"] + 0.15, robust


def test_evaluator_checks_the_lpips_budget(setup):
    """The evaluator's trust checks measure LPIPS with the threat's network: the attack's output
    passes, an image moved far outside the ball fails."""
    from benchmark.run import trust
    from benchmark.run.evaluate import attack_outcome

    model, x, y = setup
    t = REG.threat("digits-ppgd")
    out = attack_outcome(model, x[:30], y[:30], t, seed=0)
    assert out.checks["in_budget"]["ok"] and out.checks["in_budget"]["max_lpips"] <= 0.2 + 1e-6
    far = (x[:30] + 0.3 * torch.randn(x[:30].shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ok = torch.ones(30, dtype=torch.bool).numpy()
    checks = trust.cell_checks(model, x[:30], y[:30], far, t, ok, ok)
    assert not checks["in_budget"]["ok"]


# --------------------------------------------------------------------------- LPIPS and its projection
def tiny_net() -> L.FeatureNet:
    torch.manual_seed(0)
    return L.digits_alexnet().double().eval()


def test_lpips_gradient_matches_finite_differences():
    """The gradient Newton's projection follows, against central differences (float64)."""
    net = tiny_net()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 16, 16, generator=gen, dtype=torch.float64)
    xa = (x + 0.1 * torch.rand(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: L.lpips(net, x, z), (xa,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_jtj_product_matches_the_brute_force_jacobian():
    """PPGD's J^T J v (exact J v forward, autograd back) against the full Jacobian."""
    net = tiny_net()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 16, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 1, 16, 16, generator=gen, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: L.normalized_features(net, z)[0], x,
                                             vectorize=True).reshape(-1, 256)
    brute = (jac.T @ (jac @ v.reshape(-1))).reshape_as(v)
    cur = x.clone().requires_grad_(True)
    with torch.enable_grad():
        f = L.normalized_features(net, cur)
        ours = _jtj(L.Linearization(net, cur), cur, f, v)
    assert torch.allclose(ours, brute, rtol=1e-9, atol=1e-12 * brute.abs().max().item())


def test_linearization_is_forward_mode_autodiff_at_any_batch_size():
    """J v of the normalised features, for 40 points (two micro-batches, the second padded):
    what torch's forward-mode autodiff computes, for each point as if it were alone; a network
    with another layer type takes the forward-mode path itself."""
    net = tiny_net()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(40, 1, 16, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(40, 1, 16, 16, generator=gen, dtype=torch.float64)
    lin = L.Linearization(net, x)
    assert lin.fast
    _, want = torch.func.jvp(lambda z: L.normalized_features(net, z), (x,), (v,))
    got = lin.jvp(v)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(L.Linearization(net, x[7:8]).jvp(v[7:8])[0], want[7], rtol=1e-10, atol=1e-12)
    # torchvision's AlexNet on a 32x32 colour image: the pooling after the last tap is skipped
    torch.manual_seed(0)
    big = L.imagenet_alexnet().double().eval()
    xc = torch.rand(3, 3, 32, 32, generator=gen, dtype=torch.float64)
    vc = torch.randn(3, 3, 32, 32, generator=gen, dtype=torch.float64)
    _, want_c = torch.func.jvp(lambda z: L.normalized_features(big, z), (xc,), (vc,))
    assert torch.allclose(L.Linearization(big, xc).jvp(vc), want_c, rtol=1e-9, atol=1e-12)
    slow = L.FeatureNet(torch.nn.Sequential(*net.features_seq[:-1], torch.nn.AvgPool2d(2)), net.classifier,
                        0.3, 0.4).double()
    lin_slow = L.Linearization(slow, x)
    assert not lin_slow.fast
    _, want_slow = torch.func.jvp(lambda z: L.normalized_features(slow, z), (x,), (v,))
    assert torch.allclose(lin_slow.jvp(v), want_slow)


def test_projection_lands_inside_and_on_the_ball():
    net = tiny_net()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 16, 16, generator=gen, dtype=torch.float64)
    far = (x + 0.5 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    d_far = L.lpips(net, x, far)
    bound = float(d_far.min().detach()) / 3
    proj = newton_projection(net, x, far, None, bound)
    d = L.lpips(net, x, proj)
    assert (d <= bound * (1 + 1e-9)).all() and proj.min() >= 0 and proj.max() <= 1
    assert (d >= 0.5 * bound).all(), "the projection should stop near the boundary, not at x"
    inside = x + 0.2 * (far - x)
    keep = L.lpips(net, x, inside) <= bound
    assert torch.equal(newton_projection(net, x, inside, None, bound)[keep], inside[keep])
    # bisection against a brute-force search along the segment
    bis = bisection_projection(net, x, far, L.normalized_features(net, x), bound, steps=12)
    ts = torch.linspace(0, 1, 4097, dtype=torch.float64)
    for i in range(len(x)):
        ds = torch.stack([L.lpips(net, x[i:i + 1], x[i:i + 1] + t * (far[i:i + 1] - x[i:i + 1]))[0] for t in ts[::64]])
        t_brute = ts[::64][(ds <= bound).nonzero().max()]
        t_bis = ((bis[i] - x[i]).flatten() @ (far[i] - x[i]).flatten()) / (far[i] - x[i]).pow(2).sum()
        assert L.lpips(net, x[i:i + 1], bis[i:i + 1])[0] <= bound
        assert abs(float(t_bis) - float(t_brute)) <= 1 / 64 + 1e-3


def test_a_smaller_overshoot_lands_closer_to_the_bound_and_still_inside():
    """The reference's overshoot (0.1, an LPIPS length) is a fifth of its bound of 0.5; on a
    smaller ball it throws a projected point deep inside.  A smaller one must land nearer the
    boundary, never outside."""
    net = tiny_net()
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(6, 1, 16, 16, generator=gen, dtype=torch.float64)
    far = (x + 0.3 * torch.randn(x.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    bound = float(L.lpips(net, x, far).min().detach()) / 2
    d = {o: L.lpips(net, x, newton_projection(net, x, far, None, bound, overshoot=o * bound)) for o in (0.5, 0.025)}
    for dist in d.values():
        assert (dist <= bound * (1 + 1e-9)).all()
    assert float(d[0.025].mean()) > float(d[0.5].mean())
    assert (d[0.025] >= 0.95 * bound).all(), d[0.025] / bound


# --------------------------------------------------------------------------- networks: files and checksums
def test_shipped_network_matches_its_entries():
    path = DEFAULT_REGISTRY / NETWORK["weights"]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    for tid in ("digits-ppgd", "digits-lpa"):
        assert REG.threat(tid).params["network"]["sha256"] == sha, tid


def test_validate_checks_the_network_checksum(tmp_path):
    import shutil

    root = tmp_path / "registry"
    (root / "threats").mkdir(parents=True)
    (root / "weights" / "lpips").mkdir(parents=True)
    shutil.copy(DEFAULT_REGISTRY / NETWORK["weights"], root / NETWORK["weights"])
    shutil.copy(REG.threat("digits-ppgd").path, root / "threats" / "digits-ppgd.yaml")
    assert Registry(root).check_weights() == []
    (root / NETWORK["weights"]).write_bytes(b"not the network")
    (problem,) = Registry(root).check_weights()
    assert "digits-ppgd.yaml: key 'params.network.sha256'" in problem


def test_missing_or_wrong_weights_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTBENCH_MODELS", str(tmp_path))
    spec = {"arch": "cifar-alexnet", "weights": "lpips/alexnet_cifar.pt", "source": "https://example.org/x.zip"}
    with pytest.raises(L.FeatureNetError, match=r"(?s)not found.*example\.org/x\.zip.*lpips/alexnet_cifar\.pt"):
        L.load_network(spec, "registry/threats/cifar10/x.yaml")
    (tmp_path / "lpips").mkdir()
    torch.save({"model": {}}, tmp_path / "lpips" / "alexnet_cifar.pt")
    with pytest.raises(L.FeatureNetError, match="no checksum is pinned"):
        L.load_network(spec, "x.yaml")
    with pytest.raises(L.FeatureNetError, match="sha256"):
        L.load_network({**spec, "sha256": "0" * 64}, "x.yaml")
    with pytest.raises(ValueError, match="params.network.arch"):
        L.load_network({**spec, "arch": "vgg"}, "x.yaml")


def test_checkpoints_in_their_publishers_layouts_load(tmp_path, monkeypatch):
    """perceptual-advex's AlexNetFeatureModel checkpoint ({'model': {'model.features.*',
    'layer1.*', ...}}) and torchvision's layout (``features.*``, ``classifier.*``)."""
    src = L.cifar_alexnet()
    inner = {f"model.features.{k}": v for k, v in src.features_seq.state_dict().items()}
    inner.update({f"layer1.0.{k}": v for k, v in src.features_seq[0].state_dict().items()})
    path = tmp_path / "alexnet_cifar.pt"
    torch.save({"model": inner, "epoch": 10}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setenv("SHIFTBENCH_MODELS", str(tmp_path))
    got = L.load_network({"arch": "cifar-alexnet", "weights": "alexnet_cifar.pt", "sha256": sha}, "x.yaml")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(L.normalized_features(got, x), L.normalized_features(src.eval(), x))
    tv_layout = {f"features.{k}": v for k, v in src.features_seq.state_dict().items()}
    tv_layout["classifier.1.weight"] = torch.zeros(1)
    net = L.cifar_alexnet()
    L.load_state(net, tv_layout, "cifar-alexnet")
    assert torch.equal(net.features_seq[3].weight, src.features_seq[3].weight)
    with pytest.raises(L.FeatureNetError, match="not a cifar-alexnet checkpoint"):
        L.load_state(L.cifar_alexnet(), {"conv.weight": torch.zeros(1)}, "cifar-alexnet")


def test_zoo_rewrites_the_network_checksum_in_every_entry(tmp_path):
    root = tmp_path / "registry"
    (root / "threats").mkdir(parents=True)
    for name in ("a", "b"):
        (root / "threats" / f"{name}.yaml").write_text(
            f"id: {name}\nkind: lpips\nattack: ppgd\nparams:\n  bound: 0.2\n  network:\n    arch: digits-alexnet\n"
            f"    weights: weights/lpips/net.pt\n    sha256: {'0' * 64}\n")
    (root / "threats" / "c.yaml").write_text("id: c\nkind: lp\nnorm: Linf\neps: 0.1\nattack: pgd\n")
    changed = set_network_sha256(Registry(root, check_files=False), "weights/lpips/net.pt", "f" * 64)
    assert {p.name for p in changed} == {"a.yaml", "b.yaml"}
    reg = Registry(root, check_files=False)
    assert reg.threat("a").params["network"]["sha256"] == "f" * 64
    assert dataclasses.replace(reg.threat("c")).kind == "lp"


@pytest.mark.parametrize("arch,side", [("alexnet", 32), ("alexnet", 224), ("cifar-alexnet", 32)])
def test_lpips_networks_take_the_image_sizes_their_suites_use(arch, side):
    """cifar100-ppgd/lpa measure LPIPS on 32x32 images with torchvision's ImageNet AlexNet (as the
    reference does for datasets other than CIFAR-10): the taps end at the fifth ReLU, and the
    pooling after it, which a 1x1 map cannot take, is never run.  The distance is unchanged for
    the sizes that did work (224x224): only the unused pooling is skipped."""
    torch.manual_seed(0)
    net = L.ARCHS[arch]().eval()
    x = torch.rand(2, 3, side, side)
    acts = net.activations(x)
    assert len(acts) == len(L.TAPS) and all(a.shape[0] == 2 for a in acts)
    if side == 224:  # the same activations as running every layer of `features`
        h, full = (x - net.mean) / net.std, []
        for i, layer in enumerate(net.features_seq):
            h = layer(h)
            if i in L.TAPS:
                full.append(h)
        assert all(torch.equal(a, b) for a, b in zip(acts, full))
    xa = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    d = L.lpips(net, x, xa)
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()
