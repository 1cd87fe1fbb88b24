//! The LSTM-VAE network.
//!
//! encoder LSTM over the window [B, W, F] → last hidden state of the top layer [B, H]
//! → `fc_mu`, `fc_logvar` (Linear H→Z) → z = μ + exp(½·logσ²)·ε while training, z = μ at inference
//! → z repeated over the W steps → decoder LSTM [B, W, H] → `output` (Linear H→F) → reconstruction.
//!
//! Parameter names are those a PyTorch module with attributes `encoder`, `fc_mu`, `fc_logvar`,
//! `decoder` (nn.LSTM, batch_first) and `output` (nn.Linear) has in its state dict
//! (`encoder.weight_ih_l0`, `fc_mu.weight`, ...), with PyTorch's shapes and LSTM gate order, so the
//! safetensors file reads naturally and a legacy `.pth` state dict maps onto it by name.
use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::ModelConfig;
use crate::{Error, Result};

/// The shape of the network: everything needed to rebuild it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Architecture {
    pub n_features: usize,
    pub window: usize,
    pub hidden_size: usize,
    pub latent_size: usize,
    pub layers: usize,
}

impl Architecture {
    pub fn new(config: &ModelConfig, n_features: usize) -> Result<Self> {
        if n_features == 0 {
            return Err(Error::Config("the model needs at least one sensor".into()));
        }
        Ok(Architecture {
            n_features,
            window: config.window,
            hidden_size: config.hidden_size,
            latent_size: config.latent_size,
            layers: config.layers,
        })
    }

    /// Every parameter's name and shape, in a fixed order.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let (f, h, z) = (self.n_features as i64, self.hidden_size as i64, self.latent_size as i64);
        let mut out = Vec::new();
        let mut lstm = |prefix: &str, input: i64| {
            for l in 0..self.layers {
                let inp = if l == 0 { input } else { h };
                out.push((format!("{prefix}.weight_ih_l{l}"), vec![4 * h, inp]));
                out.push((format!("{prefix}.weight_hh_l{l}"), vec![4 * h, h]));
                out.push((format!("{prefix}.bias_ih_l{l}"), vec![4 * h]));
                out.push((format!("{prefix}.bias_hh_l{l}"), vec![4 * h]));
            }
        };
        lstm("encoder", f);
        lstm("decoder", z);
        out.push(("fc_mu.weight".into(), vec![z, h]));
        out.push(("fc_mu.bias".into(), vec![z]));
        out.push(("fc_logvar.weight".into(), vec![z, h]));
        out.push(("fc_logvar.bias".into(), vec![z]));
        out.push(("output.weight".into(), vec![f, h]));
        out.push(("output.bias".into(), vec![f]));
        out
    }

    /// PyTorch's default initialisation bound: U(-1/√H, 1/√H) for LSTM parameters, and
    /// U(-1/√fan_in, 1/√fan_in) for Linear weights and biases, whose fan_in is H for all three
    /// Linear layers here (they read the H-wide hidden state). So one bound serves every parameter.
    fn init_bound(&self) -> f64 {
        1.0 / (self.hidden_size as f64).sqrt()
    }
}

/// What one forward pass gives.
pub struct Forward {
    /// [B, W, F]
    pub reconstruction: Tensor,
    /// [B, Z]
    pub mu: Tensor,
    /// [B, Z]
    pub logvar: Tensor,
}

/// An LSTM's parameters in libtorch's flat order (per layer: w_ih, w_hh, b_ih, b_hh), run through
/// `at::lstm` directly so each call says whether it is training: libtorch's CPU (oneDNN) kernel keeps a
/// workspace for the backward pass only when asked, which costs inference about a third of its speed
/// (tch's `nn::LSTM` fixes the flag at construction).
struct Lstm {
    weights: Vec<Tensor>,
    layers: i64,
    hidden: i64,
}

impl Lstm {
    fn from_store(vs: &nn::VarStore, prefix: &str, layers: usize, hidden: usize) -> Self {
        let vars = vs.variables();
        let weights = (0..layers)
            .flat_map(|l| ["weight_ih", "weight_hh", "bias_ih", "bias_hh"].map(|w| format!("{prefix}.{w}_l{l}")))
            .map(|name| vars[&name].shallow_clone())
            .collect();
        Lstm { weights, layers: layers as i64, hidden: hidden as i64 }
    }

    /// Runs x [B, T, in] (batch first) from a zero state; returns (outputs [B, T, H], h_n [L, B, H]).
    fn run(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let zeros = Tensor::zeros([self.layers, x.size()[0], self.hidden], (x.kind(), x.device()));
        let weights: Vec<&Tensor> = self.weights.iter().collect();
        let (out, h, _c) = x.lstm(&[&zeros, &zeros], &weights, true, self.layers, 0.0, train, false, true);
        (out, h)
    }
}

pub struct LstmVae {
    vs: nn::VarStore,
    encoder: Lstm,
    fc_mu: nn::Linear,
    fc_logvar: nn::Linear,
    decoder: Lstm,
    output: nn::Linear,
    arch: Architecture,
}

impl std::fmt::Debug for LstmVae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LstmVae").field("arch", &self.arch).field("device", &self.vs.device()).finish()
    }
}

impl LstmVae {
    /// Builds the network on `device` with PyTorch-default random weights drawn from `seed`.
    /// The draws come from tidewatch's own generator (not libtorch's global one), so concurrent
    /// trainings in one process, or a different device, do not change them.
    pub fn new(arch: Architecture, device: Device, seed: u64) -> Result<Self> {
        let vae = Self::zeroed(arch, device)?;
        let mut rng = Pcg64::seed_from_u64(seed);
        let vars = vae.vs.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, shape) in arch.parameter_shapes() {
                let bound = arch.init_bound();
                let n: i64 = shape.iter().product();
                let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect();
                let src = Tensor::from_slice(&values).view(shape.as_slice()).to_device(device);
                vars[&name].shallow_clone().f_copy_(&src)?;
            }
            Ok(())
        })?;
        Ok(vae)
    }

    /// Builds the network with all-zero weights (to be filled from a file).
    pub fn zeroed(arch: Architecture, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let zero = nn::Init::Const(0.0);
        let rnn = nn::RNNConfig {
            num_layers: arch.layers as i64,
            batch_first: true,
            w_ih_init: zero,
            w_hh_init: zero,
            b_ih_init: Some(zero),
            b_hh_init: Some(zero),
            ..Default::default()
        };
        let lin = nn::LinearConfig { ws_init: zero, bs_init: Some(zero), bias: true };
        let (f, h, z) = (arch.n_features as i64, arch.hidden_size as i64, arch.latent_size as i64);
        // nn::lstm creates the LSTM parameters under PyTorch's names; they are then run directly.
        let _ = nn::lstm(&root / "encoder", f, h, rnn);
        let fc_mu = nn::linear(&root / "fc_mu", h, z, lin);
        let fc_logvar = nn::linear(&root / "fc_logvar", h, z, lin);
        let _ = nn::lstm(&root / "decoder", z, h, rnn);
        let output = nn::linear(&root / "output", h, f, lin);
        let encoder = Lstm::from_store(&vs, "encoder", arch.layers, arch.hidden_size);
        let decoder = Lstm::from_store(&vs, "decoder", arch.layers, arch.hidden_size);
        let vae = LstmVae { vs, encoder, fc_mu, fc_logvar, decoder, output, arch };
        debug_assert_eq!(vae.vs.len(), arch.parameter_shapes().len());
        Ok(vae)
    }

    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn trainable_variables(&self) -> Vec<Tensor> {
        self.vs.trainable_variables()
    }

    /// Runs the network on x [B, W, F]. `noise` [B, Z] (standard normal) draws z = μ + σ·ε;
    /// without it z = μ, the deterministic reconstruction used for scoring.
    pub fn forward(&self, x: &Tensor, noise: Option<&Tensor>) -> Forward {
        let train = noise.is_some();
        let (_, h) = self.encoder.run(x, train);
        let last = h.select(0, -1); // top layer's final hidden state [B, H]
        let mu = self.fc_mu.forward(&last);
        let logvar = self.fc_logvar.forward(&last);
        let z = match noise {
            Some(eps) => &mu + (&logvar * 0.5).exp() * eps,
            None => mu.shallow_clone(),
        };
        let size = x.size();
        let repeated = z.unsqueeze(1).expand([size[0], size[1], self.arch.latent_size as i64], false);
        let (decoded, _) = self.decoder.run(&repeated, train);
        Forward { reconstruction: self.output.forward(&decoded), mu, logvar }
    }

    /// Parameters by name (sorted), sharing storage with the network.
    pub fn named_parameters(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }

    /// Copies of all parameters on the CPU, for snapshots and for writing files.
    pub fn parameters_to_cpu(&self) -> BTreeMap<String, Tensor> {
        tch::no_grad(|| {
            self.named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous().copy()))
                .collect()
        })
    }

    /// Overwrites every parameter from `values`, which must hold exactly this network's names and shapes.
    /// `source` names where the values come from, for the error message.
    pub fn load_parameters(&self, values: &BTreeMap<String, Tensor>, source: &str) -> Result<()> {
        Self::check_parameters(self.arch, values, source)?;
        let expected = self.arch.parameter_shapes();
        let vars = self.vs.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, _) in &expected {
                vars[name].shallow_clone().f_copy_(&values[name].to_device(self.device()))?;
            }
            Ok(())
        })
    }

    /// Checks that `values` hold exactly the parameters of `arch`, in its shapes, before a network is
    /// allocated for them: a manifest that claims a huge architecture must fail here with a message, not in
    /// libtorch's allocator.
    pub fn check_parameters(arch: Architecture, values: &BTreeMap<String, Tensor>, source: &str) -> Result<()> {
        let expected = arch.parameter_shapes();
        let missing: Vec<&str> =
            expected.iter().filter(|(n, _)| !values.contains_key(n)).map(|(n, _)| n.as_str()).collect();
        let unexpected: Vec<&str> = values
            .keys()
            .filter(|k| !expected.iter().any(|(n, _)| n == *k))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(Error::Model(format!(
                "{source}: tensors do not match the model (missing: [{}], unexpected: [{}])",
                missing.join(", "),
                unexpected.join(", ")
            )));
        }
        for (name, shape) in &expected {
            let src = &values[name];
            if src.size() != *shape {
                return Err(Error::Model(format!(
                    "{source}: tensor '{name}' has shape {:?}, the model needs {shape:?}",
                    src.size()
                )));
            }
            if src.kind() != Kind::Float {
                return Err(Error::Model(format!(
                    "{source}: tensor '{name}' has dtype {:?}, the model needs float32",
                    src.kind()
                )));
            }
        }
        Ok(())
    }
}

/// Reconstruction MSE and KL divergence (nats per window, averaged over the batch) of a forward pass.
pub fn loss_terms(out: &Forward, x: &Tensor) -> (Tensor, Tensor) {
    let recon = (&out.reconstruction - x).square().mean(Kind::Float);
    let kl = ((&out.logvar + 1.0) - out.mu.square() - out.logvar.exp())
        .sum_dim_intlist(1, false, Kind::Float)
        .mean(Kind::Float)
        * -0.5;
    (recon, kl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arch() -> Architecture {
        let cfg = ModelConfig { window: 6, hidden_size: 8, latent_size: 3, layers: 2, ..Default::default() };
        Architecture::new(&cfg, 4).unwrap()
    }

    #[test]
    fn names_and_shapes_follow_pytorch() {
        let vae = LstmVae::new(arch(), Device::Cpu, 1).unwrap();
        let params = vae.named_parameters();
        let shapes: BTreeMap<String, Vec<i64>> = arch().parameter_shapes().into_iter().collect();
        assert_eq!(params.len(), shapes.len());
        for (name, t) in &params {
            assert_eq!(&t.size(), &shapes[name], "{name}");
        }
        assert_eq!(params["encoder.weight_ih_l0"].size(), [32, 4]);
        assert_eq!(params["encoder.weight_ih_l1"].size(), [32, 8]);
        assert_eq!(params["decoder.weight_ih_l0"].size(), [32, 3]);
        assert_eq!(params["output.weight"].size(), [4, 8]);
        // PyTorch-default init: within ±1/√H and not all zero.
        let w = &params["encoder.weight_hh_l1"];
        let max = w.abs().max().double_value(&[]);
        assert!(max > 0.0 && max <= 1.0 / 8f64.sqrt(), "{max}");
    }

    #[test]
    fn same_seed_same_weights_and_forward_shapes() {
        let a = LstmVae::new(arch(), Device::Cpu, 7).unwrap();
        let b = LstmVae::new(arch(), Device::Cpu, 7).unwrap();
        let c = LstmVae::new(arch(), Device::Cpu, 8).unwrap();
        let (pa, pb, pc) = (a.named_parameters(), b.named_parameters(), c.named_parameters());
        assert!(pa.iter().all(|(n, t)| t.equal(&pb[n])));
        assert!(!pa.iter().all(|(n, t)| t.equal(&pc[n])));

        let x = Tensor::randn([5, 6, 4], (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| a.forward(&x, None));
        assert_eq!(out.reconstruction.size(), [5, 6, 4]);
        assert_eq!(out.mu.size(), [5, 3]);
        let again = tch::no_grad(|| a.forward(&x, None));
        assert!(out.reconstruction.equal(&again.reconstruction), "inference is deterministic");
        let (recon, kl) = loss_terms(&out, &x);
        assert!(recon.double_value(&[]) > 0.0);
        assert!(kl.double_value(&[]) >= 0.0);
    }

    #[test]
    fn load_parameters_rejects_wrong_names_and_shapes() {
        let a = LstmVae::new(arch(), Device::Cpu, 1).unwrap();
        let b = LstmVae::zeroed(arch(), Device::Cpu).unwrap();
        let mut params = a.parameters_to_cpu();
        b.load_parameters(&params, "test").unwrap();
        assert!(b.named_parameters().iter().all(|(n, t)| t.equal(&params[n])));

        params.insert("output.weight".into(), Tensor::zeros([3, 8], (Kind::Float, Device::Cpu)));
        let err = b.load_parameters(&params, "f.safetensors").unwrap_err().to_string();
        assert!(err.contains("f.safetensors") && err.contains("'output.weight'") && err.contains("[3, 8]"), "{err}");
        params.remove("output.weight");
        params.insert("extra".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu)));
        let err = b.load_parameters(&params, "f").unwrap_err().to_string();
        assert!(err.contains("missing: [output.weight]") && err.contains("unexpected: [extra]"), "{err}");
    }
}
