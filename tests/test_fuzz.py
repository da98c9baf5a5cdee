"""Property-based fuzzing of the two readers of untrusted files: the registry loader and the
result reader.  Arbitrary YAML/JSON structures and byte strings raise nothing but our own
validation errors (RegistryError) or come back as a corrupt verdict."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmark.analysis import aggregate
from benchmark.registry import KINDS, Registry, RegistryError
from benchmark.run import plan, store
from benchmark.run.evaluate import run_grid

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                      max_leaves=20)

# keys the loader knows, so that structures reach the deeper checks
FIELDS = ["id", "source", "dataset", "architecture", "training", "weights", "sha256", "arch_args", "kind", "attack",
          "eps", "norm", "attack_args", "params", "severities", "files", "archives", "family", "id_threat",
          "dataset_shifts", "threat_shifts", "models", "n_examples", "n_shift_examples", "seed", "allow_code",
          "preprocessing", "mask_logits", "label_map", "version", "train"]
entries = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), values, max_size=10)


def _load_only_our_errors(root: Path) -> None:
    try:
        Registry(root)
    except RegistryError:
        pass


def _fresh(base: Path) -> Path:
    d = Path(tempfile.mkdtemp(dir=base))
    return d


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.one_of(entries, values), as_id=st.booleans())
def test_registry_loader_on_arbitrary_structures(tiny_registry, kind, data, as_id):
    root = _fresh(tiny_registry.parent)
    try:
        shutil.copytree(tiny_registry, root / "r")
        if as_id and isinstance(data, dict):
            data = {**data, "id": "fuzz"}
        (root / "r" / kind / "fuzz.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
        _load_only_our_errors(root / "r")
    finally:
        shutil.rmtree(root)


@FUZZ
@given(kind=st.sampled_from(KINDS), blob=st.binary(max_size=300))
def test_registry_loader_on_arbitrary_bytes(tiny_registry, kind, blob):
    root = _fresh(tiny_registry.parent)
    try:
        shutil.copytree(tiny_registry, root / "r")
        (root / "r" / kind / "fuzz.yaml").write_bytes(blob)
        _load_only_our_errors(root / "r")
    finally:
        shutil.rmtree(root)


@FUZZ
@given(field=st.sampled_from(FIELDS), value=values)
def test_registry_loader_on_mutated_real_entries(tiny_registry, field, value):
    """One field of a valid entry of each kind replaced by an arbitrary value."""
    root = _fresh(tiny_registry.parent)
    try:
        shutil.copytree(tiny_registry, root / "r")
        for path in (root / "r").rglob("*.yaml"):
            data = yaml.safe_load(path.read_text())
            path.write_text(yaml.safe_dump({**data, field: value}, allow_unicode=True))
            _load_only_our_errors(root / "r")
    finally:
        shutil.rmtree(root)


# --------------------------------------------------------------------------- result reader
_REAL: dict[str, object] = {}


def _real_result(tiny_registry: Path, base: Path) -> tuple[dict, str]:
    """A real result payload (computed once) and its file name."""
    if not _REAL:
        reg = Registry(tiny_registry)
        cell = plan.plan_suite(reg, "tiny", shifts="id", threats="tiny-linf", n_examples=30)[0]
        out = base / "real-results"
        run_grid([cell], reg, out, progress=False)
        _REAL["payload"], _REAL["name"] = store.read_json(out / cell.filename), Path(cell.filename).name
    return dict(_REAL["payload"]), str(_REAL["name"])


def _check(path: Path) -> None:
    v = store.check_result(path)
    assert v.status in (store.VERIFIED, store.UNSIGNED, store.CORRUPT)
    assert (v.payload is None) == (v.status == store.CORRUPT)
    if v.status == store.CORRUPT:
        assert v.problem and not store.is_done(path)


@FUZZ
@given(blob=st.binary(max_size=2000))
def test_result_reader_on_arbitrary_bytes(tmp_path, blob):
    p = tmp_path / "id__t__0123456789abcdef.json"
    p.write_bytes(blob)
    _check(p)


@FUZZ
@given(data=values)
def test_result_reader_on_arbitrary_json(tmp_path, data):
    p = tmp_path / "id__t__0123456789abcdef.json"
    p.write_text(json.dumps(data))
    _check(p)


@FUZZ
@given(field=st.sampled_from(["n", "clean_correct", "robust_correct", "clean_acc", "robust_acc", "key", "digest",
                              "data", "threat", "attack", "model", "checks", "extra"]),
       value=values, resign=st.booleans(), drop=st.booleans())
def test_result_reader_on_mutated_real_results(tiny_registry, tmp_path_factory, field, value, resign, drop):
    base = tmp_path_factory.getbasetemp()
    payload, name = _real_result(tiny_registry, base)
    if drop:
        payload.pop(field, None)
    else:
        payload[field] = value
    p = Path(tempfile.mkdtemp(dir=base)) / name
    (store.write_result if resign else store.write_json_atomic)(p, payload)
    _check(p)
    if field in ("clean_correct", "robust_correct", "n") and not resign and not drop:
        assert store.check_result(p).status == store.CORRUPT or value == _REAL["payload"][field]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.one_of(st.binary(max_size=500), values.map(lambda v: json.dumps(v).encode())))
def test_aggregation_survives_any_file_in_place_of_a_result(tiny_registry, tmp_path_factory, blob):
    """Whatever sits at a planned cell's path, aggregation raises nothing: the cell is counted
    present (a valid result) or corrupt and missing."""
    base = tmp_path_factory.getbasetemp()
    reg = Registry(tiny_registry)
    cell = plan.plan_suite(reg, "tiny", shifts="id", threats="tiny-linf")[0]
    root = Path(tempfile.mkdtemp(dir=base))
    path = root / "tiny" / cell.filename
    path.parent.mkdir(parents=True)
    path.write_bytes(blob)
    res = aggregate.load(reg, "tiny", root)
    assert res.n_present + res.n_corrupt == 1 and res.n_missing == res.n_planned - res.n_present
