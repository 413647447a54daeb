"""The package uses Dagster's public API only: private modules change without notice between
releases, so an upgrade must never break a code location through them."""

import ast
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mixpanel_assets"


def _is_dagster(package: str) -> bool:
    return package == "dagster" or package.startswith("dagster_")


def _private(module: str) -> bool:
    """`dagster._core...`, `dagster_aws.s3._utils...`: a private module of a Dagster distribution."""
    top, *rest = module.split(".")
    return _is_dagster(top) and any(part.startswith("_") for part in rest)


def private_dagster_uses(source: str, filename: str) -> list[str]:
    """Every import of a private Dagster module or name, and every `dg._x` attribute, by line."""
    tree = ast.parse(source, filename)
    dagster_names: set[str] = set()  # local names bound to a Dagster package (`import dagster as dg`)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_dagster(alias.name.split(".")[0]):
                    dagster_names.add(alias.asname or alias.name.split(".")[0])
                if _private(alias.name):
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if _private(node.module):
                found.append((node.lineno, f"from {node.module} import ..."))
            elif _is_dagster(node.module.split(".")[0]):
                found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names if a.name.startswith("_")]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in dagster_names
                and node.attr.startswith("_")):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return [f"{filename}:{line}: {use}" for line, use in sorted(found)]


def test_no_module_of_the_package_uses_a_private_dagster_module():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    found = [use for path in files for use in private_dagster_uses(path.read_text(encoding="utf-8"), str(path))]
    assert found == []


def test_the_scan_sees_every_form_of_private_import():
    source = textwrap.dedent("""
        import dagster as dg
        import dagster._core.events
        from dagster._core.definitions import x
        from dagster import _check
        from dagster_aws.s3._utils import y
        def f():
            from dagster._utils import z  # function-level imports count too
            return dg._core
        from dagster import AssetKey  # public: fine
        import dagster_aws.s3  # public: fine
    """)
    assert [u.split(": ", 1)[1] for u in private_dagster_uses(source, "m.py")] == [
        "import dagster._core.events",
        "from dagster._core.definitions import ...",
        "from dagster import _check",
        "from dagster_aws.s3._utils import ...",
        "from dagster._utils import ...",
        "dg._core",
    ]
