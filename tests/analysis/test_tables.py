"""`shiftbench trends fit` on any CSV: unit detection, golden fits, and one-line errors (exit 2)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmark import cli
from benchmark.analysis import tables

# the raw golden case of test_trends (slope 1.1, intercept 0.11 in fraction units)
FRACTION = "model,id,ood\na,0.0,0.1\nb,0.1,0.3\nc,0.2,0.2\nd,0.3,0.5\n"
PERCENT = "model,id,ood\na,0,10\nb,10,30\nc,20,20\nd,30,50\n"
PERCENT_SIGN = "model,id,ood\na,0%,10 %\nb,10%,30 %\nc,20%,20 %\nd,30%,50 %\n"
# the probit golden case: probits (-1, -1.5), (0, 0), (1, -0.5), (2, 1), 7 significant digits
PROBIT = "id,ood\n0.1586553,0.0668072\n0.5,0.5\n0.8413447,0.3085375\n0.9772499,0.8413447\n"


def _csv(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _fit_json(tmp_path, capsys, text: str, *extra: str) -> dict:
    path = _csv(tmp_path, text)
    rc = cli.main(["trends", "fit", "--csv", str(path), "--x", "id", "--y", "ood", "--json", *extra])
    out = capsys.readouterr().out
    assert rc == 0
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object
    return json.loads(out)


@pytest.mark.parametrize("text,unit", [(FRACTION, "fraction"), (PERCENT, "percent"), (PERCENT_SIGN, "percent (%)")])
def test_units_detected_and_same_fit(tmp_path, capsys, text, unit):
    got = _fit_json(tmp_path, capsys, text)
    assert got["units"] == {"x": unit, "y": unit}
    assert got["scale"] == "raw" and got["n"] == 4
    assert (got["slope"], got["intercept"]) == pytest.approx((1.1, 0.11))  # fraction units whatever the table
    assert got["r2"] == pytest.approx(1 - 0.027 / 0.0875)
    assert got["pearson_r"] == pytest.approx(0.055 / math.sqrt(0.05 * 0.0875))
    assert got["resid_sd"] == pytest.approx(math.sqrt(0.027 / 2))
    lo, hi = got["slope_ci"]
    assert lo <= got["slope"] <= hi
    assert {"slope", "intercept", "r2", "pearson_r", "n", "scale", "slope_ci"} <= set(got)


def test_probit_golden_from_csv(tmp_path, capsys):
    got = _fit_json(tmp_path, capsys, PROBIT, "--scale", "probit")
    assert (got["slope"], got["intercept"]) == pytest.approx((0.7, -0.6), abs=1e-5)
    assert got["r2"] == pytest.approx(1 - 0.8 / 3.25, abs=1e-5)
    assert got["clipped"] == [] and got["clip_eps"] == 0.001 and got["scale"] == "probit"


def test_clipping_reported(tmp_path, capsys):
    got = _fit_json(tmp_path, capsys, "m,id,ood\na,0.2,0\nb,0.4,0.1\nc,0.6,0.3\nd,1,0.5\n", "--scale", "logit",
                    "--label", "m")
    assert got["clipped"] == [{"row": "a", "axis": "y", "value": 0.0}, {"row": "d", "axis": "x", "value": 1.0}]
    path = _csv(tmp_path, "m,id,ood\na,0.2,0\nb,0.4,0.1\nc,0.6,0.3\nd,1,0.5\n", "u.csv")
    assert cli.main(["trends", "fit", "--csv", str(path), "--x", "id", "--y", "ood", "--scale", "probit"]) == 0
    out = capsys.readouterr().out
    assert "probit scale" in out and "2 point(s): row 1 (y=0), row 4 (x=1)" in out
    assert "units detected: 'id' fraction, 'ood' fraction" in out


def test_percent_column_next_to_fraction_column(tmp_path):
    path = _csv(tmp_path, "id,ood\n50%,0.2\n60%,0.3\n70%,0.35\n")
    cx, cy, labels = tables.read_xy(path, "id", "ood")
    assert (cx.unit, cy.unit) == ("percent (%)", "fraction")
    assert list(cx.values) == pytest.approx([0.5, 0.6, 0.7]) and labels == ["row 1", "row 2", "row 3"]


@pytest.mark.parametrize("text,args,message", [
    (FRACTION, ["--x", "idd"], "no column 'idd'; columns are: model, id, ood"),
    ("id,ood\n0.1,0.1\n0.2,abc\n0.3,0.2\n", [], "column 'ood', row 2: 'abc' is not a number"),
    ("id,ood\n0.1,0.1\n0.2,\n0.3,0.2\n", [], "column 'ood', row 2: '' is not a number"),
    ("id,ood\n0.1,0.1\n0.2,0.2\n", [], "2 data row(s); a trend needs at least 3"),
    ("id,ood\n10,10\n20,150\n30,20\n", [], "column 'ood', row 2: '150' is outside [0, 1] as a percent accuracy"),
    ("id,ood\n0.1,0.1\n0.2,-0.2\n0.3,0.2\n", [], "'-0.2' is outside [0, 1] as a fraction accuracy"),
    ("id,ood\n10%,0.1\n20,0.2\n30%,0.2\n", [], "column 'id' mixes values with and without '%' (row 2: '20')"),
    ("id,ood\n0.5,0.1\n0.5,0.2\n0.5,0.2\n", [], "every value of column 'id' is the same"),
    ("id,ood\n0.1,0.1,3\n0.2,0.2\n0.3,0.2\n", [], "line 2 has 3 cells, the header has 2"),
    ("", [], "empty file"),
])
def test_errors_are_one_line_exit_2(tmp_path, capsys, text, args, message):
    path = _csv(tmp_path, text)
    argv = ["trends", "fit", "--csv", str(path), "--x", "id", "--y", "ood", *args]
    if "--x" in args:
        argv = ["trends", "fit", "--csv", str(path), "--y", "ood", *args]
    rc = cli.main(argv)
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], cap.err
    assert str(path) in lines[0]


@pytest.mark.parametrize("flag,value,message", [("--n-boot", "0", "need at least 1 bootstrap replicate"),
                                                ("--clip-eps", "0.7", "must lie in (0, 0.5)")])
def test_bad_options(tmp_path, capsys, flag, value, message):
    path = _csv(tmp_path, FRACTION)
    rc = cli.main(["trends", "fit", "--csv", str(path), "--x", "id", "--y", "ood", flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]


def test_missing_file_and_bad_scale(tmp_path, capsys):
    rc = cli.main(["trends", "fit", "--csv", str(tmp_path / "nope.csv"), "--x", "a", "--y", "b"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.csv: no such file" in err[0]
    with pytest.raises(SystemExit) as exc:  # argparse: usage error, exit 2
        cli.main(["trends", "fit", "--csv", "x.csv", "--x", "a", "--y", "b", "--scale", "log"])
    assert exc.value.code == 2
