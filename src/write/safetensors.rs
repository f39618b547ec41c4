//! A safetensors writer over [`RawTensor`]s: header with dtype, shape and
//! offsets in the order given, `__metadata__` strings, written atomically.

use super::atomic_write;
use crate::tensor::RawTensor;
use anyhow::Result;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The bytes of a safetensors file holding `tensors` (in this order).
pub fn header(tensors: &[(String, RawTensor)], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        obj.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).unwrap_or_default(),
        );
    }
    let mut off = 0usize;
    for (name, t) in tensors {
        let n = t.nbytes();
        obj.insert(
            name.clone(),
            serde_json::json!({
                "dtype": format!("{:?}", t.dtype.safetensors_tag()),
                "shape": t.shape,
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
