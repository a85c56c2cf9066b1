"""The run forms of the Prefect UI (issue 19 item 5): every domain parameter is a dropdown.

The form is drawn from Prefect's own parameter schema (``parameter_schema(flow.fn)``, what
``prefect deploy`` sends). A choice shows as a dropdown only when the property carries its
``enum`` (or a ``$ref`` to one) itself; inside an ``anyOf`` with ``null`` the form shows a
str/None toggle ("Property is type None") and hides the choices.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from prefect import Flow
from prefect.utilities.callables import parameter_schema

from flows.params import ALL_DOMAINS, DOMAINS

ROOT = Path(__file__).resolve().parents[1]


def _flows() -> dict[str, Flow]:
    out = {}
    for path in sorted((ROOT / "flows").glob("*.py")):
        module = importlib.import_module(f"flows.{path.stem}")
        out.update({obj.name: obj for obj in vars(module).values() if isinstance(obj, Flow)})
    return out


def _choices(prop: dict, definitions: dict) -> list:
    """The enum a form property offers directly (itself, its ``$ref``, or its array items), else []."""
    if "$ref" in prop:
        prop = definitions[prop["$ref"].rsplit("/", 1)[-1]]
    if prop.get("type") == "array":
        return _choices(prop.get("items", {}), definitions)
    return list(prop.get("enum", []))


def _domain_params() -> list[tuple[str, str]]:
    return [(name, p) for name, f in _flows().items() for p in parameter_schema(f.fn).properties if "domain" in p
            and p != "data_versions"]


def test_the_flows_with_a_domain_parameter_are_known():
    assert set(_domain_params()) == {("prepare-data", "domain"), ("prepare-data", "domains"),
                                     ("train-domain", "domain")}


@pytest.mark.parametrize("flow_name,param", _domain_params())
def test_every_domain_parameter_is_a_dropdown(flow_name, param):
    schema = parameter_schema(_flows()[flow_name].fn).model_dump()
    prop = schema["properties"][param]
    assert "anyOf" not in prop and "oneOf" not in prop, prop
    choices = _choices(prop, schema.get("definitions", {}))
    assert set(DOMAINS) <= set(choices) and set(choices) <= {*DOMAINS, ALL_DOMAINS}, choices
    assert {"chat", "code", "math", "medical", "reasoning"} <= set(choices)  # the demo's curriculum
    if param not in schema.get("required", []):  # an optional one defaults to a value the form can show
        assert prop["default"] in ([], ALL_DOMAINS), prop["default"]


def test_optional_domain_defaults_to_every_domain_and_still_takes_none():
    from flows.prepare_data import prepare_data

    schema = parameter_schema(prepare_data.fn).model_dump()["properties"]
    assert schema["domain"]["enum"][0] == ALL_DOMAINS and schema["domain"]["default"] == ALL_DOMAINS
    assert schema["domains"]["type"] == "array" and schema["domains"]["default"] == []
    # what Prefect checks before a run starts: Python callers (the CLI, watch-sources) may pass None
    for given in ({"domain": None, "domains": None}, {"domain": "math", "domains": ["math", "code"]}, {}):
        params = prepare_data.validate_parameters({"config_path": "configs/demo.yaml", **given})
        assert params["domain"] == given.get("domain", ALL_DOMAINS)
