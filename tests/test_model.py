"""The LSTM-VAE through the Python API: config, train, save/load, Detector scoring, streaming, reload,
rejection of bad artifacts, and a real-data check on SKAB."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import tidewatch
from tidewatch import ConfigError, Detector, InputError, ModelConfig, ModelError, SchemaError, SensorSet

SENSORS = ["LIT", "P", "FIT", "MV", "AIT"]
TOY = SensorSet("toy", SENSORS, [("S1", ["LIT", "P", "FIT"]), ("S2", ["MV", "AIT"])])
# Small and quick, yet enough to learn the toy plant.
QUICK = dict(window=16, hidden_size=24, latent_size=6, train_stride=2, batch_size=32, learning_rate=5e-3,
             beta_anneal_epochs=3, epochs=12, patience=4, device="cpu", seed=3)


def plant_values(rows: int, seed: int) -> np.ndarray:
    """A toy plant stage like src/model/train.rs's: a tank level filling and draining (period 300 rows),
    the inlet pump (on while filling), its flow, an outlet valve (open above half level), an analyser."""
    t = np.arange(rows)
    phase = (t % 300) / 300
    filling = phase < 0.5
    level = np.where(filling, 0.2 + 1.2 * phase, 0.2 + 1.2 * (1 - phase))
    pump = filling.astype(float)
    values = np.stack([level, pump, 0.6 * pump, (level > 0.5).astype(float),
                       0.5 + 0.1 * np.sin(2 * np.pi * t / 97)], axis=1)
    return values + np.random.default_rng(seed).normal(0, 0.01, values.shape)


def table(values: np.ndarray, t0: int = 0, plant: str | None = "toy") -> pa.Table:
    times = np.datetime64("2024-01-01T00:00:00", "us") + (t0 + np.arange(len(values))) * np.timedelta64(1, "s")
    cols: dict[str, pa.Array] = {}
    if plant is not None:
        cols["plant"] = pa.array([plant] * len(values))
    cols["timestamp"] = pa.array(times, pa.timestamp("us", tz="UTC"))
    for i, name in enumerate(SENSORS):
        cols[name] = pa.array(values[:, i])
    return pa.table(cols)


def batch(values: np.ndarray, t0: int = 0, plant: str | None = "toy") -> pa.RecordBatch:
    return table(values, t0, plant).combine_chunks().to_batches()[0]


@pytest.fixture(scope="module")
def trained() -> tidewatch.Model:
    return tidewatch.train(table(plant_values(1200, 11)), ModelConfig(**QUICK), sensors=TOY, progress=None)


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "toy-model"
    trained.save(path)
    return path


def test_config_defaults_validation_and_round_trip():
    cfg = ModelConfig()
    assert (cfg.window, cfg.stride, cfg.device) == (30, 1, "auto")
    assert set(ModelConfig.fields()) == set(cfg.to_dict())
    cfg.epochs = 7
    assert cfg.epochs == 7 and ModelConfig.from_json(cfg.to_json()) == cfg
    assert "epochs=7" in repr(cfg)
    with pytest.raises(ConfigError, match="'learning_rate'"):
        cfg.learning_rate = 0
    with pytest.raises(ConfigError, match="'stride'"):
        ModelConfig(window=10, stride=11)
    with pytest.raises(ConfigError, match="hiden_size"):
        ModelConfig(hiden_size=3)
    with pytest.raises(AttributeError):
        cfg.no_such_field = 1
    with pytest.raises(ConfigError, match="'device'"):
        ModelConfig(device="tpu")


def test_training_reduces_loss_reports_progress_and_calibrates(trained):
    history = trained.history
    assert history[0]["beta"] == 0.0
    assert history[-1]["train_recon"] < 0.3 * history[0]["train_recon"]
    assert any(h["improved"] for h in history)
    manifest = trained.manifest
    assert manifest["training"]["rows"] == 1200
    assert manifest["training"]["stop"] in ("completed", "early_stopped")
    t = trained.thresholds
    assert t["method"] == "quantile" and len(t["sensors"]) == 5
    assert trained.threshold == t["window"] > t["normal_score_median"]
    assert trained.sensors.sensors == SENSORS


def test_progress_callback_sees_every_epoch_and_its_exception_stops_training():
    seen: list[dict] = []
    cfg = dict(QUICK, epochs=3, patience=0)
    tidewatch.train(table(plant_values(1200, 1)), cfg, sensors=TOY, progress=seen.append)
    assert [e["epoch"] for e in seen] == [1, 2, 3]
    assert {"train_loss", "val_loss", "beta", "seconds"} <= set(seen[0])

    class Stop(Exception):
        pass

    def stop(epoch: dict) -> None:
        raise Stop(f"stop at {epoch['epoch']}")

    with pytest.raises(Stop, match="stop at 1"):
        tidewatch.train(table(plant_values(1200, 1)), cfg, sensors=TOY, progress=stop)


def test_training_releases_the_gil():
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    started = time.monotonic()
    try:
        tidewatch.train(table(plant_values(1200, 2)), dict(QUICK, epochs=4, patience=0), sensors=TOY, progress=None)
    finally:
        done.set()
        counter.join()
    elapsed = time.monotonic() - started
    # With the GIL held for the whole run the counter would barely move; released, it ticks about
    # every millisecond (at least a tenth of that on a busy machine).
    assert ticks > 0.1 * elapsed / 0.001, (ticks, elapsed)


def test_input_forms_and_bad_inputs():
    values = plant_values(1200, 4)
    cfg = dict(QUICK, epochs=1)
    # A list of record batches, a RecordBatch, and a pandas DataFrame all train.
    for data in (table(values).to_batches(max_chunksize=100), batch(values), table(values).to_pandas()):
        assert tidewatch.train(data, cfg, sensors=TOY, progress=None).history
    with pytest.raises(SchemaError, match="FIT"):
        tidewatch.train(table(values).drop(["FIT"]), cfg, sensors=TOY, progress=None)
    with pytest.raises(ConfigError, match="sensors="):
        tidewatch.train(table(values), cfg, progress=None)
    with pytest.raises(InputError, match="not in time order"):
        tidewatch.train(pa.concat_tables([table(values[:600], 1000), table(values[600:], 0)]), cfg, sensors=TOY,
                        progress=None)
    # 600 rows (105 held-out windows, fewer than a 0.995 quantile needs) calibrate with an extrapolated
    # tail; under 10 held-out windows is refused with the count.
    small = tidewatch.train(table(values[:600]), cfg, sensors=TOY, progress=None)
    assert small.thresholds["calibration_windows"] == 105
    assert small.threshold >= small.thresholds["normal_score_max"]
    with pytest.raises(InputError, match=r"calibration has \d normal windows; at least 10"):
        tidewatch.train(table(values[:110]), cfg, sensors=TOY, progress=None)
    with pytest.raises(InputError, match="no held-out window"):
        tidewatch.train(table(values[:40]), cfg, sensors=TOY, progress=None)


def test_save_load_score_identical_and_contract_schema(trained, saved):
    assert saved.is_symlink()
    det = Detector.load(saved, device="cpu", threads=2)
    assert det.version == trained.version == saved.resolve().name
    assert det.resolved_path == str(saved.resolve())
    assert det.threshold == trained.threshold and det.window == 16 and det.stride == 1
    test = batch(plant_values(300, 21))
    out = det.score(test)
    assert out.equals(trained.detector(device="cpu").score(test)), "saved and in-memory models score alike"
    names = out.schema.names
    assert names[:11] == ["plant", "timestamp", "status", "score", "flag", "threshold", "top_sensors",
                          "anomalous_sensors", "novel_sensors", "reason", "model_version"]
    assert names[11:] == [f"error_{s}" for s in SENSORS]
    assert all(f.nullable for f in out.schema) and out.schema == det.output_schema
    assert out.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    rows = out.to_pylist()
    assert [r["status"] for r in rows[:15]] == ["warmup"] * 15 and rows[15]["status"] == "scored"
    assert rows[0]["score"] is None and rows[0]["model_version"] == det.version
    r = rows[100]
    # mean: the mean of the per-sensor errors, each over the window's last ceil(16 / 6) = 3 steps
    th = det.manifest["thresholds"]
    assert th["score_method"] == "mean" and th["focus_rows"] == 3 and th["pin_constant"]
    assert r["score"] == pytest.approx(np.mean([r[f"error_{s}"] for s in SENSORS]), rel=1e-6)
    assert r["flag"] == (r["score"] > r["threshold"])
    assert len(r["top_sensors"].split(",")) == 3
    assert det.last_counts == {"windows_scored": 285, "rows_scored": 285, "rows_warmup": 15,
                               "rows_quarantined": 0, "rows_flagged": sum(bool(x["flag"]) for x in rows)}


def test_planted_anomaly_is_flagged_and_attributed(saved):
    det = Detector.load(saved, device="cpu")
    values = plant_values(400, 33)
    values[200:280, 4] += 0.6  # the analyser leaves its band
    rows = det.score(batch(values)).to_pylist()
    scores = np.array([np.nan if r["score"] is None else r["score"] for r in rows])
    labels = np.zeros(len(rows), bool)
    labels[200 + 8:280] = True  # windows at least half inside the anomaly
    normal = np.r_[15:190, 300:400]
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(np.r_[labels[normal], labels[208:280]], np.r_[scores[normal], scores[208:280]])
    assert auc > 0.95, auc
    inside = rows[216:280]
    assert sum(r["flag"] for r in inside) >= 0.9 * len(inside)
    assert all("AIT" in r["anomalous_sensors"].split(",") for r in inside if r["flag"])
    assert sum(bool(rows[i]["flag"]) for i in normal) <= 0.05 * len(normal)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streaming_in_random_chunks_equals_one_shot(saved, seed):
    det = Detector.load(saved, device="cpu")
    values = plant_values(500, 40 + seed)
    values[123, 2] = np.nan  # a quarantined row in the middle
    whole = det.score(batch(values))
    det.reset_stream()
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, 500), size=12, replace=False))
    parts = [det.score(batch(values[a:b], t0=a)) for a, b in zip(np.r_[0, cuts], np.r_[cuts, 500])]
    assert pa.Table.from_batches(parts).equals(pa.Table.from_batches([whole]))
    assert whole.column("reason")[123].as_py() == "nan:FIT"
    # A Table in, a Table out, streamed batch after batch.
    det.reset_stream()
    assert det.score(table(values).slice(0, 500).combine_chunks()).equals(pa.Table.from_batches([whole]))


def test_context_rows_only_fill_windows(saved):
    det = Detector.load(saved, device="cpu")
    values = plant_values(200, 5)
    whole = det.score(batch(values)).to_pylist()
    det.reset_stream()
    w = det.window
    tail = batch(values[100 - (w - 1):], t0=100 - (w - 1))
    tail = tail.append_column("_tw_context", pa.array(np.arange(tail.num_rows) < w - 1))
    out = det.score(tail).to_pylist()
    assert out == whole[100:]
    assert det.last_counts["windows_scored"] == 100


def test_reload_swaps_and_survives_a_bad_file(trained, tmp_path):
    path = tmp_path / "m"
    trained.save(path)
    det = Detector.load(path, device="cpu")
    assert det.reload_if_changed() is False
    other = tidewatch.train(table(plant_values(1200, 11)), dict(QUICK, epochs=2, seed=99), sensors=TOY,
                            progress=None)
    other.save(path)
    assert det.reload_if_changed() is True and det.version == other.version and det.reloads == 1

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_bytes((path.resolve() / "manifest.json").read_bytes())
    (broken / "model.safetensors").write_bytes((path.resolve() / "model.safetensors").read_bytes()[:-100])
    path.unlink()
    path.symlink_to(broken)
    with pytest.raises(ModelError, match="truncated"):
        det.reload_if_changed()
    assert det.reload_if_changed() is False, "a known bad file is not retried"
    assert det.version == other.version and det.last_reload_error
    assert det.score(batch(plant_values(50, 1))).num_rows == 50


def test_bad_artifacts_are_rejected_with_the_file_named(trained, tmp_path):
    path = tmp_path / "m"
    trained.save(path)
    real = path.resolve()
    pth = tmp_path / "lstm_vae_swat.pth"
    pth.write_bytes(b"\x80\x02}q\x00.")  # a pickle
    with pytest.raises(ModelError, match="pickle"):
        Detector.load(pth)
    with pytest.raises(ModelError, match="does not exist"):
        Detector.load(tmp_path / "nothing")
    manifest = json.loads((real / "manifest.json").read_text())
    manifest["thresholds"]["sensors"].pop()
    (real / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="manifest.json.*4 per-sensor thresholds for 5 sensors"):
        Detector.load(path)
    (real / "manifest.json").write_text('{"name": "not ours"}')
    with pytest.raises(ModelError, match="not a tidewatch model manifest"):
        Detector.load(path)


def test_model_files_are_data_only(saved):
    real = saved.resolve()
    assert sorted(os.listdir(real)) == ["manifest.json", "model.safetensors"]
    manifest = json.loads((real / "manifest.json").read_text())
    for key in ("format_version", "plant", "sensors", "sensor_stages", "window", "scaler", "thresholds", "config",
                "training", "versions", "weights", "model_version"):
        assert key in manifest
    assert manifest["versions"]["torch"] == "2.11.0"
    assert manifest["sensor_stages"] == ["S1", "S1", "S1", "S2", "S2"]
    # safetensors: an 8-byte little-endian header length, a JSON header, then raw little-endian data.
    raw = (real / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert header["encoder.weight_ih_l0"] == {"dtype": "F32", "shape": [4 * 24, 5],
                                              "data_offsets": header["encoder.weight_ih_l0"]["data_offsets"]}
    assert header["__metadata__"] == {"format": "tidewatch-model"}
    assert 8 + n + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__") == len(raw)


def test_skab_normal_training_separates_valve_anomalies(shared_dir):
    """Real data: train on SKAB's anomaly-free run, score the valve1 experiments point-wise. The mean
    error over all sensors dilutes a valve fault that shows in one or two sensors; `sensor_max` (each
    sensor's error against its own threshold) does not. Measured: ROC AUC about 0.65 vs 0.94."""
    from sklearn.metrics import roc_auc_score

    from tidewatch.readers import load_plant, packaged_plant_file, read_skab

    plant = load_plant(packaged_plant_file("skab")).sensors
    free = read_skab(shared_dir / "data/skab/anomaly-free/anomaly-free.csv")
    experiments = read_skab(shared_dir / "data/skab/valve1")
    checksums = set()
    for method, floor in (("mean", 0.6), ("sensor_max", 0.9)):
        model = tidewatch.train(free, dict(epochs=15, device="cpu", threads=1, score_method=method), sensors=plant,
                                progress=None)
        det = model.detector(device="cpu")
        checksums.add(model.manifest["weights"]["sha256"])
        labels, scores = [], []
        for t in experiments.values():
            det.reset_stream()
            out = det.score(t)
            s = np.array(out.column("score").to_pylist(), dtype=float)
            keep = ~np.isnan(s)
            labels.append(np.asarray(t.column("label").to_pylist())[keep])
            scores.append(s[keep])
            if method == "sensor_max":
                errors = np.stack([np.array(out.column(f"error_{n}").to_pylist(), float) for n in plant.sensors], 1)
                ratio = (errors / np.maximum(det.sensor_thresholds, 1e-6)).max(axis=1)
                np.testing.assert_allclose(s[keep], ratio[keep], rtol=1e-6)
        auc = roc_auc_score(np.concatenate(labels), np.concatenate(scores))
        assert auc > floor, f"{method}: point-wise ROC AUC on SKAB valve1 {auc:.3f}"
    assert len(checksums) == 1, "the score method changes calibration only, not the network"


def _legacy_module(n_features: int, hidden: int, latent: int, extra: bool = False):
    """An LSTM-VAE as legacy code might write it: tidewatch's architecture under other module names."""
    import torch

    class LegacyVae(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm_enc = torch.nn.LSTM(n_features, hidden, batch_first=True)
            self.mu = torch.nn.Linear(hidden, latent)
            self.logvar = torch.nn.Linear(hidden, latent)
            self.lstm_dec = torch.nn.LSTM(latent, hidden, batch_first=True)
            self.out = torch.nn.Linear(hidden, n_features)
            if extra:
                self.decoder_input = torch.nn.Linear(latent, hidden)

        def forward(self, x):
            _, (h, _) = self.lstm_enc(x)
            z = self.mu(h[-1])
            d, _ = self.lstm_dec(z.unsqueeze(1).expand(-1, x.shape[1], -1))
            return self.out(d)

    torch.manual_seed(0)
    return LegacyVae().eval()


def test_legacy_state_dict_imports_and_scores_like_pytorch(tmp_path):
    import torch

    legacy = _legacy_module(5, 24, 6)
    pth = tmp_path / "lstm_vae_swat.pth"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in legacy.state_dict().items()}, "epoch": 7}, pth)
    normal = table(plant_values(800, 12))
    model = tidewatch.import_legacy(pth, normal, dict(window=16, device="cpu"), sensors=TOY)
    assert model.manifest["training"]["source"].startswith("legacy import of lstm_vae_swat.pth")
    assert (model.config.hidden_size, model.config.latent_size, model.config.layers) == (24, 6, 1)
    assert model.manifest["training"]["validation_windows"] == 800 - 16 + 1

    # The imported model scores what the PyTorch module computes on the same scaled windows.
    test_values = plant_values(200, 13)
    out = model.detector(device="cpu").score(batch(test_values))
    scaled = np.asarray(model.scaler.transform(test_values), dtype=np.float32)
    windows = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(scaled, 16, axis=0).transpose(0, 2, 1))
    with torch.no_grad():
        recon = legacy(torch.from_numpy(windows)).numpy()
    expected = ((recon - windows) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(out.column("score").to_numpy(zero_copy_only=False)[15:], expected, rtol=1e-5,
                               atol=1e-7)


class PickledCheckpoint:
    """A checkpoint object that only unpickling (running code) can rebuild."""

    def __init__(self, weights: dict) -> None:
        self.weights = weights


def test_legacy_files_that_are_not_plain_equivalent_state_dicts_are_refused(tmp_path):
    import torch

    normal = table(plant_values(800, 12))
    pickled = tmp_path / "pickled.pth"
    torch.save(PickledCheckpoint(_legacy_module(5, 24, 6).state_dict()), pickled)
    with pytest.raises(ModelError, match="pickled.pth: not a plain PyTorch state dict"):
        tidewatch.import_legacy(pickled, normal, dict(window=16), sensors=TOY)

    other = tmp_path / "other_arch.pth"
    torch.save(_legacy_module(5, 24, 6, extra=True).state_dict(), other)
    with pytest.raises(ModelError, match="decoder_input"):
        tidewatch.import_legacy(other, normal, dict(window=16), sensors=TOY)

    wrong_width = tmp_path / "wrong_width.pth"
    torch.save(_legacy_module(7, 24, 6).state_dict(), wrong_width)
    with pytest.raises(ModelError, match="7 sensors"):
        tidewatch.import_legacy(wrong_width, normal, dict(window=16), sensors=TOY)

    good = tmp_path / "good.pth"
    torch.save(_legacy_module(5, 24, 6).state_dict(), good)
    with pytest.raises(ConfigError, match="'hidden_size': 32 given"):
        tidewatch.import_legacy(good, normal, dict(window=16, hidden_size=32), sensors=TOY)
    renamed = tmp_path / "renamed.pth"
    torch.save({k.replace("lstm_enc", "rnn1"): v for k, v in _legacy_module(5, 24, 6).state_dict().items()}, renamed)
    with pytest.raises(ModelError, match="mapping="):
        tidewatch.import_legacy(renamed, normal, dict(window=16), sensors=TOY)
    assert tidewatch.import_legacy(renamed, normal, dict(window=16), sensors=TOY, mapping={"rnn1": "encoder"}).version


def test_score_records_the_partition_aggregate(saved):
    from tidewatch._native import BatchAggregate

    det = Detector.load(saved, device="cpu")
    values = plant_values(300, 9)
    values[200:260, 4] += 0.6
    values[50, 0] = np.nan
    agg = BatchAggregate(det.sensors)
    out = det.score(batch(values), aggregate=agg)
    counts = agg.counts()
    flags = out.column("flag").to_pylist()
    assert counts["scored"] == det.last_counts["rows_scored"]
    assert counts["windows"] == det.last_counts["windows_scored"]
    assert counts["warmup"] == 15 and agg.quarantined_by_reason == {"nan:LIT": 1}
    assert counts["anomalies"] == sum(bool(f) for f in flags) > 0
    assert agg.anomalies_by_sensor["AIT"] > 0
    with pytest.raises(tidewatch.TidewatchError):
        det.score(batch(values), aggregate=BatchAggregate(SensorSet.swat()))


needs_cuda = pytest.mark.skipif(not tidewatch.cuda_available(), reason="no CUDA device on this machine")


@needs_cuda
def test_cuda_scores_match_cpu_within_1e_4(saved):
    test = batch(plant_values(2000, 23))
    cpu = Detector.load(saved, device="cpu").score(test)
    gpu = Detector.load(saved, device="cuda").score(test)
    assert gpu.column("status").equals(cpu.column("status"))
    diff = np.abs(np.nan_to_num(gpu.column("score").to_numpy(zero_copy_only=False), nan=0)
                  - np.nan_to_num(cpu.column("score").to_numpy(zero_copy_only=False), nan=0))
    assert diff.max() <= 1e-4, diff.max()


@needs_cuda
def test_cuda_training_reduces_loss_and_scores_on_cpu_alike():
    model = tidewatch.train(table(plant_values(1200, 11)), ModelConfig(**dict(QUICK, device="cuda")),
                            sensors=TOY, progress=None)
    losses = [h["train_loss"] for h in model.history]
    assert losses[-1] < losses[0]
    assert model.manifest["training"]["device"].startswith("cuda")
    test = batch(plant_values(400, 24))
    cpu = model.detector(device="cpu").score(test).column("score").to_numpy(zero_copy_only=False)
    gpu = model.detector(device="cuda").score(test).column("score").to_numpy(zero_copy_only=False)
    assert np.nanmax(np.abs(cpu - gpu)) <= 1e-4


def test_a_sensor_constant_in_training_is_named_when_it_moves_and_cannot_swamp_the_score():
    values = plant_values(1200, 11)
    values[:, 3] = 1.0  # MV never moves in training (a standby valve)
    model = tidewatch.train(table(values), dict(QUICK, epochs=2), sensors=TOY, progress=None)
    assert model.scaler.constant_columns == ["MV"]
    det = model.detector(device="cpu")
    test = plant_values(300, 21)
    test[:, 3] = 1.0
    still = det.score(batch(test), reset=True).to_pylist()
    moved = test.copy()
    moved[100:150, 3] = 75.0  # the valve moves far out of anything seen
    out = det.score(batch(moved), reset=True).to_pylist()
    scored = [i for i, r in enumerate(out) if r["status"] == "scored"]
    assert [out[i]["novel_sensors"] for i in scored] == ["MV" if 100 <= i < 150 else "" for i in scored]
    # Pinned at its training value, its movement leaves every score as it was (no 75² error).
    assert [r["score"] for r in out] == [r["score"] for r in still]


def test_rows_at_another_sample_period_than_training_raise_one_clear_warning(trained):
    det = trained.detector(device="cpu")
    assert det.sample_period_seconds == 1.0
    slow = table(plant_values(200, 3))
    slow = slow.set_column(1, "timestamp", pa.array(
        np.datetime64("2024-02-01T00:00:00", "us") + np.arange(200) * np.timedelta64(10, "s"),
        pa.timestamp("us", tz="UTC")))
    with pytest.warns(UserWarning, match=r"plant 'toy': rows arrive every 10 s .* trained on rows every 1 s"):
        det.score(slow.slice(0, 100), reset=True)
    assert len(det.take_warnings()) == 1 and det.take_warnings() == []
    # Said once: the same period in the next call is not repeated.
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error")
        det.score(slow.slice(100, 100))
    # Rows at the training period raise nothing.
    with w.catch_warnings():
        w.simplefilter("error")
        det.score(table(plant_values(100, 4), t0=10_000_000), reset=True)
    assert det.take_warnings() == []


def test_whitened_scores_are_the_top_k_mean_of_errors_over_normal_scales():
    model = tidewatch.train(table(plant_values(1200, 11)), dict(QUICK, epochs=2, score_method="whitened"),
                            sensors=TOY, progress=None)
    th = model.manifest["thresholds"]
    assert th["score_method"] == "whitened" and th["top_k"] == 1 and len(th["scales"]) == 5
    rows = model.detector(device="cpu").score(batch(plant_values(300, 21))).to_pylist()
    r = rows[100]
    z = sorted((r[f"error_{s}"] / scale for s, scale in zip(SENSORS, th["scales"]) if scale > 0), reverse=True)
    assert r["score"] == pytest.approx(np.mean(z[:th["top_k"]]), rel=1e-6)


@pytest.mark.timeout(60)
def test_a_model_file_that_is_a_fifo_is_a_model_error_not_a_hang(tmp_path):
    """A `manifest.json` that is a FIFO hung the job (open() waits for a writer) while /healthz said 200.
    (The huge-network manifest of the same hostile pass is tested with its exact input in artifact.rs.)"""
    model = tmp_path / "fifo-model"
    model.mkdir()
    os.mkfifo(model / "manifest.json")
    with pytest.raises(ModelError, match="not a regular file"):
        Detector.load(model, device="cpu")
