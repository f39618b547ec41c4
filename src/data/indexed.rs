//! fairseq binarized datasets `PREFIX.idx` + `PREFIX.bin`: `MMapIndexedDataset`
//! (magic `MMIDIDX\0\0`, fairseq ≥ 0.8 default) and the older `IndexedDataset`
//! (`TNTIDX\0\0`). Every offset is checked against the file sizes at `open`.

use std::fs::File;
use std::path::{Path, PathBuf};

const MMAP_MAGIC: &[u8] = b"MMIDIDX\x00\x00";
const LEGACY_MAGIC: &[u8] = b"TNTIDX\x00\x00";

/// Why a binarized dataset could not be read. Messages name the file kind
/// (`.idx`/`.bin`) but not the path: the caller adds it.
#[derive(Debug, thiserror::Error)]
pub enum IndexedError {
    #[error("{file}: {source}")]
    Io {
        file: &'static str,
        source: std::io::Error,
    },
    #[error(".idx: unknown header {0:?} (expected MMIDIDX or TNTIDX)")]
    BadMagic(String),
    #[error(".idx: unsupported version {0}")]
    Version(u64),
    #[error(".idx: unsupported dtype code {0}")]
    Dtype(u64),
    #[error(".idx: element size {found} does not match dtype code {code} ({expected} bytes)")]
    ElementSize {
        code: u64,
        found: u64,
        expected: u64,
    },
    #[error(".idx: truncated ({len} bytes, header needs {needed})")]
    TruncatedIndex { len: usize, needed: u128 },
    #[error(".idx: item {item}: {what}")]
    BadItem { item: usize, what: String },
    #[error(".bin: item {item} needs bytes {start}..{end}, file has {len}")]
    OutOfBounds {
        item: usize,
        start: u128,
        end: u128,
        len: usize,
    },
    #[error("item {index} out of range (dataset has {len})")]
    IndexOutOfRange { index: usize, len: usize },
    #[error(".bin: item {item} holds {value}, not a token id")]
    BadToken { item: usize, value: String },
}

/// The element type of the `.bin` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    U8,
    I8,
    I16,
    I32,
    I64,
    U16,
    U32,
    U64,
}

impl Dtype {
    /// fairseq's `indexed_dataset.dtypes` code table (shared by both formats);
    /// the float codes 6 and 7 cannot hold token ids and are not accepted.
    fn from_code(code: u64) -> Option<Dtype> {
        Some(match code {
            1 => Dtype::U8,
            2 => Dtype::I8,
            3 => Dtype::I16,
            4 => Dtype::I32,
            5 => Dtype::I64,
            8 => Dtype::U16,
            9 => Dtype::U32,
            10 => Dtype::U64,
            _ => return None,
        })
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::U16 => 2,
            Dtype::I32 | Dtype::U32 => 4,
            Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// Reads element `b` (little-endian, `b.len() == self.size()`) as a token id.
    fn token(self, b: &[u8]) -> Result<u32, String> {
        let int: i128 = match self {
            Dtype::U8 => b[0].into(),
            Dtype::I8 => (b[0] as i8).into(),
            Dtype::I16 => i16::from_le_bytes([b[0], b[1]]).into(),
            Dtype::U16 => u16::from_le_bytes([b[0], b[1]]).into(),
            Dtype::I32 => i32::from_le_bytes(le(b)).into(),
            Dtype::U32 => u32::from_le_bytes(le(b)).into(),
            Dtype::I64 => i64::from_le_bytes(le(b)).into(),
            Dtype::U64 => u64::from_le_bytes(le(b)).into(),
        };
        u32::try_from(int).map_err(|_| int.to_string())
    }
}

fn le<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// Which writer produced the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `MMapIndexedDataset` (`--dataset-impl mmap`).
    Mmap,
    /// `IndexedDataset` (`--dataset-impl lazy|cached`).
    Legacy,
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Empty,
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Empty => &[],
        }
    }
}

/// An opened dataset: item `i` is a token id sequence, stored with its EOS.
pub struct IndexedDataset {
    format: Format,
    dtype: Dtype,
    /// Per item: byte offset into `.bin` and number of elements (validated).
    items: Vec<(usize, usize)>,
    bin: Bytes,
}

impl std::fmt::Debug for IndexedDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexedDataset")
            .field("format", &self.format)
            .field("dtype", &self.dtype)
            .field("len", &self.items.len())
            .finish()
    }
}

impl IndexedDataset {
    /// Opens `PREFIX.idx` and `PREFIX.bin` (e.g. `data-bin/test.de-en.de`).
    pub fn open(prefix: impl AsRef<Path>) -> Result<Self, IndexedError> {
        let prefix = prefix.as_ref();
        let with_ext = |ext: &str| {
            let mut p: PathBuf = prefix.into();
            p.as_mut_os_string().push(ext);
            p
        };
        let idx = std::fs::read(with_ext(".idx")).map_err(|source| IndexedError::Io {
            file: ".idx",
            source,
        })?;
        let bin_err = |source| IndexedError::Io {
            file: ".bin",
            source,
        };
        let file = File::open(with_ext(".bin")).map_err(bin_err)?;
        let bin_len = file.metadata().map_err(bin_err)?.len();
        let bin = if bin_len == 0 {
            Bytes::Empty
        } else {
            // SAFETY: read-only map; like fairseq we assume the file is not
            // modified while the dataset is open.
            Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(bin_err)?)
        };
        Self::from_parts(&idx, bin)
    }

    fn from_parts(idx: &[u8], bin: Bytes) -> Result<Self, IndexedError> {
        let bin_len = bin.as_slice().len();
        let (format, dtype, spans) = if idx.starts_with(MMAP_MAGIC) {
            let (dtype, spans) = parse_mmap_index(idx)?;
            (Format::Mmap, dtype, spans)
        } else if idx.starts_with(LEGACY_MAGIC) {
            let (dtype, spans) = parse_legacy_index(idx)?;
            (Format::Legacy, dtype, spans)
        } else {
            let head = &idx[..idx.len().min(9)];
            return Err(IndexedError::BadMagic(
                String::from_utf8_lossy(head).into_owned(),
            ));
        };
        // spans: (byte offset, element count) as read, in u128 to rule out overflow.
        let mut items = Vec::with_capacity(spans.len());
        for (item, (start, count)) in spans.into_iter().enumerate() {
            let end = count
                .checked_mul(dtype.size() as u128)
                .and_then(|bytes| bytes.checked_add(start))
                .unwrap_or(u128::MAX);
            if end > bin_len as u128 {
                return Err(IndexedError::OutOfBounds {
                    item,
                    start,
                    end,
                    len: bin_len,
                });
            }
            // Both fit in usize since end <= bin_len.
            items.push((start as usize, count as usize));
        }
        Ok(IndexedDataset {
            format,
            dtype,
            items,
            bin,
        })
    }

    /// Which on-disk format was read.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The element type of the `.bin` file.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Number of items (sentences).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of tokens of item `i` (EOS included), like fairseq's `sizes[i]`.
    pub fn size(&self, i: usize) -> Option<usize> {
        self.items.get(i).map(|&(_, n)| n)
    }

    /// The token ids of item `i` as stored (with the trailing EOS).
    pub fn get(&self, i: usize) -> Result<Vec<u32>, IndexedError> {
        let &(start, count) = self.items.get(i).ok_or(IndexedError::IndexOutOfRange {
            index: i,
            len: self.items.len(),
        })?;
        let width = self.dtype.size();
        let bytes = &self.bin.as_slice()[start..start + count * width];
        bytes
            .chunks_exact(width)
            .map(|b| self.dtype.token(b))
            .collect::<Result<_, _>>()
            .map_err(|value| IndexedError::BadToken { item: i, value })
    }

    /// All items in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Vec<u32>, IndexedError>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// A little-endian cursor over the `.idx` bytes that reports truncation.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn need(&self, bytes: u128) -> Result<(), IndexedError> {
        if self.pos as u128 + bytes > self.buf.len() as u128 {
            return Err(IndexedError::TruncatedIndex {
                len: self.buf.len(),
                needed: self.pos as u128 + bytes,
            });
        }
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], IndexedError> {
        self.need(N as u128)?;
        let a = le(&self.buf[self.pos..]);
        self.pos += N;
        Ok(a)
    }

    fn u64(&mut self) -> Result<u64, IndexedError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, IndexedError> {
        Ok(i64::from_le_bytes(self.take()?))
    }

    fn i32(&mut self) -> Result<i32, IndexedError> {
        Ok(i32::from_le_bytes(self.take()?))
    }

    /// `n` i64 values, checking first that they are all there.
    fn i64s(&mut self, n: u64) -> Result<Vec<i64>, IndexedError> {
        self.need(n as u128 * 8)?;
        (0..n).map(|_| self.i64()).collect()
    }
}

fn dtype_of(code: u64) -> Result<Dtype, IndexedError> {
    Dtype::from_code(code).ok_or(IndexedError::Dtype(code))
}

fn bad_item(item: usize, what: impl Into<String>) -> IndexedError {
    IndexedError::BadItem {
        item,
        what: what.into(),
    }
}

/// `MMIDIDX\0\0`, u64 version 1, u8 dtype code, u64 n, i32 sizes[n], i64 pointers[n].
fn parse_mmap_index(idx: &[u8]) -> Result<(Dtype, Vec<(u128, u128)>), IndexedError> {
    let mut r = Reader {
        buf: idx,
        pos: MMAP_MAGIC.len(),
    };
    let version = r.u64()?;
    if version != 1 {
        return Err(IndexedError::Version(version));
    }
    let dtype = dtype_of(r.take::<1>()?[0].into())?;
    let n = r.u64()?;
    r.need(n as u128 * 12)?;
    let sizes: Vec<i32> = (0..n).map(|_| r.i32()).collect::<Result<_, _>>()?;
    let pointers = r.i64s(n)?;
    sizes
        .into_iter()
        .zip(pointers)
        .enumerate()
        .map(|(item, (size, ptr))| {
            let size = u128::try_from(size)
                .map_err(|_| bad_item(item, format!("negative size {size}")))?;
            let ptr = u128::try_from(ptr)
                .map_err(|_| bad_item(item, format!("negative pointer {ptr}")))?;
            Ok((ptr, size))
        })
        .collect::<Result<_, _>>()
        .map(|spans| (dtype, spans))
}

/// `TNTIDX\0\0`, u64 version 1, u64 dtype code, u64 element size, u64 n,
/// u64 s, i64 dim_offsets[n+1], i64 data_offsets[n+1] (in elements), i64 sizes[s].
fn parse_legacy_index(idx: &[u8]) -> Result<(Dtype, Vec<(u128, u128)>), IndexedError> {
    let mut r = Reader {
        buf: idx,
        pos: LEGACY_MAGIC.len(),
    };
    let version = r.u64()?;
    if version != 1 {
        return Err(IndexedError::Version(version));
    }
    let code = r.u64()?;
    let dtype = dtype_of(code)?;
    let element_size = r.u64()?;
    if element_size != dtype.size() as u64 {
        return Err(IndexedError::ElementSize {
            code,
            found: element_size,
            expected: dtype.size() as u64,
        });
    }
    let n = r.u64()?;
    let s = r.u64()?;
    let n1 = n.checked_add(1).ok_or(IndexedError::TruncatedIndex {
        len: idx.len(),
        needed: u128::MAX,
    })?;
    r.need((n1 as u128 * 2 + s as u128) * 8)?;
    let dim_offsets = r.i64s(n1)?;
    let data_offsets = r.i64s(n1)?;
    let dims = r.i64s(s)?;
    let mut spans = Vec::with_capacity(n as usize);
    for item in 0..n as usize {
        let (d0, d1) = (dim_offsets[item], dim_offsets[item + 1]);
        if d0 < 0 || d1 < d0 || d1 as u64 > s {
            return Err(bad_item(
                item,
                format!("dimension offsets {d0}..{d1} outside 0..{s}"),
            ));
        }
        let mut count: u128 = 1;
        for &dim in &dims[d0 as usize..d1 as usize] {
            let dim = u128::try_from(dim)
                .map_err(|_| bad_item(item, format!("negative dimension {dim}")))?;
            count = count
                .checked_mul(dim)
                .ok_or_else(|| bad_item(item, "too many elements"))?;
        }
        let offset = data_offsets[item];
        let offset = u128::try_from(offset)
            .map_err(|_| bad_item(item, format!("negative data offset {offset}")))?;
        spans.push((offset * element_size as u128, count));
    }
    Ok((dtype, spans))
}
