"""The API reference (docs/api.md) matches the docstrings, covers the public API, and the README
points to it and to nothing outside the repository."""

import os
import re
import subprocess
import sys

import focalops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_api_reference_is_current():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "make_api.py"), "--check"], cwd=ROOT)
    assert proc.returncode == 0, "docs/api.md is out of date: run python docs/make_api.py"


def test_api_reference_covers_the_public_api():
    text = open(os.path.join(ROOT, "docs", "api.md")).read()
    for name in focalops.__all__:
        assert f"### `focalops.{name}(" in text, name


def test_readme_links_stay_inside_the_repository():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "docs/api.md" in readme
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert os.path.exists(os.path.join(ROOT, target)), target
    assert "SPEC.md" not in readme and "../shared" not in readme
