"""Published numbers as a check.  The comparison rules on outcome vectors, then the real path: a
zoo model whose entry carries its published numbers (taken from the committed digits results at
n=600) is evaluated at n=200 by `shiftbench run`, once as it is and twice with deliberately wrong
preprocessing ([0, 255] inputs; labels in the wrong order): the wrong ones are flagged at their
ID cell (a warning from `run`, a flag on the leaderboard), the right one is not."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from benchmark import cli
from benchmark.analysis import aggregate, published
from benchmark.registry import DEFAULT_REGISTRY, Registry, build_spec, sha256_file
from benchmark.report import leaderboard
from benchmark.run import store
from benchmark.run.plan import plan_suite

MODEL = "cnn-pgd-0.10"
N = 200


def spec_with(tmp_path: Path, meta_published=None, claimed=None, threat="Linf", eps=0.1):
    data = {"id": "m", "source": "builtin:cnn", "dataset": "digits", "architecture": "a", "training": "t",
            "weights": "w.pt", "sha256": "0" * 64}
    if meta_published is not None:
        data["meta"] = {"training_family": "pgd-at", "extra_data": "none", "arch": "cnn", "threat": threat,
                        "eps": eps, "published": {**meta_published, "source": "a paper"},
                        "provenance": {"recipe": "test"}}
    if claimed is not None:
        data["claimed"] = claimed
    return build_spec("models", data, tmp_path / "m.yaml")


def bits(k: int, n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    out[:k] = True
    return out


@pytest.fixture(scope="module")
def linf():
    return Registry(DEFAULT_REGISTRY).threat("digits-linf")


def test_clean_outside_the_interval_is_flagged_either_way(tmp_path, linf):
    spec = spec_with(tmp_path, {"clean_acc": 0.95, "autoattack_acc": 0.5})
    ok = published.compare(spec, linf, bits(188, 200), bits(95, 200))  # 94%: within sampling of 95% at n=200
    assert [c.metric for c in ok] == ["clean", "robust"] and not any(c.flagged for c in ok)
    low = published.compare(spec, linf, bits(20, 200), bits(2, 200))  # shuffled labels: chance level
    assert low[0].flagged and not low[1].flagged  # lower robust is never a flag
    high = published.compare(spec_with(tmp_path, {"clean_acc": 0.60}), linf, bits(190, 200), bits(0, 200))
    assert [c.flagged for c in high] == [True]  # higher clean than published disagrees too
    assert "disagrees with the published (a paper) 60.0%" in published.flag_texts(high)[0]
    # the interval widens with fewer examples: 15 of 20 does not contradict 95%, 150 of 200 does
    assert not published.compare(spec, linf, bits(17, 20), bits(10, 20))[0].flagged
    assert published.compare(spec, linf, bits(170, 200), bits(100, 200))[0].flagged


def test_robust_clearly_above_the_published_autoattack_is_flagged(tmp_path, linf):
    spec = spec_with(tmp_path, {"clean_acc": 0.95, "autoattack_acc": 0.50})
    near = published.compare(spec, linf, bits(190, 200), bits(110, 200))  # 55%: within sampling
    assert not near[1].flagged
    above = published.compare(spec, linf, bits(190, 200), bits(140, 200))  # 70%: a weaker attack
    assert above[1].flagged and "is above the published AutoAttack" in published.flag_texts(above)[0]


def test_robust_is_compared_only_under_the_threat_it_was_published_for(tmp_path, linf):
    l2 = spec_with(tmp_path, {"clean_acc": 0.95, "autoattack_acc": 0.1}, threat="L2", eps=0.5)
    assert [c.metric for c in published.compare(l2, linf, bits(190, 200), bits(150, 200))] == ["clean"]
    larger = spec_with(tmp_path, {"clean_acc": 0.95, "autoattack_acc": 0.1}, eps=0.2)  # published at a larger eps
    assert [c.metric for c in published.compare(larger, linf, bits(190, 200), bits(150, 200))] == ["clean"]
    rb_rounding = spec_with(tmp_path, {"clean_acc": 0.95, "autoattack_acc": 0.1}, eps=0.101)  # 0.031 vs 8/255
    assert [c.metric for c in published.compare(rb_rounding, linf, bits(190, 200), bits(150, 200))] == \
        ["clean", "robust"]


def test_claimed_numbers_are_the_fallback(tmp_path, linf):
    spec = spec_with(tmp_path, claimed={"clean_acc": 0.9, "robust_acc": 0.2})
    checks = published.compare(spec, linf, bits(180, 200), bits(120, 200))
    assert [(c.metric, c.source, c.flagged) for c in checks] == [("clean", "claimed", False),
                                                                  ("robust", "claimed", True)]
    assert published.compare(spec_with(tmp_path), linf, bits(1, 2), bits(1, 2)) == ()


WRONG = '''
import torch
from benchmark.models import architectures


class Scaled255(torch.nn.Module):
    """The zoo CNN fed [0, 255] images: the data was not scaled to [0, 1]."""

    def __init__(self):
        super().__init__()
        self.net = architectures.build("cnn", width=16)

    def forward(self, x):
        return self.net(x * 255.0)


class ShuffledLabels(torch.nn.Module):
    """The zoo CNN whose class indices follow another label order."""

    def __init__(self):
        super().__init__()
        self.net = architectures.build("cnn", width=16)

    def forward(self, x):
        return self.net(x)[:, [3, 7, 0, 9, 1, 5, 8, 2, 6, 4]]


def scaled():
    return Scaled255()


def shuffled():
    return ShuffledLabels()
'''


@pytest.fixture(scope="module")
def wrong_data_board(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    builtin = Registry(DEFAULT_REGISTRY)
    cell = plan_suite(builtin, "digits", models=MODEL, shifts="id")[0]
    stored = store.read_json(DEFAULT_REGISTRY.parent / "results" / "digits" / cell.filename)
    pub = {"clean_acc": round(float(store.unbits(stored["clean_correct"]).mean()), 4),
           "autoattack_acc": round(float(store.unbits(stored["robust_correct"]).mean()), 4),
           "source": f"the committed digits results, n={stored['n']}"}
    spec = builtin.model(MODEL)
    reg = root / "registry"
    (reg / "weights" / "digits").mkdir(parents=True)
    state = torch.load(builtin.weights_path(spec), weights_only=True)
    torch.save(state, reg / "weights" / "digits" / "honest.pt")
    torch.save({f"net.{k}": v for k, v in state.items()}, reg / "weights" / "digits" / "wrapped.pt")
    meta = {**{k: v for k, v in dict(spec.meta).items() if k != "provenance"}, "published": pub,
            "provenance": {"recipe": "tests/analysis/test_published.py"}}
    entries = {"honest": ("builtin:cnn", "honest.pt"), "scaled-255": ("python:wrongprep:scaled", "wrapped.pt"),
               "shuffled-labels": ("python:wrongprep:shuffled", "wrapped.pt")}
    for mid, (source, w) in entries.items():
        data = {"id": mid, "source": source, "dataset": "digits", "architecture": "SmallCNN-16", "training": "PGD-AT",
                "weights": f"weights/digits/{w}", "sha256": sha256_file(reg / "weights" / "digits" / w), "meta": meta}
        if source.startswith("builtin"):
            data["arch_args"] = {"width": 16}
        (reg / "models" / "digits").mkdir(parents=True, exist_ok=True)
        (reg / "models" / "digits" / f"{mid}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (reg / "suites").mkdir()
    (reg / "suites" / "check.yaml").write_text(yaml.safe_dump({
        "id": "check", "dataset": "digits", "id_threat": "digits-linf", "n_examples": N, "seed": 0,
        "allow_code": ["wrongprep"]}))
    code = root / "code"
    code.mkdir()
    (code / "wrongprep.py").write_text(WRONG)
    results = root / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(code))
        import io
        from contextlib import redirect_stderr

        err = io.StringIO()
        with redirect_stderr(err):
            rc = cli.main(["run", "--suite", "check", "--registry", str(reg), "--results", str(results),
                           "--workers", "1", "--no-progress"])
    assert rc == 0, err.getvalue()
    layered = Registry([DEFAULT_REGISTRY, reg])
    return layered, results, err.getvalue(), pub


def test_wrong_preprocessing_is_flagged_at_the_id_cell(wrong_data_board):
    reg, results, err, pub = wrong_data_board
    res = aggregate.load(reg, "check", results)
    assert res.n_present == 3 and res.n_missing == 0
    models = aggregate.summarize(reg, res).models
    honest = models.loc["honest", "reference_checks"]
    assert [c.metric for c in honest] == ["clean", "robust"] and not any(c.flagged for c in honest)
    assert not models.loc["honest", "flags"]
    for mid in ("scaled-255", "shuffled-labels"):
        clean = models.loc[mid, "reference_checks"][0]
        assert clean.metric == "clean" and clean.flagged and clean.n == N
        assert clean.hi < pub["clean_acc"]  # far below what was published, beyond sampling
        assert models.loc[mid, "flags"][0].startswith("ID clean")
        assert f"warning: model '{mid}': ID clean" in err
    assert "model 'honest'" not in err
    board = leaderboard.build_board(reg, "check", results)
    text = leaderboard.render(reg, board.suite, board.res, board.summ, board.fits, command="x", png_ref=None,
                              board=board)
    flagged = [ln for ln in text.splitlines() if ln.startswith("- [") and "disagrees with the published" in ln]
    assert sorted(ln.split("`")[1] for ln in flagged) == ["scaled-255", "shuffled-labels"]
    assert "[0, 255] vs [0, 1] inputs" in flagged[0]


def test_site_model_page_lists_the_checks(wrong_data_board, tmp_path):
    reg, results, _, _ = wrong_data_board
    assert cli.main(["site", "--suite", "check", "--registry", str(reg.roots[-1]), "--results", str(results),
                     "--out", str(tmp_path / "site")]) == 0
    wrong = (tmp_path / "site" / "check" / "models" / "scaled-255.html").read_text()
    honest = (tmp_path / "site" / "check" / "models" / "honest.html").read_text()
    assert '<li class="flag">ID clean' in wrong and "disagrees with the published" in wrong
    assert "<li>ID clean" in honest and "agrees with the published" in honest and 'class="flag"' not in honest
