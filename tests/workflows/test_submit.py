"""`shiftbench submit` end to end on a tiny registry layered over the built-in one: a new model
trained here goes in, gets results and a leaderboard row; a refused or failing submission
leaves the registry, the results and the leaderboard byte for byte as they were."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from benchmark import cli
from benchmark.data import datasets
from conftest import make_tiny_registry
from helpers import train_tiny_mlp

SUITE = "tiny"


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under the roots (or the file itself) -> sha256 of its bytes."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def clean_acc(model: torch.nn.Module) -> float:
    """What a submitter reports: accuracy on the whole digits test split."""
    x, y = datasets.load_id("digits", "test")
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def board_template(tmp_path_factory, tiny_model):
    """The tiny suite run for its one model, with its leaderboard: the state a submission lands in."""
    root = tmp_path_factory.mktemp("board")
    reg = make_tiny_registry(root / "registry", tiny_model)
    results, out = root / "results", root / "board" / "tiny.md"
    rc = cli.main(["run", "--suite", SUITE, "--registry", str(reg), "--results", str(results),
                   "--no-progress", "--leaderboard", "--out", str(out)])
    assert rc == 0 and out.is_file()
    return root


@pytest.fixture()
def board(board_template, tmp_path):
    """A copy of the template for one test to change: (registry, results, leaderboard path)."""
    for name in ("registry", "results", "board"):
        shutil.copytree(board_template / name, tmp_path / name)
    return tmp_path / "registry", tmp_path / "results", tmp_path / "board" / "tiny.md"


def args(entry: Path, reg: Path, results: Path, out: Path, *extra: str) -> list[str]:
    return ["submit", str(entry), "--suite", SUITE, "--registry", str(reg), "--results", str(results), "--out", str(out),
            "--no-progress", *extra]


def write_entry(path: Path, **fields) -> Path:
    data = {"id": path.stem, "source": "builtin:mlp", "dataset": "digits", "architecture": "MLP-16",
            "training": "standard", "arch_args": {"hidden": 16, "depth": 1}, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_submit_end_to_end(board, tmp_path, capsys):
    reg, results, out = board
    model = train_tiny_mlp(hidden=16, seed=1)
    weights = tmp_path / "upload" / "mine.pt"
    weights.parent.mkdir()
    torch.save(model.state_dict(), weights)
    entry = write_entry(tmp_path / "upload" / "mlp16-mine.yaml", claimed={"clean_acc": round(clean_acc(model), 4)})
    summary = tmp_path / "summary.md"
    rc = cli.main(args(entry, reg, results, out, "--weights", str(weights), "--summary-out", str(summary)))
    text = capsys.readouterr()
    assert rc == 0, text.err
    installed = yaml.safe_load((reg / "models" / "digits" / "mlp16-mine.yaml").read_text())
    assert installed["weights"] == "weights/digits/mlp16-mine.pt"
    assert installed["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (reg / "weights" / "digits" / "mlp16-mine.pt").read_bytes() == weights.read_bytes()
    assert len(list((results / SUITE / "mlp16-mine").glob("*.json"))) == 4  # id, 2 severities, 1 threat shift
    board_text = out.read_text()
    assert "| mlp16-mine |" in board_text and "| tiny |" in board_text
    md = summary.read_text()
    assert md.strip() == text.out.strip()
    assert "of 2** on the `tiny` leaderboard" in md and "`mlp16-mine`" in md
    rank = int(md.split("**Rank ")[1].split(" ")[0])
    row = [ln for ln in board_text.splitlines() if "| mlp16-mine |" in ln][0]
    assert row.startswith(f"| {rank} |")  # the summary's rank is the board's
    assert "gaussian_noise (D)" in md and "tiny-linf-large (T)" in md and "pgd" in md
    assert "shiftbench reproduce --suite tiny --models mlp16-mine" in md
    # the id is now taken; --replace says what it replaces
    rc = cli.main(args(reg / "models" / "digits" / "mlp16-mine.yaml", reg, results, out, "--replace"))
    err = capsys.readouterr().err
    assert rc == 0 and "replaced" in err and "mlp16-mine.yaml" in err


FAULTY = '''
import torch
from benchmark.models import architectures


class Faulty(torch.nn.Module):
    """Fine on clean images; fails once an attack asks for gradients (mid-run)."""

    def __init__(self, exc):
        super().__init__()
        self.net = architectures.build("mlp", hidden=32, depth=1)
        self.exc = exc

    def forward(self, x):
        if x.requires_grad:
            raise self.exc("faulty model: failed mid-run")
        return self.net(x)


def build_runtime_error():
    return Faulty(RuntimeError)


def build_interrupt():
    return Faulty(KeyboardInterrupt)
'''


@pytest.mark.parametrize("case", ["wrong-claim", "wrong-sha256", "existing-id", "code-not-allowed",
                                  "raises-mid-run", "ctrl-c"])
def test_failed_submission_changes_nothing(case, board, tmp_path, tiny_model, monkeypatch, capsys):
    reg, results, out = board
    before = snapshot(reg, results, out.parent)
    acc = round(clean_acc(tiny_model), 4)
    weights = tmp_path / "w.pt"
    torch.save(tiny_model.state_dict(), weights)
    extra: list[str] = ["--weights", str(weights)]
    if case == "wrong-claim":
        entry = write_entry(tmp_path / "e" / "new-model.yaml", arch_args={"hidden": 32, "depth": 1},
                            claimed={"clean_acc": round(acc - 0.3, 4)})
        rc_want, msg = 2, "normalisation"
    elif case == "wrong-sha256":
        entry = write_entry(tmp_path / "e" / "new-model.yaml", arch_args={"hidden": 32, "depth": 1},
                            weights="w.pt", sha256="0" * 64, claimed={"clean_acc": acc})  # next to the entry
        shutil.copy(weights, tmp_path / "e" / "w.pt")
        extra, rc_want, msg = [], 2, "key 'sha256'"
    elif case == "existing-id":
        entry = write_entry(tmp_path / "e" / "tiny.yaml", arch_args={"hidden": 32, "depth": 1},
                            claimed={"clean_acc": acc})
        rc_want, msg = 2, "already exists"
    else:
        (tmp_path / "code").mkdir()
        (tmp_path / "code" / "faulty_models.py").write_text(FAULTY)
        monkeypatch.syspath_prepend(str(tmp_path / "code"))
        torch.save({f"net.{k}": v for k, v in tiny_model.state_dict().items()}, weights)
        factory = "build_interrupt" if case == "ctrl-c" else "build_runtime_error"
        entry = write_entry(tmp_path / "e" / "faulty.yaml", source=f"python:faulty_models:{factory}",
                            arch_args={}, claimed={"clean_acc": acc})
        if case == "code-not-allowed":
            rc_want, msg = 2, "--allow-code"
        else:
            extra.append("--allow-code")
            rc_want, msg = (130, "interrupted") if case == "ctrl-c" else (1, "failed mid-run")
    rc = cli.main(args(entry, reg, results, out, *extra))
    err = capsys.readouterr().err
    assert rc == rc_want, err
    assert msg in err
    assert snapshot(reg, results, out.parent) == before
    assert not list(results.glob(".tmp-*"))  # no staging folder left behind


def test_claimed_robust_accuracy_is_checked_like_published_numbers(board, tmp_path, capsys):
    """A claimed robust accuracy well below what the suite's attack leaves is fine (ours may be
    weaker or the sample easier only within sampling); one the measurement clearly exceeds is a flag:
    the claim was made with a stronger attack or on other data."""
    from benchmark.models import architectures
    from benchmark.registry import DEFAULT_REGISTRY, Registry

    reg, results, out = board
    zoo = Registry(DEFAULT_REGISTRY)
    spec = zoo.model("mlp-pgd-0.10")  # adversarially trained: clearly above 5% robust at the tiny suite's budget
    model = architectures.build("mlp", **spec.arch_args)
    model.load_state_dict(torch.load(zoo.weights_path(spec), weights_only=True))
    model.eval()
    weights = tmp_path / "robust.pt"
    shutil.copy(zoo.weights_path(spec), weights)
    entry = write_entry(tmp_path / "upload" / "robust-mine.yaml", arch_args=dict(spec.arch_args),
                        claimed={"clean_acc": round(clean_acc(model), 4), "robust_acc": 0.05})
    rc = cli.main(args(entry, reg, results, out, "--weights", str(weights)))
    text = capsys.readouterr()
    assert rc == 0, text.err
    robust_line = next(ln for ln in text.out.splitlines() if ln.startswith("- **Flag**: ID robust"))
    assert "is above the claimed 5.0%" in robust_line
    clean_line = next(ln for ln in text.out.splitlines() if ln.startswith("- ID clean"))
    assert "agrees with the claimed" in clean_line
    row = next(ln for ln in out.read_text().splitlines() if ln.startswith("- [") and "`robust-mine`" in ln)
    assert "ID robust" in row and "claimed 5.0%" in row  # flagged on the leaderboard too


def test_claimed_accuracy_is_required(board, tmp_path, tiny_model, capsys):
    reg, results, out = board
    entry = write_entry(tmp_path / "e" / "new-model.yaml", arch_args={"hidden": 32, "depth": 1})
    torch.save(tiny_model.state_dict(), tmp_path / "w.pt")
    assert cli.main(args(entry, reg, results, out, "--weights", str(tmp_path / "w.pt"))) == 2
    assert "key 'claimed'" in capsys.readouterr().err


def test_registry_template_is_a_valid_entry_once_filled_in(tmp_path):
    """registry/templates/model.yaml is valid as shipped, once renamed to its id; it is not loaded
    as an entry where it lies."""
    from benchmark.registry import DEFAULT_REGISTRY, Registry, build_spec, load_yaml

    template = DEFAULT_REGISTRY / "templates" / "model.yaml"
    data = load_yaml(template)
    spec = build_spec("models", data, tmp_path / f"{data['id']}.yaml")
    assert spec.claimed["clean_acc"] == 0.95 and spec.source == "builtin:cnn"
    assert data["id"] not in Registry(DEFAULT_REGISTRY, check_files=False).entries["models"]


def test_summary_shows_the_reference_set_column_only_when_the_suite_has_one():
    import pandas as pd

    from benchmark.workflows.submit import SubmitResult, render_summary

    metrics = {"id_clean": 0.9, "id_robust": 0.5, "ood_d_clean": 0.8, "ood_d_robust": 0.4, "ood_t_robust": 0.45,
               "ood_robust": 0.42}
    base = dict(model="m", suite="s", rank=1, n_models=2, aer=(0.01, -0.01, 0.03), flags=(), attacks=("apgd-mm",),
                per_shift=pd.DataFrame(columns=["kind", "shift", "clean", "clean_lo", "clean_hi", "robust",
                                                "robust_lo", "robust_hi"]),
                clean_measured=0.9, clean_claimed=0.9, entry=Path(), weights=None, leaderboard=Path(), cells=3)
    plain = render_summary(SubmitResult(metrics=metrics, **base))
    assert "reference set" not in plain
    with_ref = render_summary(SubmitResult(metrics={**metrics, "ood_t_ref_robust": 0.377}, **base))
    head, rule, row = [ln for ln in with_ref.splitlines() if ln.startswith("|")][:3]
    assert "| OOD-T robust | OOD-T (reference set) | OOD robust |" in head
    assert head.count("|") == rule.count("|") == row.count("|")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5].startswith("37.7") and cells[4].startswith("45.0")
