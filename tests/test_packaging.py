"""Every declared dependency has a floor that CI tries, and every third-party import is declared.

pyproject.toml gives each dependency a `>=` floor; .ci/floors.txt pins each one `==` that floor, and .ci/floors
installs exactly those pins and runs the suite against them. So a floor is a version that was tried, and the
two files must not drift apart. A module of gql/ that imports a distribution not in [project].dependencies (or
a test importing one in neither that nor the `test` extra) works only by the accident of a transitive install.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"gql", "tests", "bench"}
# name[extras] followed by comma-separated specifiers, e.g. "redis[hiredis]>=8.0.0,<9"; markers are not used.
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9_,.-]+\])?(?P<specs>.*)$")
SPEC = re.compile(r"^(?P<op>==|>=|<=|!=|~=|<|>)(?P<version>[A-Za-z0-9.*+!-]+)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(requirement: str) -> tuple[str, list[tuple[str, str]]]:
    match = REQUIREMENT.match(requirement.replace(" ", ""))
    assert match, f"cannot parse requirement {requirement!r}"
    specs = [s for s in match["specs"].split(",") if s]
    parsed = []
    for spec in specs:
        spec_match = SPEC.match(spec)
        assert spec_match, f"cannot parse specifier {spec!r} of {requirement!r}"
        parsed.append((spec_match["op"], spec_match["version"]))
    return normalize(match["name"]), parsed


def release(version: str) -> tuple[int, ...]:
    """0.34 and 0.34.0 are the same version; pins and floors here are plain release numbers."""
    assert re.fullmatch(r"\d+(\.\d+)*", version), f"floor {version!r} is not a plain release number"
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(group: str | None = None) -> dict[str, list[tuple[str, str]]]:
    table = project()
    requirements = table["dependencies"] if group is None else table["optional-dependencies"][group]
    result = {}
    for requirement in requirements:
        name, specs = parse(requirement)
        assert name not in result, f"{name} is declared twice"
        result[name] = specs
    return result


def floor_pins() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((ROOT / ".ci" / "floors.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, specs = parse(line)
        assert len(specs) == 1 and specs[0][0] == "==", f".ci/floors.txt:{number}: {line!r} is not NAME==VERSION"
        assert name not in pins, f".ci/floors.txt:{number}: {name} pinned twice"
        pins[name] = specs[0][1]
    return pins


def third_party_imports(folder: str) -> dict[str, set[str]]:
    """Top-level module -> files under folder that import it, for modules outside the stdlib and this repo."""
    modules: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".", 1)[0]
                if top not in sys.stdlib_module_names and top not in LOCAL and top != "__future__":
                    modules.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return modules


def distributions_of(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """Distribution (normalized) -> files importing it; an import no installed distribution provides fails."""
    provided = packages_distributions()
    result: dict[str, set[str]] = {}
    for module, files in modules.items():
        assert module in provided, f"{module} (imported by {sorted(files)}) comes from no installed distribution"
        for dist in provided[module]:
            result.setdefault(normalize(dist), set()).update(files)
    return result


def test_every_dependency_has_a_floor_pinned_in_floors_txt():
    pins = floor_pins()
    groups = {"dependencies": declared(), "test extra": declared("test")}
    for group, requirements in groups.items():
        for name, specs in requirements.items():
            floors = [version for op, version in specs if op == ">="]
            assert len(floors) == 1, f"{name} in {group} needs exactly one >= floor, has {specs}"
            assert all(op in (">=", "<") for op, _ in specs), f"{name} in {group}: only >= and < are used, has {specs}"
            assert name in pins, f"{name} (>={floors[0]}) is not pinned in .ci/floors.txt: CI never tries its floor"
            assert release(pins[name]) == release(floors[0]), (
                f"{name}: pyproject.toml floor >={floors[0]} but .ci/floors.txt pins =={pins[name]}; keep them equal"
            )


def test_floors_txt_pins_only_declared_dependencies_or_named_transitive_ones():
    names = set(declared()) | set(declared("test"))
    text = (ROOT / ".ci" / "floors.txt").read_text()
    for name in floor_pins().keys() - names:
        # A transitive pin must say why it is there, on its own line.
        line = next(line for line in text.splitlines() if normalize(line.split("==")[0].strip()) == name)
        assert "#" in line, f".ci/floors.txt pins {name}, which is not declared: say why in a comment on its line"


def test_every_third_party_import_of_gql_is_declared():
    runtime = set(declared())
    for dist, files in distributions_of(third_party_imports("gql")).items():
        assert dist in runtime, f"{dist} is imported by {sorted(files)} but not in [project].dependencies"


def test_every_third_party_import_of_tests_is_declared():
    available = set(declared()) | set(declared("test"))
    for dist, files in distributions_of(third_party_imports("tests")).items():
        assert dist in available, f"{dist} is imported by {sorted(files)} but in neither dependencies nor the test extra"


def test_the_checks_see_the_imports_they_guard():
    # graphql is imported directly by gql/ (not only through strawberry), so graphql-core is declared.
    assert "graphql-core" in distributions_of(third_party_imports("gql"))
    assert {"pytest", "hypothesis", "schemathesis"} <= set(distributions_of(third_party_imports("tests")))
