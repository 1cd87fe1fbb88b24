"""Security: no code-executing loader anywhere; model files are data (a foreign pickle given as a model is
refused without being executed); the metrics server is read-only, serves only /metrics and /healthz, and
listens on the address it is given.
"""
from __future__ import annotations

import ast
import http.client
import os
import pickle
import re
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from corpus.generate import canonical_table
from corpus.models import train_tiny_swat_model

import tidewatch
from tidewatch import ConfigError, MetricsRegistry, MetricsServer, ModelError, SensorSet

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["python", "src", "train.py", "inference.py", "bench"]

# ------------------------------------------------------------------------------------------------
# static scan: loaders that run code, and shells
# ------------------------------------------------------------------------------------------------

# Allowed exceptions, each with its reason: (path relative to the repo, the call as written) -> reason.
ALLOWLIST: dict[tuple[str, str], str] = {}

_PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
_PICKLE_SAFE_ATTRIBUTES = {"UnpicklingError", "PicklingError", "PickleError", "HIGHEST_PROTOCOL"}
_SHELL_ALWAYS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "commands.getoutput",
                 "asyncio.create_subprocess_shell", "pty.spawn"}
_SUBPROCESS = {"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
               "subprocess.Popen"}
_SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


@dataclass
class Finding:
    path: str
    line: int
    call: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call}: {self.why}"


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}  # local name -> module or module.attribute
        self.findings: list[Finding] = []

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        self.generic_visit(node)

    def dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def add(self, node: ast.AST, call: str, why: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), call, why))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self.dotted(node)
        if name and name.split(".")[0] in _PICKLE_MODULES and node.attr not in _PICKLE_SAFE_ATTRIBUTES:
            self.add(node, name, "uses a module that unpickles (runs code from the data)")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func) or ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        is_true = lambda v: isinstance(v, ast.Constant) and v.value is True  # noqa: E731
        if name in ("eval", "exec") or name.endswith((".eval", ".exec")) and name.split(".")[0] == "builtins":
            self.add(node, name, "runs code given as text")
        elif name == "getattr" and node.args and (self.dotted(node.args[0]) or "").split(".")[0] in _PICKLE_MODULES:
            self.add(node, name, "reaches into a module that unpickles")
        elif name.split(".")[-1] in ("load", "loads", "Unpickler", "open") and name.split(".")[0] in _PICKLE_MODULES:
            self.add(node, name, "unpickles (runs code from the data)")
        elif name.endswith("read_pickle"):
            self.add(node, name, "unpickles (runs code from the data)")
        elif name == "torch.load" and not is_true(keywords.get("weights_only")):
            self.add(node, name, "torch.load without weights_only=True unpickles")
        elif name in ("numpy.load", "np.load") and is_true(keywords.get("allow_pickle")):
            self.add(node, name, "numpy.load with allow_pickle=True unpickles")
        elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
            self.add(node, name, "constructs arbitrary Python objects")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
            loader_name = (self.dotted(loader) or "") if loader is not None else ""
            if loader_name.split(".")[-1] not in _SAFE_YAML_LOADERS:
                self.add(node, name, "yaml.load without a safe Loader")
        elif name in _SHELL_ALWAYS:
            self.add(node, name, "runs a command line through a shell")
        elif name in _SUBPROCESS and "shell" in keywords and not (
                isinstance(keywords["shell"], ast.Constant) and keywords["shell"].value is False):
            self.add(node, name, "shell=True interpolates into a shell command line")
        self.generic_visit(node)


def scan_python(source: str, path: str) -> list[Finding]:
    scanner = _Scanner(path)
    scanner.visit(ast.parse(source, filename=path))
    return scanner.findings


_RUST_RULES = [
    (re.compile(r"Command::new\(\s*\"(?:/bin/|/usr/bin/)?(?:sh|bash|zsh|dash|cmd)\""), "starts a shell"),
    (re.compile(r"\bCommand::new\("), "starts a process (the core has no reason to)"),
    (re.compile(r"\bCModule::(?:load|load_on_device|load_data)"), "loads TorchScript (code) from a file"),
    (re.compile(r"\bTensor::(?:load|load_multi|load_multi_with_device)\b|\.load_multi\("),
     "reads libtorch-serialised files (pickle-based), not safetensors checked against the manifest"),
    (re.compile(r"\b(?:vs|var_store|varstore)\.load\("), "VarStore::load reads .ot/.pt (pickle-based) files"),
    (re.compile(r"serde_pickle|\bpickle::"), "unpickles"),
    (re.compile(r"\bpy\.(?:eval|run)\(|PyModule::from_code|\.run_bound\(|\.eval_bound\("), "runs Python code from text"),
]


def scan_rust(source: str, path: str) -> list[Finding]:
    findings = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("//", 1)[0]
        for pattern, why in _RUST_RULES:
            match = pattern.search(code)
            if match:
                findings.append(Finding(path, number, match.group(0), why))
                break
    return findings


def scanned_files() -> list[Path]:
    files = []
    for entry in SCANNED:
        path = REPO / entry
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*")) if p.suffix in (".py", ".rs") and "out" not in p.parts]
    return files


def test_the_scanner_finds_every_forbidden_pattern() -> None:
    """The scan below can only pass meaningfully if it finds these."""
    bad_python = textwrap.dedent("""
        import pickle, yaml, os, subprocess, torch
        import pickle as pk
        from pickle import loads as unpickle
        import numpy as np
        import pandas as pd
        pickle.load(f)
        pk.loads(b)
        unpickle(b)
        torch.load(p)
        torch.load(p, weights_only=False)
        eval("1")
        exec("x = 1")
        yaml.load(t)
        yaml.load(t, Loader=yaml.Loader)
        yaml.unsafe_load(t)
        subprocess.run(cmd, shell=True)
        subprocess.Popen(f"ls {path}", shell=True)
        os.system("ls " + path)
        os.popen(cmd)
        np.load(p, allow_pickle=True)
        pd.read_pickle(p)
        getattr(pickle, "loads")(b)
        pickle.Unpickler(f).load()
    """)
    found = scan_python(bad_python, "bad.py")
    calls = [f.call for f in found]
    assert len(found) >= 19, "\n".join(map(str, found))
    for expected in ("pickle.load", "pickle.loads", "torch.load", "eval", "exec", "yaml.load", "yaml.unsafe_load",
                     "subprocess.run", "subprocess.Popen", "os.system", "os.popen", "numpy.load", "pandas.read_pickle", "getattr"):
        assert expected in calls, (expected, calls)
    good_python = textwrap.dedent("""
        import pickle, yaml, subprocess, torch, json
        model.eval()
        yaml.safe_load(t)
        yaml.load(t, Loader=yaml.SafeLoader)
        torch.load(p, map_location="cpu", weights_only=True)
        subprocess.run([sys.executable, script])
        subprocess.run(cmd, shell=False)
        except pickle.UnpicklingError: pass
        json.loads(t)
        Detector.load(p)
    """).replace("except pickle.UnpicklingError: pass", "E = pickle.UnpicklingError")
    assert scan_python(good_python, "good.py") == []
    bad_rust = 'let m = tch::CModule::load("m.pt")?;\nCommand::new("sh").arg("-c").arg(p);\n' \
               'let t = Tensor::load(&path)?;\nvs.load("w.ot")?;\npy.run(code, None, None)?;'
    assert len(scan_rust(bad_rust, "bad.rs")) == 5
    assert scan_rust('// Command::new("sh") in a comment\nlet d = Detector::load(p)?;', "good.rs") == []


def test_no_code_executing_loader_or_shell_anywhere() -> None:
    files = scanned_files()
    assert any(p.name == "model.py" for p in files) and any(p.suffix == ".rs" for p in files)
    findings: list[Finding] = []
    for path in files:
        relative = str(path.relative_to(REPO))
        source = path.read_text(encoding="utf-8")
        findings += scan_python(source, relative) if path.suffix == ".py" else scan_rust(source, relative)
    unexplained = [f for f in findings if (f.path, f.call) not in ALLOWLIST]
    assert not unexplained, "code-executing loaders or shells:\n" + "\n".join(map(str, unexplained))


def test_no_pickle_capable_dependency() -> None:
    """Neither the crate nor the Python package depends on a library whose job is unpickling."""
    cargo = (REPO / "Cargo.toml").read_text()
    assert not re.search(r"(?m)^\s*(serde[-_]pickle|pickle)\s*=", cargo)
    requirements = (REPO / "requirements.txt").read_text().lower()
    for name in ("dill", "cloudpickle", "joblib"):
        assert not re.search(rf"(?m)^{name}\b", requirements), name


# ------------------------------------------------------------------------------------------------
# a foreign pickle given as a model is refused, never executed
# ------------------------------------------------------------------------------------------------


class _Planted:
    """Unpickling this creates the marker directory: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_swat_model(tmp_path_factory.mktemp("good") / "swat")


def planted_payload(marker: Path) -> bytes:
    payload = pickle.dumps(_Planted(marker), protocol=2)
    # The payload is live: unpickled in another process, it does create its marker.
    probe = marker.with_name(marker.name + "-probe")
    live = pickle.dumps(_Planted(probe), protocol=2)
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"], input=live,
                   check=True)
    assert probe.is_dir(), "the planted pickle does not run its code: the test would prove nothing"
    probe.rmdir()
    return payload


def torch_checkpoint(marker: Path, path: Path) -> Path:
    """A PyTorch .pth (zip) whose pickled object creates the marker when loaded without weights_only."""
    import torch

    torch.save({"state_dict": _Planted(marker)}, path)
    return path


@pytest.mark.parametrize("route", ["pickle file as the model path", "torch .pth as the model path",
                                   "pickle as manifest.json", "pickle as weights, checksum matching",
                                   "legacy import of a pickle", "legacy import of a torch checkpoint",
                                   "hot reload onto a pickle", "plant file with a python tag"])
def test_foreign_pickle_is_refused_and_never_run(good_model: Path, tmp_path: Path, route: str) -> None:
    import hashlib
    import json
    import shutil

    marker = tmp_path / "code-ran"
    payload = planted_payload(marker)
    batch = canonical_table(40, np.random.default_rng(1))
    if route == "pickle file as the model path":
        path = tmp_path / "lstm_vae_swat.pth"
        path.write_bytes(payload)
        with pytest.raises(ModelError, match="pickle"):
            tidewatch.Detector.load(path)
    elif route == "torch .pth as the model path":
        with pytest.raises(ModelError, match="zip|pickle"):
            tidewatch.Detector.load(torch_checkpoint(marker, tmp_path / "model.pth"))
    elif route == "pickle as manifest.json":
        model = shutil.copytree(good_model.resolve(), tmp_path / "m")
        (model / "manifest.json").write_bytes(payload)
        with pytest.raises(ModelError, match="manifest.json"):
            tidewatch.Detector.load(model)
    elif route == "pickle as weights, checksum matching":
        model = shutil.copytree(good_model.resolve(), tmp_path / "m")
        (model / "model.safetensors").write_bytes(payload)
        manifest = json.loads((model / "manifest.json").read_text())
        manifest["weights"].update(sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))
        (model / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelError, match="safetensors"):
            tidewatch.Detector.load(model)
    elif route == "legacy import of a pickle":
        path = tmp_path / "legacy.pth"
        path.write_bytes(payload)
        with pytest.raises(ModelError):
            tidewatch.import_legacy(path, batch, sensors=SensorSet.swat())
    elif route == "legacy import of a torch checkpoint":
        with pytest.raises(ModelError):
            tidewatch.import_legacy(torch_checkpoint(marker, tmp_path / "legacy.pth"), batch, sensors=SensorSet.swat())
    elif route == "hot reload onto a pickle":
        link = tmp_path / "current"
        link.symlink_to(good_model.resolve())
        detector = tidewatch.Detector.load(link, device="cpu")
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "manifest.json").write_bytes(payload)
        (bad / "model.safetensors").write_bytes(payload)
        link.unlink()
        link.symlink_to(bad)
        with pytest.raises(ModelError):
            detector.reload_if_changed()
        assert detector.score(batch.to_batches()[0]).num_rows == 40, "the current model keeps scoring"
    elif route == "plant file with a python tag":
        path = tmp_path / "plant.yaml"
        path.write_text(f"plant: !!python/object/apply:os.mkdir ['{marker}']\nsensors: [a]\nstages: {{P1: [a]}}\n")
        with pytest.raises(ConfigError):
            SensorSet.load(path)
        from tidewatch.readers import load_plant

        with pytest.raises(ConfigError):
            load_plant(path)
    assert not marker.exists(), f"{route}: code from the file ran"


# ------------------------------------------------------------------------------------------------
# the metrics server: read-only, two paths, the configured address
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> MetricsServer:
    registry = MetricsRegistry(SensorSet.swat())
    s = MetricsServer(registry, host="127.0.0.1", port=0)
    yield s
    s.stop()


def request(port: int, method: str, path: str, body: bytes | None = None, host: str = "127.0.0.1",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_metrics_and_health_are_served(server: MetricsServer) -> None:
    status, headers, body = request(server.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"ae_batches_processed_total" in body
    assert request(server.port, "GET", "/metrics?x=1&name[]=y")[0] == 200
    status, _, body = request(server.port, "HEAD", "/metrics")
    assert status == 200 and body == b""
    assert request(server.port, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize("path", ["/", "/metrics/", "/metricsx", "/METRICS", "//metrics", "/metrics/../healthz",
                                  "/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/healthz/x", "/admin",
                                  "/debug/pprof", "/api/v1/write", "/favicon.ico", "/metrics%00",
                                  "/<script>alert(1)</script>", "/" + "a" * 8000])
def test_other_paths_are_not_found(server: MetricsServer, path: str) -> None:
    status, _, body = request(server.port, "GET", path)
    assert status == 404, (path, status)
    assert b"root:" not in body and b"<script>" not in body, "the answer must not serve files or echo the request"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "get"])
def test_only_get_and_head_are_answered(server: MetricsServer, method: str) -> None:
    before = request(server.port, "GET", "/metrics")[2]
    for path in ("/metrics", "/healthz", "/"):
        status, headers, _ = request(server.port, method, path, body=b"ae_batches_processed_total 1e9\n")
        assert status == 405, (method, path, status)
        assert headers.get("allow") == "GET, HEAD"
    assert request(server.port, "GET", "/metrics")[2] == before, "a request changed the metrics"


def test_garbage_requests_do_not_stop_the_server(server: MetricsServer) -> None:
    for junk in (b"\x00\xff" * 100 + b"\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n", b"GET\r\n\r\n",
                 b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 100_000 + b"\r\n\r\n", b"\r\n" * 1000,
                 b"GET /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            try:
                s.sendall(junk)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                while s.recv(65536):
                    pass
            except OSError:
                pass  # the server may close on us: fine, as long as it keeps serving others
        assert request(server.port, "GET", "/healthz")[0] == 200, junk[:40]


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) with a listening socket on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads the kernel's socket table")
def test_the_server_listens_on_the_configured_address_only() -> None:
    registry = MetricsRegistry(SensorSet.swat())
    for host, loopback_hex in (("127.0.0.1", "0100007F"), ("127.0.0.2", "0200007F")):
        with MetricsServer(registry, host=host, port=0) as s:
            assert s.host == host and f"{host}:{s.port}" in s.url
            assert _listening(s.port) == [loopback_hex], (host, _listening(s.port))
            assert request(s.port, "GET", "/healthz", host=host)[0] == 200
            other = "127.0.0.2" if host == "127.0.0.1" else "127.0.0.1"
            with pytest.raises(OSError):
                socket.create_connection((other, s.port), timeout=2).close()
    with MetricsServer(registry, host="0.0.0.0", port=0) as s:  # the documented default: every interface
        assert _listening(s.port) == ["00000000"]
    deadline = time.monotonic() + 5
    while _listening(s.port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _listening(s.port), "stop() must close the listening socket"


@pytest.mark.parametrize("host", ["not a host", "999.1.1.1", "127.0.0.1; rm -rf /", "$(touch x)"])
def test_bad_bind_addresses_are_config_errors(host: str) -> None:
    with pytest.raises(ConfigError):
        MetricsServer(MetricsRegistry(SensorSet.swat()), host=host, port=0)
