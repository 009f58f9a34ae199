#!/usr/bin/env python3
"""Validates the Grafana dashboards in dashboards/*.json against the Grafana Foundation SDK's
dashboard model (PyPI `grafana-foundation-sdk`, pinned in .ci/setup.sh), plus Periscope's own
rules for its dashboards.

usage: validate.py [FILE...]    validate FILEs (default: every dashboards/*.json); exit 1 on errors
       validate.py --self-test  check that broken copies of the dashboards are rejected

The SDK ships no JSON schema: it ships typed models generated from Grafana's schema (cog), whose
`from_json` reads the keys it knows. So a dashboard is decoded with `Dashboard.from_json` (with
the SDK's panel and query plugins registered: each panel's `options` and `fieldConfig.custom`
go through that panel type's own model, each Prometheus target through the Prometheus query
model), encoded back, and every key and value of the file must survive the round trip: a key
the schema does not know (a typo, an option of another panel type, an old-schema field) is
dropped by the model and reported here with its path. On top of that:
  - schemaVersion >= 39; panel types are panel plugins the SDK knows; enum fields (query format,
    variable type, threshold mode, color mode) hold values of the SDK's enums;
  - a `datasource` template variable of type datasource, query `prometheus`;
  - every panel but rows has a title, fieldConfig.defaults.unit (a unit the SDK lists) and
    datasource {type: prometheus, uid: ${datasource}}, and at least one target, each with a
    non-empty expr and the same datasource; query variables use it too;
  - no datasource UID other than ${datasource} anywhere, and no datasource given by name.
Rows (type "row") hold no query, so they carry no unit or datasource.
"""

import copy
import glob
import json
import os
import re
import sys

from grafana_foundation_sdk.cog import plugins, runtime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus, units

HERE = os.path.dirname(os.path.abspath(__file__))
DS_VAR = "${datasource}"
MIN_SCHEMA = 39

plugins.register_default_plugins()
PANEL_TYPES = set(runtime.Runtime().panelcfg_variants) | {"row"}
UNITS = {v for k, v in vars(units).items() if isinstance(v, str) and not k.startswith("_")}


def lost_in_round_trip(original, decoded, path, out):
    """Paths of `original` whose key or value did not survive the model's round trip."""
    if isinstance(original, dict):
        if not isinstance(decoded, dict):
            out.append(f"{path}: expected an object, the model gave {decoded!r}")
            return
        for key, value in original.items():
            if key not in decoded:
                out.append(f"{path}.{key}: not a field of the Grafana schema (dropped by the SDK model)")
            else:
                lost_in_round_trip(value, decoded[key], f"{path}.{key}", out)
    elif isinstance(original, list):
        if not isinstance(decoded, list) or len(decoded) != len(original):
            out.append(f"{path}: list changed in the round trip")
            return
        for i, (a, b) in enumerate(zip(original, decoded)):
            lost_in_round_trip(a, b, f"{path}[{i}]", out)
    elif original != decoded:
        out.append(f"{path}: {original!r} became {decoded!r}")


def enum_ok(enum, value):
    try:
        enum(value)
        return True
    except ValueError:
        return False


def walk_uids(node, path, out):
    """Every `datasource` anywhere must be ${datasource} (or Grafana's built-in annotations)."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}"
            if key == "datasource":
                if isinstance(value, str):
                    out.append(f"{here}: datasource given by name {value!r}")
                elif isinstance(value, dict):
                    uid = value.get("uid")
                    builtin = value.get("type") == "grafana" and uid == "-- Grafana --"
                    if uid != DS_VAR and not builtin:
                        out.append(f"{here}: hard-coded datasource uid {uid!r}")
            walk_uids(value, here, out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            walk_uids(value, f"{path}[{i}]", out)


def all_panels(panels):
    for p in panels or []:
        yield p
        yield from all_panels(p.get("panels"))


def validate(data):
    errors = []
    try:
        decoded = json.loads(json.dumps(model.Dashboard.from_json(data), cls=JSONEncoder))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        errors.append(f"$: the SDK's Dashboard model cannot decode it: {type(e).__name__}: {e}")
        walk_uids(data, "$", errors)
        return errors
    lost_in_round_trip(data, decoded, "$", errors)

    if not isinstance(data.get("schemaVersion"), int) or data["schemaVersion"] < MIN_SCHEMA:
        errors.append(f"$.schemaVersion: {data.get('schemaVersion')!r}, want >= {MIN_SCHEMA}")
    if not data.get("title"):
        errors.append("$.title: missing")

    variables = data.get("templating", {}).get("list", [])
    for i, v in enumerate(variables):
        where = f"$.templating.list[{i}] ({v.get('name')})"
        if not enum_ok(model.VariableType, v.get("type")):
            errors.append(f"{where}: unknown variable type {v.get('type')!r}")
        if v.get("type") == "query" and v.get("datasource") != {"type": "prometheus", "uid": DS_VAR}:
            errors.append(f"{where}: query variable must use the datasource variable")
    ds_vars = [v for v in variables if v.get("name") == "datasource"]
    if not ds_vars or ds_vars[0].get("type") != "datasource" or ds_vars[0].get("query") != "prometheus":
        errors.append("$.templating: needs a `datasource` variable of type datasource, query prometheus")

    ids = set()
    for p in all_panels(data.get("panels")):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            errors.append(f"{where}: duplicate panel id")
        ids.add(p.get("id"))
        if p.get("type") not in PANEL_TYPES:
            errors.append(f"{where}: unknown panel type {p.get('type')!r}")
        if not p.get("title"):
            errors.append(f"{where}: no title")
        if p.get("type") == "row":
            continue
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit")
        if not unit:
            errors.append(f"{where}: no fieldConfig.defaults.unit")
        elif unit not in UNITS:
            errors.append(f"{where}: unit {unit!r} is not a Grafana unit")
        if "thresholds" in defaults and not enum_ok(model.ThresholdsMode, defaults["thresholds"].get("mode")):
            errors.append(f"{where}: bad thresholds mode")
        if "color" in defaults and not enum_ok(model.FieldColorModeId, defaults["color"].get("mode")):
            errors.append(f"{where}: bad color mode {defaults['color'].get('mode')!r}")
        if p.get("datasource") != {"type": "prometheus", "uid": DS_VAR}:
            errors.append(f"{where}: datasource must be {{type: prometheus, uid: {DS_VAR}}}")
        targets = p.get("targets") or []
        if not targets:
            errors.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            errors.append(f"{where}: duplicate refId")
        for t in targets:
            tw = f"{where} target {t.get('refId')}"
            if not t.get("expr", "").strip():
                errors.append(f"{tw}: empty expr")
            if t.get("datasource") != {"type": "prometheus", "uid": DS_VAR}:
                errors.append(f"{tw}: datasource must be the datasource variable")
            if "format" in t and not enum_ok(prometheus.PromQueryFormat, t["format"]):
                errors.append(f"{tw}: bad format {t['format']!r}")
            if re.search(r"histogram_quantile\([^,]+,\s*rate\(", t.get("expr", "")):
                errors.append(f"{tw}: histogram_quantile over an unaggregated rate (sum by (le, ...) first)")
        decoded_targets = model.Panel.from_json(p).targets or []
        if any(not isinstance(t, prometheus.Dataquery) for t in decoded_targets):
            errors.append(f"{where}: targets not decoded as Prometheus queries")
    walk_uids(data, "$", errors)
    return errors


def validate_files(paths):
    failed = False
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        errors = validate(data)
        panels = sum(1 for p in all_panels(data.get("panels")) if p.get("type") != "row")
        if errors:
            failed = True
            print(f"{path}: {len(errors)} error(s)")
            for e in errors:
                print(f"  {e}")
        else:
            print(f"{path}: ok ({panels} panels, schemaVersion {data['schemaVersion']})")
    return not failed


def self_test():
    """Each mutation of a valid dashboard must be rejected, with a message naming it."""
    with open(os.path.join(HERE, "services.json")) as f:
        good = json.load(f)
    assert validate(good) == [], validate(good)

    def first_panel(d):
        return next(p for p in d["panels"] if p["type"] != "row")

    def mutate(f):
        d = copy.deepcopy(good)
        f(d)
        return d

    cases = {
        "unknown panel key": (lambda d: first_panel(d).update(colour="red"), "colour"),
        "unknown options key of the panel type": (
            lambda d: first_panel(d)["options"].update(legendz={}),
            "legendz",
        ),
        "unknown target key": (lambda d: first_panel(d)["targets"][0].update(exprr="up"), "exprr"),
        "no unit": (lambda d: first_panel(d)["fieldConfig"]["defaults"].pop("unit"), "unit"),
        "bad unit": (lambda d: first_panel(d)["fieldConfig"]["defaults"].update(unit="seconds"), "unit"),
        "no title": (lambda d: first_panel(d).update(title=""), "title"),
        "hard-coded uid": (
            lambda d: first_panel(d)["targets"][0].update(datasource={"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}),
            "P1809F7CD0C75ACF3",
        ),
        "datasource by name": (lambda d: first_panel(d).update(datasource="Prometheus"), "datasource"),
        "no datasource variable": (lambda d: d["templating"].update(list=d["templating"]["list"][1:]), "datasource"),
        "old schema": (lambda d: d.update(schemaVersion=16), "schemaVersion"),
        "unknown panel type": (lambda d: first_panel(d).update(type="graph"), "graph"),
        "bad query format": (lambda d: first_panel(d)["targets"][0].update(format="heatmapz"), "format"),
        "unaggregated quantile": (
            lambda d: first_panel(d)["targets"][0].update(
                expr="histogram_quantile(0.99, rate(http_server_request_duration_seconds_bucket[5m]))"
            ),
            "unaggregated",
        ),
    }
    ok = True
    for name, (f, needle) in cases.items():
        errors = validate(mutate(f))
        if not any(needle in e for e in errors):
            print(f"self-test FAILED: {name}: not rejected ({errors})")
            ok = False
        else:
            print(f"self-test ok: {name}: {next(e for e in errors if needle in e)}")
    return ok


def main():
    args = sys.argv[1:]
    if args == ["--self-test"]:
        sys.exit(0 if self_test() else 1)
    paths = args or sorted(glob.glob(os.path.join(HERE, "*.json")))
    if not paths:
        print("no dashboards found")
        sys.exit(1)
    sys.exit(0 if validate_files(paths) else 1)


if __name__ == "__main__":
    main()
