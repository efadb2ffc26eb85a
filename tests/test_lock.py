"""requirements-test.lock, the environment the README's test command installs without resolving, stays whole.

It is pip's resolution of ``.[test]`` under constraints.txt written down (tools/lock-test-env). These checks
fail when it drifts: a pin of constraints.txt changed without the lock, a requirement added to pyproject.toml
without the lock, or a locked package whose own dependencies are not locked (what ``--no-deps`` would leave
out). They read files and installed metadata only.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest

from conftest import ROOT

requirements = pytest.importorskip("packaging.requirements")
from packaging.utils import canonicalize_name  # noqa: E402

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s#;]+)")


def lines(path) -> list[str]:
    """The file's lines that are not blank or a comment."""
    stripped = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def pins(path) -> dict[str, str]:
    return {canonicalize_name(m.group(1)): m.group(2) for m in map(PIN.match, lines(path)) if m}


LOCK_FILE = ROOT / "requirements-test.lock"
LOCK = pins(LOCK_FILE)


def test_the_lock_pins_every_package_once_and_holds_no_installer():
    written = lines(LOCK_FILE)
    assert all(PIN.match(line) for line in written), "a line that is not name==version"
    assert len(written) == len(LOCK) > 100, "a package twice"
    assert not {"pip", "uv", "forgetting"} & set(LOCK), "the installers and the project itself are not locked"


def test_every_pin_of_constraints_txt_is_the_locked_version():
    """(A pin of a package the tests do not install, mutmut of the dev extra, is not locked.)"""
    differ = {n: (v, LOCK[n]) for n, v in pins(ROOT / "constraints.txt").items() if n in LOCK and LOCK[n] != v}
    assert not differ, f"constraints.txt and requirements-test.lock disagree (constraint, lock): {differ}; " \
                       "run tools/lock-test-env"


def _test_requirements() -> list:
    """The project's dependencies and its test extra's, the extras it names of itself expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras, todo, seen = project["optional-dependencies"], ["test"], set()
    out = [requirements.Requirement(spec) for spec in project["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in extras[extra]:
            req = requirements.Requirement(spec)
            if canonicalize_name(req.name) == "forgetting":
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def test_every_requirement_of_the_test_extra_is_locked_at_a_version_it_allows():
    reqs = _test_requirements()
    assert any(canonicalize_name(r.name) == "torch" for r in reqs) and len(reqs) > 20
    bad = []
    for r in reqs:
        locked = LOCK.get(canonicalize_name(r.name))
        if (r.marker is None or r.marker.evaluate()) and (locked is None or
                                                          not r.specifier.contains(locked, prereleases=True)):
            bad.append(f"{r} (locked: {locked})")
    assert not bad, f"pyproject.toml asks for what requirements-test.lock lacks: {bad}; run tools/lock-test-env"


def test_the_dependencies_of_every_locked_package_are_locked():
    """What ``--no-deps`` relies on: the lock is closed under the (unconditional) requirements of its packages,
    read from their installed metadata (a package not installed here is left to the other checks)."""
    missing = {}
    for name in LOCK:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = requirements.Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an optional extra's, or another platform's
            if canonicalize_name(req.name) not in LOCK:
                missing.setdefault(name, []).append(str(req))
    assert not missing, f"locked packages need packages the lock lacks: {missing}; run tools/lock-test-env"
