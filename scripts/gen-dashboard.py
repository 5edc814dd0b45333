#!/usr/bin/env python3
"""Writes dashboards/vramguard.json, the Grafana dashboard for vramguard.

The dashboard is generated so that its many panels stay consistent (datasource, selectors,
units); edit this file and run `python3 scripts/gen-dashboard.py`. The test
`tests/monitoring.rs` runs every query of the result against a real Prometheus.
"""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job="$job", instance="$instance"'
GPU_SEL = SEL + ', gpu=~"$gpu"'
# Joins a per-GPU series with its identity so legends read "NVIDIA RTX 4080 #0".
NAMED = " * on (job, instance, gpu, uuid) group_left (name) vramguard_gpu_info{" + SEL + "}"

panels = []
y = 0
next_id = 1


def row(title):
    global y, next_id
    panels.append({"type": "row", "title": title, "id": next_id, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    next_id += 1
    y += 1


def panel(title, targets, unit, kind="timeseries", w=12, h=8, x=0, description="", extra=None, overrides=None):
    global next_id
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "id": next_id,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": overrides or []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [
            {"datasource": DS, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
             "range": True}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if extra:
        p.update(extra)
    next_id += 1
    panels.append(p)


def threshold_style(name_regex):
    return {"matcher": {"id": "byRegexp", "options": name_regex},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                           {"id": "custom.fillOpacity", "value": 0},
                           {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]}


row("Host")
panel("CPU busy", [(f"vramguard_cpu_usage_ratio{{{SEL}}}", "CPU busy"),
                   (f'vramguard_threshold_ratio{{{SEL}, resource="cpu"}}', "{{level}} threshold")],
      "percentunit", x=0, description="Whole-machine CPU busy fraction over each sample interval.",
      overrides=[threshold_style(".*threshold")])
panel("RAM", [(f'{{__name__=~"vramguard_memory_(total|used|available)_bytes|vramguard_cgroup_memory_limit_bytes", {SEL}}}',
               "{{__name__}}")],
      "bytes", x=12, description="Host RAM total, used (total - available) and available; the cgroup memory "
                                 "limit when vramguard runs under one below host RAM.")
y += 8

row("GPUs")
panel("GPU utilization", [(f"vramguard_gpu_utilization_ratio{{{GPU_SEL}}}" + NAMED, "{{name}} #{{gpu}}")],
      "percentunit", x=0, description="SM busy fraction per GPU.")
panel("VRAM used with live thresholds",
      [(f"(1 - vramguard_gpu_memory_free_bytes{{{GPU_SEL}}} / vramguard_gpu_memory_total_bytes{{{GPU_SEL}}})" + NAMED,
        "{{name}} #{{gpu}}"),
       (f'vramguard_threshold_ratio{{{SEL}, resource="vram"}}', "{{level}} threshold")],
      "percentunit", x=12, description="VRAM not free per GPU, against the warning and critical thresholds "
                                       "vramguard is using now (they move when changed through the API).",
      overrides=[threshold_style(".*threshold")])
y += 8
panel("VRAM used, outstanding and total",
      [(f"vramguard_gpu_memory_used_bytes{{{GPU_SEL}}}" + NAMED, "used {{name}} #{{gpu}}"),
       (f"vramguard_gpu_memory_outstanding_bytes{{{GPU_SEL}}}" + NAMED, "outstanding {{name}} #{{gpu}}"),
       (f"vramguard_gpu_memory_total_bytes{{{GPU_SEL}}}" + NAMED, "total {{name}} #{{gpu}}")],
      "bytes", x=0, w=8, description="VRAM allocated (as nvidia-smi's memory.used) with what live generation "
                                     "leases reserved and have not used yet stacked on top, against capacity, "
                                     "per GPU. Admission counts both.",
      overrides=[{"matcher": {"id": "byRegexp", "options": "(used|outstanding) .*"},
                  "properties": [{"id": "custom.stacking", "value": {"mode": "normal", "group": "vram"}},
                                 {"id": "custom.fillOpacity", "value": 40}]}])
panel("GPU temperature", [(f"vramguard_gpu_temperature_celsius{{{GPU_SEL}}}" + NAMED, "{{name}} #{{gpu}}")],
      "celsius", x=8, w=8, description="Core temperature per GPU; the GPUTemperatureHigh alert fires at 85 °C.")
panel("GPU power", [(f"vramguard_gpu_power_watts{{{GPU_SEL}}}" + NAMED, "{{name}} #{{gpu}}"),
                    (f"vramguard_gpu_power_limit_watts{{{GPU_SEL}}}" + NAMED, "limit {{name}} #{{gpu}}")],
      "watt", x=16, w=8, description="Board power draw per GPU, and the enforced power limit (dashed).",
      overrides=[threshold_style("limit .*")])
y += 8

row("GPU energy and I/O")
panel("Energy (average power)",
      [(f"rate(vramguard_gpu_energy_joules_total{{{GPU_SEL}}}[$__rate_interval])" + NAMED, "{{name}} #{{gpu}}")],
      "watt", x=0, w=6, description="Energy per second from NVML's energy counter: the average power over each "
                                    "interval, which the instantaneous power reading can miss. "
                                    "increase() over a day gives joules per day.")
panel("Time held back, by reason",
      [(f"rate(vramguard_gpu_throttle_seconds_total{{{GPU_SEL}}}[$__rate_interval])" + NAMED,
        "{{reason}} {{name}} #{{gpu}}")],
      "percentunit", x=6, w=6, description="Fraction of each interval the GPU's clocks were held back, by reason "
                                           "(NVML violation time): power, thermal, sync_boost, board_limit, "
                                           "low_utilization, reliability. GPUPowerThrottled fires when power is "
                                           "above half for 10 minutes.")
panel("PCIe throughput",
      [(f"vramguard_gpu_pcie_throughput_bytes_per_second{{{GPU_SEL}}}" + NAMED, "{{direction}} {{name}} #{{gpu}}")],
      "Bps", x=12, w=6, description="PCIe traffic per GPU: tx sent by the GPU, rx received (NVML's 20 ms window "
                                    "at each sample). Offloading pipelines move weights over it.")
panel("Video encoder and decoder",
      [(f"vramguard_gpu_encoder_utilization_ratio{{{GPU_SEL}}}" + NAMED, "encoder {{name}} #{{gpu}}"),
       (f"vramguard_gpu_decoder_utilization_ratio{{{GPU_SEL}}}" + NAMED, "decoder {{name}} #{{gpu}}")],
      "percentunit", x=18, w=6, description="NVENC and NVDEC busy fraction per GPU (video pipelines that encode "
                                            "their output on the GPU).")
y += 8

row("GPU health")
panel("GPU healthy", [(f"vramguard_gpu_healthy{{{GPU_SEL}}}" + NAMED, "{{name}} #{{gpu}}")],
      "bool_yes_no", kind="state-timeline", x=0, w=8,
      description="0 while vramguard keeps the GPU out of placement: a pending or failed row remap, uncorrected "
                  "ECC errors, or a fatal XID within gpu_health.xid_window. GET /api/v1/system/health says why.",
      extra={"options": {"mergeValues": True, "showValue": "never", "rowHeight": 0.9},
             "fieldConfig": {"defaults": {"unit": "bool_yes_no", "mappings": [
                 {"type": "value", "options": {"0": {"text": "unhealthy", "color": "red"},
                                               "1": {"text": "healthy", "color": "green"}}}]},
                             "overrides": []}})
panel("XID errors", [(f"vramguard_gpu_xid_errors_total{{{GPU_SEL}}}" + NAMED, "XID {{xid}} {{name}} #{{gpu}}")],
      "short", x=8, w=8,
      description="XID events per GPU and code since vramguard started (a step is a new event). The first event of "
                  "a code starts its line at 1.",
      extra={"fieldConfig": {"defaults": {"unit": "short", "custom": {"lineInterpolation": "stepAfter",
                                                                      "lineWidth": 1, "fillOpacity": 0,
                                                                      "showPoints": "never"}},
                             "overrides": []}})
panel("ECC errors", [(f"vramguard_gpu_ecc_errors_total{{{GPU_SEL}}}" + NAMED, "{{type}} {{name}} #{{gpu}}")],
      "short", x=16, w=8,
      description="Volatile ECC error counts since the driver loaded. Any uncorrected error makes the GPU unhealthy "
                  "until it is reset. Absent on boards without ECC.")
y += 8
panel("Row remapping",
      [(f"vramguard_gpu_remapped_rows{{{GPU_SEL}}}" + NAMED, "{{type}} rows {{name}} #{{gpu}}"),
       (f"vramguard_gpu_remap_pending{{{GPU_SEL}}}" + NAMED, "pending {{name}} #{{gpu}}"),
       (f"vramguard_gpu_remap_failed{{{GPU_SEL}}}" + NAMED, "failed {{name}} #{{gpu}}")],
      "short", x=0, w=8,
      description="Memory rows remapped per GPU; pending is 1 while a remap waits for a GPU reset, failed is 1 when "
                  "no spare row was left (RMA). Absent before Ampere.")
panel("Clock event reasons",
      [(f"vramguard_gpu_throttle_reason{{{GPU_SEL}}}" + NAMED, "{{reason}} {{name}} #{{gpu}}")],
      "bool_on_off", kind="state-timeline", x=8, w=8,
      description="Why the clocks are below their maximum, per reason. hw_slowdown, hw_thermal_slowdown and "
                  "sw_thermal_slowdown are health warnings (GPUThermalThrottling); gpu_idle and sw_power_cap are "
                  "normal.",
      extra={"options": {"mergeValues": True, "showValue": "never", "rowHeight": 0.9}})
panel("Clocks", [(f"vramguard_gpu_clock_hertz{{{GPU_SEL}}}" + NAMED, "{{clock}} {{name}} #{{gpu}}")],
      "hertz", x=16, w=8, description="Current SM and memory clocks per GPU.")
y += 8

row("Processes")
panel("Top VRAM holders",
      [(f"topk(10, vramguard_gpu_process_memory_used_bytes{{{GPU_SEL}}})", "{{process}} (pid {{pid}}) on GPU {{gpu}}")],
      "bytes", kind="bargauge", w=24, description="The compute processes holding the most VRAM now.",
      extra={"options": {"orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True,
                         "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}})
y += 8

row("Policy")
panel("Health status", [(f"vramguard_health_status{{{SEL}}} == 1", "{{status}}")],
      "none", kind="state-timeline", x=0, w=8, description="healthy, warning or critical, as GET /api/v1/system/health says.",
      extra={"options": {"mergeValues": True, "showValue": "never", "rowHeight": 0.9}})
panel("Generations: active vs limit",
      [(f"vramguard_active_generations{{{SEL}}}", "active"), (f"vramguard_max_concurrent_generations{{{SEL}}}", "limit"),
       (f"vramguard_gpus_leased{{{SEL}}}", "GPUs leased")],
      "short", x=8, w=8, description="Generations holding leases now (a job on several GPUs counts once) against "
                                     "max_concurrent_generations, and the GPUs they hold.")
panel("Admission decisions",
      [(f"sum by (result, reason) (rate(vramguard_admission_decisions_total{{{SEL}}}[$__rate_interval]))",
        "{{result}} {{reason}}")],
      "reqps", x=16, w=8, description="Resource-checks and lease requests per second, by result and the "
                                       "first refusal reason.")
y += 8
panel("Generations finished, by outcome",
      [(f"sum by (outcome) (increase(vramguard_generations_finished_total{{{SEL}}}[$__rate_interval]))", "{{outcome}}")],
      "short", x=0, w=12,
      description="How many admitted generations ended in each interval, by outcome: ok, oom (died of CUDA "
                  "out-of-memory: its reservation was too small; alert GenerationOutOfMemory), error, cancelled "
                  "(as the release said) or expired (no release). Only ok and oom ends teach the estimates.",
      extra={"fieldConfig": {"defaults": {"unit": "short", "custom": {"lineWidth": 1, "fillOpacity": 10,
                                                                      "showPoints": "never", "drawStyle": "bars"}},
                             "overrides": []}})
panel("What fits now",
      [(f"vramguard_generations_that_fit{{{SEL}}}", "{{workload}} on one GPU"),
       (f"vramguard_gangs_that_fit{{{SEL}}}", "{{workload}} on {{gpus}} GPUs")],
      "short", x=12, w=12,
      description="How many more generations of each workload profile's estimate would be admitted now, on one "
                  "GPU each and sharded over 2, 4 or 8 GPUs (where the machine has them): what an autoscaler "
                  "sends this machine.")
y += 8

row("Exporter")
panel("Collector success", [(f"vramguard_collector_success{{{SEL}}}", "{{collector}}")],
      "bool_on_off", x=0, w=8, description="1 when the collector's last sample succeeded. gpu is 0 when NVML "
                                            "cannot be loaded or a GPU cannot be read.")
panel("Collector duration", [(f"vramguard_collector_duration_seconds{{{SEL}}}", "{{collector}}")],
      "s", x=8, w=8, description="How long each collector's last sample took.")
panel("Sample age", [(f"time() - vramguard_last_sample_timestamp_seconds{{{SEL}}}", "age")],
      "s", x=16, w=8, description="Age of the snapshot vramguard serves; it grows if the sampler stalls.")
y += 8

templating = [
    {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
     "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
    {"name": "job", "label": "Job", "type": "query", "datasource": DS,
     "definition": "label_values(vramguard_build_info, job)",
     "query": {"query": "label_values(vramguard_build_info, job)", "refId": "job"},
     "refresh": 2, "sort": 1, "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": []},
    {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
     "definition": 'label_values(vramguard_build_info{job="$job"}, instance)',
     "query": {"query": 'label_values(vramguard_build_info{job="$job"}, instance)', "refId": "instance"},
     "refresh": 2, "sort": 1, "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": []},
    {"name": "gpu", "label": "GPU", "type": "query", "datasource": DS,
     "definition": 'label_values(vramguard_gpu_info{job="$job", instance="$instance"}, gpu)',
     "query": {"query": 'label_values(vramguard_gpu_info{job="$job", instance="$instance"}, gpu)', "refId": "gpu"},
     "refresh": 2, "sort": 3, "current": {}, "hide": 0, "includeAll": True, "allValue": ".*", "multi": True,
     "options": []},
]

dashboard = {
    "title": "vramguard",
    "uid": "vramguard",
    "description": "GPU, VRAM and admission for hosts running generation pipelines, from vramguard.",
    "tags": ["vramguard", "gpu", "nvidia"],
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "graphTooltip": 1,
    "refresh": "10s",
    "time": {"from": "now-3h", "to": "now"},
    "timepicker": {},
    "timezone": "",
    "annotations": {"list": []},
    "links": [],
    "templating": {"list": templating},
    "panels": panels,
}

out = pathlib.Path(__file__).resolve().parent.parent / "dashboards" / "vramguard.json"
out.write_text(json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n")
print(f"wrote {out}")
