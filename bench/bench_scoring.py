"""Scoring and training speed of tidewatch's LSTM-VAE against the compute floor and a plain Python reference.

Measured side by side in one run, on SWaT-width data (51 sensors, window 30, stride 1, default model):

  (a) native     `Detector.score` on Arrow record batches (windows carried across batches), rows/s;
  (b) floor      the same weights' libtorch forward (PyTorch module, inference mode) on ready-made window
                 tensors [N, 30, 51] already scaled: the compute floor, windows/s = rows/s;
  (c) reference  the usual Python way: pandas -> numpy scaling -> sliding windows -> PyTorch forward ->
                 numpy errors, same weights;
  peak memory of (a) and (c), each in its own process (peak RSS above the RSS before scoring);
  training time per epoch, tidewatch vs the same model and loop in plain PyTorch;
  on a CUDA machine also (a) on the GPU and CPU/GPU score agreement.

Targets (issue 3): (a) >= 0.8 x (b), (a) >= 5 x (c), training <= 1.0 x PyTorch.

    python bench/bench_scoring.py [--rows 60000] [--threads 2] [--json bench/out/bench_scoring.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------- data and the PyTorch twin of the model


def swat_like(rows: int, seed: int) -> np.ndarray:
    """51 columns shaped like SWaT's: tank levels filling and draining, pumps and valves switching with
    them, flows following pumps, slowly drifting analysers; Gaussian noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)[:, None]
    period = rng.integers(200, 1200, size=51)[None, :]
    phase = ((t + rng.integers(0, 1000, size=51)[None, :]) % period) / period
    level = np.where(phase < 0.5, 200 + 1600 * phase, 200 + 1600 * (1 - phase))
    switch = (phase < 0.5).astype(float) + 1.0  # pumps/valves: 1 off, 2 on
    analyser = 7 + 0.3 * np.sin(2 * np.pi * t / period)
    kind = np.arange(51) % 3
    values = np.where(kind == 0, level, np.where(kind == 1, switch, analyser))
    return values + rng.normal(0, 0.01, values.shape) * np.where(kind == 1, 0, 1)


def record_batches(values: np.ndarray, batch_rows: int, t0: int = 0) -> list[Any]:
    import pyarrow as pa

    import tidewatch

    names = tidewatch.SensorSet.swat().sensors
    start = np.datetime64("2015-12-28T10:00:00", "us")
    out = []
    for a in range(0, len(values), batch_rows):
        part = values[a:a + batch_rows]
        cols = {"plant": pa.array(["swat"] * len(part)),
                "timestamp": pa.array(start + (t0 + a + np.arange(len(part))) * np.timedelta64(1, "s"),
                                      pa.timestamp("us", tz="UTC"))}
        cols.update({n: pa.array(part[:, j]) for j, n in enumerate(names)})
        out.append(pa.RecordBatch.from_pydict(cols))
    return out


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """safetensors without the package: 8-byte header length, JSON header, little-endian data."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(info["shape"]).copy()
    return out


def torch_model(model_dir: Path | None, manifest: dict[str, Any]):
    """The PyTorch module with tidewatch's architecture and parameter names (weights from the file)."""
    import torch

    arch = manifest["architecture"]
    f, h, z, layers = arch["n_features"], arch["hidden_size"], arch["latent_size"], arch["layers"]

    class LstmVae(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.LSTM(f, h, layers, batch_first=True)
            self.fc_mu = torch.nn.Linear(h, z)
            self.fc_logvar = torch.nn.Linear(h, z)
            self.decoder = torch.nn.LSTM(z, h, layers, batch_first=True)
            self.output = torch.nn.Linear(h, f)

        def forward(self, x, eps=None):
            _, (hidden, _) = self.encoder(x)
            last = hidden[-1]
            mu, logvar = self.fc_mu(last), self.fc_logvar(last)
            zs = mu if eps is None else mu + torch.exp(0.5 * logvar) * eps
            decoded, _ = self.decoder(zs.unsqueeze(1).expand(-1, x.shape[1], -1))
            return self.output(decoded), mu, logvar

    module = LstmVae()
    if model_dir is not None:
        state = {k: torch.from_numpy(v) for k, v in read_safetensors(model_dir / "model.safetensors").items()}
        module.load_state_dict(state, strict=True)
    return module.eval()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the three ways of scoring


def native_job(det, batches):
    """(a): record batches in, scored record batches out; the stream restarts each pass."""
    def run() -> np.ndarray:
        det.reset_stream()
        outs = [det.score(b) for b in batches]
        return np.concatenate([o.column("score").to_numpy(zero_copy_only=False) for o in outs])
    return run


def floor_job(module, windows, batch: int, focus: int):
    """(b): the libtorch forward and the per-window error on ready-made, scaled window tensors; the error
    over the window's last `focus` steps, as the model's thresholds say (docs/scoring-contract.md)."""
    import torch

    def run() -> np.ndarray:
        out = []
        with torch.inference_mode():
            for a in range(0, len(windows), batch):
                x = windows[a:a + batch]
                recon, _, _ = module(x)
                out.append((recon - x)[:, -focus:].square().mean(dim=(1, 2)))
        return torch.cat(out).numpy()
    return run


def reference_job(module, batches, names, offset, scale, window: int, batch: int, focus: int):
    """(c): per record batch, pandas -> numpy scaling -> sliding windows -> PyTorch -> numpy errors."""
    import torch

    def run() -> np.ndarray:
        scores = []
        for b in batches:
            df = b.to_pandas()
            x = ((df[names].to_numpy(dtype=np.float64) - offset) / scale).astype(np.float32)
            win = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(x, window, axis=0).transpose(0, 2, 1))
            with torch.no_grad():
                for a in range(0, len(win), batch):
                    recon, _, _ = module(torch.from_numpy(win[a:a + batch]))
                    scores.append(((recon.numpy() - win[a:a + batch])[:, -focus:] ** 2).mean(axis=(1, 2)))
        return np.concatenate(scores)
    return run


# ---------------------------------------------------------------- one measurement per process


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    model_dir = Path(args.model)
    manifest = json.loads((model_dir.resolve() / "manifest.json").read_text())
    window = manifest["window"]["length"]
    offset = np.array(manifest["scaler"]["offset"])
    scale = np.array(manifest["scaler"]["scale"])
    names = manifest["sensors"]
    # Steps a per-sensor error averages over (0 or absent: the whole window, format-1 models).
    focus = manifest["thresholds"].get("focus_rows") or window
    values = swat_like(args.rows, seed=7)
    result: dict[str, Any] = {"mode": args.mode}

    def detector(device: str = "cpu"):
        import tidewatch

        return tidewatch.Detector.load(model_dir, device=device, threads=args.threads)

    def module():
        import torch

        torch.set_num_threads(args.threads)
        return torch_model(model_dir, manifest)

    if args.mode in ("speed", "native-cuda"):
        # All ways in one process, interleaved, each keeping its best pass: load from other processes
        # on a shared machine then hits them alike.
        import torch

        batches = record_batches(values, args.batch_rows)
        jobs = {"native": native_job(detector("cuda" if args.mode == "native-cuda" else "cpu"), batches)}
        if args.mode == "speed":
            m = module()
            scaled = ((values - offset) / scale).astype(np.float32)
            windows = torch.from_numpy(np.ascontiguousarray(
                np.lib.stride_tricks.sliding_window_view(scaled, window, axis=0).transpose(0, 2, 1)))
            jobs["floor"] = floor_job(m, windows, args.score_batch, focus)
            jobs["reference"] = reference_job(m, batches, names, offset, scale, window, args.score_batch, focus)
        best: dict[str, float] = {}
        scores: dict[str, np.ndarray] = {}
        for name, job in jobs.items():
            scores[name] = job()  # warm-up
        for _ in range(args.repeats):
            for name, job in jobs.items():
                started = time.perf_counter()
                job()
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
        result["rows_per_s"] = {name: args.rows / t for name, t in best.items()}
        result["rows_per_s"]["floor"] = len(scores["floor"]) / best["floor"] if "floor" in best else None
        if args.scores_out:
            np.savez(args.scores_out, **scores)

    elif args.mode in ("mem-native", "mem-reference"):
        batches = record_batches(values, args.batch_rows)
        if args.mode == "mem-native":
            job = native_job(detector(), batches)
        else:
            job = reference_job(module(), batches, names, offset, scale, window, args.score_batch, focus)
        base = rss_mb()
        job()
        result.update(rss_before_mb=base, peak_rss_mb=peak_rss_mb())

    elif args.mode == "train-native":
        import tidewatch

        data = record_batches(swat_like(args.train_rows, seed=3), args.batch_rows)
        model = tidewatch.train(data, dict(epochs=args.epochs, patience=0, device="cpu", threads=args.threads),
                                sensors=tidewatch.SensorSet.swat(), progress=None)
        secs = [h["seconds"] for h in model.history]
        result.update(epoch_seconds=secs, train_windows=model.manifest["training"]["train_windows"])

    elif args.mode == "train-torch":
        import torch

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        cfg = manifest["config"]
        w, stride = cfg["window"], cfg["train_stride"]
        raw = swat_like(args.train_rows, seed=3)
        n_val = round(len(raw) * cfg["validation_fraction"])
        train_raw, val_raw = raw[:-n_val], raw[-n_val:]
        lo, hi = train_raw.min(0), train_raw.max(0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        series = torch.from_numpy(((raw - lo) / span).astype(np.float32))
        train_starts = torch.arange(0, len(train_raw) - w + 1, stride)
        val_starts = torch.arange(len(train_raw), len(raw) - w + 1, stride)
        module = torch_model(None, manifest).train()
        opt = torch.optim.Adam(module.parameters(), lr=cfg["learning_rate"])
        offsets = torch.arange(w)
        elements = w * series.shape[1]
        secs = []
        for epoch in range(args.epochs):
            started = time.perf_counter()
            beta = cfg["beta_max"] * min(1.0, epoch / max(1, cfg["beta_anneal_epochs"]))
            order = train_starts[torch.randperm(len(train_starts))]
            for a in range(0, len(order), cfg["batch_size"]):
                s = order[a:a + cfg["batch_size"]]
                x = series[(s[:, None] + offsets).reshape(-1)].view(len(s), w, -1)
                recon, mu, logvar = module(x, torch.randn(len(s), cfg["latent_size"]))
                rec = (recon - x).square().mean()
                kl = (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)).mean()
                loss = rec + beta * kl / elements
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), cfg["grad_clip_norm"])
                opt.step()
            with torch.no_grad():  # validation pass, as tidewatch does every epoch
                for a in range(0, len(val_starts), 4096):
                    s = val_starts[a:a + 4096]
                    x = series[(s[:, None] + offsets).reshape(-1)].view(len(s), w, -1)
                    recon, mu, logvar = module(x)
                    (recon - x).square().mean()
            secs.append(time.perf_counter() - started)
        result.update(epoch_seconds=secs, train_windows=len(train_starts))
    else:
        raise SystemExit(f"unknown mode {args.mode}")
    return result


def measure(mode: str, args: argparse.Namespace, model_dir: Path, extra: list[str] = ()) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--mode", mode, "--model", str(model_dir), "--rows", str(args.rows),
           "--batch-rows", str(args.batch_rows), "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--train-rows", str(args.train_rows), "--epochs", str(args.epochs), "--score-batch", str(args.score_batch),
           *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"{mode} failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--scores-out", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=60_000, help="rows scored (default 60000)")
    p.add_argument("--batch-rows", type=int, default=10_000, help="rows per record batch (default 10000)")
    p.add_argument("--score-batch", type=int, default=512,
                   help="windows per forward pass for (b), (c) (default 512, the fastest on CPU, as in (a))")
    p.add_argument("--threads", type=int, default=2, help="libtorch threads (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per process; the best is kept (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all modes; each keeps its best (default 2)")
    p.add_argument("--train-rows", type=int, default=30_000, help="rows for the training comparison")
    p.add_argument("--epochs", type=int, default=3, help="epochs for the training comparison (default 3)")
    p.add_argument("--json", default=str(HERE / "out" / "bench_scoring.json"), help="where to write the figures")
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return 0

    import tidewatch

    with tempfile.TemporaryDirectory(prefix="tw-bench-") as tmp:
        model_dir = Path(tmp) / "model"
        data = record_batches(swat_like(8000, seed=1), 4000)
        model = tidewatch.train(data, dict(epochs=1, device="cpu", threads=args.threads,
                                           threshold_level=0.99, sensor_threshold_level=0.99),
                                sensors=tidewatch.SensorSet.swat(), progress=None)
        model.save(model_dir)
        print(f"model {model.version}: window 30, 51 sensors, hidden 64, latent 16; {args.rows} rows in batches "
              f"of {args.batch_rows}; {args.threads} libtorch thread(s)", flush=True)
        scores_file = Path(tmp) / "scores.npz"
        speed = measure("speed", args, model_dir, ["--scores-out", str(scores_file)])["rows_per_s"]
        scores = dict(np.load(scores_file))
        mem = {m: measure(m, args, model_dir) for m in ("mem-native", "mem-reference")}
        # Training: the two processes alternate over rounds, each keeping its best (median epoch) round.
        train: dict[str, float] = {}
        windows_per_epoch = 0
        for _ in range(args.rounds):
            for m in ("train-native", "train-torch"):
                r = measure(m, args, model_dir)
                train[m] = min(train.get(m, float("inf")), float(np.median(r["epoch_seconds"])))
                windows_per_epoch = r["train_windows"]
        gpu = None
        if tidewatch.cuda_available():
            gpu_file = Path(tmp) / "gpu.npz"
            gpu = measure("native-cuda", args, model_dir, ["--scores-out", str(gpu_file)])
            cpu_s, gpu_s = scores["native"], np.load(gpu_file)["native"]
            both = np.isfinite(cpu_s) & np.isfinite(gpu_s)
            gpu["max_abs_diff_vs_cpu"] = float(np.abs(cpu_s[both] - gpu_s[both]).max())

    # Do (a) and (c) compute the same thing? (c) windows each record batch on its own; compare the rows
    # whose window lies inside one batch.
    nat, ref = scores["native"], scores["reference"]
    idx = np.concatenate([np.arange(k * args.batch_rows + 29, min((k + 1) * args.batch_rows, args.rows))
                          for k in range((args.rows + args.batch_rows - 1) // args.batch_rows)])
    agreement = float(np.abs(nat[idx] - ref).max()) if len(idx) == len(ref) else float("nan")
    floor_agreement = float(np.nanmax(np.abs(nat[29:] - scores["floor"])))

    fig = {
        "native_rows_per_s": speed["native"], "floor_rows_per_s": speed["floor"],
        "reference_rows_per_s": speed["reference"],
        "native_over_floor": speed["native"] / speed["floor"],
        "native_over_reference": speed["native"] / speed["reference"],
        "floor_over_reference": speed["floor"] / speed["reference"],
        "native_peak_mb_above_start": mem["mem-native"]["peak_rss_mb"] - mem["mem-native"]["rss_before_mb"],
        "reference_peak_mb_above_start": mem["mem-reference"]["peak_rss_mb"] - mem["mem-reference"]["rss_before_mb"],
        "native_vs_reference_max_abs_score_diff": agreement,
        "native_vs_floor_max_abs_score_diff": floor_agreement,
        "train_native_s_per_epoch": train["train-native"],
        "train_torch_s_per_epoch": train["train-torch"],
        "train_windows_per_epoch": windows_per_epoch,
        "threads": args.threads, "rows": args.rows, "batch_rows": args.batch_rows,
        "load_average_1min": os.getloadavg()[0],
    }
    fig["train_native_over_torch"] = fig["train_native_s_per_epoch"] / fig["train_torch_s_per_epoch"]
    if gpu is not None:
        fig["native_cuda_rows_per_s"] = gpu["rows_per_s"]["native"]
        fig["cuda_max_abs_score_diff_vs_cpu"] = gpu["max_abs_diff_vs_cpu"]

    ok = lambda cond: "ok" if cond else "MISSED"  # noqa: E731
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other processes on the machine skew figures)")
    print(f"(a) Detector.score (Arrow in/out)    {fig['native_rows_per_s']:>10,.0f} rows/s")
    print(f"(b) libtorch forward, ready tensors  {fig['floor_rows_per_s']:>10,.0f} rows/s")
    print(f"(c) pandas/numpy/PyTorch reference   {fig['reference_rows_per_s']:>10,.0f} rows/s")
    print(f"    (a)/(b) = {fig['native_over_floor']:.2f}  (target >= 0.8: {ok(fig['native_over_floor'] >= 0.8)})")
    print(f"    (a)/(c) = {fig['native_over_reference']:.2f}  (target >= 5: {ok(fig['native_over_reference'] >= 5)})")
    print(f"    (b)/(c) = {fig['floor_over_reference']:.2f}  (the most any scorer of this model can gain over (c))")
    print(f"    same windows, max |score difference|: (a) vs (b) {floor_agreement:.1e}, (a) vs (c) {agreement:.1e}")
    print(f"peak memory above start: (a) {fig['native_peak_mb_above_start']:.0f} MB, "
          f"(c) {fig['reference_peak_mb_above_start']:.0f} MB")
    print(f"training, {fig['train_windows_per_epoch']} windows/epoch: tidewatch "
          f"{fig['train_native_s_per_epoch']:.2f} s/epoch, PyTorch {fig['train_torch_s_per_epoch']:.2f} s/epoch, "
          f"ratio {fig['train_native_over_torch']:.2f} (target <= 1.0: {ok(fig['train_native_over_torch'] <= 1.0)})")
    if gpu is not None:
        print(f"CUDA: (a) {fig['native_cuda_rows_per_s']:,.0f} rows/s; max |score CPU - GPU| = "
              f"{fig['cuda_max_abs_score_diff_vs_cpu']:.2e} (target <= 1e-4)")
    else:
        print("CUDA: not available here; GPU figures not measured")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fig, indent=2) + "\n")
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
