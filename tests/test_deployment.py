"""Deployment files checked offline (tools/validate.py, `make validate`): they pass, and planted errors —
misspelt keys, wrong types, broken PromQL, unknown metrics, mismatched ports and thread counts — are
rejected with a message naming the file and the place. The slow test builds the wheel the Dockerfile
installs, installs it into a fresh environment and runs both jobs from it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "deployment"
sys.path.insert(0, str(REPO / "tools"))
import validate  # noqa: E402  (tools/ is not a package)

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool missing: `make install` installs the prometheus package")


@pytest.fixture(scope="module")
def schemas(shared_dir: Path) -> validate.SchemaSet:
    return validate.SchemaSet(shared_dir / "k8s" / "crds")


def run_validate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "validate.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


# ---- the repository's files pass; the planted fixtures fail ------------------------------------------

@needs_promtool
def test_validate_passes_on_the_repository():
    run = run_validate()
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("validate: ok")


def test_broken_manifest_fixture_is_rejected():
    run = run_validate("--manifest", str(FIXTURES / "broken-manifest.yaml"))
    assert run.returncode == 1, run.stdout
    assert ("broken-manifest.yaml: SparkApplication/tidewatch-inference: spec.executor: unknown key 'instnaces' "
            "(did you mean 'instances'?)") in run.stdout
    assert "validate: 1 problem(s)" in run.stdout  # only the planted error


def test_the_fixture_differs_from_the_real_manifest_only_by_the_planted_key():
    real = yaml.safe_load_all((REPO / "k8s" / "inference.yaml").read_text())
    broken = yaml.safe_load_all((FIXTURES / "broken-manifest.yaml").read_text())
    real, broken = list(real), list(broken)
    broken[0]["spec"]["executor"]["instances"] = broken[0]["spec"]["executor"].pop("instnaces")
    assert broken == real


@needs_promtool
def test_broken_query_fixture_is_rejected():
    run = run_validate("--dashboard", str(FIXTURES / "broken-query-dashboard.json"))
    assert run.returncode == 1, run.stdout
    lines = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert len(lines) == 1, run.stdout
    assert "panel 2 'broken' query A" in lines[0]
    assert "unclosed left parenthesis" in lines[0]
    # Variables were substituted before parsing: the custom variable's value and $__rate_interval.
    assert 'sensor=~"LIT101"}[1m]' in lines[0]


# ---- strict schemas -------------------------------------------------------------------------------

def test_strict_schema_closes_objects_but_respects_kubernetes_extensions():
    import jsonschema

    schema = validate.strict_schema({
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"cores": {"type": "integer"}}},
            "template": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "opaque": {"type": "object"},
            "divisor": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
            "maybe": {"type": "string", "nullable": True},
        },
    })
    v = jsonschema.Draft7Validator(schema)
    ok = {"spec": {"cores": 2}, "template": {"anything": {"goes": 1}}, "labels": {"a": "b"},
          "opaque": {}, "divisor": "1Mi", "maybe": None}
    assert list(v.iter_errors(ok)) == []
    assert list(v.iter_errors({**ok, "divisor": 1})) == []
    assert v.iter_errors({"spec": {"cores": 2, "corse": 1}}).__next__().validator == "additionalProperties"
    assert any(e.validator == "additionalProperties" for e in v.iter_errors({"extra": 1}))
    # A structural schema's object without properties keeps nothing: the API server prunes it all.
    assert any(e.validator == "additionalProperties" for e in v.iter_errors({"opaque": {"x": 1}}))
    assert any(e.validator == "type" for e in v.iter_errors({"labels": {"a": 1}}))
    assert any(e.validator == "anyOf" for e in v.iter_errors({"divisor": 1.5}))


def test_every_served_crd_version_is_loaded(schemas: validate.SchemaSet):
    assert ("sparkoperator.k8s.io/v1beta2", "SparkApplication") in schemas.validators
    assert ("sparkoperator.k8s.io/v1beta2", "ScheduledSparkApplication") in schemas.validators


# ---- planted errors in a copy of k8s/ ---------------------------------------------------------------

def _edit_yaml(path: Path, index: int, edit: Callable[[dict], None]) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    edit(docs[index])
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _env(pod: dict, name: str) -> dict:
    return next(e for e in pod["env"] if e["name"] == name)


def _set_arg(spec: dict, flag: str, value: str) -> None:
    args = spec["arguments"]
    args[args.index(flag) + 1] = value


K8S_MUTATIONS: dict[str, tuple[str, int, Callable[[dict], None], str]] = {
    # name: (file under k8s/, document, edit, expected message)
    "type is case-sensitive": ("inference.yaml", 0, lambda d: d["spec"].update(type="python"),
                               "spec.type: 'python' is not one of ['Java', 'Python', 'Scala', 'R']"),
    "pythonVersion must be a string": ("inference.yaml", 0, lambda d: d["spec"].update(pythonVersion=3),
                                       "spec.pythonVersion: 3 is not of type 'string'"),
    "cores must be an integer": ("inference.yaml", 0, lambda d: d["spec"]["executor"].update(cores="2"),
                                 "spec.executor.cores: '2' is not of type 'integer'"),
    "sparkConf values are strings": ("inference.yaml", 0,
                                     lambda d: d["spec"]["sparkConf"].update({"spark.sql.shuffle.partitions": 4}),
                                     "spec.sparkConf.spark.sql.shuffle.partitions: 4 is not of type 'string'"),
    "misspelt key deep in a volume": ("inference.yaml", 0,
                                      lambda d: d["spec"]["volumes"][1]["persistentVolumeClaim"].update(
                                          claimNme=d["spec"]["volumes"][1]["persistentVolumeClaim"].pop("claimName")),
                                      "spec.volumes.1.persistentVolumeClaim: unknown key 'claimNme' "
                                      "(did you mean 'claimName'?)"),
    "misspelt metadata": ("inference.yaml", 0, lambda d: d["metadata"].update(lables=d["metadata"].pop("labels")),
                          "metadata: unknown key 'lables' (did you mean 'labels'?)"),
    "misspelt env field": ("inference.yaml", 0, lambda d: _env(d["spec"]["executor"], "OMP_NUM_THREADS").update(
                               valeu=_env(d["spec"]["executor"], "OMP_NUM_THREADS").pop("value")),
                           "spec.executor.env.0: unknown key 'valeu' (did you mean 'value'?)"),
    "misspelt key in a scheduled template": ("train-nightly.yaml", 0,
                                             lambda d: d["spec"]["template"]["driver"].update(
                                                 memroy=d["spec"]["template"]["driver"].pop("memory")),
                                             "spec.template.driver: unknown key 'memroy' (did you mean 'memory'?)"),
    "restart policy enum": ("inference.yaml", 0, lambda d: d["spec"]["restartPolicy"].update(type="Allways"),
                            "spec.restartPolicy.type: 'Allways' is not one of"),
    "service targets a port the driver lacks": ("inference.yaml", 1,
                                                lambda d: d["spec"]["ports"][0].update(targetPort=8002),
                                                "targetPort 8002 is not a port of tidewatch-inference's driver"),
    "service selects another app": ("inference.yaml", 1,
                                    lambda d: d["spec"]["selector"].update(
                                        {"sparkoperator.k8s.io/app-name": "tidewatch-inferense"}),
                                    "selects SparkApplication 'tidewatch-inferense', which does not exist"),
    "service port misspelt": ("inference.yaml", 1,
                              lambda d: d["spec"]["ports"][0].update(protocl=d["spec"]["ports"][0].pop("protocol")),
                              "spec.ports.0: unknown key 'protocl' (did you mean 'protocol'?)"),
    "OMP threads differ from executor cores": ("inference.yaml", 0,
                                               lambda d: _env(d["spec"]["executor"], "OMP_NUM_THREADS").update(value="8"),
                                               "spec.executor.env OMP_NUM_THREADS is '8', not the executor cores (2)"),
    "driver OMP threads differ": ("train.yaml", 0, lambda d: _env(d["spec"]["driver"], "OMP_NUM_THREADS").update(value="1"),
                                  "spec.driver.env OMP_NUM_THREADS is '1'"),
    "driver bound to loopback": ("inference.yaml", 0, lambda d: d["spec"]["driver"].update(
                                     env=[e for e in d["spec"]["driver"]["env"] if e["name"] != "SPARK_LOCAL_IP"]),
                                 "SPARK_LOCAL_IP unset"),
    "argument the job rejects": ("inference.yaml", 0, lambda d: _set_arg(d["spec"], "--file-format", "xml"),
                                 "spec.arguments rejected by inference.py's parser"),
    "unknown argument": ("train.yaml", 0, lambda d: d["spec"]["arguments"].extend(["--epoch", "3"]),
                         "spec.arguments rejected by train.py's parser"),
    "path on no volume": ("inference.yaml", 0, lambda d: _set_arg(d["spec"], "--results", "/tmp/results"),
                          "--results /tmp/results is on no volume the driver mounts"),
    "mount of an undeclared volume": ("train.yaml", 0,
                                      lambda d: d["spec"]["executor"]["volumeMounts"][0].update(name="weight"),
                                      "spec.executor.volumeMounts: volume 'weight' is not in spec.volumes"),
    "claim that does not exist": ("storage.yaml", 1, lambda d: d["metadata"].update(name="tidewatch-datas"),
                                  "claim 'tidewatch-data' is not a PersistentVolumeClaim of this kustomization"),
    "PVC access mode": ("storage.yaml", 0, lambda d: d["spec"].update(accessModes=["ReadWriteMost"]),
                        "spec.accessModes.0: 'ReadWriteMost' is not one of"),
    "metrics port not exposed": ("inference.yaml", 0, lambda d: _set_arg(d["spec"], "--metrics-port", "9100"),
                                 "spec.driver.ports does not expose the metrics port 9100"),
    "job not in the image": ("inference.yaml", 0,
                             lambda d: d["spec"].update(mainApplicationFile="local:///opt/tidewatch/score.py"),
                             "is not one of the jobs"),
    "spark version drifts from the pin": ("train.yaml", 0, lambda d: d["spec"].update(sparkVersion="3.5.1"),
                                          "spec.sparkVersion '3.5.1' differs from the pinned pyspark 4.0.1"),
    "unknown service account": ("rbac.yaml", 0, lambda d: d["metadata"].update(name="spark"),
                                "spec.driver.serviceAccount: 'tidewatch-spark' is not a ServiceAccount"),
}


@pytest.fixture()
def k8s_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(REPO / "k8s", tmp_path / "k8s"))


def test_k8s_copy_is_clean(schemas: validate.SchemaSet, k8s_copy: Path):
    problems, rendered = validate.check_k8s(schemas, k8s_copy)
    assert problems == []
    assert set(rendered) == {str(k8s_copy), str(k8s_copy / "overlays" / "gpu"), str(k8s_copy / "overlays" / "kafka")}


@pytest.mark.parametrize("name", sorted(K8S_MUTATIONS))
def test_k8s_planted_error_is_rejected(name: str, schemas: validate.SchemaSet, k8s_copy: Path):
    file, index, edit, expected = K8S_MUTATIONS[name]
    _edit_yaml(k8s_copy / file, index, edit)
    problems, _ = validate.check_k8s(schemas, k8s_copy)
    messages = [str(p) for p in problems]
    assert any(expected in m for m in messages), "\n".join(messages) or "no problem reported"


def test_misspelt_key_in_an_overlay_patch_is_rejected(schemas: validate.SchemaSet, k8s_copy: Path):
    patch = k8s_copy / "overlays" / "gpu" / "inference-executor-gpu.yaml"
    patch.write_text(patch.read_text().replace("quantity: 1", "quantitiy: 1"))
    messages = [str(p) for p in validate.check_k8s(schemas, k8s_copy)[0]]
    assert any("inference-executor-gpu.yaml: SparkApplication/tidewatch-inference: spec.executor.gpu" in m
               and "unknown key 'quantitiy'" in m for m in messages), messages


def test_patch_without_a_target_is_rejected(schemas: validate.SchemaSet, k8s_copy: Path):
    patch = k8s_copy / "overlays" / "gpu" / "train-driver-gpu.yaml"
    patch.write_text(patch.read_text().replace("name: tidewatch-train", "name: tidewatch-training"))
    messages = [str(p) for p in validate.check_k8s(schemas, k8s_copy)[0]]
    assert any("matches 0 objects" in m for m in messages), messages


def test_manifest_outside_every_kustomization_is_reported(schemas: validate.SchemaSet, k8s_copy: Path):
    (k8s_copy / "extra.yaml").write_text((k8s_copy / "namespace.yaml").read_text())
    messages = [str(p) for p in validate.check_k8s(schemas, k8s_copy)[0]]
    assert any("extra.yaml: not used by any kustomization" in m for m in messages), messages


def test_duplicate_yaml_keys_are_rejected(schemas: validate.SchemaSet, k8s_copy: Path):
    path = k8s_copy / "train.yaml"
    path.write_text(path.read_text().replace("  sparkVersion: \"4.0.1\"\n",
                                             "  sparkVersion: \"4.0.1\"\n  sparkVersion: \"4.0.0\"\n"))
    messages = [str(p) for p in validate.check_k8s(schemas, k8s_copy)[0]]
    assert any("duplicate key 'sparkVersion'" in m for m in messages), messages


def test_preserved_and_int_or_string_fields_accept_what_kubernetes_accepts(schemas: validate.SchemaSet):
    docs = list(yaml.safe_load_all((REPO / "k8s" / "inference.yaml").read_text()))
    app = docs[0]
    app["spec"]["executor"]["template"] = {"spec": {"anyField": {"nested": [1, 2]}}}  # preserve-unknown-fields
    app["spec"]["driver"]["env"].append({"name": "MEM", "valueFrom": {"resourceFieldRef": {
        "resource": "limits.memory", "divisor": "1Mi"}}})
    app["spec"]["executor"]["env"].append({"name": "MEM", "valueFrom": {"resourceFieldRef": {
        "resource": "limits.memory", "divisor": 1}}})
    assert schemas.validate(app, "test") == []


# ---- what the manifests say -------------------------------------------------------------------------

def _docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((REPO / "k8s" / name).read_text()))


def test_nightly_training_runs_the_same_application_as_the_one_shot():
    assert _docs("train-nightly.yaml")[0]["spec"]["template"] == _docs("train.yaml")[0]["spec"]


def test_job_command_lines():
    inference = _docs("inference.yaml")[0]["spec"]
    assert inference["restartPolicy"]["type"] == "Always"
    assert inference["mainApplicationFile"] == "local:///opt/tidewatch/inference.py"
    assert inference["arguments"] == [
        "--source", "files", "--landing-dir", "/data/landing", "--file-format", "json",
        "--checkpoint", "/data/checkpoints/inference", "--results", "/data/results",
        "--quarantine", "/data/quarantine", "--model", "/weights/tidewatch",
        "--metrics-host", "0.0.0.0", "--metrics-port", "8001", "--trigger-seconds", "10"]
    train = _docs("train.yaml")[0]["spec"]
    assert train["mainApplicationFile"] == "local:///opt/tidewatch/train.py"
    args = train["arguments"]
    assert args[args.index("--model-out") + 1] == "/weights/tidewatch"
    assert args[args.index("--report-dir") + 1] == "/weights/reports"
    assert {"--input", "--format", "--device", "--seed", "--epochs"} <= set(args)


def test_gpu_overlay_puts_gpus_where_the_tensors_are(schemas: validate.SchemaSet):
    manifests, problems, _ = validate.render_kustomization(REPO / "k8s" / "overlays" / "gpu", schemas)
    assert problems == []
    by_name = {m.name: m.obj for m in manifests}
    gpu = {"name": "nvidia.com/gpu", "quantity": 1}
    assert by_name["tidewatch-inference"]["spec"]["executor"]["gpu"] == gpu  # scoring
    assert "gpu" not in by_name["tidewatch-inference"]["spec"]["driver"]
    assert by_name["tidewatch-train"]["spec"]["driver"]["gpu"] == gpu  # the fit runs on the driver
    assert by_name["tidewatch-train-nightly"]["spec"]["template"]["driver"]["gpu"] == gpu
    # The base is untouched by the overlay.
    assert "gpu" not in _docs("inference.yaml")[0]["spec"]["executor"]


def test_merge_patch_follows_rfc_7386():
    target = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert validate.merge_patch(target, {"a": {"c": [3], "e": 2}, "d": None}) == {"a": {"b": 1, "c": [3], "e": 2}}
    assert target == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


# ---- Prometheus -------------------------------------------------------------------------------------

@pytest.fixture()
def prom_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(REPO / "deployment" / "prometheus", tmp_path / "prometheus"))


@pytest.fixture(scope="module")
def rendered(schemas: validate.SchemaSet) -> dict:
    problems, rendered = validate.check_k8s(schemas)
    assert problems == []
    return rendered


@needs_promtool
def test_prometheus_copy_is_clean(prom_copy: Path, rendered: dict):
    assert validate.check_prometheus(prom_copy, rendered) == []


@needs_promtool
@pytest.mark.parametrize("old, new, expected", [
    # Alert no longer fires where its unit test expects it (an incident pages only after 20 minutes).
    ("(ae_incident_open_seconds{job=\"model-anomaly-inference\"}) >= bool 120)",
     "(ae_incident_open_seconds{job=\"model-anomaly-inference\"}) >= bool 1200)", "promtool test rules failed"),
    ("ae_incidents_total{", "ae_incident_total{", "unknown metric 'ae_incident_total'"),
    ("max by (job, instance) (ae_incident_open_seconds", "max by (job, instance (ae_incident_open_seconds",
     "promtool check rules failed"),
    ("severity: critical", "severity: page", "labels.severity must be critical, warning or info"),
])
def test_planted_rule_errors_are_rejected(prom_copy: Path, rendered: dict, old: str, new: str, expected: str):
    rules = prom_copy / "rules" / "tidewatch.rules.yml"
    assert old in rules.read_text()
    rules.write_text(rules.read_text().replace(old, new, 1))
    messages = [str(p) for p in validate.check_prometheus(prom_copy, rendered)]
    assert any(expected in m for m in messages), messages


@needs_promtool
def test_alert_without_a_unit_test_is_reported(prom_copy: Path, rendered: dict):
    rules = prom_copy / "rules" / "tidewatch.rules.yml"
    rules.write_text(rules.read_text() + (
        "  - name: extra\n    rules:\n      - alert: Untested\n        expr: up == 0\n"
        "        labels:\n          severity: info\n        annotations:\n          summary: x\n"))
    messages = [str(p) for p in validate.check_prometheus(prom_copy, rendered)]
    assert any("extra/Untested: no promtool unit test expects this alert to fire" in m for m in messages), messages


@needs_promtool
@pytest.mark.parametrize("target, expected", [
    ("tidewatch-inference-metrics.tidewatch.svc:9000", "is not on the metrics port 8001"),
    ("tidewatch-metrics.tidewatch.svc:8001", "names no Service of k8s/"),
])
def test_scrape_target_must_be_the_inference_service(prom_copy: Path, rendered: dict, target: str, expected: str):
    config = prom_copy / "prometheus.yml"
    config.write_text(config.read_text().replace("tidewatch-inference-metrics.tidewatch.svc:8001", target))
    messages = [str(p) for p in validate.check_prometheus(prom_copy, rendered)]
    assert any(expected in m for m in messages), messages


def _rules() -> list[dict]:
    doc = yaml.safe_load((REPO / "deployment" / "prometheus" / "rules" / "tidewatch.rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _runbook_anchors() -> set[str]:
    """GitHub's anchors for the headings of docs/runbook.md: lower case, spaces to '-', punctuation dropped."""
    import re

    text = re.sub(r"^```.*?^```", "", (REPO / "docs" / "runbook.md").read_text(), flags=re.M | re.S)  # not code
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_links_its_runbook_section():
    anchors = _runbook_anchors()
    base = "https://github.com/tidewatch/tidewatch/blob/main/docs/runbook.md#"
    for rule in _rules():
        if "alert" in rule:
            url = rule["annotations"].get("runbook_url", "")
            assert url == base + rule["alert"].lower(), rule["alert"]
            assert rule["alert"].lower() in anchors, f"docs/runbook.md has no section {rule['alert']}"
    # The runbook's own links lead somewhere.
    import re

    links = re.findall(r"\]\(#([\w-]+)\)", (REPO / "docs" / "runbook.md").read_text())
    assert links and set(links) <= anchors, set(links) - anchors


def test_no_alert_fires_on_flagged_rows():
    """Rows are evidence, incidents are verdicts: no alerting rule reads the per-row anomaly metrics, and
    the incident alerts are one per inference job (no stage or sensor label to multiply pages)."""
    row_metrics = ("ae_anomalies_total", "ae_anomalies_in_batch", "ae_anomalies_last_batch", "anomalous_sensor_event")
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    for name, rule in alerts.items():
        assert not any(m in rule["expr"] for m in row_metrics), name
    assert {"TidewatchIncident", "TidewatchShortIncident", "TidewatchDataStale", "TidewatchModelRejected"} <= set(alerts)
    assert alerts["TidewatchIncident"]["labels"]["severity"] == "critical"
    assert alerts["TidewatchShortIncident"]["labels"]["severity"] == "warning"
    for name in ("TidewatchIncident", "TidewatchShortIncident"):
        text = json.dumps(alerts[name]["annotations"])
        assert "ae_incident_sensor_active" in text and "stage" in text, name  # they name sensors and stages


def test_scrape_job_name_is_the_operators():
    config = yaml.safe_load((REPO / "deployment" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["model-anomaly-inference"]["static_configs"][0]["targets"] == [
        "tidewatch-inference-metrics.tidewatch.svc:8001"]


# ---- Grafana ----------------------------------------------------------------------------------------

def _dashboard() -> dict:
    return json.loads(validate.DASHBOARD.read_text())


def _write(tmp_path: Path, dashboard: dict) -> Path:
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps(dashboard))
    return path


def _panel(dashboard: dict, title_start: str) -> dict:
    return next(p for p in validate.iter_panels(dashboard["panels"]) if p["title"].startswith(title_start))


def test_dashboard_is_at_the_operators_path():
    assert validate.DASHBOARD == REPO / "deployment/grafana/provisioning/dashboards/anomalous_sensor_events.json"
    assert validate.DASHBOARD.is_file()


def test_dashboard_shows_every_metric_of_the_contract():
    text = " ".join(q.expr for q in validate.dashboard_queries())
    contract = {n for n in validate.known_metric_names() if not n.endswith(("_sum", "_count"))}
    histograms = {n[: -len("_bucket")] for n in contract if n.endswith("_bucket")}
    missing = {n for n in contract - histograms if n not in text}
    assert missing == set()


def test_stage_variable_lists_the_models_stages():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    stage = variables["stage"]
    assert stage["type"] == "query" and stage["query"]["query"] == "label_values(ae_incident_active, stage)"
    assert stage["multi"] is True and stage["includeAll"] is True and stage["allValue"] == ".*"
    assert stage["sort"] == 1  # alphabetical: P1, P2, ... P6


def test_stage_panels_follow_the_stage_variable_in_process_order():
    """No stage is hard-coded: one query per panel over $stage, one series per stage of the plant. Range
    queries, because Prometheus returns a range result sorted by its labels: P1, P2, ... P6 on SWaT."""
    dashboard = _dashboard()
    heatmap = next(p for p in validate.iter_panels(dashboard["panels"]) if p["type"] == "heatmap")
    assert heatmap["options"]["yAxis"]["reverse"] is True  # P1 on top, downstream stages below
    assert heatmap["options"]["calculate"] is False
    stage_panels = [heatmap] + [_panel(dashboard, title) for title in (
        "Anomalies per stage, latest batch", "Anomalies per stage, cumulative", "Anomalies per stage over time",
        "Incidents by stage over time")]
    for panel in stage_panels:
        assert [t["legendFormat"] for t in panel["targets"]] == ["{{stage}}"], panel["title"]
        (target,) = panel["targets"]
        assert 'stage=~"$stage"' in target["expr"] and "by (stage)" in target["expr"], panel["title"]
        assert target["range"] is True and not target["instant"], panel["title"]
    for q in validate.dashboard_queries():
        assert not any(f'"P{i}"' in q.raw_expr for i in range(1, 7)), f"hard-coded stage in {q.where}"


def test_incident_panels():
    dashboard = _dashboard()
    panels = {p["title"]: p for p in validate.iter_panels(dashboard["panels"])}
    exprs = {title: [t["expr"] for t in p.get("targets", [])] for title, p in panels.items()}
    assert exprs["Incidents open"] == ["sum(ae_incidents_open)"]
    assert exprs["Data lag"] == ["time() - max(ae_last_row_timestamp_seconds > 0)"]
    assert exprs["Score vs threshold"] == ["max(ae_score_max_last_batch)", "max(ae_threshold)"]
    assert panels["Incidents by stage"]["type"] == "table"
    assert panels["Incidents by stage over time"]["type"] == "state-timeline"
    assert any("ae_incident_sensor_active" in e for e in exprs["Sensors in incidents over the time range"])
    assert any("histogram_quantile" in e and "ae_incident_duration_seconds_bucket" in e
               for e in exprs["Incident duration over the time range"])
    assert [a["name"] for a in dashboard["annotations"]["list"]][-1] == "Incidents"


def test_reconstruction_error_quantiles_per_sensor():
    exprs = [t["expr"] for t in _panel(_dashboard(), "Reconstruction error p$quantile per sensor")["targets"]]
    assert exprs == ['histogram_quantile($quantile, sum by (sensor, le) '
                     '(rate(ae_reconstruction_error_bucket{sensor=~"$sensor"}[$__rate_interval])))']


def test_queries_for_the_integration_test_substitute_every_variable():
    queries = validate.dashboard_queries(overrides={"__rate_interval": "30s", "sensor": "LIT101|FIT101"})
    assert len(queries) >= 20
    assert all("$" not in q.expr for q in queries)
    assert any('ae_reconstruction_error_bucket{sensor=~"LIT101|FIT101"}[30s]' in q.expr for q in queries)
    assert any(q.instant for q in queries) and any(not q.instant for q in queries)
    assert len({(q.panel_id, q.ref_id) for q in queries}) == len(queries)


@needs_promtool
@pytest.mark.parametrize("mutate, expected", [
    (lambda d: _panel(d, "Throughput")["targets"][0].update(expr="sum(rate(ae_rows_procesed_total[5m]))"),
     "unknown metric 'ae_rows_procesed_total'"),
    (lambda d: _panel(d, "Batch latency")["targets"][1].update(
        expr="histogram_quantile(0.9, sum by (le) (rate(ae_batch_processing_seconds_bucket[$__rate_interval]))"),
     "query B: PromQL"),
    (lambda d: _panel(d, "Anomalous sensor events")["targets"][0].update(expr='anomalous_sensor_event{sensor=~"$sensr"}'),
     "undefined variable $sensr"),
    (lambda d: _panel(d, "Batch latency").update(datasource={"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}),
     "hard-coded datasource uid 'P1809F7CD0C75ACF3'"),
    (lambda d: d["templating"]["list"].pop(0), "no datasource template variable of type prometheus"),
    (lambda d: d["annotations"]["list"][1].update(expr="increase(ae_model_reloads_total[$__interval] > 0"),
     "annotation 'Model reloads': PromQL"),
    (lambda d: _panel(d, "Model in use").update(id=1), "duplicate panel id"),
])
def test_planted_dashboard_errors_are_rejected(tmp_path: Path, mutate, expected: str):
    dashboard = _dashboard()
    mutate(dashboard)
    messages = [str(p) for p in validate.check_dashboard(_write(tmp_path, dashboard))]
    assert any(expected in m for m in messages), messages


@needs_promtool
def test_dashboard_copy_is_clean(tmp_path: Path):
    assert validate.check_dashboard(_write(tmp_path, _dashboard())) == []


def test_grafana_provisioning_points_at_the_dashboards():
    base = REPO / "deployment" / "grafana" / "provisioning"
    providers = yaml.safe_load((base / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    sources = yaml.safe_load((base / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [s["type"] for s in sources] == ["prometheus"]
    assert "uid" not in sources[0]  # dashboards pick it by variable


# ---- the image's contents ---------------------------------------------------------------------------

def test_dockerfile_pins_agree_with_the_requirements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert validate.check_dockerfile() == []
    text = validate.DOCKERFILE.read_text()
    assert "COPY train.py inference.py /opt/tidewatch/" in text
    assert "maturin build --release --locked" in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace("COPY train.py inference.py /opt/tidewatch/", "COPY inference.py /opt/tidewatch/")
                      + "\nRUN pip install torch==2.10.0\n")
    monkeypatch.setattr(validate, "DOCKERFILE", broken)
    messages = [str(p) for p in validate.check_dockerfile(broken)]
    assert any("torch==2.10.0, but requirements.txt pins 2.11.0" in m for m in messages), messages
    assert any("does not copy train.py to /opt/tidewatch/" in m for m in messages), messages


@pytest.mark.slow  # register in pyproject markers: "slow: builds the wheel (TIDEWATCH_SLOW=1)"
@pytest.mark.integration
@pytest.mark.timeout(1500)
@pytest.mark.skipif(os.environ.get("TIDEWATCH_SLOW") != "1", reason="builds the wheel and runs Spark: TIDEWATCH_SLOW=1")
def test_wheel_installs_into_a_fresh_environment_and_runs_the_jobs(tmp_path: Path):
    """What the Dockerfile does, without a container engine: `maturin build --release`, install the wheel
    with --no-deps into a fresh venv whose dependencies are linked from the project's venv (no download),
    lay the jobs out as in /opt/tidewatch, train a small model and score a replayed stream with them."""
    from tests.support.jobs import job_env
    from tests.support.prometheus import free_port
    from tidewatch import simulator
    from tidewatch.replay import replay_to_directory
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    venv = REPO / ".venv"
    env = dict(os.environ, VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}:{os.environ['PATH']}", LIBTORCH_USE_PYTORCH="1")
    dist = tmp_path / "dist"
    build = subprocess.run([str(venv / "bin" / "maturin"), "build", "--release", "--locked", "--out", str(dist)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("tidewatch-*-cp311-abi3-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "tidewatch/_native.abi3.so" in names
    assert not [n for n in names if "libtorch" in n or "libc10" in n or "nvidia" in n], "libtorch must not be bundled"

    fresh = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    site = fresh / "lib" / "python3.11" / "site-packages"
    parent_site = venv / "lib" / "python3.11" / "site-packages"
    for entry in parent_site.iterdir():  # every dependency, not tidewatch's editable install
        if not entry.name.lower().startswith(("tidewatch", "__editable__")):
            (site / entry.name).symlink_to(entry)
    python = fresh / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr

    # The extension resolves libtorch through its RUNPATH ($ORIGIN/../torch/lib), as in the image.
    so = site / "tidewatch" / "_native.abi3.so"
    ldd = subprocess.run(["ldd", str(so)], capture_output=True, text=True).stdout
    assert "not found" not in ldd, ldd
    resolved = dict(line.strip().split(" => ") for line in ldd.splitlines() if " => " in line)
    assert os.path.normpath(resolved["libtorch_cpu.so"].split(" (")[0]) == str(site / "torch" / "lib" / "libtorch_cpu.so")
    probe = subprocess.run([str(python), "-c", "import tidewatch, tidewatch._native; print(tidewatch.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == str(site / "tidewatch" / "__init__.py")

    jobs = tmp_path / "opt" / "tidewatch"
    jobs.mkdir(parents=True)
    for job in ("train.py", "inference.py"):
        shutil.copy(REPO / job, jobs / job)
    job_environment = dict(job_env(), PYSPARK_PYTHON=str(python), PYSPARK_DRIVER_PYTHON=str(python),
                           TIDEWATCH_SPARK_MASTER="local[2]")

    history = tmp_path / "data" / "history" / "normal.parquet"
    history.parent.mkdir(parents=True)
    pq.write_table(simulator.simulate(1800, seed=3, attacks="none", start="2015-12-27 12:00:00"), history)
    weights = tmp_path / "weights"
    train = subprocess.run(
        [str(python), str(jobs / "train.py"), "--input", str(history.parent), "--format", "parquet",
         "--model-out", str(weights / "tidewatch"), "--report-dir", str(weights / "reports"), "--device", "cpu",
         "--seed", "0", "--epochs", "1", "--hidden-size", "8", "--latent-size", "4", "--skip-startup-hours", "0"],
        cwd=tmp_path, env=job_environment, capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert (weights / "tidewatch" / "manifest.json").is_file()
    assert (weights / "tidewatch" / "model.safetensors").is_file()

    landing = tmp_path / "data" / "landing"
    live = simulator.simulate(300, seed=4, attacks="none", start="2015-12-28 10:00:00")
    replay_to_directory(live, landing, rows_per_file=100, file_format="jsonl", prefix="a")
    data = tmp_path / "data"
    infer = subprocess.run(
        [str(python), str(jobs / "inference.py"), "--source", "files", "--landing-dir", str(landing),
         "--file-format", "json", "--checkpoint", str(data / "checkpoints" / "inference"),
         "--results", str(data / "results"), "--quarantine", str(data / "quarantine"),
         "--model", str(weights / "tidewatch"), "--metrics-host", "127.0.0.1", "--metrics-port", str(free_port()),
         "--trigger-seconds", "1", "--available-now"],
        cwd=tmp_path, env=job_environment, capture_output=True, text=True, timeout=900)
    assert infer.returncode == 0, infer.stdout[-3000:] + infer.stderr[-3000:]
    scored = ds.dataset(data / "results", format="parquet", partitioning="hive").to_table()
    assert scored.num_rows == live.num_rows


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus missing: `make install`")
def test_every_dashboard_query_returns_data_from_a_live_run(tmp_path: Path):
    """A real Prometheus, with the alert rules loaded, scrapes a real inference run over a replayed stream
    holding an attack and bad rows; then every panel query of the dashboard returns series."""
    import time

    import pyarrow.dataset as ds

    import tidewatch
    from tests.support.jobs import InferenceProcess
    from tests.support.prometheus import PrometheusServer, free_port
    from tidewatch import simulator
    from tidewatch.replay import replay_to_directory

    normal = simulator.simulate(2 * 3600, seed=11, attacks="none", start="2015-12-27 12:00:00")
    live = simulator.simulate(2400, seed=12, attacks=[1], start="2015-12-28 10:20:00")
    model = tidewatch.train(normal, dict(epochs=3, hidden_size=16, latent_size=4, batch_size=64, seed=1,
                                         train_stride=2, patience=0), progress=None)
    model.save(tmp_path / "weights" / "tidewatch")
    landing = tmp_path / "landing"
    replay_to_directory(live, landing, rows_per_file=150, file_format="jsonl", prefix="a")
    row = {k: str(v) for k, v in live.slice(0, 1).to_pylist()[0].items() if k != "timestamp"}
    bad = [dict(row, timestamp="2015-12-28T00:00:01Z", LIT101="12.3.4"),
           dict(row, timestamp="2015-12-28T00:00:02Z", FIT101="")]
    (landing / ".bad.tmp").write_text("\n".join(json.dumps(b) for b in bad) + "\n")
    (landing / ".bad.tmp").rename(landing / "zz-bad.jsonl")

    port = free_port()
    prom = PrometheusServer(tmp_path / "prometheus", target=f"127.0.0.1:{port}",
                            rule_files=[str(REPO / "deployment" / "prometheus" / "rules" / "tidewatch.rules.yml")])
    job = InferenceProcess(tmp_path, tmp_path / "weights" / "tidewatch", port)
    try:
        deadline = time.monotonic() + 600
        seen = 0
        while seen < live.num_rows + len(bad):
            assert time.monotonic() < deadline, f"{seen} rows reached the sinks: {job.tail_log()}"
            time.sleep(2)
            seen = sum(ds.dataset(tmp_path / sink, format="parquet", partitioning="hive",
                                  exclude_invalid_files=True).count_rows()
                       for sink in ("results", "quarantine") if any((tmp_path / sink).rglob("*.parquet")))
        prom.wait_for("ae_rows_quarantined_total")
        time.sleep(3)  # a scrape after the last batch
        empty = []
        for q in validate.dashboard_queries(overrides={"__rate_interval": "5m", "__range": "1h"}):
            result = prom.query(q.expr)
            if not result:
                empty.append(f"{q.where}: {q.expr}")
            if "sensor=~" in q.expr:
                assert len(result) == 51, f"{q.where}: {len(result)} sensors"
        assert empty == []
        # Incidents, not rows: the attack on P1 opened an incident involving P1, and it reached the
        # alerts as an incident alert (pending or firing at some evaluation), one per job, not per stage.
        # (The replay is faster than real time: an incident may open and close within one batch, between
        # two scrapes, so the counter is what proves it, not the 0/1 gauge.)
        assert prom.query('sum(ae_incidents_total{stage="P1"}) > 0'), "no incident involved P1"
        incident_alerts = prom.query(
            'max by (alertname) (max_over_time(ALERTS{alertname=~"TidewatchIncident|TidewatchShortIncident"}[1h]))')
        assert incident_alerts, prom.api("alerts")["alerts"]
        alerts = prom.api("alerts")["alerts"]
        assert not [a for a in alerts if "stage" in a["labels"] or "sensor" in a["labels"]], alerts
    finally:
        job.stop()
        prom.stop()
