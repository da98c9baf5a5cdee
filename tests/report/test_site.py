"""The static web leaderboard: deterministic files, and (when Debian's chromium and its driver
and selenium are installed) a real headless browser that sorts, filters, hovers and follows links.

The site is made from the toy suite of test_leaderboard (synthetic outcomes, real registry,
plan and result files) in a tmp dir.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from benchmark import cli
from benchmark.report import leaderboard, site
from benchmark.analysis import aggregate
from test_leaderboard import MISSING, MODELS, SUITE, make_registry, mark_reference, write_results

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory):
    """Made once per module (the plots take seconds); tests only read it or write elsewhere.
    ``toy-l2`` is marked as a reference-set threat, so the ranking has OOD-T (reference set)."""
    tmp_path = tmp_path_factory.mktemp("toy-site")
    reg = make_registry(tmp_path / "registry")
    results = tmp_path / "results"
    write_results(reg, results)
    reg = mark_reference(reg.root, "toy-l2")
    out = tmp_path / "site"
    site.write(reg, [SUITE], results, out, command="shiftbench site --suite toy --out DIR")
    return reg, results, out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_site_is_complete_self_contained_and_byte_identical(toy_site, tmp_path):
    reg, results, out = toy_site
    files = _files(out)
    expected_pages = {f"{SUITE}/models/{m}.html" for m in MODELS}
    assert expected_pages <= set(files)
    assert {"index.html", "site.css", "site.js", f"{SUITE}/index.html", f"{SUITE}/trend.png", f"{SUITE}/shifts.png",
            f"{SUITE}/severity.png"} <= set(files)
    # opens from disk: no URL with a scheme anywhere in the markup, scripts and styles alongside
    for name, data in files.items():
        if name.endswith((".html", ".css", ".js")):
            text = data.decode()
            assert not re.search(r"(src|href)=\"(https?:)?//", text), name
            assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', ""), name
    page = files[f"{SUITE}/index.html"].decode()
    assert page.count("<tr data-model=") == len(MODELS) - 1  # the incomplete model is not ranked ...
    assert f'<a href="models/{MISSING[0]}.html">{MISSING[0]}</a></td><td class="num">5 of 6</td>' in page  # ... but listed
    assert "noise-3 x toy-linf" in page and "Ceiling: the OOD trend predicts" in page
    assert page.count('<circle class="pt"') == 3 * (len(MODELS) - 1)
    # OOD-T (reference set): a sortable number column right after OOD-T, and the line naming its threats
    assert ('<th data-type="num" class="num">OOD-T robust</th><th data-type="num" class="num">OOD-T (reference set)'
            '</th>') in page
    assert "OOD-T (reference set): mean robust accuracy over the 1 threat shift(s) that stand for " \
           "OODRobustBench&#x27;s six (toy-l2)" in page
    # what beats the trend: one table per metadata field that splits the complete models
    beats = page.split("<h2>What beats the trend</h2>", 1)[1].split("<h2>", 1)[0]
    assert '<table id="groups-training_family">' in beats and '<table id="groups-arch">' in beats
    assert "<td>pgd-at</td><td class=\"num\">2</td>" in beats and "**" not in beats
    # regenerating into another folder gives identical bytes, and an unchanged file is not rewritten
    other = tmp_path / "again"
    rc = cli.main(["site", "--suite", SUITE, "--registry", str(reg.root), "--results", str(results), "--out", str(other)])
    assert rc == 0
    assert _files(other) == files
    before = (out / "index.html").stat().st_mtime_ns
    site.write(reg, [SUITE], results, out, command="shiftbench site --suite toy --out DIR")
    assert (out / "index.html").stat().st_mtime_ns == before


def test_model_page_shows_shifts_severities_and_checks(toy_site):
    _, _, out = toy_site
    page = (out / SUITE / "models" / "toy-cnn-trades.html").read_text()
    assert "<strong>Rank " in page
    assert "<td>OOD-T robust</td><td class=\"num\">" in page and "<td>OOD-T (reference set)</td><td class=\"num\">" in page
    assert "in_budget (max_norm=1.5)" in page and "1 failed check(s)" in page
    assert re.search(r"<td>noise</td><td class=\"num\">[\d.]+ / [\d.]+</td><td class=\"num\">[\d.]+ / [\d.]+</td>",
                     page)
    missing = (out / SUITE / "models" / f"{MISSING[0]}.html").read_text()
    assert "Not ranked" in missing and "noise-3 x toy-linf" in missing and ">missing<" in missing


def test_site_cli_errors(toy_site, tmp_path, capsys):
    reg, results, _ = toy_site
    rc = cli.main(["site", "--registry", str(reg.root), "--results", str(results), "--out", str(tmp_path / "x")])
    assert rc == 2 and "exactly one of --suite S and --all" in capsys.readouterr().err
    rc = cli.main(["site", "--suite", SUITE, "--registry", str(reg.root), "--results", str(tmp_path / "none"),
                   "--out", str(tmp_path / "x")])
    assert rc == 2 and "shiftbench run --suite toy" in capsys.readouterr().err
    rc = cli.main(["site", "--all", "--registry", str(reg.root), "--results", str(results), "--out",
                   str(tmp_path / "all")])
    assert rc == 0 and (tmp_path / "all" / SUITE / "index.html").is_file()


# --------------------------------------------------------------------------- the real browser
def _browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).is_file():
            return f"{path} not found: install Debian's {package} (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed: pip install -e '.[site-test]'"
    return None


@pytest.fixture()
def browser():
    why = _browser_missing()
    if why and os.environ.get("SHIFTBENCH_REQUIRE_BROWSER") == "1":  # CI (.ci/run): never skip
        pytest.fail(f"SHIFTBENCH_REQUIRE_BROWSER=1 but {why}")
    if why:
        pytest.skip(f"browser test skipped: {why}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an explicit driver path: selenium never tries to download one
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _visible_models(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [r.get_attribute("data-model") for r in driver.find_elements(By.CSS_SELECTOR, "#ranking tbody tr")
            if r.is_displayed()]


def test_site_in_headless_chromium(browser, toy_site, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    reg, results, out = toy_site
    _, summ, _ = leaderboard.build(reg, SUITE, results)
    ranked = leaderboard.ranking(summ.models)
    d = browser
    d.get((out / "index.html").as_uri())
    assert d.title == "shiftbench leaderboards" and not _errors(d)
    d.find_element(By.LINK_TEXT, SUITE).click()
    assert d.current_url.endswith(f"/{SUITE}/index.html") and not _errors(d)
    assert _visible_models(d) == ranked
    assert d.find_element(By.ID, "shown").text == f"{len(ranked)} of {len(ranked)} models shown"

    # sort: click 'ID robust' -> highest first; again -> lowest first; 'Model' -> alphabetical
    headers = {th.text.strip(" ▲▼"): th for th in d.find_elements(By.CSS_SELECTOR, "#ranking thead th")}
    by_id = sorted(ranked, key=lambda m: -summ.models.loc[m, "id_robust"])
    assert by_id != ranked, "the toy data must make the ID-robust order differ from the ranking"
    headers["ID robust"].click()
    assert _visible_models(d) == by_id
    assert headers["ID robust"].get_attribute("aria-sort") == "descending"
    headers["ID robust"].click()
    assert _visible_models(d) == by_id[::-1]
    headers["Model"].click()
    assert _visible_models(d) == sorted(ranked)
    by_ref = sorted(ranked, key=lambda m: -summ.models.loc[m, aggregate.REFERENCE_METRIC])
    assert by_ref != sorted(ranked), "the reference-set order must differ from the order shown before the click"
    headers["OOD-T (reference set)"].click()
    assert _visible_models(d) == by_ref

    # filter by training and by architecture: the visible row count and the counter follow
    box = d.find_element(By.ID, "filter")
    box.send_keys("pgd-at")
    expect = [m for m in sorted(ranked) if MODELS[m][1] == "PGD-AT"]
    assert _visible_models(d) == expect and len(expect) == 2
    assert d.find_element(By.ID, "shown").text == f"2 of {len(ranked)} models shown"
    box.clear()
    box.send_keys("smallcnn")
    assert len(_visible_models(d)) == sum(MODELS[m][0] == "SmallCNN" for m in ranked) == 3
    box.clear()
    box.send_keys("no such model")
    assert _visible_models(d) == [] and d.find_element(By.ID, "shown").text.startswith("0 of")
    box.clear()
    box.send_keys(" ")  # whitespace only: everything
    assert len(_visible_models(d)) == len(ranked)

    # hover a point of the ID-vs-OOD scatter: the tooltip names the model and its numbers
    point = d.find_element(By.CSS_SELECTOR, 'svg.scatter circle.pt[data-model="toy-cnn-at"]')
    ActionChains(d).move_to_element(point).perform()
    tip = d.find_element(By.ID, "tip")
    assert tip.is_displayed() and "toy-cnn-at" in tip.text and "ID robust" in tip.text and "AER" in tip.text

    shot = tmp_path / "site.png"
    assert d.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # follow a model link
    d.find_element(By.LINK_TEXT, "toy-cnn-trades").click()
    assert d.current_url.endswith("/models/toy-cnn-trades.html")
    assert d.find_element(By.TAG_NAME, "h1").text == "toy-cnn-trades"
    assert len(d.find_elements(By.CSS_SELECTOR, "#per-shift tbody tr")) == 4
    assert "in_budget" in d.find_element(By.ID, "failed").text
    assert not _errors(d)
    d.back()
    assert d.current_url.endswith(f"/{SUITE}/index.html")
