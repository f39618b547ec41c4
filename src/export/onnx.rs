//! ONNX protobuf writing: tensors, attributes, value infos, the model
//! envelope and (for models over the 2 GB protobuf limit) external data.
//!
//! Uses the generated types of `tract_onnx::pb`; encoding is
//! `prost::Message::encode_to_vec`.

use anyhow::{bail, Context, Result};
use half::f16;
use prost::Message;
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

/// Protobuf refuses messages of 2 GiB and more; stay well below it.
pub const INLINE_LIMIT: usize = 1 << 30;
/// Initializers at least this large go to the side file when external
/// data is used.
const EXTERNAL_MIN_BYTES: usize = 1024;
const EXTERNAL_ALIGN: u64 = 4096;

/// Writes `model` to `path` atomically (a temporary file in the same
/// directory, then a rename). When its initializers exceed
/// [`INLINE_LIMIT`] (or `force_external`), large initializers are moved to
/// `<file name>.data` beside it as ONNX external data. Returns the paths
/// written.
pub fn write_model(
    model: &pb::ModelProto,
    path: &Path,
    force_external: bool,
) -> Result<Vec<PathBuf>> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{} has no usable file name", path.display()))?
        .to_string();
    let external = force_external || initializer_bytes(model) >= INLINE_LIMIT;
    let mut written = vec![];
    let bytes = if external {
        let data_name = format!("{file_name}.data");
        let data_path = dir.join(&data_name);
        let mut model = model.clone();
        let mut data_tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let mut offset: u64 = 0;
        {
            let mut w = std::io::BufWriter::new(data_tmp.as_file_mut());
            let graph = model.graph.as_mut().context("model has no graph")?;
            for t in graph.initializer.iter_mut() {
                if t.raw_data.len() < EXTERNAL_MIN_BYTES {
                    continue;
                }
                let pad = (EXTERNAL_ALIGN - offset % EXTERNAL_ALIGN) % EXTERNAL_ALIGN;
                w.write_all(&vec![0u8; pad as usize])?;
                offset += pad;
                let raw = std::mem::take(&mut t.raw_data);
                w.write_all(&raw)?;
                t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
                t.external_data = vec![
                    entry("location", &data_name),
                    entry("offset", &offset.to_string()),
                    entry("length", &raw.len().to_string()),
                ];
                offset += raw.len() as u64;
            }
            w.flush()?;
        }
        let bytes = model.encode_to_vec();
        if bytes.len() >= INLINE_LIMIT {
            bail!(
                "{}: graph structure alone is {} bytes, over the protobuf limit",
                path.display(),
                bytes.len()
            );
        }
        data_tmp.as_file().sync_all()?;
        data_tmp
            .persist(&data_path)
            .with_context(|| format!("writing {}", data_path.display()))?;
        written.push(data_path);
        bytes
    } else {
        model.encode_to_vec()
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(&bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path.to_path_buf());
    // Temporary files are rw------- : give outputs the usual 0666 under the umask.
    #[cfg(unix)]
    for p in &written {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(crate::write::file_mode());
        fs::set_permissions(p, mode).with_context(|| format!("{}: chmod", p.display()))?;
    }
    // An external data file left over from an earlier, larger export would
    // be misleading: remove it when this model is inline.
    if !external {
        let stale = dir.join(format!("{file_name}.data"));
        if stale.exists() {
            fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    Ok(written)
}

fn entry(k: &str, v: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: k.into(),
        value: v.into(),
    }
}
