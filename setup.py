"""Build hook: the wheel carries a copy of the repository's top-level ``registry/`` (suites, shifts,
threats, the digits zoo and its weights) as package data in ``benchmark/_registry``, so that an
installed shiftbench has its built-in registry.  ``registry/`` stays the one source; everything
else about the package is in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

REGISTRY = Path(__file__).resolve().parent / "registry"


class build_py_with_registry(build_py):  # noqa: N801  (setuptools command naming)
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads registry/ in place
        if not (REGISTRY / "suites").is_dir():
            raise SystemExit(f"{REGISTRY}: the built-in registry is missing; build from a full checkout or sdist")
        target = Path(self.build_lib) / "benchmark" / "_registry"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(REGISTRY, target, ignore=shutil.ignore_patterns("__pycache__", ".*"))


setup(cmdclass={"build_py": build_py_with_registry})
