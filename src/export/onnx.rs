//! ONNX protobuf writing: tensors, attributes, value infos, the model
//! envelope, and the weights: inline ([`WeightStore::Inline`], graphs kept
//! in memory) or in one external-data file that several graphs share
//! ([`DataFile`], exported directories).
//!
//! Uses the generated types of `tract_onnx::pb`; encoding is
//! `prost::Message::encode_to_vec`.

use anyhow::{bail, Context, Result};
use half::f16;
use prost::Message;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tract_onnx::pb;

/// Opset of the default domain used by every graph (LayerNormalization
/// needs 17).
pub const OPSET: i64 = 17;
/// IR version matching opset 17.
pub const IR_VERSION: i64 = 8;

/// Element types that appear in the exported graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    F16,
    I64,
    I32,
    Bool,
}

impl Elem {
    pub fn onnx(self) -> i32 {
        use pb::tensor_proto::DataType;
        (match self {
            Elem::F32 => DataType::Float,
            Elem::F16 => DataType::Float16,
            Elem::I64 => DataType::Int64,
            Elem::I32 => DataType::Int32,
            Elem::Bool => DataType::Bool,
        }) as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            Elem::F32 => "float32",
            Elem::F16 => "float16",
            Elem::I64 => "int64",
            Elem::I32 => "int32",
            Elem::Bool => "bool",
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A named symbolic dimension (`batch`, `src_len`, ...).
    Sym(&'static str),
    /// Unnamed: computed by the graph (e.g. `past_len + 1`).
    Any,
}

/// A tensor initializer stored as little-endian `raw_data`.
pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32], elem: Elem) -> TensorProto {
    let raw: Vec<u8> = match elem {
        Elem::F32 if cfg!(target_endian = "little") => bytemuck::cast_slice(data).to_vec(),
        Elem::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Elem::F16 => {
            let h: Vec<f16> = data.iter().map(|v| f16::from_f32(*v)).collect();
            if cfg!(target_endian = "little") {
                bytemuck::cast_slice(&h).to_vec()
            } else {
                h.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
        }
        _ => unreachable!("tensor_f32 is only called with a float element type"),
    };
    raw_tensor(name, dims, elem, raw)
}

pub fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    raw_tensor(
        name,
        dims,
        Elem::I64,
        data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

pub fn tensor_i32(name: &str, dims: &[usize], data: &[i32]) -> TensorProto {
    raw_tensor(
        name,
        dims,
        Elem::I32,
        data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

pub type TensorProto = pb::TensorProto;

fn raw_tensor(name: &str, dims: &[usize], elem: Elem, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: elem.onnx(),
        raw_data: raw,
        ..Default::default()
    }
}

pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f: v,
        ..Default::default()
    }
}

pub fn attr_tensor(name: &str, t: TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Tensor as i32,
        t: Some(t),
        ..Default::default()
    }
}

pub fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: match d {
                Dim::Fixed(n) => Some(Value::DimValue(*n as i64)),
                Dim::Sym(s) => Some(Value::DimParam(s.to_string())),
                Dim::Any => None,
            },
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem.onnx(),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// Wraps a graph into a model with the default-domain opset and metadata.
pub fn model(graph: pb::GraphProto, doc: &str, metadata: &[(String, String)]) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "admin-convert".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: doc.into(),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Sum of the inline initializer bytes of a model.
pub fn initializer_bytes(m: &pb::ModelProto) -> usize {
    m.graph
        .as_ref()
        .map(|g| g.initializer.iter().map(|t| t.raw_data.len()).sum())
        .unwrap_or(0)
}

/// Protobuf refuses messages of 2 GiB and more: a graph structure (its
/// weights live in the data file) must stay below it.
pub const PROTO_LIMIT: usize = 1 << 30;

/// Writes `model` (its weights already external, see [`DataFile`]) to
/// `path` atomically: a temporary file in the same directory, then a
/// rename. Returns the path written.
pub fn write_model(model: &pb::ModelProto, path: &Path) -> Result<PathBuf> {
    let bytes = model.encode_to_vec();
    if bytes.len() >= PROTO_LIMIT {
        bail!(
            "{}: the graph is {} bytes, over the protobuf limit",
            path.display(),
            bytes.len()
        );
    }
    let mut tmp = tempfile::NamedTempFile::new_in(parent_dir(path))
        .with_context(|| format!("creating a temporary file beside {}", path.display()))?;
    tmp.write_all(&bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    persist(tmp, path)?;
    Ok(path.to_path_buf())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Syncs `tmp`, renames it to `path` and gives it the usual 0666 under the
/// umask (temporary files are rw-------).
fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::Permissions::from_mode(crate::write::file_mode());
        fs::set_permissions(path, mode).with_context(|| format!("{}: chmod", path.display()))?;
    }
    Ok(())
}

/// Where the float weights of graphs being built go.
pub enum WeightStore {
    /// Into each graph's proto (`raw_data`): graphs kept in memory.
    Inline,
    /// Into one shared external-data file, each name once.
    File(DataFile),
}

impl WeightStore {
    /// The initializer `name` of type `elem`. `data` (row-major f32) is
    /// asked for only when the tensor is not stored yet: a name that a
    /// [`DataFile`] already holds is referenced again, not rewritten.
    pub fn tensor<'d>(
        &mut self,
        name: &str,
        dims: &[usize],
        elem: Elem,
        data: impl FnOnce() -> Cow<'d, [f32]>,
    ) -> TensorProto {
        match self {
            WeightStore::Inline => tensor_f32(name, dims, &data(), elem),
            WeightStore::File(f) => f.tensor(name, dims, elem, data),
        }
    }
}

/// Alignment of tensors in a data file: a page for large tensors (so a
/// runtime may map them), a cache line for the rest.
const PAGE: u64 = 4096;
const LINE: u64 = 64;
/// Values converted and written per chunk (fp16 conversion buffer).
const CHUNK: usize = 1 << 16;

/// One ONNX external-data file shared by several graphs: every tensor is
/// written once, streamed from the caller's f32 slice (fp16 converted a
/// chunk at a time), and each graph's initializer refers to it by
/// `location`, `offset` and `length`. Written to a temporary file beside
/// its final path and renamed by [`DataFile::finish`].
pub struct DataFile {
    path: PathBuf,
    location: String,
    out: std::io::BufWriter<tempfile::NamedTempFile>,
    offset: u64,
    stored: HashMap<String, TensorProto>,
    /// The first failure; reported by [`DataFile::finish`].
    error: Option<anyhow::Error>,
}

impl DataFile {
    /// Starts `path`; graphs written into the same directory refer to it
    /// by its file name.
    pub fn create(path: &Path) -> Result<DataFile> {
        let location = path
            .file_name()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{} has no usable file name", path.display()))?
            .to_string();
        let tmp = tempfile::NamedTempFile::new_in(parent_dir(path))
            .with_context(|| format!("creating a temporary file beside {}", path.display()))?;
        Ok(DataFile {
            path: path.to_path_buf(),
            location,
            out: std::io::BufWriter::with_capacity(1 << 20, tmp),
            offset: 0,
            stored: HashMap::new(),
            error: None,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    fn tensor<'d>(
        &mut self,
        name: &str,
        dims: &[usize],
        elem: Elem,
        data: impl FnOnce() -> Cow<'d, [f32]>,
    ) -> TensorProto {
        if let Some(t) = self.stored.get(name) {
            let same = t.data_type == elem.onnx()
                && t.dims.iter().map(|&d| d as usize).eq(dims.iter().copied());
            if !same && self.error.is_none() {
                self.error = Some(anyhow::anyhow!(
                    "initializer {name} stored twice with different shapes or types"
                ));
            }
            return t.clone();
        }
        let data = data();
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let mut t = TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: elem.onnx(),
            ..Default::default()
        };
        let offset = self.align((data.len() * elem_bytes(elem)) as u64);
        match self.append(&data, elem) {
            Ok(length) => self.refer(&mut t, offset, length),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self.stored.insert(name.to_string(), t.clone());
        t
    }

    /// Moves the inline weight `t` into the file (a name already stored is
    /// referenced again); the graph's own constants
    /// ([`CONST_PREFIX`](super::graph::CONST_PREFIX)) stay inline.
    pub fn externalize(&mut self, t: &mut TensorProto) {
        if t.name.starts_with(super::graph::CONST_PREFIX) || t.raw_data.is_empty() {
            return;
        }
        if let Some(stored) = self.stored.get(&t.name) {
            *t = stored.clone();
            return;
        }
        let raw = std::mem::take(&mut t.raw_data);
        let offset = self.align(raw.len() as u64);
        match self.out.write_all(&raw) {
            Ok(()) => {
                self.offset += raw.len() as u64;
                self.refer(t, offset, raw.len() as u64);
            }
            Err(e) => {
                self.error.get_or_insert(e.into());
            }
        }
        self.stored.insert(t.name.clone(), t.clone());
    }

    /// Makes `t` refer to `length` bytes at `offset` of this file.
    fn refer(&self, t: &mut TensorProto, offset: u64, length: u64) {
        t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
        t.external_data = vec![
            entry("location", &self.location),
            entry("offset", &offset.to_string()),
            entry("length", &length.to_string()),
        ];
    }

    /// Pads the file for a tensor of `length` bytes; returns its offset.
    /// A failed write is recorded.
    fn align(&mut self, length: u64) -> u64 {
        let align = if length >= PAGE { PAGE } else { LINE };
        let pad = (align - self.offset % align) % align;
        match self.out.write_all(&[0u8; PAGE as usize][..pad as usize]) {
            Ok(()) => self.offset += pad,
            Err(e) => {
                self.error.get_or_insert(e.into());
            }
        }
        self.offset
    }

    /// Appends `data` as `elem`; returns the bytes written.
    fn append(&mut self, data: &[f32], elem: Elem) -> Result<u64> {
        let length = (data.len() * elem_bytes(elem)) as u64;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 4);
        for chunk in data.chunks(CHUNK) {
            buf.clear();
            match elem {
                Elem::F32 if cfg!(target_endian = "little") => {
                    buf.extend_from_slice(bytemuck::cast_slice(chunk))
                }
                Elem::F32 => buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes())),
                Elem::F16 => buf.extend(chunk.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes())),
                _ => unreachable!("only float weights are stored in a data file"),
            }
            self.out.write_all(&buf)?;
        }
        self.offset += length;
        Ok(length)
    }

    /// Flushes, syncs and renames the file into place; reports the first
    /// error met while graphs were built.
    pub fn finish(self) -> Result<PathBuf> {
        let path = self.path;
        if let Some(e) = self.error {
            return Err(e.context(format!("writing {}", path.display())));
        }
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", path.display()))?;
        persist(tmp, &path)?;
        Ok(path)
    }
}

fn elem_bytes(elem: Elem) -> usize {
    match elem {
        Elem::F32 | Elem::I32 => 4,
        Elem::F16 => 2,
        Elem::I64 => 8,
        Elem::Bool => 1,
    }
}

fn entry(k: &str, v: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: k.into(),
        value: v.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(t: &TensorProto) -> (String, String) {
        let get = |k: &str| {
            let e = t.external_data.iter().find(|e| e.key == k).unwrap();
            e.value.clone()
        };
        (get("offset"), get("length"))
    }

    #[test]
    fn data_file_stores_each_name_once_aligned_and_converted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.onnx.data");
        let mut f = DataFile::create(&path).unwrap();
        let small = [1.0f32, -2.0, 0.5];
        let big = vec![0.25f32; 2048];
        let a = f.tensor("a", &[3], Elem::F32, || Cow::Borrowed(&small[..]));
        let b = f.tensor("b", &[2048], Elem::F16, || Cow::Borrowed(&big[..]));
        let again = f.tensor("a", &[3], Elem::F32, || panic!("stored already"));
        assert_eq!(place(&a), ("0".into(), "12".into()));
        assert_eq!(place(&b), ("4096".into(), "4096".into()));
        assert_eq!(again, a);
        assert_eq!(f.finish().unwrap(), path);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert_eq!(&bytes[..4], &1.0f32.to_le_bytes());
        assert_eq!(&bytes[4096..4098], &f16::from_f32(0.25).to_le_bytes());
    }

    #[test]
    fn a_name_reused_with_another_shape_fails_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.onnx.data");
        let mut f = DataFile::create(&path).unwrap();
        f.tensor("a", &[2], Elem::F32, || Cow::Owned(vec![1.0, 2.0]));
        f.tensor("a", &[1, 2], Elem::F32, || Cow::Owned(vec![1.0, 2.0]));
        let e = f.finish().unwrap_err();
        assert!(
            format!("{e:#}").contains("initializer a stored twice"),
            "{e:#}"
        );
        assert!(!path.exists());
    }
}
