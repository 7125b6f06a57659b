//! Checkpoint tensors by name, with the bookkeeping that turns a mismatch into a precise error:
//! every tensor an architecture asks for must exist with the right shape, and every tensor in the
//! file must be asked for.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::layers::BatchNorm;

enum Source {
    Tensors(HashMap<String, Tensor>),
    /// Made-up deterministic values of whatever shape is asked for: benchmarks and tests of
    /// architectures whose real weights are not shipped.
    Synthetic {
        seed: u64,
    },
}

pub struct WeightStore {
    source: Source,
    name: String,
    used: RefCell<BTreeSet<String>>,
}

/// PyTorch bookkeeping that carries no weights.
fn is_ignorable(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

impl WeightStore {
    pub fn from_tensors(name: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        Self { source: Source::Tensors(tensors), name: name.into(), used: RefCell::default() }
    }

    pub fn synthetic(seed: u64) -> Self {
        Self { source: Source::Synthetic { seed }, name: "synthetic".into(), used: RefCell::default() }
    }

    /// Reads `.safetensors` or a PyTorch zip checkpoint (`.pth`/`.pt`), told apart by content.
    pub fn from_file(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let err = |message: String| Error::Weights { source_name: name.clone(), message };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if bytes.is_empty() {
            return Err(err("the file is empty".into()));
        }
        let tensors = if bytes.starts_with(b"PK\x03\x04") {
            read_pth(path).map_err(|e| err(format!("not a readable PyTorch checkpoint ({e})")))?
        } else {
            candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
                .map_err(|e| err(format!("not a readable safetensors file ({e})")))?
        };
        if tensors.is_empty() {
            return Err(err("no tensors found".into()));
        }
        Ok(Self::from_tensors(name, tensors))
    }

    pub fn from_safetensors_bytes(name: &str, bytes: &[u8]) -> Result<Self> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| Error::Weights { source_name: name.into(), message: e.to_string() })?;
        Ok(Self::from_tensors(name, tensors))
    }

    pub fn source_name(&self) -> &str {
        &self.name
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Tensors(t) => t.contains_key(name),
            Source::Synthetic { .. } => false,
        }
    }

    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        match &self.source {
            Source::Tensors(t) => t.get(name).map(|t| t.dims().to_vec()),
            Source::Synthetic { .. } => None,
        }
    }

    pub fn names(&self) -> Vec<&str> {
        match &self.source {
            Source::Tensors(t) => t.keys().map(String::as_str).collect(),
            Source::Synthetic { .. } => Vec::new(),
        }
    }

    /// The tensor `name` as f32, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = match &self.source {
            Source::Synthetic { seed } => synthetic_tensor(name, shape, *seed)?,
            Source::Tensors(tensors) => {
                let t = tensors.get(name).ok_or_else(|| Error::Weights {
                    source_name: self.name.clone(),
                    message: format!("missing tensor `{name}` (expected shape {shape:?})"),
                })?;
                if t.dims() != shape {
                    return Err(Error::Weights {
                        source_name: self.name.clone(),
                        message: format!(
                            "tensor `{name}` has shape {:?}, the architecture expects {shape:?}",
                            t.dims()
                        ),
                    });
                }
                t.to_dtype(DType::F32)?
            }
        };
        self.used.borrow_mut().insert(name.to_string());
        Ok(tensor)
    }

    /// The eval-mode BatchNorm2d `{prefix}.weight/bias/running_mean/running_var` of `channels`.
    pub fn batch_norm(&self, prefix: &str, channels: usize, eps: f64) -> Result<BatchNorm> {
        let c = [channels];
        Ok(BatchNorm {
            weight: self.get(&format!("{prefix}.weight"), &c)?,
            bias: self.get(&format!("{prefix}.bias"), &c)?,
            running_mean: self.get(&format!("{prefix}.running_mean"), &c)?,
            running_var: self.get(&format!("{prefix}.running_var"), &c)?,
            eps,
        })
    }

    /// Fails if the file holds tensors the architecture never asked for: a sign of the wrong
    /// architecture or a checkpoint with extra heads.
    pub fn finish(&self) -> Result<()> {
        let Source::Tensors(tensors) = &self.source else { return Ok(()) };
        let used = self.used.borrow();
        let mut extra: Vec<&str> = tensors
            .keys()
            .filter(|k| !used.contains(k.as_str()) && !is_ignorable(k))
            .map(String::as_str)
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        extra.sort_unstable();
        let shown: Vec<String> =
            extra.iter().take(3).map(|k| format!("`{k}` {:?}", tensors[*k].dims())).collect();
        let more = if extra.len() > 3 { format!(" and {} more", extra.len() - 3) } else { String::new() };
        Err(Error::Weights {
            source_name: self.name.clone(),
            message: format!("unexpected tensor {}{more} for this architecture", shown.join(", ")),
        })
    }
}

/// Candle's pickle reader panics on some corrupt checkpoints (an index past a list's end);
/// that panic becomes an error here, so a bad file never takes the process down.
fn read_pth(path: &Path) -> candle_core::Result<HashMap<String, Tensor>> {
    match std::panic::catch_unwind(|| read_pth_unguarded(path)) {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            candle_core::bail!("the checkpoint reader failed on it: {why}")
        }
    }
}

fn read_pth_unguarded(path: &Path) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut tensors = candle_core::pickle::read_all(path)?;
    if tensors.is_empty() {
        // Checkpoints saved as {"state_dict": ...} (Lightning and friends).
        tensors = candle_core::pickle::read_all_with_key(path, Some("state_dict"))?;
    }
    Ok(tensors.into_iter().collect())
}

/// Deterministic values in a sensible range for the role the name suggests.
fn synthetic_tensor(name: &str, shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
    let mut state =
        name.bytes().fold(seed ^ 0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    let values: Vec<f32> = if name.ends_with("running_var") {
        (0..n).map(|_| 0.5 + next()).collect()
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        (0..n).map(|_| 0.1 * (next() - 0.5)).collect()
    } else if shape.len() == 1 {
        (0..n).map(|_| 0.75 + 0.5 * next()).collect()
    } else {
        let scale = (6.0 / fan_in as f32).sqrt();
        (0..n).map(|_| scale * (2.0 * next() - 1.0)).collect()
    };
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}
