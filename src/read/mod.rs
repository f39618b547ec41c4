//! Reading checkpoint files without executing any code.
//!
//! [`Checkpoint::open`] sniffs the format (torch zip, torch legacy pickle,
//! safetensors), lists the state dict's tensors (lazily: bytes are read or
//! mapped only when asked for) and collects the fairseq hyper-parameters it
//! finds (`args`, `cfg['model']`, or safetensors `__metadata__`) into a flat
//! [`Hparams`] map. Every error is one line naming the file.

pub mod pickle;
pub mod safetensors;
pub mod torch;

use crate::tensor::{DType, RawTensor};
use memmap2::Mmap;
use pickle::Value;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use torch::{TensorRef, TorchFile, TorchFormat};

/// Metadata key holding the fairseq model arguments as a JSON object.
pub const META_ARGS: &str = "fairseq.args";
/// Metadata keys holding the source / target `dict.txt` contents.
pub const META_DICT_SRC: &str = "fairseq.dict.src";
pub const META_DICT_TGT: &str = "fairseq.dict.tgt";
/// Metadata key naming the producer (`admin-convert <version>`).
pub const META_PRODUCER: &str = "producer";

/// A problem with an input file: one line, naming the file.
#[derive(Debug)]
pub struct ReadError {
    pub path: PathBuf,
    pub msg: String,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.msg)
    }
}

impl std::error::Error for ReadError {}

impl ReadError {
    pub fn new(path: &Path, msg: impl Into<String>) -> Self {
        ReadError {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// The container format of a checkpoint file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// torch ≥ 1.6 `torch.save` (a zip archive holding `data.pkl`).
    TorchZip,
    /// torch < 1.6 `torch.save` (concatenated pickles and raw storages).
    TorchLegacy,
    Safetensors,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::TorchZip => "torch-zip",
            Format::TorchLegacy => "torch-legacy",
            Format::Safetensors => "safetensors",
        }
    }
}

/// A scalar hyper-parameter value as found in a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl HValue {
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            HValue::Bool(b) => Some(*b),
            HValue::Int(i) => Some(*i != 0),
            HValue::Str(s) => match s.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }
    pub fn as_usize(&self) -> Option<usize> {
        match self {
            HValue::Int(i) if *i >= 0 => Some(*i as usize),
            HValue::Float(f) if *f >= 0.0 && f.fract() == 0.0 => Some(*f as usize),
            HValue::Str(s) => s.parse().ok(),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HValue::Str(s) => Some(s),
            _ => None,
        }
    }
    fn from_json(v: &serde_json::Value) -> Option<HValue> {
        Some(match v {
            serde_json::Value::Null => HValue::None,
            serde_json::Value::Bool(b) => HValue::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => HValue::Int(i),
                None => HValue::Float(n.as_f64()?),
            },
            serde_json::Value::String(s) => HValue::Str(s.clone()),
            _ => return None,
        })
    }
    fn from_pickle(v: &Value) -> Option<HValue> {
        Some(match v {
            Value::None => HValue::None,
            Value::Bool(b) => HValue::Bool(*b),
            Value::Int(i) => HValue::Int(*i),
            Value::Float(f) => HValue::Float(*f),
            Value::Str(s) => HValue::Str(s.clone()),
            _ => return None,
        })
    }
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// fairseq model arguments by their fairseq names (`encoder_layers`, ...).
pub type Hparams = BTreeMap<String, HValue>;

/// Where the hyper-parameters of a checkpoint came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigOrigin {
    /// `args` (an `argparse.Namespace`, fairseq ≤ 0.9 and some 0.10+).
    Args,
    /// `cfg['model']` (Namespace, dict or omegaconf; fairseq ≥ 0.10).
    Cfg,
    /// safetensors `__metadata__["fairseq.args"]`.
    Metadata,
    /// Nothing recorded (a bare state dict).
    None,
}

/// One named tensor of the state dict.
#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// The earlier entry this one shares its storage with (tied weights).
    pub tied_to: Option<String>,
}

enum Source {
    Torch {
        file: TorchFile,
        refs: HashMap<String, TensorRef>,
    },
    Safetensors {
        file: safetensors::SafetensorsFile,
        slots: HashMap<String, safetensors::Slot>,
    },
}

/// An opened checkpoint: its state dict (lazily) and its configuration.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: Format,
    pub file_size: u64,
    /// State dict entries in file order.
    pub entries: Vec<Entry>,
    pub hparams: Hparams,
    pub config_origin: ConfigOrigin,
    /// safetensors `__metadata__` (empty for torch files).
    pub metadata: BTreeMap<String, String>,
    /// Top-level keys of a torch checkpoint besides the state dict
    /// (`args`, `cfg`, `optimizer_history`, `extra_state`, ...).
    pub other_keys: Vec<String>,
    source: Source,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Checkpoint({}, {}, {} tensors)",
            self.path.display(),
            self.format.name(),
            self.entries.len()
        )
    }
}

impl Checkpoint {
    /// Open and index a checkpoint. Reads headers and pickles; tensor bytes
    /// stay on disk (memory-mapped) until [`Checkpoint::tensor`] asks.
    pub fn open(path: &Path) -> Result<Checkpoint, ReadError> {
        let err = |m: String| ReadError::new(path, m);
        let meta = std::fs::metadata(path).map_err(|e| err(io_message(&e)))?;
        if meta.is_dir() {
            return Err(err("is a directory, not a checkpoint file".into()));
        }
        let file_size = meta.len();
        if file_size == 0 {
            return Err(err("empty file".into()));
        }
        let file = File::open(path).map_err(|e| err(io_message(&e)))?;
        // SAFETY: the map is read-only; we never write to inputs. A file
        // truncated by another process while mapped is outside our contract.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| err(format!("cannot map file: {e}")))?;
        let map = Arc::new(map);
        match sniff(&map) {
            Some(Format::Safetensors) => Self::open_safetensors(path, file_size, map),
            Some(Format::TorchZip) | Some(Format::TorchLegacy) => {
                drop(map);
                Self::open_torch(path, file_size)
            }
            None => Err(err(
                "not a checkpoint: neither a torch .pt (zip or legacy pickle) nor a .safetensors file"
                    .into(),
            )),
        }
    }

    fn open_safetensors(path: &Path, file_size: u64, map: Arc<Mmap>) -> Result<Self, ReadError> {
        let file = safetensors::SafetensorsFile::parse(map).map_err(|m| ReadError::new(path, m))?;
        let entries = file
            .slots
            .iter()
            .map(|(name, s)| Entry {
                name: name.clone(),
                dtype: s.dtype,
                shape: s.shape.clone(),
                tied_to: None,
            })
            .collect();
        let slots = file.slots.iter().cloned().collect();
        let metadata = file.metadata.clone();
        let (hparams, config_origin) = match metadata.get(META_ARGS) {
            Some(json) => {
                let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                    ReadError::new(path, format!("metadata {META_ARGS} is not valid JSON: {e}"))
                })?;
                let obj = v.as_object().ok_or_else(|| {
                    ReadError::new(path, format!("metadata {META_ARGS} is not a JSON object"))
                })?;
                let h = obj
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), HValue::from_json(v)?)))
                    .collect();
                (h, ConfigOrigin::Metadata)
            }
            None => (Hparams::new(), ConfigOrigin::None),
        };
        Ok(Checkpoint {
            path: path.to_path_buf(),
            format: Format::Safetensors,
            file_size,
            entries,
            hparams,
            config_origin,
            metadata,
            other_keys: Vec::new(),
            source: Source::Safetensors { file, slots },
        })
    }

    fn open_torch(path: &Path, file_size: u64) -> Result<Self, ReadError> {
        let file = TorchFile::open(path).map_err(|e| ReadError::new(path, e.to_string()))?;
        let format = match file.format {
            TorchFormat::Zip => Format::TorchZip,
            TorchFormat::Legacy => Format::TorchLegacy,
        };
        let root = &file.root;
        let top = mapping(root).ok_or_else(|| {
            ReadError::new(path, "torch file does not hold a dict at the top level")
        })?;
        let is_tensor_dict = |v: &Value| {
            mapping(v).is_some_and(|m| {
                !m.is_empty() && m.iter().all(|(_, t)| matches!(t, Value::Tensor(_)))
            })
        };
        let (state, other_keys): (&Value, Vec<String>) = if let Some(m) = root.get("model") {
            (m, keys_except(top, "model"))
        } else if let Some(m) = root.get("state_dict") {
            (m, keys_except(top, "state_dict"))
        } else if is_tensor_dict(root) {
            (root, Vec::new())
        } else {
            let keys = keys_except(top, "");
            return Err(ReadError::new(
                path,
                format!(
                    "no state dict found: expected a 'model' entry or a dict of tensors, top-level keys are [{}]",
                    keys.join(", ")
                ),
            ));
        };
        let state_map = mapping(state)
            .ok_or_else(|| ReadError::new(path, "'model' is not a dict of tensors"))?;
        let mut entries = Vec::with_capacity(state_map.len());
        let mut refs = HashMap::with_capacity(state_map.len());
        let mut seen: HashMap<(String, usize, Vec<usize>, Vec<usize>), String> = HashMap::new();
        for (k, v) in state_map {
            let name = match k {
                Value::Str(s) => s.clone(),
                other => {
                    return Err(ReadError::new(
                        path,
                        format!("state dict key is not a string: {other:?}"),
                    ))
                }
            };
            let t = match v {
                Value::Tensor(t) => t.clone(),
                _ => {
                    return Err(ReadError::new(
                        path,
                        format!("state dict entry {name} is not a tensor"),
                    ))
                }
            };
            file.check(&t)
                .map_err(|e| ReadError::new(path, format!("tensor {name}: {e}")))?;
            let key = (
                t.storage.clone(),
                t.offset,
                t.shape.clone(),
                t.stride.clone(),
            );
            let tied_to = seen.get(&key).cloned();
            if tied_to.is_none() {
                seen.insert(key, name.clone());
            }
            entries.push(Entry {
                name: name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                tied_to,
            });
            refs.insert(name, t);
        }
        let (hparams, config_origin) = torch_hparams(root);
        Ok(Checkpoint {
            path: path.to_path_buf(),
            format,
            file_size,
            entries,
            hparams,
            config_origin,
            metadata: BTreeMap::new(),
            other_keys,
            source: Source::Torch { file, refs },
        })
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Torch { refs, .. } => refs.contains_key(name),
            Source::Safetensors { slots, .. } => slots.contains_key(name),
        }
    }

    /// The tensor called `name`, contiguous, in its stored dtype.
    pub fn tensor(&self, name: &str) -> Result<RawTensor, ReadError> {
        let missing = || ReadError::new(&self.path, format!("missing tensor {name}"));
        match &self.source {
            Source::Torch { file, refs } => {
                let r = refs.get(name).ok_or_else(missing)?;
                file.tensor(r)
                    .map_err(|e| ReadError::new(&self.path, format!("tensor {name}: {e}")))
            }
            Source::Safetensors { file, slots } => {
                let s = slots.get(name).ok_or_else(missing)?;
                file.tensor(s)
                    .map_err(|e| ReadError::new(&self.path, format!("tensor {name}: {e}")))
            }
        }
    }

    /// Dictionaries embedded by `fold` / `export` (`dict.txt` text), if any.
    pub fn embedded_dicts(&self) -> Option<(&str, &str)> {
        Some((
            self.metadata.get(META_DICT_SRC)?.as_str(),
            self.metadata.get(META_DICT_TGT)?.as_str(),
        ))
    }

    /// The unpickled top-level object of a torch checkpoint (`None` for
    /// safetensors): what `average` and `cast` carry over besides the state dict.
    pub fn torch_root(&self) -> Option<&Value> {
        match &self.source {
            Source::Torch { file, .. } => Some(&file.root),
            Source::Safetensors { .. } => None,
        }
    }

    /// A tensor referenced anywhere in a torch checkpoint's object tree (e.g.
    /// the scalar meters in `extra_state`), contiguous, in its stored dtype.
    pub fn torch_tensor(&self, r: &TensorRef) -> Result<RawTensor, ReadError> {
        match &self.source {
            Source::Torch { file, .. } => file
                .tensor(r)
                .map_err(|e| ReadError::new(&self.path, format!("tensor {}: {e}", r.storage))),
            Source::Safetensors { .. } => Err(ReadError::new(
                &self.path,
                "a safetensors file holds no object tree",
            )),
        }
    }

    /// Bytes all tensors occupy once loaded (tied storages counted once).
    pub fn memory_bytes(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.tied_to.is_none())
            .map(|e| e.shape.iter().product::<usize>() * e.dtype.size())
            .sum()
    }
}

fn io_message(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Guess the format from the first bytes.
fn sniff(b: &[u8]) -> Option<Format> {
    if b.starts_with(b"PK\x03\x04") || b.starts_with(b"PK\x05\x06") {
        return Some(Format::TorchZip);
    }
    // Before the legacy check: a safetensors header of 128..=255 bytes starts
    // with 0x80 too. A legacy pickle's byte 8 is part of its magic number, never '{'.
    if b.len() >= 9 && b[8] == b'{' {
        return Some(Format::Safetensors);
    }
    if b.first() == Some(&0x80) {
        return Some(Format::TorchLegacy);
    }
    // A safetensors header too short to hold '{' still gets the
    // safetensors reader's precise complaint.
    if b.len() >= 8 && b.len() < 9 {
        return Some(Format::Safetensors);
    }
    None
}

/// The key/value pairs of a dict, or of an object whose state is a dict
/// (`argparse.Namespace`, omegaconf `DictConfig` after unwrapping).
pub fn mapping(v: &Value) -> Option<&Vec<(Value, Value)>> {
    match v {
        Value::Dict(d) => Some(d),
        Value::Object { state: Some(s), .. } => match s.as_ref() {
            Value::Dict(d) => Some(d),
            _ => None,
        },
        _ => None,
    }
}

fn keys_except(m: &[(Value, Value)], skip: &str) -> Vec<String> {
    m.iter()
        .filter_map(|(k, _)| match k {
            Value::Str(s) if s != skip => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// fairseq hyper-parameters from `args` or `cfg['model']`.
fn torch_hparams(root: &Value) -> (Hparams, ConfigOrigin) {
    let flat = |v: &Value| -> Hparams {
        mapping(v)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| match k {
                        Value::Str(k) => Some((k.clone(), HValue::from_pickle(v)?)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(args) = root.get("args") {
        if !args.is_none() {
            let h = flat(args);
            if !h.is_empty() {
                return (h, ConfigOrigin::Args);
            }
        }
    }
    if let Some(cfg) = root.get("cfg") {
        let cfg = cfg.unwrap_omegaconf();
        if let Some(model) = cfg.get("model") {
            let model = model.unwrap_omegaconf();
            let mut h = flat(&model);
            // fairseq ≥ 0.10 dataclass configs nest some fields; flatten the
            // ones the transformer reads (encoder.layers → encoder_layers).
            for stack in ["encoder", "decoder"] {
                if let Some(sub) = model.get(stack) {
                    for (k, v) in flat(sub) {
                        let name = match k.as_str() {
                            "embed_dim" => format!("{stack}_embed_dim"),
                            "ffn_embed_dim" => format!("{stack}_ffn_embed_dim"),
                            "layers" => format!("{stack}_layers"),
                            "attention_heads" => format!("{stack}_attention_heads"),
                            "normalize_before" => format!("{stack}_normalize_before"),
                            "learned_pos" => format!("{stack}_learned_pos"),
                            _ => continue,
                        };
                        h.entry(name).or_insert(v);
                    }
                }
            }
            if !h.is_empty() {
                return (h, ConfigOrigin::Cfg);
            }
        }
    }
    (Hparams::new(), ConfigOrigin::None)
}
