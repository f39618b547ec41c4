//! `.safetensors` files, memory-mapped and read lazily. Every offset and
//! length is validated by the `safetensors` crate before it is trusted; a
//! file is never modified. Config and dictionaries travel in `__metadata__`
//! (see [`super::META_CONFIG`]).

use crate::tensor::{Bytes, DType, RawTensor};
use memmap2::Mmap;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One tensor's place in the file.
#[derive(Clone, Debug)]
pub struct Slot {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// A parsed safetensors file: tensor slots in file order plus metadata.
pub struct SafetensorsFile {
    map: Arc<Mmap>,
    pub slots: Vec<(String, Slot)>,
    pub metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Parse a mapped file, checking the header against the bytes present.
    pub fn parse(map: Arc<Mmap>) -> Result<Self, String> {
        let (n, meta) = SafeTensors::read_metadata(&map).map_err(describe)?;
        let base = 8 + n;
        let mut slots = Vec::new();
        for name in meta.offset_keys() {
            // Cannot fail: the name came from the same metadata.
            let info = meta.info(&name).ok_or("tensor info vanished")?;
            let dtype = DType::from_safetensors(info.dtype)
                .ok_or_else(|| format!("tensor {name}: unsupported dtype {:?}", info.dtype))?;
            let (s, e) = info.data_offsets;
            slots.push((
                name,
                Slot {
                    dtype,
                    shape: info.shape.clone(),
                    start: base + s,
                    end: base + e,
                },
            ));
        }
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(SafetensorsFile {
            map,
            slots,
            metadata,
        })
    }

    /// The tensor in `slot`, borrowing the memory map (no copy).
    pub fn tensor(&self, slot: &Slot) -> Result<RawTensor, String> {
        RawTensor::new(
            slot.dtype,
            slot.shape.clone(),
            Bytes::Mapped {
                map: self.map.clone(),
                start: slot.start,
                len: slot.end - slot.start,
            },
        )
    }
}

fn describe(e: safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "safetensors: file too small for a header".into(),
        E::HeaderTooLarge => "safetensors: header length is implausibly large".into(),
        E::InvalidHeaderLength => "safetensors: header length runs past the end of the file".into(),
        E::InvalidHeader(_) => "safetensors: header is not UTF-8".into(),
        E::InvalidHeaderDeserialization(e) => format!("safetensors: header is not valid JSON: {e}"),
        E::InvalidOffset(name) => {
            format!("safetensors: tensor {name} has offsets that overlap or leave gaps")
        }
        E::TensorInvalidInfo => {
            "safetensors: a tensor's byte range does not match its dtype and shape".into()
        }
        E::MetadataIncompleteBuffer => {
            "safetensors: the header declares more (or fewer) data bytes than the file holds".into()
        }
        E::ValidationOverflow => "safetensors: a tensor shape overflows".into(),
        E::MisalignedSlice => "safetensors: a tensor's size is not a whole number of bytes".into(),
        other => format!("safetensors: {other}"),
    }
}
