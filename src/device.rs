//! Where the network runs: `--device cpu|cuda[:N]`.
//!
//! On the CPU every layer runs our own kernels and the trace its own backward pass. On a CUDA
//! device the layers fall back to Candle's CUDA ops and the trace to Candle's autograd; that needs
//! a build with `--features cuda` (and the CUDA toolkit), which this parser says plainly when it
//! is missing instead of failing later inside Candle.

use std::sync::Mutex;

use candle_core::Device;

use crate::error::{Error, Result};

pub fn parse(spec: &str) -> Result<Device> {
    let lower = spec.trim().to_ascii_lowercase();
    let ordinal = match lower.as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(Error::Device(format!("unknown device '{spec}'; devices are: cpu, cuda, cuda:N")))
            }
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::Device(format!(
            "'{spec}' needs CUDA, and this camscope was built without it; \
             rebuild with `cargo build --release --features cuda`"
        )));
    }
    cuda(ordinal)
}

/// How `--device` spells `device`: `cpu`, `cuda:N` (and `metal:N`, which camscope never opens).
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// CUDA device `ordinal`, opened once per process. To Candle each `Device::new_cuda` is a device
/// of its own (its own id and context handle), and tensors of two of them do not mix even on one
/// GPU: the weights a model copied for one `--device cuda` would be "on another device" for an
/// input moved to a second one. So every parse of `cuda:N` hands out the same `Device`.
fn cuda(ordinal: usize) -> Result<Device> {
    static OPENED: Mutex<Vec<(usize, Device)>> = Mutex::new(Vec::new());
    let mut opened = OPENED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, device)) = opened.iter().find(|(n, _)| *n == ordinal) {
        return Ok(device.clone());
    }
    let device = Device::new_cuda(ordinal)
        .map_err(|e| Error::Device(format!("cannot open CUDA device {ordinal}: {e}")))?;
    opened.push((ordinal, device.clone()));
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_nonsense() {
        assert!(parse("cpu").unwrap().is_cpu());
        assert!(parse(" CPU ").unwrap().is_cpu());
        for bad in ["tpu", "gpu", "cuda:x", "cuda:-1", ""] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("unknown device") && e.contains("cpu, cuda, cuda:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn names_are_what_parse_takes() {
        assert_eq!(name(&parse("cpu").unwrap()), "cpu");
    }

    /// Runs where there is a GPU (a CUDA build anywhere else passes it without opening one).
    #[cfg(feature = "cuda")]
    #[test]
    fn each_cuda_device_is_opened_once() {
        let Ok(first) = parse("cuda") else { return };
        let again = parse("CUDA:0").unwrap();
        assert!(first.same_device(&again));
        assert_eq!(name(&again), "cuda:0");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = parse("cuda:1").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
