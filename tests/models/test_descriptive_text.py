"""A RobustBench entry's words (training, notes, architecture, reference) are generated and may be
reworded: they are not part of its cells' keys, so rewording never makes stored results stale;
what changes numbers (the RobustBench name, dataset, threat model, preprocessing, the checkpoint's
sha256) is.  Other entries keep their words in the key, as their stored results were keyed with them."""
from __future__ import annotations

import dataclasses
import importlib
import re

import pytest

import benchmark  # noqa: F401
from benchmark.models.metadata import robustbench_meta, robustbench_training, training_family
from benchmark.registry import Registry
from benchmark.run.plan import Cell

REG = Registry(check_files=False)
RB = REG.model("rb-cifar10-Linf-Wang2023Better_WRN-28-10")
DIGITS = REG.model("mlp-standard")


def _key(model) -> str:
    return Cell("cifar10-linf", model, None, None, REG.threat("cifar10-linf-8"), "id", 100, 0).key


def test_rewording_a_robustbench_entry_keeps_its_cell_keys():
    before = _key(RB)
    for field in ("training", "notes", "architecture", "reference"):
        assert _key(dataclasses.replace(RB, **{field: "reworded"})) == before, field
    for field, value in (("source", "robustbench:Wang2023Better_WRN-70-16"), ("sha256", "0" * 64),
                         ("preprocessing", "Res224"), ("threat_model", "L2")):
        assert _key(dataclasses.replace(RB, **{field: value})) != before, field


def test_other_entries_keep_their_words_in_the_key():
    assert _key(dataclasses.replace(DIGITS, training="reworded")) != _key(DIGITS)


def test_robustbench_entries_say_what_the_paper_did_and_name_real_commands():
    rb = [m for m in REG.entries["models"].values() if m.source_kind == "robustbench"]
    assert len(rb) > 100
    for m in rb:
        assert m.training != "see reference" and m.meta.get("venue", "") in m.training or "venue not stated" in m.training
        for module in re.findall(r"python -m ([\w.]+)", m.notes or ""):
            assert hasattr(importlib.import_module(module), "main"), (m.id, module)
    assert RB.training.startswith("Better Diffusion Models Further Improve Adversarial Training (Zekai Wang et al., "
                                  "ICML 2023)") and "20M synthetic images" in RB.training


@pytest.mark.parametrize("name, info, family", [
    ("Standard", {"name": "Standardly trained model"}, "standard"),
    ("Madry", {"name": "Towards Deep Learning Models Resistant to Adversarial Attacks"}, "pgd-at"),
    ("X", {"name": "Theoretically Principled Trade-off between Robustness and Accuracy"}, "trades"),
    ("Rice", {"name": "Overfitting in adversarially  robust deep learning"}, "pgd-at"),
    ("X", {"name": "Bag of Tricks for Adversarial Training"}, "adversarial-training"),  # a method model_info does not name
])
def test_training_family_only_where_the_record_says_it(name, info, family):
    assert training_family(name, info) == family


def test_training_text_from_a_model_info_record():
    info = {"name": "Controlling  Neural Level Sets", "authors": "Matan Atzmon, Niv Haim", "venue": "NeurIPS 2019",
            "footnote": "Uses \\(\\ell_{\\infty} \\) = 0.031 instead of 8/255.", "additional_data": False}
    text = robustbench_training(info, robustbench_meta("Atzmon2019Controlling", "cifar10", "Linf", info, commit="c"))
    assert text == ("Controlling Neural Level Sets (Matan Atzmon et al., NeurIPS 2019): robust training (RobustBench's "
                    "model_info names no method). RobustBench's note: Uses Linf = 0.031 instead of 8/255.")
