"""``shiftbench fetch`` against a loopback HTTP server (127.0.0.1 only) that the tests start and stop.

The server holds archives in the real formats, built here: the CIFAR-10 python tarball, a
CIFAR-10-C-like tar of ``.npy``, the CIFAR-10.1 ``.npy`` pair, an ImageNet-R-like tar (CIFAR-10-R
is built from it), a zip holding the CIFAR LPIPS network, and a RobustBench checkpoint served
where robustbench's own download code asks for it.  Every download goes through ``--mirror``;
the server can cut a connection half-way, stall, answer 404/500 or send other bytes.  Fake files
cannot match the published checksums, so the entries (and the two code tables of checksums) are
given the test files' checksums, as a user pins a copy of their own.
"""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import benchmark  # noqa: F401
from benchmark import cli
from benchmark.attacks.lpips import ARCHS
from benchmark.data import archives, loaders
from benchmark.registry import DEFAULT_REGISTRY, sha256_file
from benchmark.run import sources

RB_MODEL, RB_NAME, RB_GDRIVE = ("rb-cifar10-Linf-Wang2023Better_WRN-28-10", "Wang2023Better_WRN-28-10",
                                "1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI")  # robustbench 1.1.1's Google Drive id
P_CIFAR = "/www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
P_C = "/zenodo.org/record/2535967/files/CIFAR-10-C.tar"
P_101 = "/github.com/modestyachts/CIFAR-10.1/blob/master/datasets/cifar10.1_v6_{}.npy?raw=true"
P_R = "/people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
P_ZIP = "/perceptual-advex.s3.us-east-2.amazonaws.com/perceptual-advex-checkpoints.zip"
P_RB = f"/drive.google.com/uc?id={RB_GDRIVE}"
R_LINES = ("bird/n01530575_0.png", "bird/n01530575_1.png", "dog/n02085620_7.png")


# --------------------------------------------------------------------------- the loopback server
class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        srv = self.server
        rng = self.headers.get("Range")
        srv.log.append((self.path, rng))
        rule = srv.rules.get(self.path)
        body = srv.files.get(self.path)
        if rule in ("404", "500") or body is None:
            self.send_error(int(rule or 404))
            return
        if rule == "stall":
            time.sleep(2.0)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if rule == "cut":  # half the bytes, then the connection drops; the next request is served whole
            del srv.rules[self.path]
            self.wfile.write(body[start:start + len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.rules, srv.log = {}, {}, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


# --------------------------------------------------------------------------- archives in the real formats
def _tar(members: dict[str, bytes], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _world(tmp_path: Path, monkeypatch, server) -> dict:
    """The archives on the server, and a user registry whose entries carry their checksums."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, 8)]
    batch = pickle.dumps({"data": images.reshape(8, -1), "labels": labels})
    cifar = _tar({"cifar-10-batches-py/test_batch": batch, "cifar-10-batches-py/batches.meta": b"x" * 10}, gz=True)
    fog = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    c_tar = _tar({"CIFAR-10-C/fog.npy": _npy(fog), "CIFAR-10-C/labels.npy": _npy(np.tile(labels, 5)),
                  "CIFAR-10-C/snow.npy": _npy(fog[::-1])})
    d101, l101 = _npy(images.transpose(0, 2, 3, 1)), _npy(np.array(labels))
    r_tar = _tar({f"imagenet-r/{line.split('/')[1].split('_')[0]}/{line.split('_', 1)[1][:-4]}.jpg": _jpeg(i)
                  for i, line in enumerate(R_LINES)} | {"imagenet-r/n99999999/other.jpg": _jpeg(9)})
    net = io.BytesIO()
    torch.save(ARCHS["cifar-alexnet"]().state_dict(), net)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("checkpoints/alexnet_cifar.pt", net.getvalue())
        zf.writestr("checkpoints/other.pt", b"other")
    ckpt = io.BytesIO()
    torch.save({"w": torch.arange(6.0)}, ckpt)
    server.files.update({P_CIFAR: cifar, P_C: c_tar, P_101.format("data"): d101, P_101.format("labels"): l101,
                         P_R: r_tar, P_ZIP: zbuf.getvalue(), P_RB: ckpt.getvalue()})

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    monkeypatch.setitem(archives.ID_ARCHIVES, "cifar10", (dict(archives.ID_ARCHIVES["cifar10"][0], size=len(cifar),
                                                               md5=hashlib.md5(cifar).hexdigest()),))
    monkeypatch.setitem(loaders.ID_SOURCES, "cifar10", dict(loaders.ID_SOURCES["cifar10"], files=(
        {"path": "cifar-10-batches-py/test_batch", "md5": hashlib.md5(batch).hexdigest()},)))
    monkeypatch.setattr(sources, "DIRECT_FILES", {k: dict(v, size=len(b)) for (k, v), b in zip(
        sources.DIRECT_FILES.items(), (d101, l101))})
    user = tmp_path / "registry"

    def entry(rel: str, edit) -> None:
        data = yaml.safe_load((DEFAULT_REGISTRY / rel).read_text())
        edit(data)
        (user / rel).parent.mkdir(parents=True, exist_ok=True)
        (user / rel).write_text(yaml.safe_dump(data, sort_keys=False))

    def archive(data, body):
        a = dict(data["archives"][0], size=len(body), sha256=sha(body))
        a.pop("md5", None)
        data["archives"] = [a]

    entry("shifts/cifar10/CIFAR-10-C/cifar10-c-fog.yaml", lambda d: archive(d, c_tar))
    entry("shifts/imagenet/imagenet-r.yaml", lambda d: archive(d, r_tar))
    entry("shifts/cifar10/cifar10.1.yaml", lambda d: d.update(files=[
        {"path": "CIFAR-10.1/cifar10.1_v6_data.npy", "sha256": sha(d101)},
        {"path": "CIFAR-10.1/cifar10.1_v6_labels.npy", "sha256": sha(l101)}]))
    ids = user / "shifts" / "cifar10" / "image_ids" / "few.txt"
    ids.parent.mkdir(parents=True, exist_ok=True)
    ids.write_text("\n".join(R_LINES) + "\n")
    entry("shifts/cifar10/cifar10-r.yaml", lambda d: d["params"].update(
        image_ids="image_ids/few.txt", image_ids_sha256=sha256_file(ids)))
    data, models = tmp_path / "E", tmp_path / "E"
    data.mkdir()
    return {"registry": user, "data": data, "models": models, "batch": batch, "fog": fog, "d101": d101,
            "net": net.getvalue(), "ckpt": ckpt.getvalue(), "mirror": server.url}


def fetch(w: dict, *extra: str, shifts: str = "id,cifar10.1,cifar10-c-fog,cifar10-r",
          threats: str = "cifar10-linf-8,cifar10-ppgd", models: str = "autoattack-resnet18") -> int:
    return cli.main(["fetch", "--suite", "cifar10-linf", "--registry", str(w["registry"]), "--models", models,
                     "--shifts", shifts, "--threats", threats, "--data-dir", str(w["data"]), "--model-dir",
                     str(w["models"]), "--mirror", w["mirror"], "--no-progress", "--retries", "1", *extra])


def downloads(server) -> list[str]:
    return [p for p, _ in server.log]


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --------------------------------------------------------------------------- cases
def test_fresh_fetch_is_ready_runs_a_cell_and_a_second_fetch_downloads_nothing(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    assert fetch(w, "--jobs", "2") == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    E = w["data"]
    assert (E / "cifar-10-batches-py" / "test_batch").read_bytes() == w["batch"]
    assert not (E / "cifar-10-batches-py" / "batches.meta").exists()  # only what the layout needs
    assert np.array_equal(np.load(E / "CIFAR-10-C" / "fog.npy"), w["fog"])
    assert not (E / "CIFAR-10-C" / "snow.npy").exists()
    assert (E / "CIFAR-10.1" / "cifar10.1_v6_data.npy").read_bytes() == w["d101"]
    built = sorted(str(p.relative_to(E / "CIFAR-10-R")) for p in (E / "CIFAR-10-R").rglob("*.png"))
    assert built == sorted(R_LINES)
    with Image.open(E / "CIFAR-10-R" / R_LINES[0]) as im:
        assert im.size == (32, 32)
    assert (E / "lpips" / "alexnet_cifar.pt").read_bytes() == w["net"]
    lock = json.loads((E / "lpips" / "networks.lock").read_text())["models"]  # no published checksum: pinned
    assert lock["alexnet_cifar.pt"]["alexnet_cifar.pt"] == hashlib.sha256(w["net"]).hexdigest()
    assert "trust on first use" in err and "ready:" in err
    assert not (E / ".shiftbench-fetch").exists() and not list(E.rglob("*.tar")) and not list(E.rglob("*.zip"))
    assert sorted(downloads(server)) == sorted([P_CIFAR, P_C, P_101.format("data"), P_101.format("labels"), P_R,
                                                P_ZIP])  # CIFAR-10-C's tar once, though two files come from it
    pre = ["preflight", "--suite", "cifar10-linf", "--registry", str(w["registry"]), "--models", "autoattack-resnet18",
           "--shifts", "id,cifar10.1,cifar10-c-fog,cifar10-r", "--threats", "cifar10-linf-8,cifar10-ppgd",
           "--data-dir", str(E), "--model-dir", str(w["models"]), "--no-measure", "--results", str(tmp_path / "res")]
    assert cli.main(pre) == 0
    assert "ready: every file" in capsys.readouterr().out
    assert cli.main(["run", "--suite", "cifar10-linf", "--registry", str(w["registry"]), "--models",
                     "autoattack-resnet18", "--shifts", "id", "--threats", "cifar10-jpeg", "--n", "4", "--data-dir",
                     str(E), "--model-dir", str(w["models"]), "--results", str(tmp_path / "res"), "--no-progress"]) == 0
    (result,) = (tmp_path / "res" / "cifar10-linf").rglob("*.json")
    assert json.loads(result.read_text())["n"] == 4
    n = len(server.log)
    assert fetch(w) == 0 and len(server.log) == n  # present and verified: nothing downloaded
    assert "0 download(s)" in capsys.readouterr().err


def test_interrupted_download_resumes_with_a_range_request(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    server.rules[P_C] = "cut"
    assert fetch(w, shifts="cifar10-c-fog", threats="cifar10-linf-8") == 0, capsys.readouterr().err
    (first, _), (second, rng) = [e for e in server.log if e[0] == P_C]
    start = int(rng.removeprefix("bytes=").rstrip("-"))  # the second attempt asked for the rest only
    assert 0 < start <= len(server.files[P_C]) // 2
    assert np.array_equal(np.load(w["data"] / "CIFAR-10-C" / "fog.npy"), w["fog"])  # the tar's sha256 matched


def test_wrong_bytes_are_refused_and_nothing_is_left(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    path = P_101.format("data")
    good = server.files[path]
    server.files[path] = bytes(len(good))  # the right size, other bytes
    assert fetch(w, shifts="cifar10.1", threats="cifar10-linf-8") == 1
    err = capsys.readouterr().err
    assert f"{w['mirror']}{path}" in err and hashlib.sha256(good).hexdigest() in err
    assert hashlib.sha256(bytes(len(good))).hexdigest() in err  # expected and got
    assert leftovers(w["data"]) == []  # no file in place, no partial download


@pytest.mark.parametrize("status", ["404", "500"])
def test_http_errors_are_named_after_the_retries(tmp_path, monkeypatch, server, capsys, status):
    w = _world(tmp_path, monkeypatch, server)
    server.rules[P_CIFAR] = status
    assert fetch(w, shifts="id", threats="cifar10-linf-8") == 1
    err = capsys.readouterr().err
    assert f"{w['mirror']}{P_CIFAR}: HTTP {status}" in err and "after 2 attempts" in err
    assert downloads(server) == [P_CIFAR, P_CIFAR]  # --retries 1: two attempts
    assert leftovers(w["data"]) == []


def test_a_stalled_server_times_out(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    server.rules[P_CIFAR] = "stall"
    t0 = time.perf_counter()
    assert fetch(w, "--timeout", "0.5", "--retries", "0", shifts="id", threats="cifar10-linf-8") == 1
    assert time.perf_counter() - t0 < 15
    assert "stalled server" in capsys.readouterr().err
    assert leftovers(w["data"]) == []


def test_too_little_disk_is_refused_before_downloading(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    big = w["registry"] / "shifts/cifar10/CIFAR-10-C/cifar10-c-fog.yaml"
    data = yaml.safe_load(big.read_text())
    data["archives"][0]["size"] = 2**60  # an exabyte: more than any test machine has free
    big.write_text(yaml.safe_dump(data))
    assert fetch(w, shifts="cifar10-c-fog", threats="cifar10-linf-8") == 1
    assert "not enough free disk" in capsys.readouterr().err
    assert server.log == [] and leftovers(w["data"]) == []


def test_gated_data_prints_instructions_and_exits_1(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    r50 = w["models"] / "imagenet" / "Linf" / "Standard_R50.pt"  # present: only the gated data is missing
    r50.parent.mkdir(parents=True)
    r50.write_bytes(b"PK")
    rc = cli.main(["fetch", "--suite", "imagenet-linf", "--registry", str(w["registry"]), "--models",
                   "rb-imagenet-Linf-Standard_R50", "--shifts", "id", "--threats", "imagenet-linf-4",
                   "--data-dir", str(w["data"]), "--model-dir", str(w["models"]), "--mirror", w["mirror"],
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and server.log == []
    assert "image-net.org" in err and str(w["data"] / "val") in err and "imagenet test set" in err


def test_robustbench_checkpoint_through_robustbench_download_code(tmp_path, monkeypatch, server, capsys):
    """robustbench.utils.download_gdrive_new (gdown) fetches the checkpoint; only its URL is the
    mirror's.  The file lands where robustbench's load_model puts it and is pinned in the lock."""
    w = _world(tmp_path, monkeypatch, server)
    monkeypatch.setenv("SHIFTBENCH_WEIGHTS_LOCK", str(tmp_path / "weights.lock"))
    assert fetch(w, models=RB_MODEL, shifts="cifar10.1", threats="cifar10-linf-8") == 0, capsys.readouterr().err
    target = w["models"] / "cifar10" / "Linf" / f"{RB_NAME}.pt"
    assert target.read_bytes() == w["ckpt"] and P_RB in downloads(server)
    lock = json.loads((tmp_path / "weights.lock").read_text())["models"]
    assert lock[RB_MODEL] == {f"{RB_NAME}.pt": hashlib.sha256(w["ckpt"]).hexdigest()}
    target.unlink()  # gone, and the server now has another file: the pin must hold
    server.files[P_RB] = w["ckpt"][:-1]
    assert fetch(w, models=RB_MODEL, shifts="cifar10.1", threats="cifar10-linf-8") == 1
    assert "pinned" in capsys.readouterr().err and not target.exists()


def test_from_dir_verifies_and_unpacks_without_network(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    copies = tmp_path / "copies"
    copies.mkdir()
    (copies / "CIFAR-10-C.tar").write_bytes(server.files[P_C])
    (copies / "cifar-10-python.tar.gz").write_bytes(server.files[P_CIFAR])
    assert fetch(w, "--from-dir", str(copies), shifts="id,cifar10-c-fog", threats="cifar10-linf-8") == 0
    assert server.log == [] and (copies / "CIFAR-10-C.tar").is_file()  # never deleted
    assert np.array_equal(np.load(w["data"] / "CIFAR-10-C" / "fog.npy"), w["fog"])
    (copies / "cifar-10-python.tar.gz").write_bytes(b"not it")
    (w["data"] / "cifar-10-batches-py" / "test_batch").unlink()
    assert fetch(w, "--from-dir", str(copies), shifts="id", threats="cifar10-linf-8") == 1
    assert "from --from-dir" in capsys.readouterr().err


def test_dry_run_lists_urls_sizes_and_total_without_network(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    assert fetch(w, "--dry-run", shifts="id,cifar10-c-fog,cinic10") == 0
    out = capsys.readouterr().out
    assert server.log == [] and leftovers(w["data"]) == []
    assert f"{w['mirror']}{P_CIFAR}" in out and f"{w['mirror']}{P_C}" in out and f"{w['mirror']}{P_ZIP}" in out
    assert "total: 3 download(s)" in out and "not downloaded: cinic10" in out
    monkeypatch.setenv("SHIFTBENCH_MIRROR", "http://mirror.example/cache")  # the environment's mirror
    assert cli.main(["fetch", "--suite", "cifar10-linf", "--registry", str(w["registry"]), "--models",
                     "autoattack-resnet18", "--shifts", "id", "--threats", "cifar10-linf-8", "--data-dir",
                     str(w["data"]), "--dry-run"]) == 0
    assert f"http://mirror.example/cache{P_CIFAR}" in capsys.readouterr().out


def test_preflight_says_whether_fetch_gets_each_missing_item(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    rc = cli.main(["preflight", "--suite", "cifar10-linf", "--registry", str(w["registry"]), "--models",
                   "autoattack-resnet18", "--shifts", "id,cinic10", "--threats", "cifar10-linf-8", "--data-dir",
                   str(w["data"]), "--no-measure", "--results", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert rc == 1
    line = next(ln for ln in out.splitlines() if "test_batch" in ln)
    assert "fetch gets it: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in line
    line = next(ln for ln in out.splitlines() if "CINIC-10" in ln and "missing" in ln)
    assert "fetch cannot get it" in line and "datashare.ed.ac.uk" in line
    assert "`shiftbench fetch --suite cifar10-linf`" in out and "gets 1 of them" in out


def test_run_fetch_gets_what_the_cells_need_then_runs_them(tmp_path, monkeypatch, server, capsys):
    w = _world(tmp_path, monkeypatch, server)
    rc = cli.main(["run", "--suite", "cifar10-linf", "--registry", str(w["registry"]), "--models", "autoattack-resnet18",
                   "--shifts", "id", "--threats", "cifar10-jpeg", "--n", "4", "--data-dir", str(w["data"]),
                   "--model-dir", str(w["models"]), "--results", str(tmp_path / "res"), "--no-progress", "--fetch",
                   "--mirror", w["mirror"]])
    assert rc == 0, capsys.readouterr().err
    assert downloads(server) == [P_CIFAR]  # only what the cells to run need
    (result,) = (tmp_path / "res" / "cifar10-linf").rglob("*.json")
    assert json.loads(result.read_text())["threat"] == "cifar10-jpeg"
