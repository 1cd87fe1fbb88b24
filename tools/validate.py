"""Offline checks of tidewatch's deployment files (`make validate`); no cluster, Prometheus or Grafana needed.

- Kubernetes (k8s/): every kustomization (the base and each overlay) is rendered — resources, then merge
  patches — and every object is validated in STRICT mode: Spark operator objects against the
  openAPIV3Schema of the served version of their CRD (shared/k8s/crds/), standard objects (Service,
  PersistentVolumeClaim, RBAC, Namespace) against the subsets of their API schemas written below.
  Strict means an unknown or misspelt key fails, as the API server would otherwise silently prune it.
  Then the objects are checked against each other and the code: volumes, claims, service accounts,
  the job arguments (parsed by the jobs' own argument parsers), paths under mounted volumes,
  OMP_NUM_THREADS equal to the executor cores, the metrics Service selecting the inference driver.
- Prometheus (deployment/prometheus/): `promtool check config`, `check rules`, `test rules`; every
  alert has a unit test that fires it; every metric named exists in the metrics contract.
- Grafana (deployment/grafana/): provisioning files, the dashboard's datasource by variable, and every
  panel query parsing as PromQL after Grafana's variables are substituted (checked by promtool as
  recording rules), naming only metrics of the contract.

    python tools/validate.py                      # everything in the repository
    python tools/validate.py --manifest FILE...   # schema checks of these manifests only
    python tools/validate.py --dashboard FILE...  # these dashboards only
    python tools/validate.py --list-queries       # the dashboard's queries, variables substituted

`dashboard_queries()` gives the integration test the same queries to run against a live Prometheus.
"""
from __future__ import annotations

import argparse
import ast
import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "k8s"
PROMETHEUS_DIR = REPO / "deployment" / "prometheus"
GRAFANA_DIR = REPO / "deployment" / "grafana" / "provisioning"
DASHBOARD = GRAFANA_DIR / "dashboards" / "anomalous_sensor_events.json"
DOCKERFILE = REPO / "Dockerfile"
METRICS_MODULE = REPO / "python" / "tidewatch" / "metrics.py"

SCRAPE_JOB = "model-anomaly-inference"
METRICS_PORT = 8001
JOBS_DIR_IN_IMAGE = "/opt/tidewatch"
# Job file in the image -> the module whose add_arguments() defines its command line.
JOB_MODULES = {"train.py": "tidewatch.spark.train", "inference.py": "tidewatch.spark.inference"}

# Values Grafana gives its built-in variables; the live integration test may pass others.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
# Metric names Prometheus itself provides, allowed in queries besides tidewatch's.
PROMETHEUS_METRICS = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}


def default_crd_dir() -> Path:
    shared = Path(os.environ.get("TIDEWATCH_SHARED", REPO.parent / "shared"))
    return shared / "k8s" / "crds"


@dataclass(frozen=True)
class Problem:
    where: str  # file, and object or query inside it
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ValidationFailed(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------
# YAML: duplicate keys are errors (PyYAML would keep the last one silently).

class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    pass


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml_documents(path: Path) -> list[Any]:
    """All documents of a YAML file (empty ones dropped); raises ValidationFailed on bad YAML."""
    try:
        with open(path, encoding="utf-8") as f:
            return [d for d in yaml.load_all(f, Loader=_UniqueKeyLoader) if d is not None]
    except yaml.YAMLError as e:
        raise ValidationFailed([Problem(rel(path), f"invalid YAML: {e}")]) from None
    except OSError as e:
        raise ValidationFailed([Problem(rel(path), f"cannot read: {e}")]) from None


# ---------------------------------------------------------------------------------------------------
# Schemas: the CRDs' openAPIV3Schema made strict, and subsets of the standard objects' schemas.

def strict_schema(schema: dict) -> dict:
    """An OpenAPI v3 structural schema as a strict JSON schema (Draft 7).

    Objects reject keys their schema does not name (the API server would prune them silently), except
    under x-kubernetes-preserve-unknown-fields; x-kubernetes-int-or-string and nullable are spelt out.
    """
    s = {k: v for k, v in schema.items() if k != "description"}
    if "properties" in s:
        s["properties"] = {name: strict_schema(sub) for name, sub in s["properties"].items()}
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = strict_schema(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = strict_schema(s["items"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in s:
            s[key] = [strict_schema(sub) for sub in s[key]]
    if isinstance(s.get("not"), dict):
        s["not"] = strict_schema(s["not"])
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if s.get("nullable"):
        if "type" in s:
            s["type"] = [s["type"], "null"]
        if "enum" in s:
            s["enum"] = [*s["enum"], None]
    if (s.get("type") == "object" or "properties" in s) and "additionalProperties" not in s \
            and not s.get("x-kubernetes-preserve-unknown-fields"):
        s["additionalProperties"] = False
    return s


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "number"},
                       {"type": "string", "pattern": r"^[0-9.]+([eE][-+]?[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE])?$"}]}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}


def _obj(properties: dict, required: Iterable[str] = ()) -> dict:
    out: dict = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


OBJECT_META = _obj({
    "name": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
    "namespace": {"type": "string", "maxLength": 63, "pattern": _DNS_LABEL},
    "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63, "pattern": _LABEL_VALUE}},
    "annotations": _STRING_MAP,
}, required=["name"])


def _standard(api_version: str, kind: str, extra: dict, required: Iterable[str] = ()) -> dict:
    return _obj({"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": OBJECT_META, **extra},
                required=["apiVersion", "kind", "metadata", *required])


# Subsets of the Kubernetes API schemas (core/v1, rbac/v1): the fields tidewatch uses and their common
# neighbours. A real field missing here fails as unknown: add it, do not loosen the check.
STANDARD_SCHEMAS: dict[tuple[str, str], dict] = {
    ("v1", "Namespace"): _standard("v1", "Namespace", {}),
    ("v1", "ServiceAccount"): _standard("v1", "ServiceAccount", {
        "automountServiceAccountToken": {"type": "boolean"},
        "imagePullSecrets": {"type": "array", "items": _obj({"name": {"type": "string"}}, ["name"])},
    }),
    ("v1", "PersistentVolumeClaim"): _standard("v1", "PersistentVolumeClaim", {"spec": _obj({
        "accessModes": {"type": "array", "minItems": 1, "items": {
            "enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}},
        "resources": _obj({
            "requests": _obj({"storage": _QUANTITY}, ["storage"]),
            "limits": _obj({"storage": _QUANTITY}),
        }, ["requests"]),
        "storageClassName": {"type": "string"},
        "volumeMode": {"enum": ["Filesystem", "Block"]},
        "volumeName": {"type": "string"},
        "selector": _obj({"matchLabels": _STRING_MAP}),
    }, ["accessModes", "resources"])}, required=["spec"]),
    ("v1", "Service"): _standard("v1", "Service", {"spec": _obj({
        "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "selector": {**_STRING_MAP, "minProperties": 1},
        "ports": {"type": "array", "minItems": 1, "items": _obj({
            "name": {"type": "string", "maxLength": 15, "pattern": _DNS_LABEL},
            "port": _PORT,
            "targetPort": _INT_OR_STRING,
            "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
            "appProtocol": {"type": "string"},
            "nodePort": _PORT,
        }, ["port"])},
        "clusterIP": {"type": "string"},
        "sessionAffinity": {"enum": ["None", "ClientIP"]},
        "publishNotReadyAddresses": {"type": "boolean"},
    }, ["selector", "ports"])}, required=["spec"]),
    ("rbac.authorization.k8s.io/v1", "Role"): _standard("rbac.authorization.k8s.io/v1", "Role", {
        "rules": {"type": "array", "items": _obj({
            "apiGroups": {"type": "array", "items": {"type": "string"}},
            "resources": {"type": "array", "items": {"type": "string"}},
            "resourceNames": {"type": "array", "items": {"type": "string"}},
            "verbs": {"type": "array", "minItems": 1, "items": {"enum": [
                "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "*"]}},
        }, ["verbs"])},
    }, required=["rules"]),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): _standard("rbac.authorization.k8s.io/v1", "RoleBinding", {
        "subjects": {"type": "array", "items": _obj({
            "kind": {"enum": ["ServiceAccount", "User", "Group"]},
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "apiGroup": {"type": "string"},
        }, ["kind", "name"])},
        "roleRef": _obj({
            "apiGroup": {"const": "rbac.authorization.k8s.io"},
            "kind": {"enum": ["Role", "ClusterRole"]},
            "name": {"type": "string"},
        }, ["apiGroup", "kind", "name"]),
    }, required=["roleRef"]),
}

KUSTOMIZATION_SCHEMA = _obj({
    "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
    "kind": {"const": "Kustomization"},
    "namespace": {"type": "string", "pattern": _DNS_LABEL},
    "resources": {"type": "array", "items": {"type": "string"}},
    # Only merge patches by file are rendered here; a patch names its target by apiVersion/kind/name.
    "patches": {"type": "array", "items": _obj({"path": {"type": "string"}}, ["path"])},
}, required=["apiVersion", "kind", "resources"])


def _jsonschema():
    try:
        import jsonschema
    except ImportError:
        raise SystemExit("tools/validate.py needs the jsonschema package (requirements.txt): make install") from None
    return jsonschema


class SchemaSet:
    """Strict validators by (apiVersion, kind): the CRDs' served versions and the standard objects."""

    def __init__(self, crd_dir: Path):
        jsonschema = _jsonschema()
        self.validators: dict[tuple[str, str], Any] = {}
        crd_files = sorted(crd_dir.glob("*.yaml")) if crd_dir.is_dir() else []
        if not crd_files:
            raise ValidationFailed([Problem(str(crd_dir), "no CRD files found (set TIDEWATCH_SHARED or --crds)")])
        for path in crd_files:
            for crd in load_yaml_documents(path):
                if crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if not version.get("served"):
                        continue
                    schema = strict_schema(version["schema"]["openAPIV3Schema"])
                    # The API server checks ObjectMeta itself; the CRD leaves it open. Check it strictly too.
                    schema["properties"]["metadata"] = OBJECT_META
                    schema.setdefault("required", [])
                    schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata", "spec"})
                    self.validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
        for key, schema in STANDARD_SCHEMAS.items():
            self.validators[key] = jsonschema.Draft7Validator(schema)
        self.kustomization = jsonschema.Draft7Validator(KUSTOMIZATION_SCHEMA)

    def validate(self, obj: Any, where: str) -> list[Problem]:
        if not isinstance(obj, dict):
            return [Problem(where, f"a manifest must be a mapping, not {type(obj).__name__}")]
        key = (obj.get("apiVersion"), obj.get("kind"))
        validator = self.validators.get(key)
        if validator is None:
            known = ", ".join(f"{a} {k}" for a, k in sorted(self.validators))
            return [Problem(where, f"no schema for apiVersion {key[0]!r} kind {key[1]!r} (known: {known})")]
        return schema_problems(validator, obj, where)


def schema_problems(validator: Any, obj: Any, where: str) -> list[Problem]:
    problems = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = list(error.schema.get("properties", {}))
            unknown = [k for k in error.instance if k not in allowed]
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hints.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            message = "; ".join(hints) if allowed else f"no keys allowed here, got {unknown}"
        elif error.validator == "anyOf" and error.context:
            message += " (" + "; ".join(sorted({c.message for c in error.context})) + ")"
        problems.append(Problem(where, f"{path}: {message}"))
    return problems


# ---------------------------------------------------------------------------------------------------
# Kustomize rendering: resources (files or directories with a kustomization), then merge patches.

@dataclass
class Manifest:
    obj: dict
    source: str  # file(s) it came from

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name"))

    @property
    def label(self) -> str:
        return f"{self.source}: {self.kind}/{self.name}"


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386), kustomize's semantics for custom resources: maps merge, lists are replaced."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def render_kustomization(directory: Path, schemas: SchemaSet, _seen: tuple[Path, ...] = ()) \
        -> tuple[list[Manifest], list[Problem], set[Path]]:
    """The objects a kustomization produces, problems met on the way, and the files it used."""
    directory = directory.resolve()
    kfile = directory / "kustomization.yaml"
    where = rel(kfile)
    if directory in _seen:
        return [], [Problem(where, "kustomization includes itself")], set()
    if not kfile.is_file():
        return [], [Problem(rel(directory), "no kustomization.yaml")], set()
    try:
        docs = load_yaml_documents(kfile)
    except ValidationFailed as e:
        return [], e.problems, {kfile}
    if len(docs) != 1:
        return [], [Problem(where, "expected one YAML document")], {kfile}
    kustomization = docs[0]
    problems = schema_problems(schemas.kustomization, kustomization, where)
    if problems:
        return [], problems, {kfile}
    used = {kfile}
    manifests: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            sub, sub_problems, sub_used = render_kustomization(path, schemas, (*_seen, directory))
            manifests += sub
            problems += sub_problems
            used |= sub_used
        elif path.is_file():
            used.add(path)
            try:
                manifests += [Manifest(doc, rel(path)) for doc in load_yaml_documents(path)]
            except ValidationFailed as e:
                problems += e.problems
        else:
            problems.append(Problem(where, f"resource {entry!r} does not exist"))
    for entry in kustomization.get("patches", []):
        path = (directory / entry["path"]).resolve()
        if not path.is_file():
            problems.append(Problem(where, f"patch {entry['path']!r} does not exist"))
            continue
        used.add(path)
        try:
            patches = load_yaml_documents(path)
        except ValidationFailed as e:
            problems += e.problems
            continue
        for patch in patches:
            meta = patch.get("metadata") or {} if isinstance(patch, dict) else {}
            key = (patch.get("apiVersion"), patch.get("kind"), meta.get("name")) if isinstance(patch, dict) else None
            targets = [m for m in manifests
                       if key == (m.obj.get("apiVersion"), m.kind, m.name)]
            if len(targets) != 1:
                problems.append(Problem(rel(path), f"patch target {key} matches {len(targets)} objects, not 1"))
                continue
            target = targets[0]
            target.obj = merge_patch(target.obj, patch)
            target.source = f"{target.source} + {rel(path)}"
    if "namespace" in kustomization:
        namespace = kustomization["namespace"]
        for m in manifests:
            meta = m.obj.setdefault("metadata", {}) if isinstance(m.obj, dict) else {}
            if m.kind == "Namespace":
                continue
            if meta.get("namespace", namespace) != namespace:
                problems.append(Problem(m.label, f"metadata.namespace {meta['namespace']!r} differs from the "
                                                 f"kustomization's {namespace!r}, which kustomize would impose"))
            meta["namespace"] = namespace
    return manifests, problems, used


# ---------------------------------------------------------------------------------------------------
# Cross-checks of the rendered objects, against each other and against the code.

def _env(pod: dict) -> dict[str, Any]:
    return {e.get("name"): e.get("value", e.get("valueFrom")) for e in pod.get("env") or []}


def _job_parser(job_file: str) -> argparse.ArgumentParser:
    import importlib

    module = importlib.import_module(JOB_MODULES[job_file])
    # Manifests spell flags in full: an abbreviation the job accepts today turns ambiguous when a flag is added.
    parser = argparse.ArgumentParser(prog=job_file, exit_on_error=False, add_help=False, allow_abbrev=False)
    module.add_arguments(parser)
    return parser


def _parse_job_arguments(job_file: str, arguments: list[str]) -> argparse.Namespace:
    """The job's own parser applied to the manifest's arguments; raises ValueError naming what is wrong."""
    parser = _job_parser(job_file)

    def fail(message: str) -> None:
        raise ValueError(message)

    parser.error = fail  # type: ignore[method-assign]  # argparse calls error() instead of exiting
    try:
        return parser.parse_args(arguments)
    except argparse.ArgumentError as e:
        raise ValueError(str(e)) from None


def _mounted(path: str, mounts: list[dict]) -> bool:
    return any(path == m.get("mountPath") or path.startswith(m.get("mountPath", "").rstrip("/") + "/")
               for m in mounts)


def _dockerfile_job_paths() -> set[str]:
    """Destinations of COPY lines that put the jobs under JOBS_DIR_IN_IMAGE, e.g. /opt/tidewatch/train.py."""
    if not DOCKERFILE.is_file():
        return set()
    out = set()
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].upper() == "COPY":
            args = [w for w in words[1:] if not w.startswith("--")]
            sources, dest = args[:-1], args[-1]
            for src in sources:
                # A file copied into a directory keeps its name; a directory's contents land in dest.
                is_file = "--from" not in line and (REPO / src).is_file()
                out.add(dest + Path(src).name if dest.endswith("/") and is_file else dest.rstrip("/") or "/")
    return out


def _pinned(requirements: Path, package: str) -> str | None:
    for line in requirements.read_text().splitlines():
        m = re.match(rf"^{re.escape(package)}==([^\s#]+)", line.strip(), re.IGNORECASE)
        if m:
            return m.group(1)
    return None


def check_spark_application(spec: dict, where: str, by_kind: dict[str, dict[str, Manifest]]) -> list[Problem]:
    problems: list[Problem] = []
    p = lambda message: problems.append(Problem(where, message))  # noqa: E731
    driver, executor = spec.get("driver", {}), spec.get("executor", {})

    volumes = {v.get("name"): v for v in spec.get("volumes", [])}
    for role, pod in (("driver", driver), ("executor", executor)):
        for mount in pod.get("volumeMounts", []):
            if mount.get("name") not in volumes:
                p(f"spec.{role}.volumeMounts: volume {mount.get('name')!r} is not in spec.volumes")
    for name, volume in volumes.items():
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is not None and claim not in by_kind.get("PersistentVolumeClaim", {}):
            p(f"spec.volumes.{name}: claim {claim!r} is not a PersistentVolumeClaim of this kustomization")
    account = driver.get("serviceAccount")
    if account is None:
        p("spec.driver.serviceAccount: not set; the driver needs rights to create its executors")
    elif account not in by_kind.get("ServiceAccount", {}):
        p(f"spec.driver.serviceAccount: {account!r} is not a ServiceAccount of this kustomization")

    cores = executor.get("cores")
    executor_threads = _env(executor).get("OMP_NUM_THREADS")
    driver_threads = _env(driver).get("OMP_NUM_THREADS")
    if executor_threads != str(cores):
        p(f"spec.executor.env OMP_NUM_THREADS is {executor_threads!r}, not the executor cores ({cores})")
    # The jobs pass the driver's OMP_NUM_THREADS to executors (spark.executorEnv): the same number.
    if driver_threads != str(cores):
        p(f"spec.driver.env OMP_NUM_THREADS is {driver_threads!r}; the jobs pass it to the executors, "
          f"so it must equal the executor cores ({cores})")
    conf_threads = spec.get("sparkConf", {}).get("spark.executorEnv.OMP_NUM_THREADS")
    if conf_threads is not None and conf_threads != str(cores):
        p(f"sparkConf spark.executorEnv.OMP_NUM_THREADS is {conf_threads!r}, not the executor cores ({cores})")
    if "SPARK_LOCAL_IP" not in _env(driver):
        p("spec.driver.env: SPARK_LOCAL_IP unset; the jobs would bind the driver to 127.0.0.1 "
          "(set it from status.podIP)")

    spark_pin = _pinned(REPO / "requirements.txt", "pyspark")
    if spark_pin and spec.get("sparkVersion") != spark_pin:
        p(f"spec.sparkVersion {spec.get('sparkVersion')!r} differs from the pinned pyspark {spark_pin}")

    main = str(spec.get("mainApplicationFile", ""))
    prefix = f"local://{JOBS_DIR_IN_IMAGE}/"
    if not main.startswith(prefix) or main[len(prefix):] not in JOB_MODULES:
        p(f"spec.mainApplicationFile {main!r} is not one of the jobs: "
          + ", ".join(prefix + j for j in JOB_MODULES))
        return problems
    job = main[len(prefix):]
    if not (REPO / job).is_file():
        p(f"spec.mainApplicationFile: {job} does not exist in the repository")
    if f"{JOBS_DIR_IN_IMAGE}/{job}" not in _dockerfile_job_paths():
        p(f"spec.mainApplicationFile: the Dockerfile does not copy {job} to {JOBS_DIR_IN_IMAGE}/{job}")
    arguments = [str(a) for a in spec.get("arguments", [])]
    try:
        args = _parse_job_arguments(job, arguments)
    except ImportError as e:
        p(f"cannot import the job's argument parser ({e}); run `make build`")
        return problems
    except ValueError as e:
        p(f"spec.arguments rejected by {job}'s parser: {e}")
        return problems
    # Every absolute path the job reads or writes must be on a volume both driver and executors mount.
    for name, value in sorted(vars(args).items()):
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item.startswith("/"):
                for role, pod in (("driver", driver), ("executor", executor)):
                    if not _mounted(item, pod.get("volumeMounts", [])):
                        p(f"--{name.replace('_', '-')} {item} is on no volume the {role} mounts")
    if job == "inference.py":
        ports = {port.get("containerPort") for port in driver.get("ports", [])}
        if args.metrics_port not in ports:
            p(f"spec.driver.ports does not expose the metrics port {args.metrics_port}")
        if args.metrics_host not in ("0.0.0.0", "::"):
            p(f"--metrics-host {args.metrics_host}: Prometheus scrapes the pod's address; bind 0.0.0.0")
    return problems


def check_cross_references(manifests: list[Manifest]) -> list[Problem]:
    problems: list[Problem] = []
    by_kind: dict[str, dict[str, Manifest]] = {}
    for m in manifests:
        names = by_kind.setdefault(m.kind, {})
        if m.name in names:
            problems.append(Problem(m.label, f"duplicate {m.kind} named {m.name!r} (also in {names[m.name].source})"))
        names[m.name] = m
    for m in manifests:
        if m.kind == "SparkApplication":
            problems += check_spark_application(m.obj["spec"], m.label, by_kind)
        elif m.kind == "ScheduledSparkApplication":
            problems += check_spark_application(m.obj["spec"]["template"], m.label + " (spec.template)", by_kind)
        elif m.kind == "Service":
            problems += _check_service(m, by_kind)
        elif m.kind == "RoleBinding":
            for subject in m.obj.get("subjects", []):
                if subject.get("kind") == "ServiceAccount" and subject.get("name") not in by_kind.get("ServiceAccount", {}):
                    problems.append(Problem(m.label, f"subject ServiceAccount {subject.get('name')!r} not found"))
            role = m.obj["roleRef"]
            if role["kind"] == "Role" and role["name"] not in by_kind.get("Role", {}):
                problems.append(Problem(m.label, f"roleRef Role {role['name']!r} not found"))
    if "SparkApplication" in by_kind and not any(
            "tidewatch-inference" == n for n in by_kind["SparkApplication"]):
        problems.append(Problem("k8s", "no SparkApplication named tidewatch-inference"))
    return problems


def _check_service(m: Manifest, by_kind: dict[str, dict[str, Manifest]]) -> list[Problem]:
    problems = []
    selector = m.obj["spec"]["selector"]
    app = selector.get("sparkoperator.k8s.io/app-name")
    if app is None:
        return problems
    if selector.get("spark-role") != "driver":
        problems.append(Problem(m.label, "selects a Spark application but not its driver (spark-role: driver)"))
    target = by_kind.get("SparkApplication", {}).get(app)
    if target is None:
        problems.append(Problem(m.label, f"selects SparkApplication {app!r}, which does not exist"))
        return problems
    driver_ports = {p.get("containerPort"): p.get("name") for p in target.obj["spec"]["driver"].get("ports", [])}
    for port in m.obj["spec"]["ports"]:
        wanted = port.get("targetPort", port.get("port"))
        if isinstance(wanted, int) and wanted not in driver_ports:
            problems.append(Problem(m.label, f"targetPort {wanted} is not a port of {app}'s driver"))
        if isinstance(wanted, str) and wanted not in driver_ports.values():
            problems.append(Problem(m.label, f"targetPort {wanted!r} names no port of {app}'s driver"))
    names = {p.get("name") for p in m.obj["spec"]["ports"]}
    if "metrics" not in names:
        problems.append(Problem(m.label, "no port named 'metrics' (Prometheus selects it by name)"))
    return problems


def check_k8s(schemas: SchemaSet, k8s_dir: Path = K8S_DIR) -> tuple[list[Problem], dict[str, list[Manifest]]]:
    """Render and check every kustomization under k8s_dir; also that every manifest file is used by one."""
    problems: list[Problem] = []
    rendered: dict[str, list[Manifest]] = {}
    used: set[Path] = set()
    for kfile in sorted(k8s_dir.rglob("kustomization.yaml")):
        manifests, render_problems, files = render_kustomization(kfile.parent, schemas)
        used |= files
        problems += render_problems
        for m in manifests:
            problems += schemas.validate(m.obj, m.label)
        if not render_problems:
            problems += check_cross_references(manifests)
        rendered[rel(kfile.parent)] = manifests
    for path in sorted(k8s_dir.rglob("*.y*ml")):
        if path.resolve() not in used:
            problems.append(Problem(rel(path), "not used by any kustomization, so never validated or applied"))
    if not rendered:
        problems.append(Problem(rel(k8s_dir), "no kustomization.yaml found"))
    return problems, rendered


def check_manifest_files(schemas: SchemaSet, paths: Iterable[Path]) -> list[Problem]:
    """Schema checks of single manifest files (no kustomization, no cross-references)."""
    problems: list[Problem] = []
    for path in paths:
        try:
            docs = load_yaml_documents(path)
        except ValidationFailed as e:
            problems += e.problems
            continue
        for doc in docs:
            m = Manifest(doc, rel(path)) if isinstance(doc, dict) else None
            problems += schemas.validate(doc, m.label if m else rel(path))
    return problems


# ---------------------------------------------------------------------------------------------------
# Metric names: the contract lives in python/tidewatch/metrics.py (read, not imported).

def known_metric_names(metrics_module: Path = METRICS_MODULE) -> set[str]:
    tree = ast.parse(metrics_module.read_text())
    tables: dict[str, dict] = {}
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id in ("CONTRACT_METRICS", "EXTRA_METRICS") and node.value:
            tables[target.id] = ast.literal_eval(node.value)
    if set(tables) != {"CONTRACT_METRICS", "EXTRA_METRICS"}:
        raise ValidationFailed([Problem(rel(metrics_module), "CONTRACT_METRICS / EXTRA_METRICS not found")])
    names = set()
    for table in tables.values():
        for name, (kind, _labels) in table.items():
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


_METRIC_TOKEN = re.compile(r"(?<![\w:\"'.])((?:ae|anomalous)_[A-Za-z0-9_]*)(?![\w\"'])")


def unknown_metrics(expr: str, known: set[str]) -> list[str]:
    """tidewatch metric names in a PromQL expression that the contract does not define."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    return sorted({t for t in _METRIC_TOKEN.findall(without_strings) if t not in known})


# ---------------------------------------------------------------------------------------------------
# promtool

def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        raise ValidationFailed([Problem("promtool", "not found; `make install` installs the prometheus package")])
    return path


def run_promtool(*args: str | Path, cwd: Path | None = None) -> tuple[int, str]:
    proc = subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def check_promql(queries: list[tuple[str, str]]) -> list[Problem]:
    """Each (where, expr) parsed by Prometheus' own parser: written as recording rules, `promtool check rules`."""
    if not queries:
        return []
    groups = [{"name": f"q{i}", "rules": [{"record": f"tidewatch_dashboard_query_{i}", "expr": expr}]}
              for i, (_, expr) in enumerate(queries)]
    with tempfile.TemporaryDirectory(prefix="tidewatch-promql-") as tmp:
        path = Path(tmp) / "queries.rules.yml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        rc, output = run_promtool("check", "rules", path)
    if rc == 0:
        return []
    problems = []
    for line in output.splitlines():
        m = re.search(r'group "q(\d+)", rule \d+, "[^"]*": (.*)$', line)
        if m:
            where, expr = queries[int(m.group(1))]
            problems.append(Problem(where, f"PromQL {expr!r}: {m.group(2)}"))
    return problems or [Problem("promtool check rules", output)]


def check_prometheus(prom_dir: Path = PROMETHEUS_DIR, k8s: dict[str, list[Manifest]] | None = None) -> list[Problem]:
    problems: list[Problem] = []
    config = prom_dir / "prometheus.yml"
    rule_files = sorted((prom_dir / "rules").glob("*.rules.yml"))
    test_files = sorted((prom_dir / "rules").glob("*.test.yml"))
    rc, out = run_promtool("check", "config", config)
    if rc != 0:
        problems.append(Problem(rel(config), f"promtool check config failed:\n{out}"))
    if not rule_files:
        problems.append(Problem(rel(prom_dir / "rules"), "no *.rules.yml"))
    else:
        rc, out = run_promtool("check", "rules", *rule_files)
        if rc != 0:
            problems.append(Problem(", ".join(map(rel, rule_files)), f"promtool check rules failed:\n{out}"))
    if not test_files:
        problems.append(Problem(rel(prom_dir / "rules"), "no *.test.yml unit tests of the rules"))
    for test in test_files:
        rc, out = run_promtool("test", "rules", test.name, cwd=test.parent)
        if rc != 0:
            problems.append(Problem(rel(test), f"promtool test rules failed:\n{out}"))

    known = known_metric_names() | PROMETHEUS_METRICS
    alerts: dict[str, str] = {}
    for path in rule_files:
        try:
            docs = load_yaml_documents(path)
        except ValidationFailed as e:
            problems += e.problems
            continue
        for group in (docs[0] if docs else {}).get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert") or rule.get("record")
                where = f"{rel(path)}: {group.get('name')}/{name}"
                for metric in unknown_metrics(str(rule.get("expr", "")), known | {r.get("record") for r in group["rules"]}):
                    problems.append(Problem(where, f"unknown metric {metric!r} (not in the metrics contract)"))
                if "alert" in rule:
                    alerts[rule["alert"]] = where
                    if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                        problems.append(Problem(where, "labels.severity must be critical, warning or info"))
                    if not rule.get("annotations", {}).get("summary"):
                        problems.append(Problem(where, "annotations.summary missing"))
    fired: set[str] = set()
    for test in test_files:
        for case in (load_yaml_documents(test) or [{}])[0].get("tests", []):
            for alert_test in case.get("alert_rule_test", []):
                if alert_test.get("exp_alerts"):
                    fired.add(alert_test.get("alertname"))
    for alert, where in sorted(alerts.items()):
        if alert not in fired:
            problems.append(Problem(where, "no promtool unit test expects this alert to fire"))
    problems += _check_scrape_config(config, k8s or {})
    return problems


def _check_scrape_config(config: Path, k8s: dict[str, list[Manifest]]) -> list[Problem]:
    """The scrape job targets the inference metrics Service of the manifests, on its metrics port."""
    problems = []
    docs = load_yaml_documents(config)
    jobs = {j.get("job_name"): j for j in (docs[0] if docs else {}).get("scrape_configs", [])}
    job = jobs.get(SCRAPE_JOB)
    where = f"{rel(config)}: job {SCRAPE_JOB}"
    if job is None:
        return [Problem(rel(config), f"no scrape job named {SCRAPE_JOB!r}")]
    if job.get("metrics_path", "/metrics") != "/metrics":
        problems.append(Problem(where, "the inference job serves /metrics"))
    targets = [t for s in job.get("static_configs", []) for t in s.get("targets", [])]
    if not targets:
        return problems + [Problem(where, "no static target")]
    services = {(m.name, m.obj["metadata"].get("namespace")): m for ms in k8s.values() for m in ms
                if m.kind == "Service" and "sparkoperator.k8s.io/app-name" in m.obj["spec"]["selector"]}
    for target in targets:
        host, _, port = target.rpartition(":")
        if port != str(METRICS_PORT):
            problems.append(Problem(where, f"target {target!r} is not on the metrics port {METRICS_PORT}"))
        parts = host.split(".")
        if len(parts) >= 3 and parts[2] == "svc":
            svc = services.get((parts[0], parts[1]))
            if svc is None:
                problems.append(Problem(where, f"target {target!r} names no Service of k8s/ in front of a driver "
                                               f"(known: {sorted(services)})"))
            elif METRICS_PORT not in [p.get("port") for p in svc.obj["spec"]["ports"] if p.get("name") == "metrics"]:
                problems.append(Problem(where, f"Service {svc.name} has no port 'metrics' = {METRICS_PORT}"))
    return problems


# ---------------------------------------------------------------------------------------------------
# Grafana

@dataclass(frozen=True)
class DashboardQuery:
    panel_id: int
    panel_title: str
    ref_id: str
    raw_expr: str  # as written in the dashboard
    expr: str  # Grafana variables substituted
    instant: bool  # the panel asks for the latest value only

    @property
    def where(self) -> str:
        return f"panel {self.panel_id} {self.panel_title!r} query {self.ref_id}"


def iter_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))  # collapsed rows hold their panels


_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\[\[(\w+)(?::[\w]+)?\]\]|\$(\w+)")


def variable_values(dashboard: dict, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The value each variable takes in a query: built-ins, then the dashboard's own, then overrides.

    Multi-value and "All" selections become the regex Grafana sends (`.*` for All).
    """
    values = dict(BUILTIN_VARIABLES)
    for var in dashboard.get("templating", {}).get("list", []):
        name, kind = var.get("name"), var.get("type")
        if kind == "datasource":
            continue
        current = (var.get("current") or {}).get("value")
        if isinstance(current, list):
            current = ".*" if current == ["$__all"] else "|".join(current)
        if current == "$__all" or (current is None and var.get("includeAll")):
            current = var.get("allValue") or ".*"
        if current is None:
            options = [o.get("value") for o in var.get("options", []) if o.get("value") is not None]
            if options:
                current = options[0]
            elif kind in ("custom", "interval", "constant", "textbox") and var.get("query"):
                current = str(var["query"]).split(",")[0].strip()
        if current is not None:
            values[name] = str(current)
    values.update(overrides or {})
    return values


def substitute_variables(expr: str, values: dict[str, str]) -> str:
    """The expression with Grafana's $var, ${var}, ${var:fmt} and [[var]] replaced; KeyError names a missing one."""
    def replace(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(name)
        return values[name]

    return _VARIABLE.sub(replace, expr)


def load_dashboard(path: Path = DASHBOARD) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValidationFailed([Problem(rel(path), f"cannot read the dashboard: {e}")]) from None


def dashboard_queries(path: Path = DASHBOARD, overrides: dict[str, str] | None = None) -> list[DashboardQuery]:
    """Every panel query of the dashboard with Grafana's variables substituted, ready for Prometheus.

    `overrides` sets variables, e.g. {"__rate_interval": "30s"} for a short live run, {"sensor": "LIT101"}.
    Raises ValidationFailed naming any query that uses an undefined variable.
    """
    dashboard = load_dashboard(path)
    values = variable_values(dashboard, overrides)
    queries, problems = [], []
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            raw = target.get("expr")
            if not raw:
                continue
            query_where = f"{rel(path)}: panel {panel.get('id')} {panel.get('title')!r} query {target.get('refId')}"
            try:
                expr = substitute_variables(raw, values)
            except KeyError as e:
                problems.append(Problem(query_where, f"undefined variable ${e.args[0]} in {raw!r}"))
                continue
            queries.append(DashboardQuery(panel.get("id"), str(panel.get("title")), str(target.get("refId")),
                                          raw, expr, bool(target.get("instant")) and not target.get("range")))
    if problems:
        raise ValidationFailed(problems)
    return queries


def _datasource_ok(ds: Any, ds_vars: set[str]) -> bool:
    if not isinstance(ds, dict):
        return False
    uid = str(ds.get("uid", ""))
    return ds.get("type") == "prometheus" and any(uid in (f"${v}", f"${{{v}}}") for v in ds_vars)


def check_dashboard(path: Path = DASHBOARD) -> list[Problem]:
    where = rel(path)
    try:
        dashboard = load_dashboard(path)
    except ValidationFailed as e:
        return e.problems
    problems: list[Problem] = []
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in dashboard:
            problems.append(Problem(where, f"missing {key!r}"))
    if "__inputs" in dashboard:
        problems.append(Problem(where, "__inputs is for manual import; provisioned dashboards take the "
                                       "datasource from a template variable"))
    ds_vars = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])
               if v.get("type") == "datasource" and v.get("query") == "prometheus"}
    if not ds_vars:
        problems.append(Problem(where, "no datasource template variable of type prometheus"))
    ids: set[Any] = set()
    for panel in iter_panels(dashboard.get("panels", [])):
        pwhere = f"{where}: panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids:
            problems.append(Problem(pwhere, "duplicate panel id"))
        ids.add(panel.get("id"))
        if "gridPos" not in panel:
            problems.append(Problem(pwhere, "no gridPos"))
        if panel.get("type") == "row":
            continue
        if not panel.get("targets"):
            problems.append(Problem(pwhere, "no queries"))
        for ds in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
            if not _datasource_ok(ds, ds_vars):
                problems.append(Problem(pwhere, f"datasource {ds!r}: use the datasource variable, no fixed uid"))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query" and not _datasource_ok(var.get("datasource"), ds_vars):
            problems.append(Problem(f"{where}: variable {var.get('name')}", "datasource must be the variable"))
    # Every string anywhere that names a datasource uid must be a variable.
    for uid in re.findall(r'"uid"\s*:\s*"([^"]*)"', json.dumps(dashboard.get("panels", []))):
        if not uid.startswith("$"):
            problems.append(Problem(where, f"hard-coded datasource uid {uid!r}"))
    try:
        queries = dashboard_queries(path)
    except ValidationFailed as e:
        return problems + e.problems
    known = known_metric_names() | PROMETHEUS_METRICS
    for q in queries:
        for metric in unknown_metrics(q.expr, known):
            problems.append(Problem(f"{where}: {q.where}", f"unknown metric {metric!r} (not in the metrics contract)"))
    # Query variables (label_values(metric, label)) name metrics too.
    variable_exprs = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", str(query or ""))
        if not m:
            problems.append(Problem(f"{where}: variable {var.get('name')}", f"expected label_values(selector, label), "
                                                                           f"got {query!r}"))
            continue
        variable_exprs.append((f"{where}: variable {var.get('name')}", m.group(1)))
    # Annotation queries run against Prometheus too.
    values = variable_values(dashboard)
    for note in dashboard.get("annotations", {}).get("list", []):
        if not note.get("expr"):
            continue
        note_where = f"{where}: annotation {note.get('name')!r}"
        if not _datasource_ok(note.get("datasource"), ds_vars):
            problems.append(Problem(note_where, "datasource must be the variable"))
        try:
            variable_exprs.append((note_where, substitute_variables(note["expr"], values)))
        except KeyError as e:
            problems.append(Problem(note_where, f"undefined variable ${e.args[0]}"))
    for var_where, expr in variable_exprs:
        for metric in unknown_metrics(expr, known):
            problems.append(Problem(var_where, f"unknown metric {metric!r} (not in the metrics contract)"))
    problems += check_promql([(f"{where}: {q.where}", q.expr) for q in queries] + variable_exprs)
    return problems


def check_grafana(grafana_dir: Path = GRAFANA_DIR) -> list[Problem]:
    problems: list[Problem] = []
    ds_file = grafana_dir / "datasources" / "prometheus.yml"
    provider_file = grafana_dir / "dashboards" / "dashboards.yml"
    try:
        ds_doc = load_yaml_documents(ds_file)[0]
        sources = [d for d in ds_doc.get("datasources", []) if d.get("type") == "prometheus"]
        if ds_doc.get("apiVersion") != 1 or len(sources) != 1 or not sources[0].get("url"):
            problems.append(Problem(rel(ds_file), "expected apiVersion 1 and one prometheus datasource with a url"))
    except (ValidationFailed, IndexError, AttributeError) as e:
        problems.append(Problem(rel(ds_file), f"unreadable datasource provisioning: {e}"))
    try:
        pv_doc = load_yaml_documents(provider_file)[0]
        providers = [p for p in pv_doc.get("providers", []) if p.get("type") == "file"]
        if pv_doc.get("apiVersion") != 1 or not providers:
            problems.append(Problem(rel(provider_file), "expected apiVersion 1 and a provider of type file"))
        for p in providers:
            path = str((p.get("options") or {}).get("path", ""))
            if not path.rstrip("/").endswith("provisioning/dashboards"):
                problems.append(Problem(rel(provider_file), f"options.path {path!r}: mount "
                                        "deployment/grafana/provisioning at /etc/grafana/provisioning and point here"))
    except (ValidationFailed, IndexError, AttributeError) as e:
        problems.append(Problem(rel(provider_file), f"unreadable dashboard provisioning: {e}"))
    dashboards = sorted((grafana_dir / "dashboards").glob("*.json"))
    if DASHBOARD.resolve() not in [d.resolve() for d in dashboards] and grafana_dir == GRAFANA_DIR:
        problems.append(Problem(rel(DASHBOARD), "missing (operators' dashboards expect this path)"))
    for d in dashboards:
        problems += check_dashboard(d)
    return problems


# ---------------------------------------------------------------------------------------------------

def check_dockerfile(path: Path = DOCKERFILE) -> list[Problem]:
    """Pins in the Dockerfile agree with requirements.txt; the jobs are copied where the manifests expect them."""
    if not path.is_file():
        return [Problem(rel(path), "missing")]
    problems = []
    text = path.read_text()
    for package, version in re.findall(r"\b([A-Za-z][\w.-]*)==([\w.+]+)", text):
        pinned = _pinned(REPO / "requirements.txt", package)
        if pinned is not None and pinned != version:
            problems.append(Problem(rel(path), f"{package}=={version}, but requirements.txt pins {pinned}"))
    for job in JOB_MODULES:
        if f"{JOBS_DIR_IN_IMAGE}/{job}" not in _dockerfile_job_paths():
            problems.append(Problem(rel(path), f"does not copy {job} to {JOBS_DIR_IN_IMAGE}/"))
    return problems


def validate_all(crd_dir: Path | None = None) -> list[Problem]:
    """Every check over the repository's deployment files."""
    problems: list[Problem] = []
    try:
        schemas = SchemaSet(crd_dir or default_crd_dir())
        k8s_problems, rendered = check_k8s(schemas)
        problems += k8s_problems
    except ValidationFailed as e:
        problems += e.problems
        rendered = {}
    for check in (lambda: check_prometheus(k8s=rendered), check_grafana, check_dockerfile):
        try:
            problems += check()
        except ValidationFailed as e:
            problems += e.problems
    # A base object is rendered once per overlay that includes it: report each problem once.
    return list(dict.fromkeys(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crds", type=Path, default=None, help="CRD directory (default: shared/k8s/crds)")
    parser.add_argument("--manifest", type=Path, nargs="+", help="schema-check these manifest files only")
    parser.add_argument("--dashboard", type=Path, nargs="+", help="check these dashboards only")
    parser.add_argument("--list-queries", action="store_true", help="print the dashboard's queries and exit")
    args = parser.parse_args(argv)
    if args.list_queries:
        for q in dashboard_queries():
            print(f"{q.where}\t{q.expr}")
        return 0
    problems: list[Problem] = []
    try:
        if args.manifest:
            problems += check_manifest_files(SchemaSet(args.crds or default_crd_dir()), args.manifest)
        if args.dashboard:
            for d in args.dashboard:
                problems += check_dashboard(d)
        if not args.manifest and not args.dashboard:
            problems += validate_all(args.crds)
    except ValidationFailed as e:
        problems += e.problems
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        print(f"validate: {len(problems)} problem(s)")
        return 1
    print("validate: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
