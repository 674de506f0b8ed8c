"""The install files say what they install, on the Python versions they claim.

Why: `pyproject.toml` once claimed Python 3.10 while the pinned numpy and pandas have no wheels
for it, so `make setup` failed there; and every demo user got the test tools too. These tests
read the installed packages' own metadata, so they need no network.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TEST_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "selenium", "ruff"}
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def pins(file_name: str) -> dict[str, str]:
    """`{canonical name: version}` of the `name==version` lines of one requirements file."""
    found = {}
    for line in (ROOT / file_name).read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            found[canonicalize_name(match[1])] = match[2]
    return found


def claimed_pythons() -> list[Version]:
    """The 3.x minor versions that pyproject.toml's `requires-python` admits."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    claimed = SpecifierSet(project["requires-python"])
    return [Version(f"3.{minor}") for minor in range(0, 30) if Version(f"3.{minor}") in claimed]


def test_requires_python_is_a_bounded_range_that_includes_this_interpreter():
    import sys

    versions = claimed_pythons()
    assert versions and versions[-1] < Version("3.29"), "requires-python needs an upper bound"
    assert Version(f"{sys.version_info.major}.{sys.version_info.minor}") in versions


@pytest.mark.parametrize("file_name", ["requirements.txt", "requirements-dev.txt"])
def test_every_pinned_package_installs_on_every_claimed_python(file_name):
    """Each pin's own `Requires-Python` admits every version `requires-python` claims."""
    versions = claimed_pythons()
    refused = []
    for name, version in pins(file_name).items():
        installed = metadata.distribution(name)
        assert installed.version == version, (
            f"{name}: installed {installed.version}, pinned {version}"
        )
        needs = installed.metadata.get("Requires-Python")
        if needs:
            refused += [
                f"{name}=={version} needs Python {needs}, not {v}"
                for v in versions
                if v not in SpecifierSet(needs)
            ]
    assert not refused, refused


def test_demo_requirements_hold_no_test_tools_and_pin_every_direct_dependency():
    runtime = pins("requirements.txt")
    assert not TEST_TOOLS & set(runtime), TEST_TOOLS & set(runtime)
    assert set(pins("requirements-dev.txt")) >= TEST_TOOLS
    for file_name in ("requirements.in", "requirements-dev.in"):
        for line in (ROOT / file_name).read_text(encoding="utf-8").splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r "):
                assert PIN.match(line), f"{file_name}: {line!r} is not pinned with =="
    direct = pins("requirements.in")
    assert all(runtime.get(name) == version for name, version in direct.items())


def test_make_demo_installs_only_the_demo_requirements():
    """`make -n -B demo` lists every command `make demo` would run, without running them."""
    commands = subprocess.run(
        ["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "-r requirements.txt" in commands
    assert "requirements-dev" not in commands
    test_commands = subprocess.run(
        ["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "-r requirements-dev.txt" in test_commands
