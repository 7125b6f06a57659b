//! ONNX tensors (initializers, `Constant` values) as Candle tensors on the CPU: floats of every
//! width become F32, integers I64, booleans U8. Data inline (`raw_data` or the typed fields) or
//! in an external file beside the model (`data_location = EXTERNAL`), memory-mapped. Either way
//! the only copy made is the converted tensor's own storage.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::mapped::MappedFile;
use super::proto::{data_type as dt, TensorProto};

/// Maps external data files once each, for every initializer that points into them: a tensor is
/// converted straight from the mapped pages (the file is never read whole into memory).
#[derive(Default)]
pub struct ExternalData {
    files: Vec<(String, MappedFile)>,
}

impl ExternalData {
    fn bytes(&mut self, dir: &Path, location: &str) -> Result<&[u8], String> {
        if !self.files.iter().any(|(l, _)| l == location) {
            // The location is relative to the model's folder and must stay inside it.
            let rel = Path::new(location);
            if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(format!("external data location '{location}' leaves the model's folder"));
            }
            let path = dir.join(rel);
            let data =
                MappedFile::open(&path).map_err(|e| format!("external data file {}: {e}", path.display()))?;
            self.files.push((location.to_string(), data));
        }
        Ok(self.files.iter().find(|(l, _)| l == location).expect("just mapped").1.as_ref())
    }

    /// Drops the pages read so far from resident memory (see [`MappedFile::release`]).
    pub fn release(&self) {
        self.files.iter().for_each(|(_, f)| f.release());
    }
}

fn dims(t: &TensorProto) -> Result<Vec<usize>, String> {
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("tensor '{}' has a negative dimension {d}", t.name)))
        .collect()
}

/// Element count of `dims`, refusing absurd sizes before anything is allocated.
fn count(name: &str, dims: &[usize]) -> Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= (1 << 34))
        .ok_or_else(|| format!("tensor '{name}' has an impossible size {dims:?}"))
}

/// Bytes per element of the types stored as raw little-endian data.
fn width(data_type: i32) -> Option<usize> {
    Some(match data_type {
        dt::FLOAT | dt::INT32 | dt::UINT32 => 4,
        dt::INT64 | dt::DOUBLE | dt::UINT64 => 8,
        dt::FLOAT16 | dt::BFLOAT16 | dt::INT16 | dt::UINT16 => 2,
        dt::INT8 | dt::UINT8 | dt::BOOL => 1,
        _ => return None,
    })
}

/// The tensor's values, converted: (F32 values or I64 values, which one).
enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<u8>),
}

fn from_le_bytes(data_type: i32, bytes: &[u8]) -> Values {
    let chunks = |n: usize| bytes.chunks_exact(n);
    match data_type {
        dt::FLOAT => Values::F32(chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()),
        dt::DOUBLE => {
            Values::F32(chunks(8).map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect())
        }
        dt::FLOAT16 => Values::F32(
            chunks(2).map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect(),
        ),
        dt::BFLOAT16 => Values::F32(
            chunks(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect(),
        ),
        dt::INT64 => Values::I64(chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()),
        dt::UINT64 => {
            Values::I64(chunks(8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as i64).collect())
        }
        dt::INT32 => {
            Values::I64(chunks(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64).collect())
        }
        dt::UINT32 => {
            Values::I64(chunks(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as i64).collect())
        }
        dt::INT16 => Values::I64(chunks(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as i64).collect()),
        dt::UINT16 => Values::I64(chunks(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as i64).collect()),
        dt::INT8 => Values::I64(bytes.iter().map(|&b| b as i8 as i64).collect()),
        dt::UINT8 => Values::I64(bytes.iter().map(|&b| b as i64).collect()),
        _ => Values::Bool(bytes.iter().map(|&b| u8::from(b != 0)).collect()),
    }
}

/// The typed-field storage (`float_data`, `int32_data`, …) of a tensor without raw data.
fn from_fields(t: &TensorProto) -> Result<Values, String> {
    Ok(match t.data_type {
        dt::FLOAT => Values::F32(t.float_data.clone()),
        dt::DOUBLE => Values::F32(t.double_data.iter().map(|&v| v as f32).collect()),
        dt::FLOAT16 => {
            Values::F32(t.int32_data.iter().map(|&v| half::f16::from_bits(v as u16).to_f32()).collect())
        }
        dt::BFLOAT16 => {
            Values::F32(t.int32_data.iter().map(|&v| half::bf16::from_bits(v as u16).to_f32()).collect())
        }
        dt::INT64 => Values::I64(t.int64_data.clone()),
        dt::UINT32 | dt::UINT64 => Values::I64(t.uint64_data.iter().map(|&v| v as i64).collect()),
        dt::INT32 | dt::INT16 | dt::UINT16 | dt::INT8 | dt::UINT8 => {
            Values::I64(t.int32_data.iter().map(|&v| v as i64).collect())
        }
        dt::BOOL => Values::Bool(t.int32_data.iter().map(|&v| u8::from(v != 0)).collect()),
        other => return Err(format!("tensor '{}' has unsupported type {}", t.name, dt::name(other))),
    })
}

/// An ONNX tensor as a CPU Candle tensor. `dir` is the model's folder (for external data).
pub fn to_tensor(t: &TensorProto, dir: &Path, external: &mut ExternalData) -> Result<Tensor, String> {
    let shape = dims(t)?;
    let n = count(&t.name, &shape)?;
    let Some(w) = width(t.data_type) else {
        return Err(format!("tensor '{}' has unsupported type {}", t.name, dt::name(t.data_type)));
    };
    let values = if t.data_location == 1 {
        let field = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
        let location =
            field("location").ok_or_else(|| format!("external tensor '{}' has no location", t.name))?;
        let number = |k: &str| -> Result<Option<usize>, String> {
            field(k)
                .map(|v| {
                    v.parse::<usize>().map_err(|_| format!("tensor '{}': bad external {k} '{v}'", t.name))
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        let bytes = external.bytes(dir, location).map_err(|e| format!("tensor '{}': {e}", t.name))?;
        let length = number("length")?.unwrap_or(bytes.len().saturating_sub(offset));
        let end = offset.checked_add(length).filter(|&e| e <= bytes.len()).ok_or_else(|| {
            format!(
                "tensor '{}' lies at bytes {offset}..{} of {location}, which has {} bytes",
                t.name,
                offset.saturating_add(length),
                bytes.len()
            )
        })?;
        if length != n * w {
            return Err(format!(
                "tensor '{}' of shape {shape:?} has {length} bytes of external data",
                t.name
            ));
        }
        from_le_bytes(t.data_type, &bytes[offset..end])
    } else if !t.raw_data.is_empty() {
        if t.raw_data.len() != n * w {
            return Err(format!(
                "tensor '{}' of shape {shape:?} has {} bytes of data, expected {}",
                t.name,
                t.raw_data.len(),
                n * w
            ));
        }
        from_le_bytes(t.data_type, &t.raw_data)
    } else {
        from_fields(t)?
    };
    let len = match &values {
        Values::F32(v) => v.len(),
        Values::I64(v) => v.len(),
        Values::Bool(v) => v.len(),
    };
    if len != n {
        return Err(format!("tensor '{}' of shape {shape:?} holds {len} values, expected {n}", t.name));
    }
    let dev = &Device::Cpu;
    let tensor = match values {
        Values::F32(v) => Tensor::from_vec(v, shape, dev),
        Values::I64(v) => Tensor::from_vec(v, shape, dev),
        Values::Bool(v) => Tensor::from_vec(v, shape, dev),
    };
    tensor.map_err(|e| format!("tensor '{}': {e}", t.name))
}

/// The dtype camscope computes an ONNX type in.
pub fn compute_dtype(onnx_type: i32) -> Option<DType> {
    Some(match onnx_type {
        dt::FLOAT | dt::DOUBLE | dt::FLOAT16 | dt::BFLOAT16 => DType::F32,
        dt::BOOL => DType::U8,
        dt::INT64 | dt::INT32 | dt::INT16 | dt::INT8 | dt::UINT8 | dt::UINT16 | dt::UINT32 | dt::UINT64 => {
            DType::I64
        }
        _ => return None,
    })
}
