#!/usr/bin/env python3
"""Writes the Grafana dashboards of dashboards/*.json from one description, so that every panel
gets the same datasource variable, a unit and consistent selectors.

usage: generate.py          write services.json, node-kernel.json, triage.json, periscope.json
       generate.py --check  exit 1 if a committed file differs from what this script writes

Standard library only. Every query goes through the `${datasource}` variable (no datasource
UID is written anywhere), every histogram is aggregated `sum by (le, ...)(rate(..._bucket))`
before `histogram_quantile`: Periscope gives every series of a metric the same fixed bucket
layout at every scrape, so that sum is exact across series (docs/histograms.md). HTTP duration
panels of the Services dashboard show exemplars (the trace of a sampled request in a bucket).
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


# --- template variables -------------------------------------------------------------------


def datasource_var():
    return {
        "type": "datasource",
        "name": "datasource",
        "label": "Data source",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def query_var(name, label, query):
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "skipUrlSync": False,
    }


HOST = query_var("host", "Host (Periscope instance)", "label_values(periscope_probe_attached, instance)")

# Kubernetes: the pod of each process, by the recording rule service_instance:kube_pod_info:join
# (rules/periscope-alerts.yaml: Periscope's target_info joined with kube-state-metrics'
# kube_pod_info on the pod uid). Processes in no pod have empty labels there.
POD_INFO = "service_instance:kube_pod_info:join"
NAMESPACE = query_var("namespace", "Namespace", f"label_values({POD_INFO}, namespace)")
WORKLOAD = query_var(
    "workload",
    "Workload (pod owner)",
    f'label_values({POD_INFO}{{namespace=~"$namespace"}}, created_by_name)',
)
# The processes the namespace and workload filters leave out. Subtracted with `unless`, so that
# with "All" (".*": every value, the empty one too) nothing is left out, and a Prometheus without
# the rule or without kube-state-metrics shows every process.
POD_EXCLUDED = (
    f'{POD_INFO}{{namespace!~"$namespace"}} or {POD_INFO}{{created_by_name!~"$workload"}}'
)


def in_selected_pods(expr):
    """Every `rate(...)`/`increase(...)` of a per-process series in `expr` without the
    processes of other namespaces and workloads (joined on service_instance_id)."""
    return re.sub(
        r"\b(rate|increase)\((\w+\{[^}]*\}\[[^\]]+\])\)",
        lambda m: f"({m.group(1)}({m.group(2)}) unless on (service_instance_id) ({POD_EXCLUDED}))",
        expr,
    )


# --- panels ---------------------------------------------------------------------------------


def target(expr, legend="", ref="A", fmt="time_series", instant=False, exemplar=False):
    t = {
        "datasource": DS,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "editorMode": "code",
        "format": fmt,
        "range": not instant,
        "instant": instant,
    }
    if exemplar:
        # Grafana asks Prometheus for the exemplars of the `_bucket` series in the query
        # (trace_id, span_id of sampled requests) and draws them as points linking to the trace.
        t["exemplar"] = True
    return t


def targets(*pairs, **kw):
    """(expr, legend) pairs -> targets A, B, C..."""
    return [target(e, l, chr(ord("A") + i), **kw) for i, (e, l) in enumerate(pairs)]


def timeseries(title, description, unit, tgts, min0=True, stack=False):
    defaults = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "axisPlacement": "auto",
        },
    }
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {
                "showLegend": True,
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": tgts,
    }


def heatmap(title, description, unit, expr, cell_unit="short", exemplar=False):
    """Cells: observations per interval in each bucket (Grafana de-accumulates the `le` series)."""
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False}},
            },
            "overrides": [],
        },
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "scale": "exponential",
                "exponent": 0.5,
                "fill": "dark-orange",
                "reverse": False,
                "steps": 64,
            },
            "yAxis": {"axisPlacement": "left", "unit": unit, "reverse": False},
            "rowsFrame": {"layout": "le"},
            "cellValues": {"unit": cell_unit},
            "filterValues": {"le": 1e-9},
            "showValue": "never",
            "legend": {"show": True},
            "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
        },
        "targets": [target(expr, "{{le}}", fmt="heatmap", exemplar=exemplar)],
    }


def stat(title, description, unit, tgts, steps=None, mappings=None):
    steps = steps or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": steps},
                "mappings": mappings or [],
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "value_and_name",
            "wideLayout": True,
            "showPercentChange": False,
        },
        "targets": tgts,
    }


def bargauge(title, description, unit, tgts):
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "color": {"mode": "continuous-GrYlRd"},
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "auto",
            "sizing": "auto",
            "minVizHeight": 16,
            "minVizWidth": 8,
            "maxVizHeight": 300,
        },
        "targets": tgts,
    }


def red_green(warn, crit):
    return [
        {"color": "green", "value": None},
        {"color": "yellow", "value": warn},
        {"color": "red", "value": crit},
    ]


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(items):
    """items: a list of lists; each inner list is one line of panels sharing the 24-column width
    (a row panel alone on its line). Assigns ids and grid positions."""
    panels, y, pid = [], 0, 1
    for line in items:
        if len(line) == 1 and line[0]["type"] == "row":
            p = dict(line[0], id=pid, gridPos={"h": 1, "w": 24, "x": 0, "y": y})
            panels.append(p)
            y, pid = y + 1, pid + 1
            continue
        w = 24 // len(line)
        h = 5 if all(p["type"] == "stat" for p in line) else 8
        for i, p in enumerate(line):
            panels.append(dict(p, id=pid, gridPos={"h": h, "w": w, "x": i * w, "y": y}))
            pid += 1
        y += h
    return panels


def dashboard(uid, title, description, tags, variables, items):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["periscope", "ebpf"] + tags,
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [
            {
                "title": "Periscope dashboards",
                "type": "dashboards",
                "tags": ["periscope"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": [datasource_var()] + variables},
        "panels": layout(items),
    }


def quantiles(metric, by, sel, qs=(0.5, 0.95, 0.99), legend=""):
    """histogram_quantile targets, one per quantile, over `sum by (le, by)` (every series of a
    metric has the same `le` set, so the sum is exact)."""
    out = []
    for q in qs:
        name = f"p{round(q * 100)}"
        expr = (
            f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric}_bucket{{{sel}}}[{RATE}])))"
        )
        out.append((expr, f"{name} {legend}".strip()))
    return out


# --- Services (RED) -------------------------------------------------------------------------


def services():
    server = "http_server_request_duration_seconds"
    client = "http_client_request_duration_seconds"
    sel = 'instance=~"$host",service_name=~"$service",http_route=~"$route"'
    err = f'{sel},error_type!=""'

    def side(metric, name, peer):
        by = "service_name, http_route"
        ratio = (
            f"(sum by (service_name) (rate({metric}_count{{{err}}}[{RATE}]))"
            f" or sum by (service_name) (rate({metric}_count{{{sel}}}[{RATE}])) * 0)"
            f" / sum by (service_name) (rate({metric}_count{{{sel}}}[{RATE}]))"
        )
        errors_doc = (
            "5xx (error.type set by Periscope for status >= 500)"
            if name == "Server"
            else "status >= 400 (error.type set by Periscope)"
        )
        return [
            [row(f"{name} side ({metric})")],
            [
                stat(
                    f"{name}: requests/s",
                    f"All {name.lower()}-side HTTP requests per second of the selected services.",
                    "reqps",
                    targets((f"sum(rate({metric}_count{{{sel}}}[{RATE}]))", "requests/s")),
                ),
                stat(
                    f"{name}: error ratio",
                    f"Share of requests that failed: {errors_doc}.",
                    "percentunit",
                    targets(
                        (
                            f"(sum(rate({metric}_count{{{err}}}[{RATE}])) or vector(0))"
                            f" / sum(rate({metric}_count{{{sel}}}[{RATE}]))",
                            "error ratio",
                        )
                    ),
                    steps=red_green(0.001, 0.01),
                ),
                stat(
                    f"{name}: p99 duration",
                    "99th percentile of request duration over every selected service and route.",
                    "s",
                    targets(
                        (
                            f"histogram_quantile(0.99, sum by (le) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
                            "p99",
                        )
                    ),
                    steps=red_green(0.25, 1),
                ),
            ],
            [
                timeseries(
                    f"{name}: request rate by service and route",
                    "Requests per second (the count of the duration histogram).",
                    "reqps",
                    targets(
                        (
                            f"sum by ({by}) (rate({metric}_count{{{sel}}}[{RATE}]))",
                            "{{service_name}} {{http_route}}",
                        )
                    ),
                ),
                timeseries(
                    f"{name}: error ratio by service",
                    f"Failed / all requests per service: {errors_doc}. 0 when a service had "
                    "requests and none failed.",
                    "percentunit",
                    targets((ratio, "{{service_name}}")),
                ),
            ],
            [
                timeseries(
                    f"{name}: requests by status code",
                    "Requests per second by service and http.response.status_code.",
                    "reqps",
                    targets(
                        (
                            f"sum by (service_name, http_response_status_code) "
                            f"(rate({metric}_count{{{sel}}}[{RATE}]))",
                            "{{service_name}} {{http_response_status_code}}",
                        )
                    ),
                    stack=True,
                ),
                timeseries(
                    f"{name}: requests by method" + (" and peer" if peer else ""),
                    "Requests per second by http.request.method"
                    + (" and server.address (Host header, else the peer IP)." if peer else "."),
                    "reqps",
                    targets(
                        (
                            f"sum by (service_name, http_request_method{', server_address' if peer else ''}) "
                            f"(rate({metric}_count{{{sel}}}[{RATE}]))",
                            "{{service_name}} {{http_request_method}}"
                            + (" {{server_address}}" if peer else ""),
                        )
                    ),
                ),
            ],
            [
                timeseries(
                    f"{name}: p50 / p95 / p99 duration by service and route",
                    "Quantiles from the duration histograms (the OTel semantic-convention buckets, "
                    "5 ms to 10 s, the same on every series), per service and route. Points are "
                    "exemplars: a sampled request in that bucket, linked to its trace.",
                    "s",
                    targets(
                        *quantiles(metric, by, sel, legend="{{service_name}} {{http_route}}"),
                        exemplar=True,
                    ),
                ),
                heatmap(
                    f"{name}: request duration heatmap",
                    "Requests per interval in each duration bucket, all selected services and "
                    "routes; exemplars mark sampled requests (trace_id links to the trace).",
                    "s",
                    f"sum by (le) (increase({metric}_bucket{{{sel}}}[{RATE}]))",
                    exemplar=True,
                ),
            ],
        ]

    def grpc_side(metric, name):
        sel = 'instance=~"$host",service_name=~"$service"'
        err = f'{sel},error_type!=""'
        by = "service_name, rpc_service, rpc_method"
        errors_doc = (
            "UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE or DATA_LOSS "
            "(error.type, set by Periscope per the gRPC conventions for servers)"
            if name == "Server"
            else "any status but OK (error.type, set by Periscope)"
        )
        unknown_doc = (
            " Calls whose status was not seen have no rpc_grpc_status_code and no error_type: "
            "they count in the total, never as errors."
        )
        low = name.lower()
        return [
            [row(f"gRPC {low} side ({metric})")],
            [
                stat(
                    f"gRPC {low}: calls/s",
                    f"All {low}-side gRPC calls per second of the selected services (a streaming "
                    "call counts once).",
                    "reqps",
                    targets((f"sum(rate({metric}_count{{{sel}}}[{RATE}]))", "calls/s")),
                ),
                stat(
                    f"gRPC {low}: error ratio",
                    f"Share of calls that failed: {errors_doc}.{unknown_doc}",
                    "percentunit",
                    targets(
                        (
                            f"(sum(rate({metric}_count{{{err}}}[{RATE}])) or vector(0))"
                            f" / sum(rate({metric}_count{{{sel}}}[{RATE}]))",
                            "error ratio",
                        )
                    ),
                    steps=red_green(0.001, 0.01),
                ),
                stat(
                    f"gRPC {low}: p99 duration",
                    "99th percentile of call duration over every selected service and method.",
                    "s",
                    targets(
                        (
                            f"histogram_quantile(0.99, sum by (le) (rate({metric}_bucket{{{sel}}}[{RATE}])))",
                            "p99",
                        )
                    ),
                    steps=red_green(0.25, 1),
                ),
            ],
            [
                timeseries(
                    f"gRPC {low}: call rate by method",
                    "Calls per second by service, rpc.service and rpc.method (the count of the "
                    "duration histogram; methods beyond the per-service cap are _OTHER).",
                    "reqps",
                    targets(
                        (
                            f"sum by ({by}) (rate({metric}_count{{{sel}}}[{RATE}]))",
                            "{{service_name}} {{rpc_service}}/{{rpc_method}}",
                        )
                    ),
                ),
                timeseries(
                    f"gRPC {low}: error ratio by status code",
                    f"Failed / all calls per service, by rpc.grpc.status_code: {errors_doc}. "
                    f"Empty while no call failed.{unknown_doc}",
                    "percentunit",
                    targets(
                        (
                            f"sum by (service_name, rpc_grpc_status_code) (rate({metric}_count{{{err}}}[{RATE}]))"
                            f" / ignoring (rpc_grpc_status_code) group_left"
                            f" sum by (service_name) (rate({metric}_count{{{sel}}}[{RATE}]))",
                            "{{service_name}} {{rpc_grpc_status_code}}",
                        )
                    ),
                ),
            ],
            [
                timeseries(
                    f"gRPC {low}: p99 duration by method",
                    "99th percentile of call duration per service and method, from the duration "
                    "histograms summed by le (the same 5 ms to 10 s buckets on every series).",
                    "s",
                    targets(
                        *quantiles(
                            metric,
                            by,
                            sel,
                            qs=(0.99,),
                            legend="{{service_name}} {{rpc_service}}/{{rpc_method}}",
                        )
                    ),
                ),
                timeseries(
                    f"gRPC {low}: calls by status code",
                    "Calls per second by service and rpc.grpc.status_code (empty code: not seen).",
                    "reqps",
                    targets(
                        (
                            f"sum by (service_name, rpc_grpc_status_code) "
                            f"(rate({metric}_count{{{sel}}}[{RATE}]))",
                            "{{service_name}} {{rpc_grpc_status_code}}",
                        )
                    ),
                    stack=True,
                ),
            ],
        ]

    items = (
        side(server, "Server", False)
        + side(client, "Client", True)
        + grpc_side("rpc_server_call_duration_seconds", "Server")
        + grpc_side("rpc_client_call_duration_seconds", "Client")
    )
    for line in items:
        for panel in line:
            for t in panel.get("targets", []):
                t["expr"] = in_selected_pods(t["expr"])
    variables = [
        HOST,
        NAMESPACE,
        WORKLOAD,
        query_var(
            "service",
            "Service",
            'label_values({__name__=~"http_server_request_duration_seconds_count|http_client_request_duration_seconds_count|rpc_server_call_duration_seconds_count|rpc_client_call_duration_seconds_count",instance=~"$host"}, service_name)',
        ),
        query_var(
            "route",
            "Route",
            'label_values({__name__=~"http_server_request_duration_seconds_count|http_client_request_duration_seconds_count",instance=~"$host",service_name=~"$service"}, http_route)',
        ),
    ]
    return dashboard(
        "periscope-services",
        "Periscope / Services (RED)",
        "HTTP rate, errors and duration per service and route, and gRPC per service and method, "
        "server and client side, as Periscope sees them from the kernel (no instrumentation).",
        ["http", "grpc", "red"],
        variables,
        items,
    )


# --- Node kernel ----------------------------------------------------------------------------


def node_kernel():
    blk = "kernel_block_io_duration_seconds"
    size = "kernel_block_io_size_bytes"
    rq = "kernel_sched_runqueue_latency_seconds"
    life = "kernel_tcp_connection_duration_seconds"
    sc = "kernel_syscall_duration_seconds"
    dev = 'instance=~"$host",system_device=~"$device"'
    host = 'instance=~"$host"'
    svc = 'instance=~"$host",service_name=~"$service"'
    scs = f'{svc},syscall_name=~"$syscall"'
    items = [
        [row("Block IO (biolatency -D, bitesize)")],
        [
            heatmap(
                "Block IO latency heatmap",
                "IO completions per interval in each latency bucket (issue to completion), "
                "selected devices, all operations: biolatency as a heatmap.",
                "s",
                f"sum by (le) (increase({blk}_bucket{{{dev}}}[{RATE}]))",
            ),
            timeseries(
                "Block IO latency p50 / p95 / p99 by device and operation",
                "Quantiles of issue-to-completion latency per device (system.device) and "
                "operation (block.io.operation: read/write/flush/discard).",
                "s",
                targets(
                    *quantiles(
                        blk,
                        "system_device, block_io_operation",
                        dev,
                        legend="{{system_device}} {{block_io_operation}}",
                    )
                ),
            ),
        ],
        [
            timeseries(
                "IOPS by device and operation",
                "Completed block requests per second.",
                "iops",
                targets(
                    (
                        f"sum by (system_device, block_io_operation) (rate({blk}_count{{{dev}}}[{RATE}]))",
                        "{{system_device}} {{block_io_operation}}",
                    )
                ),
            ),
            timeseries(
                "Throughput by device and operation",
                "Bytes per second of completed block requests (sum of the IO size histogram).",
                "Bps",
                targets(
                    (
                        f"sum by (system_device, block_io_operation) (rate({size}_sum{{{dev}}}[{RATE}]))",
                        "{{system_device}} {{block_io_operation}}",
                    )
                ),
            ),
        ],
        [
            heatmap(
                "IO size distribution",
                "Block requests per interval in each size bucket (bitesize as a heatmap).",
                "bytes",
                f"sum by (le) (increase({size}_bucket{{{dev}}}[{RATE}]))",
            ),
            timeseries(
                "IO size p50 / p99 and mean by device and operation",
                "Request size quantiles and mean (sum / count) per device and operation.",
                "bytes",
                targets(
                    *quantiles(
                        size,
                        "system_device, block_io_operation",
                        dev,
                        qs=(0.5, 0.99),
                        legend="{{system_device}} {{block_io_operation}}",
                    ),
                    (
                        f"sum by (system_device, block_io_operation) (rate({size}_sum{{{dev}}}[{RATE}]))"
                        f" / sum by (system_device, block_io_operation) (rate({size}_count{{{dev}}}[{RATE}]))",
                        "mean {{system_device}} {{block_io_operation}}",
                    ),
                ),
            ),
        ],
        [row("Scheduler (runqlat)")],
        [
            heatmap(
                "Run-queue latency heatmap",
                "Waits per interval in each bucket, from wakeup or preemption to running on a "
                "CPU: runqlat as a heatmap. A tail here is CPU contention.",
                "s",
                f"sum by (le) (increase({rq}_bucket{{{host}}}[{RATE}]))",
            ),
            timeseries(
                "Run-queue latency p50 / p95 / p99 by host",
                "Quantiles of run-queue wait per Periscope instance.",
                "s",
                targets(*quantiles(rq, "instance", host, legend="{{instance}}")),
            ),
        ],
        [
            timeseries(
                "Run-queue waits per second",
                "Times a task waited in a run queue (each wakeup or preemption that was followed "
                "by a switch-in), per host.",
                "ops",
                targets((f"sum by (instance) (rate({rq}_count{{{host}}}[{RATE}]))", "{{instance}}")),
            ),
            timeseries(
                "Run-queue p99 by cgroup",
                "With probes.sched.by_cgroup: p99 per cgroup.path (one series without a "
                "cgroup label when the option is off).",
                "s",
                targets(
                    (
                        f"histogram_quantile(0.99, sum by (le, instance, cgroup_path) (rate({rq}_bucket{{{host}}}[{RATE}])))",
                        "{{instance}} {{cgroup_path}}",
                    )
                ),
            ),
        ],
        [row("TCP (tcpretrans, tcplife, tcpconnect, tcpaccept)")],
        [
            timeseries(
                "TCP retransmits by process and peer",
                "Retransmitted segments per second (tcp:tcp_retransmit_skb), per process and "
                "network.peer.address.",
                "pps",
                targets(
                    (
                        f"sum by (service_name, network_peer_address) (rate(kernel_tcp_retransmits_total{{{svc}}}[{RATE}]))",
                        "{{service_name}} -> {{network_peer_address}}",
                    )
                ),
            ),
            timeseries(
                "TCP resets and failed connects",
                "Resets sent (transmit) and received (receive), and connects that never reached "
                "ESTABLISHED (refused, timed out), per process.",
                "ops",
                targets(
                    (
                        f"sum by (service_name, network_io_direction) (rate(kernel_tcp_resets_total{{{svc}}}[{RATE}]))",
                        "resets {{network_io_direction}} {{service_name}}",
                    ),
                    (
                        f"sum by (service_name, server_port) (rate(kernel_tcp_connect_failures_total{{{svc}}}[{RATE}]))",
                        "failed connects {{service_name}} :{{server_port}}",
                    ),
                ),
            ),
        ],
        [
            timeseries(
                "TCP connections opened and closed per second",
                "Opened (kernel.tcp.connections: inbound accepted, outbound connected) and "
                "closed (count of the lifetime histogram) per process and direction.",
                "cps",
                targets(
                    (
                        f"sum by (service_name, direction) (rate(kernel_tcp_connections_total{{{svc}}}[{RATE}]))",
                        "opened {{direction}} {{service_name}}",
                    ),
                    (
                        f"sum by (service_name, direction) (rate({life}_count{{{svc}}}[{RATE}]))",
                        "closed {{direction}} {{service_name}}",
                    ),
                ),
            ),
            timeseries(
                "TCP connections open (opened - closed since the agent started)",
                "Connections opened minus closed per process and direction: a line that keeps "
                "growing is a connection leak (the reference article's 'which side leaks?').",
                "short",
                targets(
                    (
                        f"sum by (service_name, direction) (kernel_tcp_connections_total{{{svc}}})"
                        f" - sum by (service_name, direction) ({life}_count{{{svc}}})",
                        "{{direction}} {{service_name}}",
                    )
                ),
            ),
        ],
        [
            timeseries(
                "TCP connection lifetime p50 / p99 by process and direction",
                "From connect (or the end of the inbound handshake) to CLOSE: tcplife's MS column.",
                "s",
                targets(
                    *quantiles(
                        life,
                        "service_name, direction",
                        svc,
                        qs=(0.5, 0.99),
                        legend="{{service_name}} {{direction}}",
                    )
                ),
            ),
            heatmap(
                "TCP connection lifetime heatmap",
                "Closed connections per interval in each lifetime bucket.",
                "s",
                f"sum by (le) (increase({life}_bucket{{{svc}}}[{RATE}]))",
            ),
        ],
        [
            timeseries(
                "TCP payload bytes per second (closed connections)",
                "Payload bytes sent and received by the connections that closed, per process: "
                "tcplife's TX_KB / RX_KB as a rate.",
                "Bps",
                targets(
                    (
                        f"sum by (service_name) (rate(kernel_tcp_connection_sent_bytes_sum{{{svc}}}[{RATE}]))",
                        "sent {{service_name}}",
                    ),
                    (
                        f"sum by (service_name) (rate(kernel_tcp_connection_received_bytes_sum{{{svc}}}[{RATE}]))",
                        "received {{service_name}}",
                    ),
                ),
            ),
        ],
        [row("Syscalls (syscount -L; needs probes.syscall.enabled)")],
        [
            timeseries(
                "Time in syscalls by process and syscall (top 10)",
                "Seconds spent inside each syscall per second, blocking waits (futex, "
                "epoll_wait, read on a socket) included: syscount -L's TIME column as a rate.",
                "s",
                targets(
                    (
                        f"topk(10, sum by (service_name, syscall_name) (rate({sc}_sum{{{scs}}}[{RATE}])))",
                        "{{service_name}} {{syscall_name}}",
                    )
                ),
            ),
            timeseries(
                "Syscalls per second by process and syscall (top 10)",
                "Calls per second: syscount's COUNT column as a rate.",
                "ops",
                targets(
                    (
                        f"topk(10, sum by (service_name, syscall_name) (rate({sc}_count{{{scs}}}[{RATE}])))",
                        "{{service_name}} {{syscall_name}}",
                    )
                ),
            ),
        ],
        [
            timeseries(
                "Syscall latency p99 by process and syscall",
                "99th percentile of the time inside each selected syscall.",
                "s",
                targets(
                    (
                        f"histogram_quantile(0.99, sum by (le, service_name, syscall_name) (rate({sc}_bucket{{{scs}}}[{RATE}])))",
                        "{{service_name}} {{syscall_name}}",
                    )
                ),
            ),
            heatmap(
                "Syscall latency heatmap",
                "Selected processes and syscalls: calls per interval in each latency bucket.",
                "s",
                f"sum by (le) (increase({sc}_bucket{{{scs}}}[{RATE}]))",
            ),
        ],
        [
            timeseries(
                "Failed syscalls by errno",
                "Calls per second that returned an error, by syscall and errno name "
                "(EAGAIN, EBADF, ETIMEDOUT...).",
                "ops",
                targets(
                    (
                        f"sum by (service_name, syscall_name, error_type) (rate(kernel_syscall_errors_total{{{scs}}}[{RATE}]))",
                        "{{service_name}} {{syscall_name}} {{error_type}}",
                    )
                ),
            ),
        ],
    ]
    variables = [
        HOST,
        query_var(
            "device",
            "Block device",
            'label_values(kernel_block_io_duration_seconds_count{instance=~"$host"}, system_device)',
        ),
        query_var(
            "service",
            "Process (service.name)",
            'label_values({__name__=~"kernel_syscall_duration_seconds_count|kernel_tcp_connections_total",instance=~"$host"}, service_name)',
        ),
        query_var(
            "syscall",
            "Syscall",
            'label_values(kernel_syscall_duration_seconds_count{instance=~"$host",service_name=~"$service"}, syscall_name)',
        ),
    ]
    return dashboard(
        "periscope-node-kernel",
        "Periscope / Node kernel",
        "Block IO, run queue, TCP and syscall latency distributions from Periscope's eBPF "
        "programs: the libbpf-tools histograms as time series.",
        ["kernel"],
        variables,
        items,
    )


# --- Triage ---------------------------------------------------------------------------------


def triage():
    host = 'instance=~"$host"'
    rq = "kernel_sched_runqueue_latency_seconds"
    blk = "kernel_block_io_duration_seconds"
    sc = "kernel_syscall_duration_seconds"
    http = "http_server_request_duration_seconds"
    items = [
        [row("Symptom: are requests slow or failing?")],
        [
            stat(
                "HTTP server p99 (all services)",
                "99th percentile of every server-side request on the selected hosts.",
                "s",
                targets((f"histogram_quantile(0.99, sum by (le) (rate({http}_bucket{{{host}}}[{RATE}])))", "p99")),
                steps=red_green(0.25, 1),
            ),
            stat(
                "HTTP server error ratio (all services)",
                "5xx / all server-side requests.",
                "percentunit",
                targets(
                    (
                        f'(sum(rate({http}_count{{{host},error_type!=""}}[{RATE}])) or vector(0))'
                        f" / sum(rate({http}_count{{{host}}}[{RATE}]))",
                        "error ratio",
                    )
                ),
                steps=red_green(0.001, 0.01),
            ),
        ],
        [row("Which layer? CPU (runqlat) | disk (biolatency) | network (tcpretrans) | syscalls (syscount -L)")],
        [
            stat(
                "CPU: run-queue p99",
                "runqlat: how long runnable tasks wait for a CPU (99th percentile). Above a few "
                "ms means CPU contention.",
                "s",
                targets((f"histogram_quantile(0.99, sum by (le) (rate({rq}_bucket{{{host}}}[{RATE}])))", "p99")),
                steps=red_green(0.005, 0.02),
            ),
            stat(
                "Disk: worst device p99",
                "biolatency -D: the slowest device's 99th percentile of IO latency.",
                "s",
                targets(
                    (
                        f"max(histogram_quantile(0.99, sum by (le, system_device) (rate({blk}_bucket{{{host}}}[{RATE}]))))",
                        "p99",
                    )
                ),
                steps=red_green(0.01, 0.05),
            ),
            stat(
                "Network: TCP retransmits/s",
                "tcpretrans: retransmitted segments per second on the selected hosts.",
                "pps",
                targets((f"sum(rate(kernel_tcp_retransmits_total{{{host}}}[{RATE}]))", "retransmits/s")),
                steps=red_green(1, 10),
            ),
            stat(
                "Syscalls: failed calls/s",
                "Syscalls returning an error per second (selected processes; needs "
                "probes.syscall.enabled).",
                "ops",
                targets((f"sum(rate(kernel_syscall_errors_total{{{host}}}[{RATE}]))", "errors/s")),
                steps=red_green(10, 100),
            ),
        ],
        [
            heatmap(
                "CPU: run-queue latency",
                "runqlat 5 1 as a heatmap: waits per interval in each bucket.",
                "s",
                f"sum by (le) (increase({rq}_bucket{{{host}}}[{RATE}]))",
            ),
            heatmap(
                "Disk: block IO latency",
                "biolatency 5 1 as a heatmap, every device: a second band is a second IO path "
                "(cache miss, another device).",
                "s",
                f"sum by (le) (increase({blk}_bucket{{{host}}}[{RATE}]))",
            ),
            timeseries(
                "Network: retransmits by peer",
                "tcpretrans per process and peer address.",
                "pps",
                targets(
                    (
                        f"sum by (service_name, network_peer_address) (rate(kernel_tcp_retransmits_total{{{host}}}[{RATE}]))",
                        "{{service_name}} -> {{network_peer_address}}",
                    )
                ),
            ),
            bargauge(
                "Syscalls: top time in syscalls",
                "syscount -L -d 5: seconds per second spent in each syscall, top 10 "
                "(process, syscall) pairs, blocking waits included.",
                "s",
                targets(
                    (
                        f"topk(10, sum by (service_name, syscall_name) (rate({sc}_sum{{{host}}}[{RATE}])))",
                        "{{service_name}} {{syscall_name}}",
                    ),
                    instant=True,
                ),
            ),
        ],
        [
            timeseries(
                "CPU: run-queue p99 by host",
                "Per Periscope instance.",
                "s",
                targets(
                    (f"histogram_quantile(0.99, sum by (le, instance) (rate({rq}_bucket{{{host}}}[{RATE}])))", "{{instance}}")
                ),
            ),
            timeseries(
                "Disk: p99 by device",
                "Per device, all operations.",
                "s",
                targets(
                    (
                        f"histogram_quantile(0.99, sum by (le, system_device) (rate({blk}_bucket{{{host}}}[{RATE}])))",
                        "{{system_device}}",
                    )
                ),
            ),
            timeseries(
                "Network: resets and failed connects",
                "Resets sent and received, connects refused or timed out.",
                "ops",
                targets(
                    (
                        f"sum by (network_io_direction) (rate(kernel_tcp_resets_total{{{host}}}[{RATE}]))",
                        "resets {{network_io_direction}}",
                    ),
                    (f"sum(rate(kernel_tcp_connect_failures_total{{{host}}}[{RATE}]))", "failed connects"),
                ),
            ),
            timeseries(
                "Syscalls: p99 of the busiest syscalls",
                "99th percentile latency of the 10 most called (process, syscall) pairs.",
                "s",
                targets(
                    (
                        f"histogram_quantile(0.99, sum by (le, service_name, syscall_name) (rate({sc}_bucket{{{host}}}[{RATE}])))"
                        f" and topk(10, sum by (service_name, syscall_name) (rate({sc}_count{{{host}}}[{RATE}])))",
                        "{{service_name}} {{syscall_name}}",
                    )
                ),
            ),
        ],
    ]
    return dashboard(
        "periscope-triage",
        "Periscope / 60-second triage",
        "CPU, disk, network or syscalls? The reference article's first-response routine "
        "(runqlat, biolatency, tcpretrans, syscount -L) on one screen. execsnoop, the first "
        "step, has no panel: Periscope does not trace exec.",
        ["triage"],
        [HOST],
        items,
    )


# --- Periscope itself -----------------------------------------------------------------------


def periscope():
    host = 'instance=~"$host"'
    attached_map = [
        {
            "type": "value",
            "options": {
                "0": {"text": "not attached", "color": "red", "index": 0},
                "1": {"text": "attached", "color": "green", "index": 1},
            },
        }
    ]
    items = [
        [row("Probes")],
        [
            stat(
                "Probe families attached (mechanism)",
                "periscope_probe_attached: 1 when the family is attached, with the mechanism it "
                "used (tracepoint, kprobe, fentry...; none when it could not attach).",
                "none",
                targets(
                    (
                        f"max by (probe, mechanism) (periscope_probe_attached{{{host}}})",
                        "{{probe}} ({{mechanism}})",
                    )
                ),
                steps=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
                mappings=attached_map,
            ),
            stat(
                "User functions attached (uprobe)",
                "periscope_uprobe_attached: 1 per configured function attached, 0 when its "
                "binary or symbol was not found.",
                "none",
                targets(
                    (
                        f"max by (code_function_name, code_file_path) (periscope_uprobe_attached{{{host}}})",
                        "{{code_function_name}} {{code_file_path}}",
                    )
                ),
                steps=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
                mappings=attached_map,
            ),
        ],
        [row("Events lost")],
        [
            timeseries(
                "Probe errors by probe and kind",
                "Events the programs could not account for: unmatched completions, full maps, "
                "ring buffer full (events_lost), stale starts swept.",
                "ops",
                targets(
                    (
                        f"sum by (probe, kind) (rate(periscope_probe_errors_total{{{host}}}[{RATE}]))",
                        "{{probe}} {{kind}}",
                    )
                ),
            ),
            timeseries(
                "BPF recursion misses by program",
                "Runs the kernel skipped because another BPF program was running on that CPU: "
                "events lost to every tracer.",
                "ops",
                targets(
                    (
                        f"sum by (program) (rate(periscope_bpf_program_recursion_misses_total{{{host}}}[{RATE}]))",
                        "{{program}}",
                    )
                ),
            ),
        ],
        [
            timeseries(
                "HTTP messages dropped",
                "Requests/responses Periscope saw but could not report (connection closed or "
                "process exited first, pipeline overflow, ring-buffer loss).",
                "ops",
                targets(
                    (
                        f'sum by (outcome) (rate(periscope_http_messages_total{{{host},outcome=~"dropped_.*"}}[{RATE}]))',
                        "{{outcome}}",
                    )
                ),
            ),
            timeseries(
                "HTTP messages by outcome",
                "exchange (matched request/response), invalid, unmatched_response, not_selected, dropped_*.",
                "ops",
                targets(
                    (
                        f"sum by (outcome) (rate(periscope_http_messages_total{{{host}}}[{RATE}]))",
                        "{{outcome}}",
                    )
                ),
                stack=True,
            ),
        ],
        [row("Cost (needs kernel.bpf_stats_enabled=1)")],
        [
            timeseries(
                "BPF run time by program",
                "CPU seconds per second spent in each eBPF program (1 = one full CPU).",
                "s",
                targets(
                    (
                        f"sum by (program) (rate(periscope_bpf_program_run_time_seconds_total{{{host}}}[{RATE}]))",
                        "{{program}}",
                    )
                ),
                stack=True,
            ),
            timeseries(
                "BPF time per run by program",
                "Average time of one run of each program.",
                "s",
                targets(
                    (
                        f"sum by (program) (rate(periscope_bpf_program_run_time_seconds_total{{{host}}}[{RATE}]))"
                        f" / sum by (program) (rate(periscope_bpf_program_run_count_total{{{host}}}[{RATE}]))",
                        "{{program}}",
                    )
                ),
            ),
            timeseries(
                "BPF runs per second by program",
                "How often each program runs.",
                "ops",
                targets(
                    (
                        f"sum by (program) (rate(periscope_bpf_program_run_count_total{{{host}}}[{RATE}]))",
                        "{{program}}",
                    )
                ),
            ),
        ],
        [row("Export and state")],
        [
            timeseries(
                "OTLP export requests by outcome",
                "success / failure / retry (a failure loses no counts: values are cumulative). "
                "Stays at 0 without an OTLP endpoint.",
                "reqps",
                targets(
                    (
                        f"sum by (exporter, outcome) (rate(periscope_export_requests_total{{{host}}}[{RATE}]))",
                        "{{exporter}} {{outcome}}",
                    )
                ),
            ),
            timeseries(
                "Spans by outcome (dropped = lost)",
                "HTTP spans exported, dropped because the queue was full, or dropped after the "
                "collector failed past the retry window.",
                "ops",
                targets(
                    (
                        f"sum by (outcome) (rate(periscope_export_spans_total{{{host}}}[{RATE}]))",
                        "{{outcome}}",
                    )
                ),
            ),
        ],
        [
            timeseries(
                "HTTP connections followed and series held",
                "periscope_http_connections (TCP connections followed now) and "
                "periscope_http_series (capped by probes.http.max_series).",
                "short",
                targets(
                    (f"sum by (instance) (periscope_http_connections{{{host}}})", "connections {{instance}}"),
                    (f"sum by (instance) (periscope_http_series{{{host}}})", "series {{instance}}"),
                ),
            ),
            timeseries(
                "Series exported per metric (top 15)",
                "Cardinality: series Periscope exports per metric name on the selected hosts.",
                "short",
                targets(
                    (
                        f'topk(15, count by (__name__) ({{__name__=~"kernel_.+|http_.+|process_function_.+|periscope_.+",{host}}}))',
                        "{{__name__}}",
                    )
                ),
            ),
        ],
    ]
    return dashboard(
        "periscope-self",
        "Periscope / Agent health",
        "Periscope itself: which probes attached and how, events lost, eBPF cost, export "
        "errors and dropped spans.",
        ["self"],
        [HOST],
        items,
    )


DASHBOARDS = {
    "services.json": services,
    "node-kernel.json": node_kernel,
    "triage.json": triage,
    "periscope.json": periscope,
}


def render(build):
    return json.dumps(build(), indent=2) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in DASHBOARDS.items():
        path = os.path.join(HERE, name)
        text = render(build)
        if check:
            try:
                with open(path) as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != text:
                stale.append(name)
        else:
            with open(path, "w") as f:
                f.write(text)
    if stale:
        print(f"out of date (run dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
