//! Reading torch `.pt` files, the zip format (torch ≥ 1.6) and the legacy pickle stream
//! (pre-1.6), without executing pickle code: the pickled object becomes a [`Value`] tree whose
//! tensors are [`TensorRef`]s into storages that stay memory-mapped (deflated zip entries are
//! the only copies) until [`TorchFile::tensor`] makes a contiguous, range-checked tensor.
//! Only the tensors asked for are touched (the `model` part of a checkpoint, never the
//! optimizer state), and their pages leave the resident set when the tensor is dropped.

use crate::read::pickle::{self, PickleError, Value};
use crate::tensor::{numel, release_range, Bytes, DType, RawTensor};
use memmap2::Mmap;
use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchFormat {
    /// torch ≥ 1.6: a zip archive with `data.pkl` and one entry per storage.
    Zip,
    /// Before 1.6: consecutive pickles followed by raw storage data.
    Legacy,
}

/// A storage as named by a persistent id.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Elements of `dtype`.
    pub numel: usize,
    pub location: String,
}

/// A tensor: a strided view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: String,
    pub dtype: DType,
    /// In elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("pickle: {0}")]
    Pickle(#[from] PickleError),
    #[error("empty file")]
    Empty,
    #[error("not a torch checkpoint: {0}")]
    NotTorch(String),
    #[error("zip: {0}")]
    Zip(String),
    #[error("truncated legacy storage {index}: needs {need} bytes, {left} left")]
    TruncatedLegacy {
        index: usize,
        need: u64,
        left: usize,
    },
    #[error("storage {0} is missing")]
    MissingStorage(String),
    #[error("{0}")]
    Format(String),
    #[error("tensor: {0}")]
    Tensor(String),
}

type Result<T> = std::result::Result<T, TorchError>;

fn format_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(TorchError::Format(msg.into()))
}

/// An opened checkpoint: the unpickled root object and the storages its tensors point into.
pub struct TorchFile {
    pub format: TorchFormat,
    pub root: Value,
    /// Storage key → its bytes (a range of `map`, or an owned copy of a deflated entry).
    storages: HashMap<String, Bytes>,
    /// Storages physically present (legacy views are extra keys into their root).
    physical: usize,
}

impl std::fmt::Debug for TorchFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TorchFile({:?}, {} storages)",
            self.format, self.physical
        )
    }
}

/// `0x1950a86a20f9469cfc6c` as minimal little-endian two's complement.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;

impl TorchFile {
    pub fn open(path: &Path) -> Result<TorchFile> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Err(TorchError::Empty);
        }
        // SAFETY: the map is read-only; like every reader of memory-mapped files we rely on
        // the file not being truncated while it is open.
        let map = unsafe { Mmap::map(&file)? };
        Self::from_map(Arc::new(map))
    }

    /// Read from memory (written to an unlinked temporary file and mapped, so storages can
    /// be ranges of a file map like those of [`TorchFile::open`]: see [`Bytes::Mapped`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<TorchFile> {
        if bytes.is_empty() {
            return Err(TorchError::Empty);
        }
        let mut file = tempfile::tempfile()?;
        file.write_all(&bytes)?;
        // SAFETY: as in `open`; nobody else knows the unlinked file.
        let map = unsafe { Mmap::map(&file)? };
        Self::from_map(Arc::new(map))
    }

    fn from_map(map: Arc<Mmap>) -> Result<TorchFile> {
        let data: &[u8] = &map;
        if data.starts_with(b"PK\x03\x04") {
            read_zip(map)
        } else if data.first() == Some(&0x80) || data.first() == Some(&b'L') {
            read_legacy(map)
        } else if data.get(257..262) == Some(b"ustar") {
            Err(TorchError::NotTorch(
                "a tar archive (torch < 0.4 format, not supported)".into(),
            ))
        } else {
            Err(TorchError::NotTorch(
                "neither a zip archive nor a legacy pickle stream".into(),
            ))
        }
    }

    /// Number of storages in the file.
    pub fn storage_count(&self) -> usize {
        self.physical
    }

    /// Check a tensor's view against its storage without reading it: ranks agree, the
    /// element count does not overflow, every element lies inside the storage, and a view
    /// that repeats its storage (a stride-0 `expand`, overlapping strides) stays small when
    /// materialised. Returns the element count.
    pub fn check(&self, t: &TensorRef) -> Result<usize> {
        let storage = self
            .storages
            .get(&t.storage)
            .ok_or_else(|| TorchError::MissingStorage(t.storage.clone()))?;
        check_view(t, storage.as_slice().len())
    }

    /// Contiguous copy of a tensor (honours storage offset and strides: views and transposes),
    /// checking every range against the storage. Contiguous tensors of mapped storages are
    /// returned as a range of the map without copying.
    pub fn tensor(&self, t: &TensorRef) -> Result<RawTensor> {
        let n = self.check(t)?;
        let storage = &self.storages[&t.storage];
        let elem = t.dtype.size();
        let raw = storage.as_slice();
        let new = |bytes: Bytes| {
            RawTensor::new(t.dtype, t.shape.clone(), bytes).map_err(TorchError::Tensor)
        };
        if n == 0 {
            return new(Vec::new().into());
        }
        if is_contiguous(&t.shape, &t.stride) {
            return new(sub_bytes(storage, t.offset * elem, n * elem));
        }
        // Gather: walk the index space in C order, copying runs along the last dimension.
        let rank = t.shape.len();
        let (inner, inner_stride) = (t.shape[rank - 1], t.stride[rank - 1]);
        let mut out = Vec::with_capacity(n * elem);
        let mut index = vec![0usize; rank - 1];
        loop {
            let base = t.offset
                + index
                    .iter()
                    .zip(&t.stride)
                    .map(|(i, s)| i * s)
                    .sum::<usize>();
            if inner_stride == 1 {
                out.extend_from_slice(&raw[base * elem..(base + inner) * elem]);
            } else {
                for j in 0..inner {
                    let at = (base + j * inner_stride) * elem;
                    out.extend_from_slice(&raw[at..at + elem]);
                }
            }
            // Odometer over the outer dimensions.
            let mut d = rank - 1;
            loop {
                if d == 0 {
                    storage.release(); // the gather touched it: keep only the copy
                    return new(out.into());
                }
                d -= 1;
                index[d] += 1;
                if index[d] < t.shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
    }
}

/// Largest materialised size of a view that repeats its storage (more elements than the
/// storage range it spans): such a view is read as the copy it stands for up to this size,
/// refused beyond, so a stride-0 `expand` of one element to 1e9 never takes gigabytes.
pub const MAX_REPEATED_VIEW_BYTES: usize = 64 << 20;

/// See [`TorchFile::check`]; `storage_bytes` is the storage's length in bytes.
fn check_view(t: &TensorRef, storage_bytes: usize) -> Result<usize> {
    let bad = |msg: String| Err(TorchError::Tensor(msg));
    if t.shape.len() != t.stride.len() {
        return bad(format!(
            "shape {:?} and stride {:?} differ in rank",
            t.shape, t.stride
        ));
    }
    let elem = t.dtype.size();
    let Some(n) = numel(&t.shape).filter(|n| n.checked_mul(elem).is_some()) else {
        return bad(format!("shape {:?} overflows", t.shape));
    };
    if n == 0 {
        return Ok(0);
    }
    let available = storage_bytes / elem;
    // Highest element touched, checked against the storage.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
        });
    let Some(last) = last.filter(|&l| l < available) else {
        return bad(format!(
            "view (offset {}, shape {:?}, stride {:?}) exceeds storage {} of {} elements",
            t.offset, t.shape, t.stride, t.storage, available
        ));
    };
    let span = last - t.offset + 1;
    if n > span && n * elem > MAX_REPEATED_VIEW_BYTES {
        return bad(format!(
            "view (shape {:?}, stride {:?}) repeats {span} stored elements as {n}: \
             refusing to materialise {} bytes",
            t.shape,
            t.stride,
            n * elem
        ));
    }
    Ok(n)
}

/// C-contiguous, ignoring the stride of size-1 dimensions.
fn is_contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

fn sub_bytes(b: &Bytes, start: usize, len: usize) -> Bytes {
    match b {
        Bytes::Mapped { map, start: s, .. } => Bytes::Mapped {
            map: map.clone(),
            start: s + start,
            len,
        },
        Bytes::Owned(v) if start == 0 && len == v.len() => b.clone(),
        Bytes::Owned(v) => v[start..start + len].to_vec().into(),
    }
}

/// The element type of a storage class (`torch.FloatStorage`, ...) or dtype (`torch.float32`).
fn storage_dtype(class: &Value) -> std::result::Result<DType, PickleError> {
    let name = match class {
        Value::Global { module, name } if module == "torch" || module.starts_with("torch.") => {
            name.as_str()
        }
        other => {
            return Err(PickleError::Custom(format!(
                "storage type is not a torch class: {other:?}"
            )))
        }
    };
    Ok(match name {
        "FloatStorage" | "float32" | "float" => DType::F32,
        "HalfStorage" | "float16" | "half" => DType::F16,
        "BFloat16Storage" | "bfloat16" => DType::BF16,
        "DoubleStorage" | "float64" | "double" => DType::F64,
        "LongStorage" | "int64" | "long" => DType::I64,
        "IntStorage" | "int32" | "int" => DType::I32,
        "ShortStorage" | "int16" | "short" => DType::I16,
        "CharStorage" | "int8" => DType::I8,
        "ByteStorage" | "uint8" | "UntypedStorage" => DType::U8,
        "BoolStorage" | "bool" => DType::Bool,
        other => {
            return Err(PickleError::Custom(format!(
                "unsupported storage type torch.{other}"
            )))
        }
    })
}

fn storage_key(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn non_negative(v: &Value) -> Option<usize> {
    v.as_i64().and_then(|i| usize::try_from(i).ok())
}

fn bad_pid<T>(pid: &[Value]) -> std::result::Result<T, PickleError> {
    let mut text = format!("{pid:?}");
    if text.len() > 120 {
        let cut = (0..=120)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push_str("...");
    }
    Err(PickleError::Custom(format!(
        "unexpected persistent id {text}"
    )))
}

// ---------------------------------------------------------------------------------------------
// Zip format

fn zip_err(e: zip::result::ZipError) -> TorchError {
    use zip::result::ZipError;
    TorchError::Zip(match e {
        // The zip crate's Display of an i/o error is just "i/o error".
        ZipError::Io(io) => format!("archive cut short or unreadable ({io})"),
        other => other.to_string(),
    })
}

/// Bytes that compressed zip entries may inflate to, in all: 256 MiB plus four times the
/// archive's size. torch writes its entries stored (uncompressed, read in place from the
/// map); a re-compressed checkpoint of float weights deflates by far less than 4:1, while
/// a hostile entry can claim (and deflate to) a thousand times its size.
fn inflate_budget(archive_len: usize) -> u64 {
    (256u64 << 20).saturating_add((archive_len as u64).saturating_mul(4))
}

/// An entry's bytes: a range of the map when stored, a copy when compressed (inflated up to
/// its declared size, which must fit in what is left of `budget`).
fn zip_entry(
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    map: &Arc<Mmap>,
    name: &str,
    budget: &mut u64,
) -> Result<Option<Bytes>> {
    let Some(index) = zip.index_for_name(name) else {
        return Ok(None);
    };
    let mut file = zip.by_index(index).map_err(zip_err)?;
    if file.compression() == zip::CompressionMethod::Stored {
        let (start, len) = (file.data_start(), file.size());
        if file.compressed_size() != len
            || start
                .checked_add(len)
                .is_none_or(|end| end > map.len() as u64)
        {
            return Err(TorchError::Zip(format!(
                "entry {name} lies outside the archive"
            )));
        }
        return Ok(Some(Bytes::Mapped {
            map: map.clone(),
            start: start as usize,
            len: len as usize,
        }));
    }
    let expected = file.size();
    if expected > *budget {
        return Err(TorchError::Zip(format!(
            "entry {name} declares {expected} bytes once inflated ({} compressed), more than \
             the {} bytes allowed for compressed entries of this archive",
            file.compressed_size(),
            inflate_budget(map.len())
        )));
    }
    *budget -= expected;
    let mut out = Vec::with_capacity(expected as usize);
    (&mut file)
        .take(expected)
        .read_to_end(&mut out)
        .map_err(|e| TorchError::Zip(format!("entry {name}: {e}")))?;
    if out.len() as u64 != expected {
        return Err(TorchError::Zip(format!(
            "entry {name}: {} bytes instead of {expected}",
            out.len()
        )));
    }
    Ok(Some(out.into()))
}

fn read_zip(map: Arc<Mmap>) -> Result<TorchFile> {
    let data: &[u8] = &map;
    let mut zip = zip::ZipArchive::new(Cursor::new(data)).map_err(zip_err)?;
    let mut budget = inflate_budget(data.len());
    let pkl_name = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| n.len())
        .map(str::to_owned)
        .ok_or_else(|| TorchError::Format("zip archive has no data.pkl".into()))?;
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];

    if let Some(order) = zip_entry(&mut zip, &map, &format!("{prefix}byteorder"), &mut budget)? {
        let order = String::from_utf8_lossy(order.as_slice()).trim().to_owned();
        if order != "little" {
            return format_err(format!(
                "byteorder {order:?} is not supported (only little-endian)"
            ));
        }
    }

    let pkl = zip_entry(&mut zip, &map, &pkl_name, &mut budget)?.expect("listed entry");
    // Key → bytes needed, for every storage the pickle references.
    let mut wanted: HashMap<String, usize> = HashMap::new();
    let root = pickle::parse(pkl.as_slice(), &mut |pid| {
        let Value::Tuple(t) = pid else {
            return bad_pid(std::slice::from_ref(&pid));
        };
        let (5, Some("storage")) = (t.len(), t[0].as_str()) else {
            return bad_pid(&t);
        };
        let dtype = storage_dtype(&t[1])?;
        let (Some(key), Some(numel)) = (storage_key(&t[2]), non_negative(&t[4])) else {
            return bad_pid(&t);
        };
        let need = numel.checked_mul(dtype.size()).ok_or_else(|| {
            PickleError::Custom(format!("storage {key} of {numel} elements overflows"))
        })?;
        let entry = wanted.entry(key.clone()).or_default();
        *entry = (*entry).max(need);
        Ok(Value::Storage(StorageRef {
            key,
            dtype,
            numel,
            location: t[3].as_str().unwrap_or_default().to_owned(),
        }))
    })?;

    let mut storages = HashMap::new();
    for (key, need) in wanted {
        let bytes = zip_entry(&mut zip, &map, &format!("{prefix}data/{key}"), &mut budget)?
            .ok_or_else(|| TorchError::MissingStorage(key.clone()))?;
        let have = bytes.as_slice().len();
        if have < need {
            return format_err(format!(
                "storage {key} holds {have} bytes, the pickle needs {need}"
            ));
        }
        storages.insert(key, bytes);
    }
    // The pickle and the entries' local headers were read: none of it stays resident.
    release_range(&map, 0, map.len());
    Ok(TorchFile {
        format: TorchFormat::Zip,
        root,
        physical: storages.len(),
        storages,
    })
}

// ---------------------------------------------------------------------------------------------
// Legacy format

type PersistentLoad<'a> = dyn FnMut(Value) -> std::result::Result<Value, PickleError> + 'a;

/// The next pickle of a legacy stream, advancing `pos` past it.
fn next_pickle(data: &[u8], pos: &mut usize, pl: &mut PersistentLoad) -> Result<Value> {
    let (v, n) = pickle::parse_prefix(&data[*pos..], pl)?;
    *pos += n;
    Ok(v)
}

fn no_persistent_ids(_: Value) -> std::result::Result<Value, PickleError> {
    Err(PickleError::Custom(
        "unexpected persistent id in a legacy header".into(),
    ))
}

/// A storage referenced by the legacy pickle.
struct LegacyRoot {
    dtype: DType,
    numel: usize,
}

/// A view into a root storage: (root key, offset, size), in elements.
struct LegacyView {
    root: String,
    offset: usize,
    numel: usize,
}

fn read_legacy(map: Arc<Mmap>) -> Result<TorchFile> {
    let data: &[u8] = &map;
    let mut pos = 0;

    let magic = next_pickle(data, &mut pos, &mut no_persistent_ids)?;
    if magic != Value::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err(TorchError::NotTorch(
            "a pickle stream without the torch magic number".into(),
        ));
    }
    let protocol = next_pickle(data, &mut pos, &mut no_persistent_ids)?;
    if protocol.as_i64() != Some(LEGACY_PROTOCOL) {
        return format_err(format!("unsupported legacy protocol version {protocol:?}"));
    }
    let sys_info = next_pickle(data, &mut pos, &mut no_persistent_ids)?;
    if sys_info.get("little_endian").and_then(Value::as_bool) == Some(false) {
        return format_err("big-endian legacy checkpoints are not supported");
    }

    let mut roots: HashMap<String, LegacyRoot> = HashMap::new();
    let mut views: HashMap<String, LegacyView> = HashMap::new();
    let root = next_pickle(data, &mut pos, &mut |pid| {
        let Value::Tuple(t) = pid else {
            return bad_pid(std::slice::from_ref(&pid));
        };
        let (6, Some("storage")) = (t.len(), t[0].as_str()) else {
            return bad_pid(&t);
        };
        let dtype = storage_dtype(&t[1])?;
        let (Some(root_key), Some(numel)) = (storage_key(&t[2]), non_negative(&t[4])) else {
            return bad_pid(&t);
        };
        let location = t[3].as_str().unwrap_or_default().to_owned();
        let entry = roots
            .entry(root_key.clone())
            .or_insert(LegacyRoot { dtype, numel: 0 });
        entry.numel = entry.numel.max(numel);
        let (key, numel) = match &t[5] {
            Value::None => (root_key, numel),
            Value::Tuple(v) if v.len() == 3 => {
                let (Some(view_key), Some(offset), Some(size)) =
                    (storage_key(&v[0]), non_negative(&v[1]), non_negative(&v[2]))
                else {
                    return bad_pid(&t);
                };
                views.insert(
                    view_key.clone(),
                    LegacyView {
                        root: root_key,
                        offset,
                        numel: size,
                    },
                );
                (view_key, size)
            }
            _ => return bad_pid(&t),
        };
        Ok(Value::Storage(StorageRef {
            key,
            dtype,
            numel,
            location,
        }))
    })?;

    let keys = next_pickle(data, &mut pos, &mut no_persistent_ids)?;
    let Value::List(keys) = keys else {
        return format_err("legacy storage key list is not a list");
    };
    let mut storages = HashMap::new();
    for (index, key) in keys.iter().enumerate() {
        let Some(key) = storage_key(key) else {
            return format_err(format!("legacy storage key {index} is not a string"));
        };
        let Some(info) = roots.get(&key) else {
            return format_err(format!(
                "legacy storage {key} is not referenced by the pickle (unknown element size)"
            ));
        };
        let left = data.len() - pos;
        if left < 8 {
            return Err(TorchError::TruncatedLegacy {
                index,
                need: 8,
                left,
            });
        }
        let count = u64::from_le_bytes(data[pos..pos + 8].try_into().expect("8 bytes"));
        pos += 8;
        let left = left - 8;
        let need = count.saturating_mul(info.dtype.size() as u64);
        if need > left as u64 {
            return Err(TorchError::TruncatedLegacy { index, need, left });
        }
        if count < info.numel as u64 {
            return format_err(format!(
                "legacy storage {key} holds {count} elements, the pickle needs {}",
                info.numel
            ));
        }
        let need = need as usize;
        storages.insert(
            key,
            Bytes::Mapped {
                map: map.clone(),
                start: pos,
                len: need,
            },
        );
        pos += need;
    }
    let physical = storages.len();
    if let Some(missing) = roots.keys().find(|k| !storages.contains_key(*k)) {
        return Err(TorchError::MissingStorage(missing.clone()));
    }
    for (view_key, view) in views {
        let root = &storages[&view.root];
        let elem = roots[&view.root].dtype.size();
        let fits = view
            .offset
            .checked_add(view.numel)
            .and_then(|end| end.checked_mul(elem))
            .is_some_and(|end| end <= root.as_slice().len());
        if !fits {
            return format_err(format!(
                "legacy view {view_key} exceeds storage {}",
                view.root
            ));
        }
        let bytes = sub_bytes(root, view.offset * elem, view.numel * elem);
        storages.insert(view_key, bytes);
    }
    // The pickles and the storages' length prefixes were read: none of it stays resident.
    release_range(&map, 0, map.len());
    Ok(TorchFile {
        format: TorchFormat::Legacy,
        root,
        storages,
        physical,
    })
}
