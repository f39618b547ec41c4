//! A safetensors writer over [`RawTensor`]s: header with dtype, shape and
//! offsets in the order given, `__metadata__` strings, written atomically;
//! [`write_entries`] streams a model's float32 weights converted a chunk at a
//! time (no second copy of the model in memory).

use super::atomic_write;
use super::fairseq::{Entry, CHUNK};
use crate::tensor::{DType, RawTensor};
use crate::transform::cast;
use anyhow::Result;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The bytes of a safetensors file holding `tensors` (in this order).
pub fn header(tensors: &[(String, RawTensor)], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let specs: Vec<_> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.dtype, t.shape.as_slice()))
        .collect();
    header_of(&specs, metadata)
}

/// The header for tensors given as (name, dtype, shape), in this order.
fn header_of(specs: &[(&str, DType, &[usize])], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        obj.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).unwrap_or_default(),
        );
    }
    let mut off = 0usize;
    for (name, dtype, shape) in specs {
        let n = shape.iter().product::<usize>() * dtype.size();
        obj.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": format!("{:?}", dtype.safetensors_tag()),
                "shape": shape,
                "data_offsets": [off, off + n],
            }),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(obj)).unwrap_or_default();
    // Pad the header with spaces to an 8-byte boundary, as the reference
    // implementation does, so tensor data stays aligned.
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    h
}

/// Spaces kept free in a [`write_entries`] header for the metadata that
/// [`PendingSafetensors::commit`] writes (the self-check's result).
const HEADER_SLACK: usize = 1024;

/// A safetensors file written to its temp file, whose metadata is still to
/// be final (see [`super::Pending`]).
pub struct PendingSafetensors {
    pending: super::Pending,
    specs: Vec<(String, DType, Vec<usize>)>,
    header_len: usize,
}

/// Write a model's state dict `entries` converted to `dtype` (f32, f16,
/// bf16) with `metadata` to a temp file beside `path`, streaming: float32
/// data straight from the model, other dtypes a chunk at a time. The header
/// keeps [`HEADER_SLACK`] spaces so the metadata can change at commit.
pub fn write_entries(
    path: &Path,
    entries: &[Entry],
    dtype: DType,
    metadata: &BTreeMap<String, String>,
) -> Result<PendingSafetensors> {
    let dtype = if matches!(dtype, DType::F16 | DType::BF16) {
        dtype
    } else {
        DType::F32
    };
    let specs: Vec<_> = entries
        .iter()
        .map(|e| (e.name.clone(), dtype, e.shape.clone()))
        .collect();
    let mut h = header_of(&borrowed(&specs), metadata);
    h.resize(h.len() + HEADER_SLACK, b' ');
    let pending = super::write_pending(path, |w| {
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for e in entries {
            for c in e.data.chunks(CHUNK) {
                if dtype == DType::F32 {
                    w.write_all(bytemuck::cast_slice(c))?;
                } else {
                    w.write_all(cast::from_f32(dtype, vec![c.len()], c).0.bytes.as_slice())?;
                }
            }
        }
        Ok(())
    })?;
    Ok(PendingSafetensors {
        pending,
        specs,
        header_len: h.len(),
    })
}

fn borrowed(specs: &[(String, DType, Vec<usize>)]) -> Vec<(&str, DType, &[usize])> {
    specs
        .iter()
        .map(|(n, d, s)| (n.as_str(), *d, s.as_slice()))
        .collect()
}

impl PendingSafetensors {
    /// Rewrite the header with the final `metadata` (padded with spaces to
    /// the length written, so no tensor moves) and move the file into place.
    pub fn commit(self, metadata: &BTreeMap<String, String>) -> Result<()> {
        let mut h = header_of(&borrowed(&self.specs), metadata);
        anyhow::ensure!(
            h.len() <= self.header_len,
            "internal error: safetensors metadata grew past the space kept for it"
        );
        h.resize(self.header_len, b' ');
        use std::os::unix::fs::FileExt;
        self.pending.file().write_all_at(&h, 8)?;
        self.pending.commit()
    }
}

/// Write `tensors` and `metadata` to `path` atomically.
pub fn write(
    path: &Path,
    tensors: &[(String, RawTensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let h = header(tensors, metadata);
    atomic_write(path, |w| {
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for (_, t) in tensors {
            w.write_all(t.bytes.as_slice())?;
        }
        Ok(())
    })
}
