"""environment.yml and pyproject.toml must declare the same pinned dependencies."""
from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO_ROOT


def _name(requirement: str) -> str:
    return re.split(r"[=<>!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert {_name(r): r for r in pip_section} == {_name(r): r for r in declared}


def test_makefile_installs_the_pinned_torch_pair():
    makefile = (REPO_ROOT / "Makefile").read_text()
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for pin in ("torch==", "torchvision=="):
        version = next(r for r in project["dependencies"] if r.startswith(pin))
        assert version in makefile


def test_ci_runs_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test$", ci, re.MULTILINE)
