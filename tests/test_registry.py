"""Registry validation: every kind of bad entry gives an error naming the file and the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark import cli
from benchmark.registry import DEFAULT_REGISTRY, Registry, RegistryError, content_hash, parse_eps


def edit(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    path.write_text(yaml.safe_dump(data))


def test_real_registry_is_valid():
    reg = Registry()
    assert reg.entries["suites"], "the repository registry has suites"
    assert "digits" in reg.entries["suites"]
    assert reg.check_weights() == []


def test_tiny_registry_loads(tiny_registry):
    reg = Registry(tiny_registry)
    assert reg.model("tiny").arch_args == {"hidden": 32, "depth": 1}
    assert reg.threat("tiny-linf").eps == pytest.approx(0.1)
    # specs are frozen and hashable (they key caches)
    hash(reg.model("tiny"))
    with pytest.raises(TypeError):
        reg.model("tiny").arch_args["hidden"] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    "rel, changes, key, fragment",
    [
        ("models/digits/tiny.yaml", {"weigths": "x.pt"}, "weigths", "did you mean 'weights'"),
        ("models/digits/tiny.yaml", {"arch_args": "hidden=32"}, "arch_args", "expected"),
        ("models/digits/tiny.yaml", {"dataset": None}, "dataset", "missing required key"),
        ("models/digits/tiny.yaml", {"weights": "weights/digits/nope.pt"}, "weights", "not found"),
        ("models/digits/tiny.yaml", {"sha256": "abc"}, "sha256", "64 lowercase hex"),
        ("models/digits/tiny.yaml", {"source": "torchhub:foo"}, "source", "expected one of"),
        ("models/digits/tiny.yaml", {"id": "other"}, "id", "must match the file name"),
        ("threats/tiny-linf.yaml", {"eps": 8}, "eps", "implausible Linf budget"),
        ("threats/tiny-linf.yaml", {"eps": -0.1}, "eps", ">= 0"),
        ("threats/tiny-linf.yaml", {"eps": "eight"}, "eps", "fraction"),
        ("threats/tiny-linf.yaml", {"norm": "Lfoo"}, "norm", "norm in"),
        ("threats/tiny-linf.yaml", {"eps": True}, "eps", "expected a number"),
        ("models/digits/tiny.yaml", {"preprocessing": "Res256Crop224"}, "preprocessing", "only ImageNet models"),
        ("models/digits/tiny.yaml", {"preprocessing": "res256crop224"}, "preprocessing", "did you mean 'Res256Crop224'"),
        ("shifts/digits/gaussian_noise.yaml", {"severities": [1, 9]}, "severities", "1..5"),
        ("suites/tiny.yaml", {"dataset_shifts": ["gausian_noise"]}, "dataset_shifts", "did you mean 'gaussian_noise'"),
        ("suites/tiny.yaml", {"id_threat": "nope"}, "id_threat", "no threat named"),
        ("suites/tiny.yaml", {"n_examples": 0}, "n_examples", "positive"),
        ("suites/tiny.yaml", {"n_examples": 1.5}, "n_examples", "expected int"),
    ],
)
def test_bad_entries_name_file_and_key(tiny_registry, rel, changes, key, fragment):
    path = tiny_registry / rel
    edit(path, **changes)
    with pytest.raises(RegistryError) as err:
        Registry(tiny_registry)
    msg = str(err.value)
    assert err.value.key == key
    assert str(path) in msg and f"'{key}'" in msg and fragment in msg, msg


def test_yaml_syntax_error_names_file(tiny_registry):
    path = tiny_registry / "threats" / "tiny-linf.yaml"
    path.write_text("id: tiny-linf\nkind: [lp\n")
    with pytest.raises(RegistryError, match="not valid YAML") as err:
        Registry(tiny_registry)
    assert str(path) in str(err.value)


def test_yaml_cannot_construct_python_objects(tiny_registry):
    path = tiny_registry / "threats" / "tiny-linf.yaml"
    path.write_text(path.read_text() + "params: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(RegistryError, match="not valid YAML"):
        Registry(tiny_registry)


def test_libyaml_and_pure_python_loaders_read_every_entry_alike():
    """Entries load through libyaml's safe loader when it is there; the pure-Python one gives the
    same values for every shipped entry (and the same errors: tests/models/test_hostile.py)."""
    from benchmark import registry

    paths = sorted(Path(DEFAULT_REGISTRY).rglob("*.yaml"))
    assert len(paths) > 100 and yaml.__with_libyaml__
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert registry._safe_entry(text) == yaml.load(text, Loader=registry._EntryLoader), path  # noqa: S506


def test_duplicate_ids_raise(tiny_registry):
    src = tiny_registry / "threats" / "tiny-linf.yaml"
    (tiny_registry / "threats" / "sub").mkdir()
    (tiny_registry / "threats" / "sub" / "tiny-linf.yaml").write_text(src.read_text())
    with pytest.raises(RegistryError, match="duplicate threat id 'tiny-linf'"):
        Registry(tiny_registry)


def test_sha_mismatch_is_reported_by_validate(tiny_registry, capsys):
    wp = tiny_registry / "weights" / "digits" / "tiny.pt"
    wp.write_bytes(wp.read_bytes() + b"x")
    assert cli.main(["validate", "--registry", str(tiny_registry)]) == 1
    err = capsys.readouterr().err
    assert "tiny.yaml: key 'sha256'" in err


def test_validate_cli_names_file_and_key(tiny_registry, capsys):
    edit(tiny_registry / "threats" / "tiny-linf.yaml", eps=8)
    assert cli.main(["validate", "--registry", str(tiny_registry)]) == 2
    err = capsys.readouterr().err
    assert "tiny-linf.yaml: key 'eps'" in err and "8/255" in err


def test_unknown_lookup_suggests(tiny_registry):
    reg = Registry(tiny_registry)
    with pytest.raises(KeyError, match="did you mean 'tiny-linf'"):
        reg.threat("tiny-lnf")


@pytest.mark.parametrize("raw, value", [(0.1, 0.1), ("8/255", 8 / 255), ("0.5", 0.5), (1, 1.0)])
def test_parse_eps(raw, value):
    assert parse_eps(raw, Path("x.yaml")) == pytest.approx(value)


def test_content_hash_is_order_independent():
    assert content_hash({"a": 1, "b": [1, 2]}) == content_hash({"b": [1, 2], "a": 1})
    assert content_hash({"a": 1}) != content_hash({"a": 2})


def test_imagenet_preprocessing_names_are_validated(tiny_registry):
    path = tiny_registry / "models" / "digits" / "tiny.yaml"
    edit(path, dataset="imagenet", preprocessing="Crop288")
    assert Registry(tiny_registry).model("tiny").preprocessing == "Crop288"
    edit(path, preprocessing="Crop256")
    with pytest.raises(RegistryError, match="unknown preprocessing 'Crop256'.*allowed: Res256Crop224") as err:
        Registry(tiny_registry)
    assert err.value.key == "preprocessing" and str(path) in str(err.value)
