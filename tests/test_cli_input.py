"""Bad input on every command: one line on stderr, exit code 2, no traceback, nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmark import cli


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# (argv, a fragment of the one-line message); {reg} is the tiny registry, {tmp} a scratch folder
CASES = [
    (["ls", "models", "--suite", "tinny"], "did you mean 'tiny'"),
    (["ls", "modles"], "invalid choice: 'modles'"),
    (["validate", "--registry", "{tmp}/nope"], "registry folder does not exist"),
    (["run", "--suite", "tinny"], "no suite named 'tinny'"),
    (["run", "--suite", "tiny", "--models", "tiyn"], "--models pattern 'tiyn' matches no model of suite 'tiny'; did you mean 'tiny'"),
    (["run", "--suite", "tiny", "--shifts", "gausian_noise"], "did you mean 'gaussian_noise'"),
    (["run", "--suite", "tiny", "--shifts", "id,nothing*"], "--shifts pattern 'nothing*' matches no shift"),
    (["run", "--suite", "tiny", "--threats", "tiny-linff"], "did you mean 'tiny-linf'"),
    (["run", "--suite", "tiny", "--models", ","], "holds no pattern"),
    (["run", "--suite", "tiny", "--workers", "0"], "--workers must be at least 1"),
    (["run", "--suite", "tiny", "--n", "-5"], "--n must be at least 1"),
    (["run", "--suite", "tiny", "--limit", "0"], "--limit must be at least 1"),
    (["run", "--suite", "tiny", "--workers", "two"], "invalid int value: 'two'"),
    (["run", "--suite", "tiny", "--shard", "3/2"], "i must be in 1..2"),
    (["run", "--suite", "tiny", "--shard", "x"], "--shard expects i/N"),
    (["run", "--suite", "tiny", "--dry-run", "--leaderboard"], "give one of them"),
    (["run", "--suite", "tiny", "--out", "{tmp}/lb.md"], "--out names the leaderboard file: it needs --leaderboard"),
    (["run", "--suite", "tiny", "--data-dir", "{tmp}/nope"], "--data-dir {tmp}/nope: no such folder"),
    (["run", "--suite", "tiny", "--bogus"], "unrecognized arguments: --bogus"),
    (["leaderboard", "--suite", "tinny"], "did you mean 'tiny'"),
    (["leaderboard", "--suite", "tiny"], "no current results for suite 'tiny'"),
    (["verify-results", "--suite", "tinny"], "no results for suite 'tinny'"),
    (["verify-results"], "does not exist"),
    (["show-shifts", "--suite", "tiny", "--out", "{tmp}/x.jpg"], "--out must be a .png file"),
    (["show-shifts", "--suite", "tinny", "--out", "{tmp}/x.png"], "did you mean 'tiny'"),
    (["verify-archives", "--suite", "tiny", "--shifts", "nope"], "--shifts pattern 'nope' matches no shift"),
    (["verify-archives", "--suite", "tiny", "--archive-dir", "{tmp}/nope"], "no such folder"),
    (["calibrate", "--suite", "tiny", "--models", "nope"], "--models pattern 'nope' matches no model"),
    (["calibrate", "--suite", "tiny", "--n", "0"], "--n must be at least 1"),
    (["zoo", "train", "--models", "nope"], "no builtin model with a 'train:' recipe matches 'nope'"),
    (["site", "--suite", "tinny", "--out", "{tmp}/site"], "did you mean 'tiny'"),
    (["site", "--suite", "tiny", "--all", "--out", "{tmp}/site"], "give exactly one of --suite S and --all"),
    (["trends", "fit", "--csv", "{tmp}/nope.csv", "--x", "a", "--y", "b"], "nope.csv"),
    ([], "the following arguments are required: command"),
]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a) or "(none)" for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(argv, fragment, tiny_registry, tmp_path, monkeypatch, capsys):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    argv = [a.replace("{tmp}", str(scratch)) for a in argv]
    fragment = fragment.replace("{tmp}", str(scratch))
    if argv and "--registry" not in argv and argv[0] != "trends":  # trends fit reads a CSV, no registry
        argv += ["--registry", str(tiny_registry)]
    if argv[:1] in (["run"], ["leaderboard"], ["verify-results"]):
        argv += ["--results", str(scratch / "results")]
    monkeypatch.setenv("SHIFTBENCH_DATA", str(scratch / "data"))
    before = _tree(tmp_path)
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert _tree(tmp_path) == before, "nothing written"


def test_missing_and_empty_data_root(tmp_path, monkeypatch, capsys):
    """A real suite with a missing or empty data root: one line naming the root and the files it needs."""
    from benchmark.registry import DEFAULT_REGISTRY

    empty = tmp_path / "empty"
    empty.mkdir()
    for env, state in ((str(tmp_path / "absent"), "does not exist"), (str(empty), "is empty")):
        monkeypatch.setenv("SHIFTBENCH_DATA", env)
        rc = cli.main(["run", "--suite", "cifar10-linf", "--registry", str(DEFAULT_REGISTRY), "--models",
                       "autoattack-resnet18", "--results", str(tmp_path / "results"), "--dry-run"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1
        assert f"data root {env} ($SHIFTBENCH_DATA) {state}" in err and "cifar-10-batches-py/test_batch" in err
    assert not (tmp_path / "results").exists()
