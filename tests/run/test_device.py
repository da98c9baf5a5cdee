"""One device decision: every call of the model gets its inputs on the model's device.

A wrapper records the device of every input and parameter and fails on a mismatch.  On a CUDA
machine the test also runs with ``device="cuda"`` while the data is made on the CPU (the default
device), the case that crashed the trust checks before (they received the cell's CPU tensors).
No test needs a GPU: the CUDA case is added only where one is present."""
from __future__ import annotations

import json

import pytest
import torch

import benchmark
from benchmark import cli
from benchmark.run import plan
from benchmark.run.evaluate import resolve_device, run_grid
from benchmark.registry import Registry

torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class DeviceChecked(torch.nn.Module):
    """Fails on any call whose input is not on the parameters' device; records every device seen."""

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base
        self.seen: set[str] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {str(p.device) for p in self.parameters()}
        self.seen |= params | {str(x.device)}
        if params != {str(x.device)}:
            raise AssertionError(f"input on {x.device}, parameters on {params}")
        return self.base(x)


@pytest.mark.parametrize("device", DEVICES)
def test_every_model_call_gets_inputs_on_the_model_device(tiny_registry, tiny_model, device):
    import copy

    model = DeviceChecked(copy.deepcopy(tiny_model))
    df = benchmark.evaluate(model, suite="tiny", registry=tiny_registry, n_examples=48, device=device)
    assert len(df) == 4 and (df["robust_acc"] <= df["clean_acc"]).all()
    assert model.seen == {str(torch.device(device if device == "cpu" else "cuda:0"))}


def test_device_decision():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a missing CUDA device")
def test_cli_cuda_without_cuda_is_a_usage_error(tiny_registry, tmp_path, capsys):
    rc = cli.main(["run", "--suite", "tiny", "--registry", str(tiny_registry), "--results", str(tmp_path),
                   "--device", "cuda", "--no-progress"])
    assert rc == 2 and "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("device", DEVICES)
def test_results_record_device_and_versions(tiny_registry, tmp_path, device):
    reg = Registry(tiny_registry)
    cells = plan.plan_suite(reg, "tiny", shifts="id", threats="tiny-linf")
    run_grid(cells, reg, tmp_path, progress=False, device=device)
    r = json.loads((tmp_path / cells[0].filename).read_text())
    assert r["device"] == torch.device(device).type
    assert {"torch", "torchvision", "numpy", "scipy", "scikit-learn", "pillow", "matplotlib",
            "pyautoattack"} <= set(r["versions"])
    assert "batch_size" not in r  # our attacks draw per example: the batch size cannot change the number
