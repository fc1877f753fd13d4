"""The packages are layered one way: each may import only the packages below it.

Every ``import`` and ``from ... import`` of every module is read with :mod:`ast`, including the
imports inside functions (a lazy import is still a dependency). The table is the one in README.md
("Layers"); change both together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from testkit.paths import REPO

OURS = ("tavicore", "tavidata", "segmentation", "dicom_node", "training", "taviseg", "testkit", "bench",
        "tests", "conf")
_PRODUCT_BELOW_CLI = {"tavicore", "tavidata", "segmentation", "dicom_node", "training"}
#: package -> the packages of ours it may import (besides itself). ``conf`` holds only YAML data.
ALLOWED: dict[str, set[str]] = {
    "tavicore": {"conf"},
    "tavidata": {"tavicore"},
    "segmentation": {"tavicore", "tavidata"},
    "dicom_node": {"tavicore", "tavidata", "segmentation"},
    "training": {"tavicore", "tavidata", "segmentation"},
    "testkit": _PRODUCT_BELOW_CLI,
    "taviseg": _PRODUCT_BELOW_CLI | {"testkit", "conf"},
    "bench": _PRODUCT_BELOW_CLI | {"testkit"},
}


def imported_modules(path: Path, *, include_conf: bool = False) -> dict[str, int]:
    """Every module of ours that ``path`` imports, by dotted name -> line (lazy imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in OURS and (include_conf or top != "conf"):
                found.setdefault(name, node.lineno)
    return found


def imported_packages(path: Path) -> dict[str, int]:
    """Our top-level packages imported anywhere in ``path`` -> the first line importing each."""
    found: dict[str, int] = {}
    for name, line in sorted(imported_modules(path, include_conf=True).items(), key=lambda item: item[1]):
        found.setdefault(name.split(".")[0], line)
    return found


def violations(package: str) -> list[str]:
    """``file:line imports X`` for every import of ``package`` that the table does not allow."""
    allowed = ALLOWED[package] | {package}
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for top, line in imported_packages(path).items():
            if top not in allowed:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {top}")
    return bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_the_layers_below(package: str) -> None:
    assert (REPO / package).is_dir()
    assert violations(package) == []


def test_the_checker_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from training.train import train\n    import dicom_node.node\n")
    assert imported_packages(module) == {"training": 4, "dicom_node": 5}


def test_nothing_below_the_cli_imports_it() -> None:
    for package, allowed in ALLOWED.items():
        if package != "taviseg":
            assert "taviseg" not in allowed, package


def test_every_import_of_ours_names_a_module_that_exists() -> None:
    """A moved module leaves no import behind, not even one inside a function."""
    missing = []
    for package in (*ALLOWED, "tests"):
        for path in sorted((REPO / package).rglob("*.py")):
            for name, line in imported_modules(path).items():
                parts = name.split(".")
                as_module = REPO.joinpath(*parts).with_suffix(".py")
                as_package = REPO.joinpath(*parts) / "__init__.py"
                if not (as_module.is_file() or as_package.is_file()):
                    missing.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert missing == []


def test_every_package_is_in_the_table() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert packages - {"tests", "conf"} == set(ALLOWED)
