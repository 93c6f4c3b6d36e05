"""The lock files pin every dependency, with hashes, and the suite runs on exactly those pins.

A fresh clone once installed whatever was newest that day, which is how `/openapi.json`
broke without a commit. `make install`, `.ci/run` and the Dockerfile now install from
requirements/*.txt; these tests fail when pyproject.toml gains a dependency the lock lacks,
when a pin has no hash, or when the environment running the suite drifted from the lock.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$")


def pins(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for each pin in a uv/pip-tools compiled file that
    applies to this interpreter (a pin behind an environment marker may not)."""
    found: dict[str, tuple[str, int]] = {}
    name = None
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        match = PIN.match(line)
        if match:
            marker = match.group(3)
            if marker and not Marker(marker).evaluate():
                name = None
                continue
            name = canonicalize_name(match.group(1))
            found[name] = (match.group(2), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
        elif not line.startswith(" "):
            name = None
    return found


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(*extras: str) -> list[Requirement]:
    table = project()
    wanted = [Requirement(spec) for spec in table["dependencies"]]
    pending = list(extras)
    while pending:
        for spec in table["optional-dependencies"][pending.pop()]:
            requirement = Requirement(spec)
            if canonicalize_name(requirement.name) == "conveyor":
                pending.extend(requirement.extras)
            else:
                wanted.append(requirement)
    return wanted


@pytest.mark.parametrize(
    ("lock", "extras"), [("dev.txt", ("dev",)), ("runtime.txt", ()), ("bench.txt", ("bench",))]
)
def test_every_declared_dependency_is_pinned_with_hashes(lock: str, extras: tuple[str, ...]) -> None:
    locked = pins(lock)
    for requirement in declared(*extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is in pyproject.toml but not in {lock}: run `make lock`"
        version = locked[name][0]
        assert requirement.specifier.contains(Version(version), prereleases=True), (
            f"{lock} pins {name}=={version}, outside pyproject.toml's {requirement}: run `make lock`"
        )
    unhashed = [name for name, (_, hashes) in locked.items() if hashes == 0]
    assert not unhashed, f"{lock} pins without hashes: {unhashed}"


def test_runtime_and_dev_locks_agree() -> None:
    dev, runtime = pins("dev.txt"), pins("runtime.txt")
    differ = {name: (version, dev.get(name, ("missing",))[0]) for name, (version, _) in runtime.items()}
    assert {n: v for n, v in differ.items() if v[0] != v[1]} == {}


def test_the_peers_bench_runs_conveyor_on_its_runtime_pins() -> None:
    """bench/peers.py measures Conveyor as it ships: the bench lock may add the peers, never move a pin."""
    runtime, bench = pins("runtime.txt"), pins("bench.txt")
    assert {
        n: (v, bench.get(n, ("missing",))[0]) for n, (v, _) in runtime.items() if bench.get(n, ("",))[0] != v
    } == {}


def test_the_suite_runs_on_the_locked_versions() -> None:
    drifted = []
    for name, (version, _) in pins("dev.txt").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            drifted.append(f"{name}: locked {version}, not installed")
            continue
        if Version(installed) != Version(version):
            drifted.append(f"{name}: locked {version}, installed {installed}")
    assert not drifted, "this environment is not the lock's; run `make install`:\n" + "\n".join(drifted)


def test_installs_come_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements/dev.txt" in makefile
    assert "--no-deps -e ." in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements/runtime.txt" in dockerfile
    assert dockerfile.count("--require-hashes") == 2  # the image's venv and the Lambda image
