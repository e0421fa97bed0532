"""The layout's promises: what each layer imports, and every metric name spelled once."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from bridge.telemetry import families

from support import ROOT


def loaded_after(statement: str) -> set[str]:
    """Return the top-level modules that running ``statement`` loads into a fresh interpreter,
    beyond those its start-up loaded (site hooks such as an editable install's finder)."""
    script = (
        "import sys, json; before = set(sys.modules); "
        + statement
        + "; print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return {name for name in json.loads(result.stdout) if not name.startswith("_")}  # the interpreter's own


@pytest.mark.parametrize(
    "module",
    [
        "bridge.core.executions",
        "bridge.store.sqlite",
        "bridge.store.redis",
        "bridge.service.monitor",
        "bridge.telemetry.metrics",
    ],
)
def test_it_keeps_flask_out_of_the_layers_below_the_web(module):
    assert not loaded_after(f"import {module}") & {"flask", "werkzeug", "gunicorn"}


def test_it_keeps_the_core_on_the_standard_library_orjson_and_cronsim():
    third_party = loaded_after(
        "import bridge.core.executions, bridge.core.events, bridge.core.ids, bridge.core.jsoncodec, bridge.core.tasks"
    ) - set(sys.stdlib_module_names)
    assert third_party == {"bridge", "orjson", "cronsim"}


def test_it_keeps_the_container_side_on_the_standard_library():
    loaded = loaded_after("import bridge.client, bridge.container.run")
    assert loaded - set(sys.stdlib_module_names) == {"bridge"}


def test_it_spells_every_metric_name_once():
    names = {value.name for value in vars(families).values() if isinstance(value, families.Family)}
    names |= {family.name for family in families.EXECUTION_FAMILIES}
    sources = {path: path.read_text() for path in (ROOT / "bridge").rglob("*.py")}
    for name in names:
        spelled = [
            path.relative_to(ROOT).as_posix() for path, text in sources.items() if re.search(rf"[\"']{name}\b", text)
        ]  # in code: a string that starts with it
        # the counters the rules move are named in the core, every other family where it is defined
        assert spelled in (["bridge/telemetry/families.py"], ["bridge/core/counters.py"]), (name, spelled)


#: The layers of the package, lowest first: a module imports its own layer's and lower ones'.
LAYERS = {
    "assets": 0,
    "core": 0,
    "container": 0,
    "store": 1,
    "agent": 1,
    "telemetry": 2,
    "service": 3,
    "web": 4,
    "server": 5,
}


def _imports() -> dict[str, set[str]]:
    """Return each module of bridge/ and the modules of bridge/ it imports (TYPE_CHECKING ones too)."""
    import ast

    graph: dict[str, set[str]] = {}
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "bridge").rglob("*.py")
    }
    for path in (ROOT / "bridge").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        package = module.removesuffix(".__init__") if module.endswith(".__init__") else module.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                candidates = [f"{target}.{alias.name}" for alias in node.names] + [target]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            found |= {
                next(c for c in (name, name.rpartition(".")[0]) if c in modules)
                for name in candidates
                if name in modules or name.rpartition(".")[0] in modules
            }
        graph[module.removesuffix(".__init__")] = found - {module.removesuffix(".__init__")}
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_it_imports_only_down_the_layers():
    upward = [
        f"{module} -> {target}"
        for module, targets in _imports().items()
        for target in targets
        if _layer(module) is not None and _layer(target) is not None and _layer(target) > _layer(module)
    ]
    assert upward == []


def test_it_has_no_import_cycle_between_modules():
    graph = _imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if (
                target.startswith("bridge.")
                and target.count(".") == 1
                and target in graph
                and target == module.rpartition(".")[0]
            ):
                continue  # a module importing its own package's face is not a cycle of modules
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target] if target in path else [module, target])
            elif state.get(target) is None:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


#: Fragments of the rules that only bridge/core/inputs.py (and ids.py, below it) may spell.
_RULE_FRAGMENTS = {
    "the UUID pattern": "{8}-[0-9a-fA-F]{4}",
    "the label name pattern": "[a-zA-Z_][a-zA-Z0-9_]",
    "the control-character test": "\\x00-\\x1f",
    "the control-character test, by code point": "ord(c) < 32",
    "the reserved task name": '"_other"',
    "the task-name length": "> 128",
    "the ping key pattern": "[-a-zA-Z0-9_]{1,128}",
}
_RULE_HOMES = {"bridge/core/inputs.py", "bridge/core/ids.py"}
#: The layers behind the doors. (The container side and the agent are the doors' clients, on
#: the standard library alone; PromQL's matchers in the rules command are not an input rule.)
_DOOR_LAYERS = ("core", "store", "service", "telemetry", "web")


@pytest.mark.parametrize("rule", sorted(_RULE_FRAGMENTS))
def test_it_keeps_each_input_rule_in_the_core(rule):
    fragment = _RULE_FRAGMENTS[rule]
    spelled = [
        path.relative_to(ROOT).as_posix()
        for layer in _DOOR_LAYERS
        for path in (ROOT / "bridge" / layer).rglob("*.py")
        if fragment in path.read_text() and path.relative_to(ROOT).as_posix() not in _RULE_HOMES
    ]
    assert spelled == [], f"{rule} is written again in {spelled}: call bridge.core.inputs instead"


@pytest.mark.parametrize(
    "door",
    [
        "bridge/web/validation.py",
        "bridge/web/pings.py",
        "bridge/web/sentry.py",
        "bridge/web/tasks.py",
        "bridge/service/tasks_file.py",
        "bridge/core/declarations.py",
    ],
)
def test_it_has_every_door_check_its_values_through_the_core_rules(door):
    text = (ROOT / door).read_text()
    assert re.search(r"^from \.+(core )?import .*\binputs\b|^from \. import inputs", text, re.MULTILINE), door
    assert 're.compile(r"[' not in text.replace("_TRACEPARENT_FORM = re.compile", ""), door


def test_it_answers_no_refusal_in_a_view_itself():
    # Views raise; each blueprint's handler (bridge.web.errors.refusals) counts and answers.
    for path in (ROOT / "bridge" / "web").glob("*.py"):
        text = path.read_text()
        assert ".reject(" not in text or path.name in ("errors.py", "ingest.py"), path.name
        assert "except ApiError" not in text and "except BridgeError as" not in text.replace(
            "    except BridgeError as exc:\n        return exc", ""
        ), path.name
