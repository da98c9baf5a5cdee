"""Published archive checksums: entries record them with their source, `verify-archives` checks them."""
from __future__ import annotations

import hashlib

import pytest
import yaml

from benchmark.data import archives
from benchmark import cli
from benchmark.registry import Registry, RegistryError

REAL = Registry(check_files=False)


def test_real_suites_list_their_archives_once():
    names = {sid: sorted(a["name"] for a, _ in archives.suite_archives(REAL, REAL.suite(sid)))
             for sid in ("cifar10-linf", "cifar100-linf", "imagenet-linf")}
    assert names["cifar10-linf"] == ["CIFAR-10-C.tar", "cifar-10-python.tar.gz"]
    assert names["cifar100-linf"] == ["CIFAR-100-C.tar", "cifar-100-python.tar.gz"]
    assert names["imagenet-linf"] == ["ILSVRC2012_img_val.tar", "blur.tar", "digital.tar", "imagenet-a.tar",
                                      "imagenet-r.tar", "imagenetv2-matched-frequency.tar.gz", "noise.tar",
                                      "weather.tar"]
    ((archive, users),) = archives.suite_archives(REAL, REAL.suite("cifar10-linf"), "cifar10-c-*")
    assert archive["name"] == "CIFAR-10-C.tar" and len(users) == 15 and all(u.startswith("cifar10-c-") for u in users)
    for sid in ("cifar10-linf", "cifar100-linf", "imagenet-linf"):
        for a, _ in archives.suite_archives(REAL, REAL.suite(sid)):
            assert a["source"] and (a.get("md5") or a.get("sha256")), a["name"]


def _archive(tmp_path, name: str, data: bytes, **published) -> dict:
    (tmp_path / name).write_bytes(data)
    return {"name": name, "url": "https://example.org/" + name, "source": "test", **published}


def test_verify_compares_size_and_checksums(tmp_path):
    data = b"shiftbench archive\n" * 100
    md5, sha = hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()
    ok = archives.verify(_archive(tmp_path, "a.tar", data, size=len(data), md5=md5, sha256=sha), tmp_path)
    assert ok.status == "ok" and not ok.problems
    bad = archives.verify(_archive(tmp_path, "b.tar", data + b"x", md5=md5, sha256=sha), tmp_path)
    assert bad.status == "mismatch" and len(bad.problems) == 2 and "published " + md5 in bad.problems[0]
    short = archives.verify(_archive(tmp_path, "c.tar", data[:10], size=len(data), md5=md5), tmp_path)
    assert short.status == "mismatch" and short.problems == [f"size 10 bytes, published {len(data)}"]
    gone = archives.verify({"name": "d.tar", "url": "https://example.org/d.tar", "md5": md5, "source": "x"}, tmp_path)
    assert gone.status == "missing" and "https://example.org/d.tar" in gone.describe()


def test_verify_archives_cli(tmp_path, capsys):
    (tmp_path / "CIFAR-10-C.tar").write_bytes(b"not the real archive")
    rc = cli.main(["verify-archives", "--suite", "cifar10-linf", "--shifts", "cifar10-c-*",
                   "--archive-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1 and "MISMATCH" in out and "size 20 bytes, published 2918471680" in out
    assert "tensorflow_datasets/url_checksums/cifar10_corrupted.txt" in out  # says who published it
    rc = cli.main(["verify-archives", "--suite", "cifar10-linf", "--shifts", "id", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1 and out.startswith("missing") and "cifar-10-python.tar.gz" in out


@pytest.mark.parametrize("item, fragment", [
    ({"name": "x.tar", "url": "u", "md5": "abc", "source": "s"}, "32 lowercase hex"),
    ({"name": "x.tar", "url": "u", "md5": "0" * 32}, "needs 'source'"),
    ({"name": "x.tar", "url": "u", "source": "s"}, "published md5 or sha256"),
    ({"name": "d/x.tar", "url": "u", "md5": "0" * 32, "source": "s"}, "plain file name"),
    ({"name": "x.tar", "url": "u", "md5": "0" * 32, "source": "s", "size": -1}, "positive number"),
    ({"name": "x.tar", "url": "u", "md5": "0" * 32, "source": "s", "crc": 1}, r"unknown key\(s\) crc"),
])
def test_bad_archive_items_name_file_and_key(tiny_registry, item, fragment):
    path = tiny_registry / "shifts" / "digits" / "gaussian_noise.yaml"
    entry = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**entry, "archives": [item]}))
    with pytest.raises(RegistryError, match=fragment) as err:
        Registry(tiny_registry)
    assert err.value.key == "archives[0]" and str(path) in str(err.value)


def test_bad_file_items_are_refused(tiny_registry):
    path = tiny_registry / "shifts" / "digits" / "gaussian_noise.yaml"
    entry = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**entry, "files": [{"path": "a.npy", "sha256": "xyz"}]}))
    with pytest.raises(RegistryError, match="64 lowercase hex") as err:
        Registry(tiny_registry)
    assert err.value.key == "files[0]"
