//! The model artifact: a directory with `model.safetensors` (weights) and `manifest.json` (everything
//! else: sensors and stages, window, scaler, thresholds, config, training summary, versions, checksums).
//! Model files are data, never code: nothing here reads a pickle.
//!
//! Publishing is atomic. The user-facing path is a symlink to `<parent>/.tidewatch-models/<version>/`:
//! both files are written into a fresh hidden directory, fsynced, renamed to their version directory,
//! and the symlink is swapped with one rename(2) (a directory holding files cannot be replaced by
//! rename, a symlink can). A reader resolves the symlink once and reads both files from the version
//! directory it points to, so it sees the old model or the new one, never a mix.
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Tensor};

use super::threshold::Thresholds;
use super::train::{EpochReport, StopReason};
use super::vae::{Architecture, LstmVae};
use super::{ModelConfig, LIBTORCH_VERSION};
use crate::scaler::Scaler;
use crate::sensors::SensorSet;
use crate::windows::WindowSpec;
use crate::{Error, Result};

pub const FORMAT: &str = "tidewatch-model";
/// 2: whitened scores, score focus, constant sensors pinned (thresholds gained `focus_rows`, `scales`,
/// `top_k`, `pin_constant`); version 1 files still load and score as before.
pub const FORMAT_VERSION: u32 = 2;
pub const OLDEST_FORMAT_VERSION: u32 = 1;
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";
/// Where version directories live, next to the user-facing path.
pub const STORE_DIR: &str = ".tidewatch-models";
/// Unreferenced old versions kept after a publish (a reader may still be loading one of them).
const KEEP_UNREFERENCED: usize = 3;
/// Leftover temporary directories of interrupted publishes older than this are removed.
const STALE_TMP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    pub tidewatch: String,
    pub torch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsInfo {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub tensors: BTreeMap<String, Vec<i64>>,
}

/// Where the weights came from and on what data; filled by the trainer (or the legacy importer).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSummary {
    /// "tidewatch.train", or "legacy import of <file>".
    pub source: String,
    /// Rows of normal data used (training and validation parts), and rows left out (quarantined).
    pub rows: u64,
    pub rows_excluded: u64,
    /// Contiguous stretches the data was cut into (a window never crosses one).
    pub segments: usize,
    pub train_windows: usize,
    pub validation_windows: usize,
    /// sha256 of the training data as the trainer read it (sensor values in order), hex.
    pub data_sha256: String,
    /// First and last timestamps of the training data, when known.
    pub time_range: Option<(String, String)>,
    /// The median step between consecutive rows of a plant in the training data, in seconds, when
    /// the data had timestamps. Incident durations default from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_period_seconds: Option<f64>,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub stop: Option<StopReason>,
    pub device: String,
    pub seconds: f64,
    pub history: Vec<EpochReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always "tidewatch-model": tells a manifest from any other JSON.
    pub format: String,
    pub format_version: u32,
    /// Short hash of everything that determines scores (weights, sensors, window, scaler, thresholds).
    pub model_version: String,
    /// UTC, RFC 3339.
    pub created_at: String,
    pub plant: String,
    /// Sensors in model (column) order.
    pub sensors: Vec<String>,
    /// The stage of each sensor, aligned with `sensors`.
    pub sensor_stages: Vec<String>,
    /// Stage names in process order.
    pub stages: Vec<String>,
    pub window: WindowSpec,
    pub architecture: Architecture,
    pub scaler: Scaler,
    pub thresholds: Thresholds,
    pub config: ModelConfig,
    pub training: TrainingSummary,
    pub versions: Versions,
    pub weights: WeightsInfo,
}

/// What `publish` did.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishReport {
    /// The user-facing path (a symlink).
    pub path: PathBuf,
    /// The version directory it now points to.
    pub version_dir: PathBuf,
    pub model_version: String,
    /// The version directory existed already (same scoring content) and was reused.
    pub reused: bool,
    /// A real directory found at `path` (a copy made by hand) was moved here, not deleted.
    pub moved_aside: Option<PathBuf>,
}

/// A model ready to score: manifest, sensor set and network.
pub struct ModelArtifact {
    pub manifest: Manifest,
    pub sensors: SensorSet,
    pub vae: LstmVae,
    weights: Vec<u8>,
    /// The version directory it was loaded from (None when built in memory).
    pub source: Option<PathBuf>,
}

impl std::fmt::Debug for ModelArtifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelArtifact")
            .field("model_version", &self.manifest.model_version)
            .field("plant", &self.manifest.plant)
            .field("sensors", &self.manifest.sensors.len())
            .field("source", &self.source)
            .finish()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serialises the network's parameters (sorted by name) as float32 safetensors.
/// Tensor name -> shape.
type Shapes = BTreeMap<String, Vec<i64>>;

fn weights_bytes(vae: &LstmVae) -> Result<(Vec<u8>, Shapes)> {
    let params = vae.parameters_to_cpu();
    let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(params.len());
    let mut shapes = BTreeMap::new();
    for (name, t) in &params {
        let values = Vec::<f32>::try_from(t.view([-1]))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        shapes.insert(name.clone(), t.size());
        raw.push((name.clone(), shape, bytes));
    }
    let views = raw
        .iter()
        .map(|(n, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (n.as_str(), v))
                .map_err(|e| Error::Model(format!("cannot serialise tensor '{n}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), FORMAT.to_string())]);
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| Error::Model(format!("cannot serialise the weights: {e}")))?;
    Ok((bytes, shapes))
}

/// The model version: a short hash of what determines scores, so the same model published twice
/// gets the same version and any change to weights, sensors, window, scaler or thresholds a new one.
fn model_version(m: &Manifest) -> String {
    let identity = serde_json::json!({
        "format_version": m.format_version,
        "weights_sha256": m.weights.sha256,
        "plant": m.plant,
        "sensors": m.sensors,
        "sensor_stages": m.sensor_stages,
        "window": m.window,
        "architecture": m.architecture,
        "scaler": m.scaler,
        "thresholds": m.thresholds,
    });
    sha256_hex(identity.to_string().as_bytes())[..12].to_string()
}

/// Rebuilds the sensor set recorded in a manifest.
fn sensor_set(m: &Manifest) -> Result<SensorSet> {
    if m.sensor_stages.len() != m.sensors.len() {
        return Err(Error::Model(format!(
            "{} sensors but {} stage entries",
            m.sensors.len(),
            m.sensor_stages.len()
        )));
    }
    let stages = m
        .stages
        .iter()
        .map(|st| {
            let members =
                m.sensors.iter().zip(&m.sensor_stages).filter(|(_, s)| *s == st).map(|(n, _)| n.clone()).collect();
            (st.clone(), members)
        })
        .collect();
    SensorSet::new(&m.plant, m.sensors.clone(), stages)
}

/// Checks that the parts of a manifest agree with one another. `what` names the file in errors.
fn check_consistency(m: &Manifest, what: &str) -> Result<SensorSet> {
    let err = |msg: String| Error::Model(format!("{what}: {msg}"));
    let sensors = sensor_set(m).map_err(|e| err(e.to_string()))?;
    let f = sensors.len();
    m.config.validate().map_err(|e| err(e.to_string()))?;
    let spec = WindowSpec::new(m.window.length, m.window.stride).map_err(|e| err(e.to_string()))?;
    if spec.length != m.config.window || spec.stride != m.config.stride {
        return Err(err(format!(
            "window {}/{} disagrees with config window {}/{}",
            spec.length, spec.stride, m.config.window, m.config.stride
        )));
    }
    if m.scaler.len() != f || m.scaler.scale.len() != f {
        return Err(err(format!("scaler has {} columns for {f} sensors", m.scaler.len())));
    }
    if let Some(j) = (0..f).find(|&j| {
        !(m.scaler.offset[j].is_finite() && m.scaler.scale[j].is_finite() && m.scaler.scale[j] != 0.0)
    }) {
        return Err(err(format!("scaler column '{}' has offset {} and scale {}", m.sensors[j], m.scaler.offset[j], m.scaler.scale[j])));
    }
    let arch = Architecture::new(&m.config, f).map_err(|e| err(e.to_string()))?;
    if arch != m.architecture {
        return Err(err(format!("architecture {:?} disagrees with config and sensors ({arch:?})", m.architecture)));
    }
    m.thresholds.check(f, what)?;
    if m.thresholds.score_method != m.config.score_method {
        return Err(err(format!(
            "thresholds were calibrated for score method {:?}, the config says {:?}",
            m.thresholds.score_method, m.config.score_method
        )));
    }
    let expected: BTreeMap<String, Vec<i64>> = arch.parameter_shapes().into_iter().collect();
    if m.weights.tensors != expected {
        return Err(err("the weights' tensor list does not match the architecture".into()));
    }
    Ok(sensors)
}

/// A human hint for a file that is not what we expected, from its first bytes.
fn sniff(bytes: &[u8]) -> &'static str {
    match bytes {
        [] => "it is empty",
        [0x80, p, ..] if (2..=5).contains(p) => {
            "it is a Python pickle (a PyTorch .pth checkpoint?); tidewatch never unpickles files: convert a legacy \
             state dict with the legacy importer"
        }
        [b'P', b'K', 3, 4, ..] => {
            "it is a zip archive (a PyTorch .pth checkpoint?); tidewatch never unpickles files: convert a legacy \
             state dict with the legacy importer"
        }
        [b'{', ..] | [b'[', ..] => "it is JSON text",
        _ => "its contents are not recognised",
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

fn sync_dir(path: &Path) -> Result<()> {
    fs::File::open(path).and_then(|d| d.sync_all()).map_err(|e| Error::io(path, e))
}

fn random_suffix() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Seconds since the epoch as RFC 3339 UTC (civil-from-days, proleptic Gregorian).
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl ModelArtifact {
    /// Assembles an artifact from a trained network and what goes with it, checking that it all agrees.
    pub fn new(
        sensors: SensorSet,
        scaler: Scaler,
        thresholds: Thresholds,
        config: ModelConfig,
        training: TrainingSummary,
        vae: LstmVae,
    ) -> Result<Self> {
        let (weights, tensors) = weights_bytes(&vae)?;
        let f = sensors.len();
        if vae.architecture() != Architecture::new(&config, f)? {
            return Err(Error::Model(format!(
                "the network {:?} does not match the config and the {f} sensors",
                vae.architecture()
            )));
        }
        let mut manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            model_version: String::new(),
            created_at: rfc3339(SystemTime::now()),
            plant: sensors.plant().to_string(),
            sensors: sensors.sensors().to_vec(),
            sensor_stages: (0..f).map(|i| sensors.stages()[sensors.stage_index(i)].clone()).collect(),
            stages: sensors.stages().to_vec(),
            window: config.window_spec()?,
            architecture: vae.architecture(),
            scaler,
            thresholds,
            config,
            training,
            versions: Versions { tidewatch: env!("CARGO_PKG_VERSION").into(), torch: LIBTORCH_VERSION.into() },
            weights: WeightsInfo {
                file: WEIGHTS_FILE.into(),
                sha256: sha256_hex(&weights),
                bytes: weights.len() as u64,
                tensors,
            },
        };
        manifest.model_version = model_version(&manifest);
        check_consistency(&manifest, "new model")?;
        Ok(ModelArtifact { manifest, sensors, vae, weights, source: None })
    }

    pub fn version(&self) -> &str {
        &self.manifest.model_version
    }

    pub fn window_spec(&self) -> WindowSpec {
        self.manifest.window
    }

    pub fn scaler(&self) -> &Scaler {
        &self.manifest.scaler
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.manifest.thresholds
    }

    /// The serialised weights (what `model.safetensors` holds).
    pub fn weights_bytes(&self) -> &[u8] {
        &self.weights
    }

    /// A copy of this artifact with its network on `device`, rebuilt from the serialised weights.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        let what = format!("weights of model {}", self.version());
        let values = read_tensors(&self.weights, &what)?;
        LstmVae::check_parameters(self.manifest.architecture, &values, &what)?;
        let vae = LstmVae::zeroed(self.manifest.architecture, device)?;
        vae.load_parameters(&values, &what)?;
        Ok(ModelArtifact {
            manifest: self.manifest.clone(),
            sensors: self.sensors.clone(),
            vae,
            weights: self.weights.clone(),
            source: self.source.clone(),
        })
    }

    /// Publishes the artifact at `path` atomically (see the module documentation).
    pub fn publish(&self, path: &Path) -> Result<PublishReport> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Config(format!("model path '{}' has no usable file name", path.display())))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let store = parent.join(STORE_DIR);
        fs::create_dir_all(&store).map_err(|e| Error::io(&store, e))?;
        let version = self.version().to_string();
        let version_dir = store.join(&version);

        // 1. The version directory: written aside, fsynced, renamed into place.
        let reused = version_dir.join(MANIFEST_FILE).exists() && {
            // Same scoring content published before; reuse it if it is intact.
            verify_files(&version_dir)
                .map(|(m, _)| m.model_version == version && check_model_version(&m, "").is_ok())
                .unwrap_or(false)
        };
        if !reused {
            let tmp = store.join(format!(".{version}.tmp-{}", random_suffix()));
            fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let written = (|| -> Result<()> {
                write_synced(&tmp.join(WEIGHTS_FILE), &self.weights)?;
                let text = serde_json::to_vec_pretty(&self.manifest)
                    .map_err(|e| Error::Model(format!("cannot serialise the manifest: {e}")))?;
                write_synced(&tmp.join(MANIFEST_FILE), &text)?;
                sync_dir(&tmp)?;
                if version_dir.exists() {
                    // A broken leftover of the same version: move it out of the way first.
                    let broken = store.join(format!(".{version}.broken-{}", random_suffix()));
                    fs::rename(&version_dir, &broken).map_err(|e| Error::io(&version_dir, e))?;
                }
                fs::rename(&tmp, &version_dir).map_err(|e| Error::io(&version_dir, e))?;
                sync_dir(&store)
            })();
            if let Err(e) = written {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }

        // 2. The user-facing symlink, swapped in one rename.
        let mut moved_aside = None;
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_dir() => {
                // An empty directory (made by mkdtemp, say) goes; a real one with files (a model copied
                // by hand) is kept, moved into the store.
                if fs::remove_dir(path).is_err() {
                    let aside = store.join(format!("replaced-{name}-{}", random_suffix()));
                    fs::rename(path, &aside).map_err(|e| Error::io(path, e))?;
                    moved_aside = Some(aside);
                }
            }
            Ok(meta) if meta.file_type().is_file() => {
                return Err(Error::Config(format!(
                    "{}: is a file, not a model directory; refusing to replace it (choose another model path)",
                    path.display()
                )));
            }
            _ => {}
        }
        let link = parent.join(format!(".{name}.tmp-{}", random_suffix()));
        let target = Path::new(STORE_DIR).join(&version);
        std::os::unix::fs::symlink(&target, &link).map_err(|e| Error::io(&link, e))?;
        if let Err(e) = fs::rename(&link, path) {
            let _ = fs::remove_file(&link);
            return Err(Error::io(path, e));
        }
        sync_dir(&parent)?;
        prune_store(&parent, &store);
        Ok(PublishReport { path: path.to_path_buf(), version_dir, model_version: version, reused, moved_aside })
    }

    /// Loads and checks the artifact at `path` (the symlink, or a model directory), onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let dir = resolve(path)?;
        let (manifest, weights) = verify_files(&dir)?;
        let what = dir.join(WEIGHTS_FILE).display().to_string();
        let manifest_what = dir.join(MANIFEST_FILE).display().to_string();
        let sensors = check_consistency(&manifest, &manifest_what)?;
        let values = read_tensors(&weights, &what)?;
        // Everything that can be checked is, before libtorch allocates the network the manifest describes.
        LstmVae::check_parameters(manifest.architecture, &values, &what)?;
        check_model_version(&manifest, &manifest_what)?;
        let vae = LstmVae::zeroed(manifest.architecture, device)?;
        vae.load_parameters(&values, &what)?;
        Ok(ModelArtifact { manifest, sensors, vae, weights, source: Some(dir) })
    }
}

/// Resolves the user-facing path once (following the symlink) to the directory to read.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let meta = fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Model(format!("{}: no model here (the path does not exist)", path.display()))
        } else {
            Error::io(path, e)
        }
    })?;
    if meta.is_file() {
        let mut head = [0u8; 8];
        let n = fs::File::open(path)
            .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
            .map_err(|e| Error::io(path, e))?;
        return Err(Error::Model(format!(
            "{}: is a file, not a tidewatch model directory (one holding {MANIFEST_FILE} and {WEIGHTS_FILE}); {}",
            path.display(),
            sniff(&head[..n])
        )));
    }
    fs::canonicalize(path).map_err(|e| Error::io(path, e))
}

/// Reads and checks the manifest of a version directory, and that the weights file matches its checksum.
/// Returns the manifest.
/// A model file's bytes. Only a regular file is opened: opening a FIFO blocks until a writer comes (a
/// job would hang looking healthy), and a device or directory is no model either. The size is bounded
/// before reading.
fn read_model_file(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO, socket or device)",
        ));
    }
    if meta.len() > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes, more than a tidewatch model file holds (at most {max_bytes})", meta.len()),
        ));
    }
    fs::read(path)
}

/// read_model_file's refusals (a file of the wrong kind or size), as opposed to the OS failing to read.
fn is_not_a_model_file(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData)
}

/// Largest manifest and weights files read: far above any model tidewatch trains (its weights are a few
/// MB), far below what would exhaust a worker's memory.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;
const MAX_WEIGHTS_BYTES: u64 = 4 << 30;

/// The manifest, parsed, and the weights' bytes, checked against it (size and sha256).
fn verify_files(dir: &Path) -> Result<(Manifest, Vec<u8>)> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let what = manifest_path.display().to_string();
    let text = match read_model_file(&manifest_path, MAX_MANIFEST_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Model(format!("{what}: missing; {} is not a tidewatch model directory", dir.display())))
        }
        Err(e) if is_not_a_model_file(&e) => return Err(Error::Model(format!("{what}: {e}"))),
        Err(e) => return Err(Error::io(&manifest_path, e)),
    };
    let manifest = parse_manifest(&text, &what)?;
    let weights_path = dir.join(&manifest.weights.file);
    if manifest.weights.file != WEIGHTS_FILE {
        return Err(Error::Model(format!("{what}: weights file '{}' is not {WEIGHTS_FILE}", manifest.weights.file)));
    }
    let weights = match read_model_file(&weights_path, MAX_WEIGHTS_BYTES) {
        Ok(w) => w,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Model(format!("{}: missing", weights_path.display())))
        }
        Err(e) if is_not_a_model_file(&e) => return Err(Error::Model(format!("{}: {e}", weights_path.display()))),
        Err(e) => return Err(Error::io(&weights_path, e)),
    };
    check_weight_bytes(&manifest, &weights, &weights_path.display().to_string())?;
    Ok((manifest, weights))
}

/// The version is a hash of everything that determines scores: a manifest edited by hand or damaged
/// (a threshold, a scaler value, the sensor order) must not load under the version it claims. Checked
/// after the structural checks so that an inconsistent manifest gets the more precise message.
fn check_model_version(manifest: &Manifest, what: &str) -> Result<()> {
    let derived = model_version(manifest);
    if manifest.model_version != derived {
        return Err(Error::Model(format!(
            "{what}: model_version '{}' does not match the manifest's contents (they hash to '{derived}'): \
             the file was edited or corrupted after publishing; publish the model again",
            manifest.model_version
        )));
    }
    Ok(())
}

/// Parses manifest text: a foreign or newer file gets a precise message before any field-level error.
pub fn parse_manifest(text: &[u8], what: &str) -> Result<Manifest> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Model(format!("{what}: is empty")));
    }
    let value: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| Error::Model(format!("{what}: not valid JSON ({e}); {}", sniff(text))))?;
    let format = value.get("format").and_then(|f| f.as_str());
    if format != Some(FORMAT) {
        return Err(Error::Model(format!("{what}: not a tidewatch model manifest (no \"format\": \"{FORMAT}\")")));
    }
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if (u64::from(OLDEST_FORMAT_VERSION)..=u64::from(FORMAT_VERSION)).contains(&v) => {}
        Some(v) if v > u64::from(FORMAT_VERSION) => {
            return Err(Error::Model(format!(
                "{what}: format version {v} is newer than this tidewatch ({}) reads (versions \
                 {OLDEST_FORMAT_VERSION}-{FORMAT_VERSION}): upgrade tidewatch to load this model",
                env!("CARGO_PKG_VERSION")
            )))
        }
        Some(v) => {
            return Err(Error::Model(format!(
                "{what}: format version {v}; this tidewatch ({}) reads versions {OLDEST_FORMAT_VERSION}-{FORMAT_VERSION}",
                env!("CARGO_PKG_VERSION")
            )))
        }
        None => return Err(Error::Model(format!("{what}: no numeric \"format_version\""))),
    }
    serde_json::from_value(value).map_err(|e| Error::Model(format!("{what}: {e}")))
}

fn check_weight_bytes(manifest: &Manifest, weights: &[u8], what: &str) -> Result<()> {
    if weights.is_empty() {
        return Err(Error::Model(format!("{what}: is empty")));
    }
    if weights.len() as u64 != manifest.weights.bytes {
        return Err(Error::Model(format!(
            "{what}: has {} bytes, the manifest says {} (truncated or replaced)",
            weights.len(),
            manifest.weights.bytes
        )));
    }
    let sha = sha256_hex(weights);
    if sha != manifest.weights.sha256 {
        return Err(Error::Model(format!(
            "{what}: sha256 {sha} does not match the manifest's {} (corrupt or modified); {}",
            manifest.weights.sha256,
            if SafeTensors::deserialize(weights).is_ok() { "it is a valid safetensors file" } else { sniff(weights) }
        )));
    }
    Ok(())
}

/// Reads float32 tensors from safetensors bytes, refusing other dtypes and non-finite values.
fn read_tensors(bytes: &[u8], what: &str) -> Result<BTreeMap<String, Tensor>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Model(format!("{what}: not a valid safetensors file ({e}); {}", sniff(bytes))))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::Model(format!("{what}: tensor '{name}' is {:?}, expected F32", view.dtype())));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::Model(format!("{what}: tensor '{name}' holds a non-finite value at element {i}")));
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(name, Tensor::from_slice(&values).view(shape.as_slice()));
    }
    Ok(out)
}

/// Removes stale temporary directories and old version directories no symlink in `parent` points to,
/// keeping the newest few. Best effort: a failure here never fails a publish.
fn prune_store(parent: &Path, store: &Path) {
    let referenced: Vec<std::ffi::OsString> = fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_symlink()).unwrap_or(false))
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|t| t.parent().and_then(|p| p.file_name()) == Some(STORE_DIR.as_ref()))
        .filter_map(|t| t.file_name().map(|n| n.to_os_string()))
        .collect();
    let now = SystemTime::now();
    let mut versions = Vec::new();
    for entry in fs::read_dir(store).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(text) = name.to_str() else { continue };
        let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(now);
        if text.starts_with('.') {
            // Leftovers of interrupted publishes.
            if now.duration_since(modified).unwrap_or_default() > STALE_TMP {
                let _ = fs::remove_dir_all(entry.path());
            }
        } else if !text.starts_with("replaced-") && !referenced.contains(&name) {
            versions.push((modified, entry.path()));
        }
    }
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    for (_, old) in versions.into_iter().skip(KEEP_UNREFERENCED) {
        if old.join(MANIFEST_FILE).exists() {
            let _ = fs::remove_dir_all(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::score::score_windows;
    use crate::model::threshold::{ScoreMethod, ThresholdMethod};
    use crate::model::train::tests::{plant_series, small_config};
    use crate::model::train::TrainingSeries;
    use crate::scaler::ScalerKind;

    fn sensors() -> SensorSet {
        SensorSet::from_text("plant: rig\nsensors: [a, b, c, d]\nstages:\n  P1: [a, b]\n  P2: [c, d]\n").unwrap()
    }

    fn artifact(seed: u64) -> ModelArtifact {
        let cfg = ModelConfig { seed, score_method: ScoreMethod::Mean, ..small_config() };
        let arch = Architecture::new(&cfg, 4).unwrap();
        let vae = LstmVae::new(arch, Device::Cpu, seed).unwrap();
        let scaler = Scaler {
            kind: ScalerKind::MinMax,
            // Values whose shortest decimal form needs exact parsing to read back bit for bit.
            offset: vec![0.0, 1.0 / 3.0, 2.0, 0.1 + 0.2],
            scale: vec![1.0, 2.0 / 3.0, 3.0, std::f64::consts::PI],
            constant_columns: vec![],
        };
        let thresholds = Thresholds {
            score_method: ScoreMethod::Mean,
            method: ThresholdMethod::Quantile,
            window: 0.05 + 1e-17 * 3.0 + 0.1 * 0.7,
            window_level: 0.995,
            pot: None,
            sensors: vec![0.1, 0.2, 0.3, 0.4],
            sensor_level: 0.99,
            calibration_windows: 1000,
            normal_score_max: 0.07,
            normal_score_median: 0.01,
            focus_rows: 0,
            scales: vec![],
            top_k: 0,
            pin_constant: false,
        };
        let training = TrainingSummary { source: "test".into(), rows: 1200, ..Default::default() };
        ModelArtifact::new(sensors(), scaler, thresholds, cfg, training, vae).unwrap()
    }

    fn windows() -> Tensor {
        let cfg = small_config();
        let values: Vec<f32> = plant_series(200, 3).chunks(5).flat_map(|r| r[..4].to_vec()).collect();
        let set = TrainingSeries::new(&values, 4, &[200]).unwrap().windows(cfg.window, 1);
        set.materialise(0, set.len())
    }

    #[test]
    fn save_load_score_identical_and_symlink_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swat-model");
        let art = artifact(1);
        let report = art.publish(&path).unwrap();
        assert!(!report.reused && report.moved_aside.is_none());
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_link(&path).unwrap(), Path::new(STORE_DIR).join(art.version()));
        assert!(report.version_dir.join(WEIGHTS_FILE).is_file());

        let loaded = ModelArtifact::load(&path, Device::Cpu).unwrap();
        assert_eq!(loaded.manifest, art.manifest);
        assert_eq!(loaded.sensors, art.sensors);
        assert_eq!(loaded.source.as_deref(), Some(fs::canonicalize(&report.version_dir).unwrap().as_path()));
        let x = windows();
        let a = score_windows(&art.vae, &x, 4096, 0).unwrap();
        let b = score_windows(&loaded.vae, &x, 4096, 0).unwrap();
        assert_eq!(a, b, "scores after save and load are identical");
        let copy = art.to_device(Device::Cpu).unwrap();
        assert_eq!(score_windows(&copy.vae, &x, 4096, 0).unwrap(), a);

        // The manifest carries what operators and the loader need.
        let text = fs::read_to_string(report.version_dir.join(MANIFEST_FILE)).unwrap();
        for key in ["\"model_version\"", "\"sensor_stages\"", "\"scaler\"", "\"thresholds\"", "\"torch\": \"2.11.0\"", "\"sha256\""] {
            assert!(text.contains(key), "manifest lacks {key}");
        }

        // Publishing the same model again reuses its version directory.
        let again = art.publish(&path).unwrap();
        assert!(again.reused);
        // A new model swaps the link; the old version stays until pruned.
        let other = artifact(2);
        assert_ne!(other.version(), art.version());
        other.publish(&path).unwrap();
        assert_eq!(ModelArtifact::load(&path, Device::Cpu).unwrap().version(), other.version());
        assert!(dir.path().join(STORE_DIR).join(art.version()).exists());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary links left behind");
    }

    #[test]
    fn old_versions_are_pruned_but_referenced_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let first = artifact(10);
        first.publish(&path).unwrap();
        // Another model path in the same parent keeps pointing at the first version.
        std::os::unix::fs::symlink(Path::new(STORE_DIR).join(first.version()), dir.path().join("pinned")).unwrap();
        let mut versions = vec![];
        for seed in 11..17 {
            let a = artifact(seed);
            a.publish(&path).unwrap();
            versions.push(a.version().to_string());
        }
        let store = dir.path().join(STORE_DIR);
        assert!(store.join(first.version()).exists(), "a referenced version is never pruned");
        assert!(store.join(&versions[5]).exists());
        let present = versions.iter().filter(|v| store.join(v).exists()).count();
        assert_eq!(present, 1 + KEEP_UNREFERENCED, "current plus {KEEP_UNREFERENCED} unreferenced kept");
    }

    #[test]
    fn a_real_directory_at_the_path_is_moved_aside_and_a_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model");
        let art = artifact(1);
        art.publish(&path).unwrap();
        // A user copies the model into a real directory at the same path.
        let real = fs::canonicalize(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        for f in [WEIGHTS_FILE, MANIFEST_FILE] {
            fs::copy(real.join(f), path.join(f)).unwrap();
        }
        assert_eq!(ModelArtifact::load(&path, Device::Cpu).unwrap().version(), art.version(), "a copied dir loads");
        let report = artifact(2).publish(&path).unwrap();
        let aside = report.moved_aside.expect("the copy is kept");
        assert!(aside.join(MANIFEST_FILE).exists());
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_symlink());

        let empty = dir.path().join("fresh");
        fs::create_dir(&empty).unwrap();
        let report = art.publish(&empty).unwrap();
        assert!(report.moved_aside.is_none(), "an empty directory is simply replaced");
        assert!(fs::symlink_metadata(&empty).unwrap().file_type().is_symlink());

        let file = dir.path().join("lstm_vae_swat.pth");
        fs::write(&file, [0x80, 2, 0x7d, 0x71]).unwrap();
        let err = art.publish(&file).unwrap_err().to_string();
        assert!(err.contains("is a file"), "{err}");
        let err = ModelArtifact::load(&file, Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::Model(_)));
        assert!(err.to_string().contains("pickle") && err.to_string().contains("lstm_vae_swat.pth"), "{err}");
    }

    /// Publishes a model, lets `damage` alter its version directory, and returns the load error.
    fn load_error(damage: impl FnOnce(&Path)) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let report = artifact(1).publish(&path).unwrap();
        damage(&report.version_dir);
        let err = ModelArtifact::load(&path, Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::Model(_)), "{err:?}");
        err.to_string()
    }

    fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let p = dir.join(MANIFEST_FILE);
        let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        edit(&mut v);
        fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    /// The hostile pass's exact input: a manifest claiming hidden_size 1,000,000 with a config, architecture
    /// and tensor list all consistent with it, the weights untouched (their sha256 still matches). libtorch
    /// was asked for 16 TB and panicked into Python; it must be an error before any allocation.
    #[test]
    fn a_manifest_claiming_a_huge_network_is_rejected_before_allocating_it() {
        let err = load_error(|d: &Path| {
            edit_manifest(d, |v| {
                v["config"]["hidden_size"] = 1_000_000.into();
                v["architecture"]["hidden_size"] = 1_000_000.into();
                let mut arch: Architecture = serde_json::from_value(v["architecture"].clone()).unwrap();
                arch.hidden_size = 1_000_000;
                let tensors: BTreeMap<String, Vec<i64>> = arch.parameter_shapes().into_iter().collect();
                v["weights"]["tensors"] = serde_json::to_value(tensors).unwrap();
            })
        });
        assert!(err.contains("model.safetensors") && err.contains("shape"), "{err}");
    }

    #[test]
    fn a_manifest_that_is_a_fifo_is_rejected_without_blocking() {
        let err = load_error(|d: &Path| {
            let p = d.join(MANIFEST_FILE);
            fs::remove_file(&p).unwrap();
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o600) }, 0);
        });
        assert!(err.contains("manifest.json") && err.contains("not a regular file"), "{err}");
    }

    extern "C" {
        #[link_name = "mkfifo"]
        fn libc_mkfifo(path: *const std::os::raw::c_char, mode: u32) -> i32;
    }

    #[test]
    fn corrupt_truncated_foreign_and_mismatched_artifacts_are_rejected() {
        let weights = |d: &Path| d.join(WEIGHTS_FILE);
        type Damage = Box<dyn FnOnce(&Path)>;
        let cases: Vec<(&str, Damage, &[&str])> = vec![
            ("truncated weights", Box::new(move |d: &Path| {
                let b = fs::read(weights(d)).unwrap();
                fs::write(weights(d), &b[..b.len() / 2]).unwrap();
            }), &["model.safetensors", "truncated"]),
            ("empty weights", Box::new(move |d: &Path| fs::write(weights(d), b"").unwrap()), &["model.safetensors", "empty"]),
            ("flipped byte", Box::new(move |d: &Path| {
                let mut b = fs::read(weights(d)).unwrap();
                let n = b.len() - 3;
                b[n] ^= 0x55;
                fs::write(weights(d), &b).unwrap();
            }), &["sha256", "corrupt"]),
            ("pickle weights", Box::new(move |d: &Path| {
                let mut b = vec![0x80u8, 2];
                b.resize(fs::read(weights(d)).unwrap().len(), 0);
                fs::write(weights(d), &b).unwrap();
            }), &["pickle"]),
            ("missing weights", Box::new(move |d: &Path| fs::remove_file(weights(d)).unwrap()), &["model.safetensors", "missing"]),
            ("missing manifest", Box::new(|d: &Path| fs::remove_file(d.join(MANIFEST_FILE)).unwrap()), &["manifest.json", "missing"]),
            ("empty manifest", Box::new(|d: &Path| fs::write(d.join(MANIFEST_FILE), b"  \n").unwrap()), &["manifest.json", "empty"]),
            ("random manifest", Box::new(|d: &Path| fs::write(d.join(MANIFEST_FILE), [0x13u8, 0xff, 0x00, 0x41]).unwrap()), &["manifest.json", "not valid JSON"]),
            ("foreign JSON", Box::new(|d: &Path| fs::write(d.join(MANIFEST_FILE), br#"{"name": "package.json"}"#).unwrap()), &["not a tidewatch model manifest"]),
            ("newer format", Box::new(|d: &Path| edit_manifest(d, |v| v["format_version"] = 3.into())), &["format version 3", "upgrade tidewatch"]),
            ("missing field", Box::new(|d: &Path| edit_manifest(d, |v| { v.as_object_mut().unwrap().remove("scaler"); })), &["manifest.json", "scaler"]),
            ("sensor count mismatch", Box::new(|d: &Path| edit_manifest(d, |v| {
                v["sensors"].as_array_mut().unwrap().push("e".into());
                v["sensor_stages"].as_array_mut().unwrap().push("P2".into());
            })), &["scaler has 4 columns for 5 sensors"]),
            ("threshold count mismatch", Box::new(|d: &Path| edit_manifest(d, |v| {
                v["thresholds"]["sensors"].as_array_mut().unwrap().pop();
            })), &["3 per-sensor thresholds for 4"]),
            ("hidden size mismatch", Box::new(|d: &Path| edit_manifest(d, |v| v["config"]["hidden_size"] = 32.into())), &["architecture"]),
            ("window mismatch", Box::new(|d: &Path| edit_manifest(d, |v| v["window"]["length"] = 10.into())), &["window 10/1"]),
            ("threshold edited by hand", Box::new(|d: &Path| edit_manifest(d, |v| v["thresholds"]["window"] = 1e9.into())),
                &["manifest.json", "does not match the manifest's contents"]),
        ];
        for (label, damage, needles) in cases {
            let err = load_error(damage);
            for needle in needles {
                assert!(err.contains(needle), "{label}: '{err}' lacks '{needle}'");
            }
        }
    }

    #[test]
    fn weights_with_wrong_tensors_are_rejected_even_with_a_matching_checksum() {
        // A file whose manifest checksum was updated to match, but whose tensors are wrong.
        let err = load_error(|d: &Path| {
            let other_cfg = ModelConfig { hidden_size: 8, ..small_config() };
            let vae = LstmVae::new(Architecture::new(&other_cfg, 4).unwrap(), Device::Cpu, 0).unwrap();
            let (bytes, _) = weights_bytes(&vae).unwrap();
            fs::write(d.join(WEIGHTS_FILE), &bytes).unwrap();
            edit_manifest(d, |v| {
                v["weights"]["sha256"] = sha256_hex(&bytes).into();
                v["weights"]["bytes"] = bytes.len().into();
            });
        });
        assert!(err.contains("model.safetensors") && err.contains("shape"), "{err}");

        let err = load_error(|d: &Path| {
            let junk = b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}  ".to_vec();
            fs::write(d.join(WEIGHTS_FILE), &junk).unwrap();
            edit_manifest(d, |v| {
                v["weights"]["sha256"] = sha256_hex(&junk).into();
                v["weights"]["bytes"] = junk.len().into();
            });
        });
        assert!(err.contains("not a valid safetensors file"), "{err}");
    }

    #[test]
    fn missing_path_and_time_format() {
        let err = ModelArtifact::load(Path::new("/nonexistent/tw-model"), Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tw-model") && err.to_string().contains("does not exist"));
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_451_606_400)), "2016-01-01T00:00:00Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_451_035_800 + 59)), "2015-12-25T09:30:59Z");
    }
}
