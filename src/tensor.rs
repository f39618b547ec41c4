//! Host tensors as read from checkpoint files: a dtype, a shape and
//! contiguous little-endian bytes (owned, or borrowed from a memory map).
//!
//! Everything downstream converts to `f32` through [`RawTensor::to_f32`];
//! the original dtype is kept so `inspect`, `cast` and `average` can reason
//! about it.
//!
//! Bounded memory: a mapped tensor's pages count in the resident set once
//! touched. Dropping [`Bytes`] of a mapping releases the whole pages of its
//! range (`MADV_DONTNEED`), so a command that converts tensors one at a
//! time holds what it converted, not the file it read.

use half::{bf16, f16};
use memmap2::Mmap;
use std::fmt;
use std::sync::Arc;

/// Element types that fairseq checkpoints contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    /// Short lower-case name used in reports and JSON (`f32`, `f16`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }

    /// The safetensors dtype tag (`F32`, `F16`, `BF16`, `I64`, ...).
    pub fn safetensors_tag(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::F64 => S::F64,
            DType::F32 => S::F32,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I64 => S::I64,
            DType::I32 => S::I32,
            DType::I16 => S::I16,
            DType::I8 => S::I8,
            DType::U8 => S::U8,
            DType::Bool => S::BOOL,
        }
    }

    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        use safetensors::Dtype as S;
        Some(match d {
            S::F64 => DType::F64,
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::I64 => DType::I64,
            S::I32 => DType::I32,
            S::I16 => DType::I16,
            S::I8 => DType::I8,
            S::U8 => DType::U8,
            S::BOOL => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bytes of one tensor: owned, or a range of a shared memory map.
#[derive(Clone)]
pub enum Bytes {
    Owned(Arc<Vec<u8>>),
    /// A range of a read-only map of a **file** (never an anonymous map:
    /// dropping releases the range's pages, see [`release_range`]).
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }

    /// Take a mapped range's pages out of the resident set now (owned
    /// bytes: nothing). The bytes stay readable: touching them again
    /// re-reads them from the file.
    pub fn release(&self) {
        if let Bytes::Mapped { map, start, len } = self {
            release_range(map, *start, *len);
        }
    }
}

impl Drop for Bytes {
    /// A dropped tensor's mapped pages leave the resident set: reading a
    /// checkpoint tensor by tensor holds one tensor's pages at a time.
    fn drop(&mut self) {
        self.release();
    }
}

fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
}

/// `MADV_DONTNEED` on the whole pages inside `map[start..start + len]`
/// (partial pages at either end stay), errors ignored: it only lowers the
/// resident set. `map` must map a file read-only, as every [`Bytes::Mapped`]
/// does: the kernel then re-reads released pages from the file when touched
/// again, so anything still borrowing the range sees the same bytes.
pub fn release_range(map: &Mmap, start: usize, len: usize) {
    let Some(end) = start.checked_add(len).filter(|&e| e <= map.len()) else {
        return;
    };
    let (page, base) = (page_size(), map.as_ptr() as usize);
    let first = (base + start).next_multiple_of(page) - base;
    let last = ((base + end) / page * page).saturating_sub(base);
    if last <= first {
        return;
    }
    #[cfg(unix)]
    // SAFETY: a read-only file mapping: DONTNEED drops the pages from this
    // process and later reads fault them back in from the (unchanged) file,
    // so no borrow of the map ever observes different contents.
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first);
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes::Owned(Arc::new(v))
    }
}

/// A dense, C-contiguous tensor in one of the checkpoint dtypes.
#[derive(Clone)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
}

impl fmt::Debug for RawTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawTensor({}, {:?})", self.dtype, self.shape)
    }
}

impl RawTensor {
    /// Build from bytes, checking that the byte length matches dtype × shape.
    pub fn new(dtype: DType, shape: Vec<usize>, bytes: Bytes) -> Result<Self, String> {
        let n = numel(&shape).ok_or_else(|| format!("shape {shape:?} overflows"))?;
        let want = n
            .checked_mul(dtype.size())
            .ok_or_else(|| format!("shape {shape:?} overflows"))?;
        let got = bytes.as_slice().len();
        if want != got {
            return Err(format!(
                "{dtype} tensor of shape {shape:?} needs {want} bytes, have {got}"
            ));
        }
        Ok(RawTensor {
            dtype,
            shape,
            bytes,
        })
    }

    pub fn from_f32(shape: Vec<usize>, data: &[f32]) -> Self {
        let bytes: Vec<u8> = bytemuck::cast_slice(data).to_vec();
        RawTensor {
            dtype: DType::F32,
            shape,
            bytes: bytes.into(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> usize {
        self.bytes.as_slice().len()
    }

    /// Values as `f32` (integers and bools converted; f64 rounded).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = self.bytes.as_slice();
        match self.dtype {
            DType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::F64 => self.to_f64().into_iter().map(|x| x as f32).collect(),
            _ => self.to_f64().into_iter().map(|x| x as f32).collect(),
        }
    }

    /// (NaN, ±Inf) counts of a float tensor (zeros for integers), read in
    /// place without a converted copy; a mapped tensor's pages are released
    /// as the count passes them, so a tensor of any size costs a few MB.
    pub fn count_non_finite(&self) -> (usize, usize) {
        const CHUNK: usize = 8 << 20;
        let (mut nan, mut inf) = (0, 0);
        let mut tally = |x: f32| {
            nan += x.is_nan() as usize;
            inf += x.is_infinite() as usize;
        };
        let b = self.bytes.as_slice();
        for (i, c) in b.chunks(CHUNK).enumerate() {
            match self.dtype {
                DType::F32 => c
                    .chunks_exact(4)
                    .for_each(|c| tally(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                DType::F16 => c
                    .chunks_exact(2)
                    .for_each(|c| tally(f16::from_le_bytes([c[0], c[1]]).to_f32())),
                DType::BF16 => c
                    .chunks_exact(2)
                    .for_each(|c| tally(bf16::from_le_bytes([c[0], c[1]]).to_f32())),
                // As `to_f32` reads it (an f64 beyond f32's range counts as Inf).
                DType::F64 => c.chunks_exact(8).for_each(|c| {
                    tally(f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
                }),
                _ => return (0, 0),
            }
            if let Bytes::Mapped { map, start, .. } = &self.bytes {
                release_range(map, start + i * CHUNK, c.len());
            }
        }
        (nan, inf)
    }

    /// Values as `f64` (exact for every dtype but i64 beyond 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        let b = self.bytes.as_slice();
        match self.dtype {
            DType::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
                .collect(),
            DType::F32 | DType::F16 | DType::BF16 => {
                self.to_f32().into_iter().map(f64::from).collect()
            }
            DType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("chunk of 8")) as f64)
                .collect(),
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("chunk of 4")) as f64)
                .collect(),
            DType::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f64)
                .collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as f64).collect(),
            DType::U8 => b.iter().map(|&x| x as f64).collect(),
            DType::Bool => b.iter().map(|&x| (x != 0) as u8 as f64).collect(),
        }
    }
}

/// Product of a shape, `None` on overflow.
pub fn numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}
