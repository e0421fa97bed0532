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
    script = ("import sys, json; before = set(sys.modules); " + statement +
              "; print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return {name for name in json.loads(result.stdout) if not name.startswith("_")}  # the interpreter's own


@pytest.mark.parametrize("module", ["bridge.core.executions", "bridge.store.sqlite", "bridge.store.redis",
                                    "bridge.service.monitor", "bridge.telemetry.metrics"])
def test_it_keeps_flask_out_of_the_layers_below_the_web(module):
    assert not loaded_after(f"import {module}") & {"flask", "werkzeug", "gunicorn"}


def test_it_keeps_the_core_on_the_standard_library_orjson_and_cronsim():
    third_party = loaded_after("import bridge.core.executions, bridge.core.events, bridge.core.ids, "
                               "bridge.core.jsoncodec, bridge.core.tasks") - set(sys.stdlib_module_names)
    assert third_party == {"bridge", "orjson", "cronsim"}


def test_it_keeps_the_container_side_on_the_standard_library():
    loaded = loaded_after("import bridge.client, bridge.container.run")
    assert loaded - set(sys.stdlib_module_names) == {"bridge"}


def test_it_spells_every_metric_name_once():
    names = {value.name for value in vars(families).values() if isinstance(value, families.Family)}
    names |= {family.name for family in families.EXECUTION_FAMILIES}
    sources = {path: path.read_text() for path in (ROOT / "bridge").rglob("*.py")}
    for name in names:
        spelled = [path.relative_to(ROOT).as_posix() for path, text in sources.items()
                   if re.search(rf"[\"']{name}\b", text)]  # in code: a string that starts with it
        assert spelled == ["bridge/telemetry/families.py"], (name, spelled)
