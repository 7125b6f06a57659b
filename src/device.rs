//! Where the network runs: `--device cpu|cuda[:N]`.
//!
//! On the CPU every layer runs our own kernels and the trace its own backward pass. On a CUDA
//! device the layers fall back to Candle's CUDA ops and the trace to Candle's autograd; that needs
//! a build with `--features cuda` (and the CUDA toolkit), which this parser says plainly when it
//! is missing instead of failing later inside Candle.

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
    Device::new_cuda(ordinal).map_err(|e| Error::Device(format!("cannot open CUDA device {ordinal}: {e}")))
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

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = parse("cuda:1").unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
    }
}
