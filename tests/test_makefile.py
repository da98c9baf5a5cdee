"""The Makefile's install hands pip's own index settings to uv, so both install from the same places."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_uv_gets_pips_index_settings(tmp_path):
    cfg = tmp_path / "pip.conf"
    cfg.write_text("[global]\nindex-url = https://mirror.example/simple\n"
                   "extra-index-url = file:///srv/a/simple file:///srv/b/simple\nfind-links = /srv/wheels\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = str(cfg)
    out = subprocess.run(["make", "-s", "-C", str(ROOT), f"PYTHON={sys.executable}", "--eval",
                          "show-indexes: ; @echo $(PIP_INDEXES)", "show-indexes"],
                         env=env, capture_output=True, text=True, check=True).stdout.split()
    pairs = set(zip(out[::2], out[1::2]))
    assert {("--index-url", "https://mirror.example/simple"), ("--extra-index-url", "file:///srv/a/simple"),
            ("--extra-index-url", "file:///srv/b/simple"), ("--find-links", "/srv/wheels")} <= pairs
    assert all(flag in ("--index-url", "--extra-index-url", "--find-links") for flag, _ in pairs)
