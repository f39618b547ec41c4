//! Writing torch `.pt` files in the zip format of torch ≥ 1.6, which `torch.load` and fairseq
//! read: a STORED zip of `archive/data.pkl` (a protocol-2 pickle of a [`Py`] tree),
//! `archive/byteorder`, `archive/version` and one 64-byte-aligned `archive/data/<key>` entry
//! per storage (tensors sharing bytes share a storage). [`Carried`] is the rest of a fairseq
//! checkpoint (`args`, `cfg`, `extra_state`, ...) carried over from an input.

use crate::read::pickle::Value;
use crate::read::torch::TensorRef;
use crate::read::{Checkpoint, HValue, Hparams};
use crate::tensor::{DType, RawTensor};
use anyhow::{anyhow, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// A Python object tree that can be pickled: data, recorded objects and tensors.
#[derive(Clone, Debug)]
pub enum Py {
    None,
    Bool(bool),
    Int(i64),
    /// Minimal little-endian two's complement bytes (as [`Value::BigInt`]).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Py>),
    Tuple(Vec<Py>),
    Set(Vec<Py>),
    Dict(Vec<(Py, Py)>),
    /// `collections.OrderedDict` (how torch state dicts are pickled).
    OrderedDict(Vec<(Py, Py)>),
    Global {
        module: String,
        name: String,
    },
    /// `module.name(*args)`, then `BUILD state`: pickle's REDUCE.
    Reduce {
        module: String,
        name: String,
        args: Vec<Py>,
        state: Option<Box<Py>>,
    },
    /// `cls.__new__(cls)`, then `BUILD state`: how protocol 2 pickles plain classes
    /// (`argparse.Namespace`, fairseq meters).
    NewObj {
        module: String,
        name: String,
        state: Option<Box<Py>>,
    },
    Tensor(RawTensor),
}

impl Py {
    pub fn str(s: &str) -> Py {
        Py::Str(s.to_string())
    }

    /// An `argparse.Namespace` with these attributes.
    pub fn namespace(attrs: Vec<(String, Py)>) -> Py {
        Py::NewObj {
            module: "argparse".into(),
            name: "Namespace".into(),
            state: Some(Box::new(Py::Dict(
                attrs.into_iter().map(|(k, v)| (Py::Str(k), v)).collect(),
            ))),
        }
    }

    pub fn from_hvalue(v: &HValue) -> Py {
        match v {
            HValue::None => Py::None,
            HValue::Bool(b) => Py::Bool(*b),
            HValue::Int(i) => Py::Int(*i),
            HValue::Float(f) => Py::Float(*f),
            HValue::Str(s) => Py::Str(s.clone()),
        }
    }

    pub fn from_json(v: &serde_json::Value) -> Py {
        use serde_json::Value as J;
        match v {
            J::Null => Py::None,
            J::Bool(b) => Py::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Py::Int(i),
                None => Py::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::String(s) => Py::Str(s.clone()),
            J::Array(a) => Py::List(a.iter().map(Py::from_json).collect()),
            J::Object(o) => Py::Dict(
                o.iter()
                    .map(|(k, v)| (Py::Str(k.clone()), Py::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Convert a value read by [`crate::read::pickle`], resolving its tensors with `tensor`.
    /// Objects with arguments are re-created by REDUCE, objects without by NEWOBJ (what
    /// protocol 2 does for plain classes); a bare storage cannot be written.
    pub fn from_value(
        v: &Value,
        tensor: &mut dyn FnMut(&TensorRef) -> Result<RawTensor, String>,
    ) -> Result<Py, String> {
        fn list(
            items: &[Value],
            tensor: &mut dyn FnMut(&TensorRef) -> Result<RawTensor, String>,
        ) -> Result<Vec<Py>, String> {
            items.iter().map(|i| Py::from_value(i, tensor)).collect()
        }
        Ok(match v {
            Value::None => Py::None,
            Value::Bool(b) => Py::Bool(*b),
            Value::Int(i) => Py::Int(*i),
            Value::BigInt(b) => Py::BigInt(b.clone()),
            Value::Float(f) => Py::Float(*f),
            Value::Str(s) => Py::Str(s.clone()),
            Value::Bytes(b) => Py::Bytes(b.clone()),
            Value::List(l) => Py::List(list(l, tensor)?),
            Value::Tuple(l) => Py::Tuple(list(l, tensor)?),
            Value::Set(l) => Py::Set(list(l, tensor)?),
            Value::Dict(pairs) => {
                let mut out = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    out.push((Py::from_value(k, tensor)?, Py::from_value(v, tensor)?));
                }
                Py::Dict(out)
            }
            Value::Global { module, name } => Py::Global {
                module: module.clone(),
                name: name.clone(),
            },
            Value::Object {
                module,
                name,
                args,
                state,
            } => {
                let state = match state {
                    Some(s) => Some(Box::new(Py::from_value(s, tensor)?)),
                    None => None,
                };
                if args.is_empty() {
                    Py::NewObj {
                        module: module.clone(),
                        name: name.clone(),
                        state,
                    }
                } else {
                    Py::Reduce {
                        module: module.clone(),
                        name: name.clone(),
                        args: list(args, tensor)?,
                        state,
                    }
                }
            }
            Value::Storage(s) => {
                return Err(format!(
                    "a bare storage ({}) outside a tensor cannot be re-written",
                    s.key
                ))
            }
            Value::Tensor(t) => Py::Tensor(tensor(t)?),
        })
    }

    /// The attributes of a Namespace-like object, or the pairs of a dict, mutably.
    fn attrs_mut(&mut self) -> Option<&mut Vec<(Py, Py)>> {
        match self {
            Py::Dict(d) | Py::OrderedDict(d) => Some(d),
            Py::NewObj { state: Some(s), .. } | Py::Reduce { state: Some(s), .. } => {
                match s.as_mut() {
                    Py::Dict(d) => Some(d),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The value under string key `key` of a dict or Namespace.
    fn get_mut(&mut self, key: &str) -> Option<&mut Py> {
        self.attrs_mut()?
            .iter_mut()
            .rev()
            .find(|(k, _)| matches!(k, Py::Str(s) if s == key))
            .map(|(_, v)| v)
    }

    /// Set string key `key` of a dict or Namespace (replacing, else appending).
    fn set(&mut self, key: &str, value: Py) -> bool {
        if let Some(slot) = self.get_mut(key) {
            *slot = value;
            return true;
        }
        match self.attrs_mut() {
            Some(d) => {
                d.push((Py::str(key), value));
                true
            }
            None => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pickling

mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const EMPTY_LIST: u8 = b']';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEMS: u8 = b'u';
    pub const GLOBAL: u8 = b'c';
    pub const REDUCE: u8 = b'R';
    pub const NEWOBJ: u8 = 0x81;
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
}

/// Items per APPENDS / SETITEMS batch, as CPython's pickler does.
const BATCH: usize = 1000;

/// A protocol-2 pickler that collects tensor storages as it goes.
struct Pickler {
    out: Vec<u8>,
    /// Storages in key order ("0", "1", ...).
    storages: Vec<RawTensor>,
    /// (address, length, dtype) of a storage's bytes → its key: tied tensors share one.
    seen: HashMap<(usize, usize, DType), usize>,
}

/// torch's storage class for a dtype.
fn storage_class(d: DType) -> &'static str {
    match d {
        DType::F64 => "DoubleStorage",
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::I8 => "CharStorage",
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
    }
}

impl Pickler {
    fn byte(&mut self, b: u8) {
        self.out.push(b);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.byte(op::GLOBAL);
        self.out.extend_from_slice(module.as_bytes());
        self.byte(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.byte(b'\n');
    }

    fn int(&mut self, i: i64) {
        if (0..256).contains(&i) {
            self.byte(op::BININT1);
            self.byte(i as u8);
        } else if (0..65536).contains(&i) {
            self.byte(op::BININT2);
            self.out.extend_from_slice(&(i as u16).to_le_bytes());
        } else if let Ok(v) = i32::try_from(i) {
            self.byte(op::BININT);
            self.out.extend_from_slice(&v.to_le_bytes());
        } else {
            let b = i.to_le_bytes();
            // Minimal two's complement: drop redundant sign-extension bytes.
            let mut n = 8;
            while n > 1 {
                let (last, prev) = (b[n - 1], b[n - 2]);
                if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.long(&b[..n]);
        }
    }

    fn long(&mut self, bytes: &[u8]) {
        if bytes.len() < 256 {
            self.byte(op::LONG1);
            self.byte(bytes.len() as u8);
        } else {
            self.byte(op::LONG4);
            self.out
                .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        }
        self.out.extend_from_slice(bytes);
    }

    fn text(&mut self, s: &str) {
        self.byte(op::BINUNICODE);
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    /// A tuple of already-known arity, items pickled by `items`.
    fn tuple(&mut self, items: &[Py]) {
        match items.len() {
            0 => self.byte(op::EMPTY_TUPLE),
            1..=3 => {
                for i in items {
                    self.dump(i);
                }
                self.byte(op::TUPLE1 + items.len() as u8 - 1);
            }
            _ => {
                self.byte(op::MARK);
                for i in items {
                    self.dump(i);
                }
                self.byte(op::TUPLE);
            }
        }
    }

    fn setitems(&mut self, pairs: &[(Py, Py)]) {
        for chunk in pairs.chunks(BATCH) {
            self.byte(op::MARK);
            for (k, v) in chunk {
                self.dump(k);
                self.dump(v);
            }
            self.byte(op::SETITEMS);
        }
    }

    fn build(&mut self, state: &Option<Box<Py>>) {
        if let Some(s) = state {
            self.dump(s);
            self.byte(op::BUILD);
        }
    }

    fn tensor(&mut self, t: &RawTensor) {
        let bytes = t.bytes.as_slice();
        let id = (bytes.as_ptr() as usize, bytes.len(), t.dtype);
        let key = match self.seen.get(&id) {
            Some(&k) if !bytes.is_empty() => k,
            _ => {
                self.storages.push(t.clone());
                let k = self.storages.len() - 1;
                self.seen.insert(id, k);
                k
            }
        };
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.byte(op::MARK);
        // persistent id ('storage', torch.<Class>Storage, key, 'cpu', numel)
        self.byte(op::MARK);
        self.text("storage");
        self.global("torch", storage_class(t.dtype));
        self.text(&key.to_string());
        self.text("cpu");
        self.int(t.numel() as i64);
        self.byte(op::TUPLE);
        self.byte(op::BINPERSID);
        self.int(0);
        let mut stride = vec![1usize; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * t.shape[d + 1].max(1);
        }
        let ints = |v: &[usize]| Py::Tuple(v.iter().map(|&x| Py::Int(x as i64)).collect());
        self.dump(&ints(&t.shape));
        self.dump(&ints(&stride));
        self.byte(op::NEWFALSE);
        self.dump(&Py::OrderedDict(Vec::new()));
        self.byte(op::TUPLE);
        self.byte(op::REDUCE);
    }

    fn dump(&mut self, v: &Py) {
        match v {
            Py::None => self.byte(op::NONE),
            Py::Bool(true) => self.byte(op::NEWTRUE),
            Py::Bool(false) => self.byte(op::NEWFALSE),
            Py::Int(i) => self.int(*i),
            Py::BigInt(b) => self.long(b),
            Py::Float(f) => {
                self.byte(op::BINFLOAT);
                self.out.extend_from_slice(&f.to_be_bytes());
            }
            Py::Str(s) => self.text(s),
            Py::Bytes(b) => {
                // Protocol 2 has no bytes opcode: `_codecs.encode(latin-1 text, 'latin1')`,
                // as CPython writes it.
                self.global("_codecs", "encode");
                let latin1: String = b.iter().map(|&c| char::from(c)).collect();
                self.tuple(&[Py::Str(latin1), Py::str("latin1")]);
                self.byte(op::REDUCE);
            }
            Py::List(items) => {
                self.byte(op::EMPTY_LIST);
                for chunk in items.chunks(BATCH) {
                    self.byte(op::MARK);
                    for i in chunk {
                        self.dump(i);
                    }
                    self.byte(op::APPENDS);
                }
            }
            Py::Tuple(items) => self.tuple(items),
            Py::Set(items) => {
                self.global("builtins", "set");
                self.dump(&Py::List(items.clone()));
                self.byte(op::TUPLE1);
                self.byte(op::REDUCE);
            }
            Py::Dict(pairs) => {
                self.byte(op::EMPTY_DICT);
                self.setitems(pairs);
            }
            Py::OrderedDict(pairs) => {
                self.global("collections", "OrderedDict");
                self.byte(op::EMPTY_TUPLE);
                self.byte(op::REDUCE);
                self.setitems(pairs);
            }
            Py::Global { module, name } => self.global(module, name),
            Py::Reduce {
                module,
                name,
                args,
                state,
            } => {
                self.global(module, name);
                self.tuple(args);
                self.byte(op::REDUCE);
                self.build(state);
            }
            Py::NewObj {
                module,
                name,
                state,
            } => {
                self.global(module, name);
                self.byte(op::EMPTY_TUPLE);
                self.byte(op::NEWOBJ);
                self.build(state);
            }
            Py::Tensor(t) => self.tensor(t),
        }
    }
}

/// Pickle `obj` (protocol 2, as `torch.save`); returns the pickle and the storages its
/// persistent ids name, in key order.
pub fn pickle(obj: &Py) -> (Vec<u8>, Vec<RawTensor>) {
    let mut p = Pickler {
        out: vec![op::PROTO, 2],
        storages: Vec::new(),
        seen: HashMap::new(),
    };
    p.dump(obj);
    p.byte(op::STOP);
    (p.out, p.storages)
}

/// Write `obj` to `path` as a torch zip checkpoint, atomically.
pub fn write(path: &Path, obj: &Py) -> Result<()> {
    write_pending(path, obj)?.commit()
}

/// [`write`] to a temp file beside `path`, put in place by [`super::Pending::commit`].
pub fn write_pending(path: &Path, obj: &Py) -> Result<super::Pending> {
    let (pkl, storages) = pickle(obj);
    super::write_pending(path, |w| {
        use zip::write::SimpleFileOptions;
        let mut zip = zip::ZipWriter::new(w);
        let opts = |len: usize| {
            SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .with_alignment(64)
                .large_file(len as u64 >= u32::MAX as u64)
        };
        let entry = |zip: &mut zip::ZipWriter<_>, name: String, data: &[u8]| -> Result<()> {
            zip.start_file(name.as_str(), opts(data.len()))
                .map_err(|e| anyhow!("zip entry {name}: {e}"))?;
            zip.write_all(data)?;
            Ok(())
        };
        entry(&mut zip, "archive/data.pkl".into(), &pkl)?;
        entry(&mut zip, "archive/byteorder".into(), b"little")?;
        for (key, t) in storages.iter().enumerate() {
            entry(&mut zip, format!("archive/data/{key}"), t.bytes.as_slice())?;
        }
        entry(&mut zip, "archive/version".into(), b"3\n")?;
        zip.finish().map_err(|e| anyhow!("zip: {e}"))?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Carrying a fairseq checkpoint's top level over

/// The top level of a checkpoint besides its state dict, ready to be written again: what
/// fairseq's `average_checkpoints.py` calls `new_state`, minus the optimizer state.
#[derive(Clone, Debug)]
pub struct Carried {
    /// Top-level entries in file order, the state dict excluded.
    pub entries: Vec<(String, Py)>,
    /// Where the state dict goes: its key and position among `entries`; `None` writes the
    /// state dict itself as the top level (a bare state dict stays bare).
    pub model_slot: Option<(String, usize)>,
    /// What was dropped or rewritten, for the report.
    pub notes: Vec<String>,
}

/// Whether `v` holds omegaconf objects (whose parent links the reader had to cut).
fn has_omegaconf(v: &Value) -> bool {
    match v {
        Value::Object {
            module,
            args,
            state,
            ..
        } => {
            module == "omegaconf"
                || module.starts_with("omegaconf.")
                || args.iter().any(has_omegaconf)
                || state.as_deref().is_some_and(has_omegaconf)
        }
        Value::List(l) | Value::Tuple(l) | Value::Set(l) => l.iter().any(has_omegaconf),
        Value::Dict(d) => d.iter().any(|(k, v)| has_omegaconf(k) || has_omegaconf(v)),
        _ => false,
    }
}

impl Carried {
    /// Everything at the top level of `ckpt` except its state dict and
    /// `last_optimizer_state`. Entries that cannot be re-written are dropped with a note;
    /// omegaconf containers become plain dicts (fairseq re-creates them on load).
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Carried {
        let Some(root) = ckpt.torch_root() else {
            return Carried::skeleton(&ckpt.hparams);
        };
        let pairs = match root {
            Value::Dict(d) => d,
            _ => return Carried::skeleton(&ckpt.hparams),
        };
        let model_key = ["model", "state_dict"]
            .into_iter()
            .find(|k| root.get(k).is_some());
        let Some(model_key) = model_key else {
            // A bare state dict: keep it bare.
            return Carried {
                entries: Vec::new(),
                model_slot: None,
                notes: Vec::new(),
            };
        };
        let mut c = Carried {
            entries: Vec::new(),
            model_slot: None,
            notes: Vec::new(),
        };
        let mut resolve = |r: &TensorRef| ckpt.torch_tensor(r).map_err(|e| e.msg.clone());
        for (k, v) in pairs {
            let Some(key) = k.as_str() else {
                c.notes.push(format!(
                    "dropped a top-level entry with a non-string key {k:?}"
                ));
                continue;
            };
            if key == model_key {
                c.model_slot = Some((key.to_string(), c.entries.len()));
                continue;
            }
            if key == "last_optimizer_state" {
                c.notes.push(
                    "dropped last_optimizer_state (optimizer state is not carried over)".into(),
                );
                continue;
            }
            let plain;
            let v = if has_omegaconf(v) {
                plain = v.unwrap_omegaconf();
                c.notes.push(format!(
                    "{key}: omegaconf objects written as plain dicts and lists"
                ));
                &plain
            } else {
                v
            };
            match Py::from_value(v, &mut resolve) {
                Ok(py) => c.entries.push((key.to_string(), py)),
                Err(e) => c.notes.push(format!("dropped {key}: {e}")),
            }
        }
        c
    }

    /// A minimal top level that fairseq's `load_checkpoint_to_cpu` accepts, for inputs
    /// that record none (safetensors): `args` from `hparams`, an empty optimizer history
    /// entry and an epoch-0 iterator. Without hyper-parameters the state dict stays bare.
    pub fn skeleton(hparams: &Hparams) -> Carried {
        if hparams.is_empty() {
            return Carried {
                entries: Vec::new(),
                model_slot: None,
                notes: Vec::new(),
            };
        }
        let args = hparams
            .iter()
            .map(|(k, v)| (k.clone(), Py::from_hvalue(v)))
            .collect();
        let history = Py::List(vec![Py::Dict(vec![
            (Py::str("criterion_name"), Py::str("CrossEntropyCriterion")),
            (Py::str("optimizer_name"), Py::str("FairseqAdam")),
            (
                Py::str("lr_scheduler_state"),
                Py::Dict(vec![(Py::str("best"), Py::None)]),
            ),
            (Py::str("num_updates"), Py::Int(0)),
        ])]);
        let extra = Py::Dict(vec![(
            Py::str("train_iterator"),
            Py::Dict(vec![(Py::str("epoch"), Py::Int(0))]),
        )]);
        Carried {
            entries: vec![
                ("args".into(), Py::namespace(args)),
                ("optimizer_history".into(), history),
                ("extra_state".into(), extra),
            ],
            model_slot: Some(("model".into(), 1)),
            notes: Vec::new(),
        }
    }

    /// Overwrite model hyper-parameters (after a fold changed the architecture): in
    /// `args` when it is a Namespace, else in `cfg['model']`, else in a new `args`.
    pub fn set_model_args(&mut self, args: &serde_json::Map<String, serde_json::Value>) {
        let apply = |target: &mut Py| {
            for (k, v) in args {
                target.set(k, Py::from_json(v));
            }
        };
        let slot = |entries: &mut Vec<(String, Py)>, key: &str| {
            entries
                .iter_mut()
                .position(|(k, v)| k == key && !matches!(v, Py::None))
        };
        if let Some(i) = slot(&mut self.entries, "args") {
            if self.entries[i].1.attrs_mut().is_some() {
                apply(&mut self.entries[i].1);
                return;
            }
        }
        if let Some(i) = slot(&mut self.entries, "cfg") {
            if let Some(model) = self.entries[i].1.get_mut("model") {
                if model.attrs_mut().is_some() {
                    apply(model);
                    return;
                }
            }
        }
        let ns = Py::namespace(
            args.iter()
                .map(|(k, v)| (k.clone(), Py::from_json(v)))
                .collect(),
        );
        match self.entries.iter_mut().find(|(k, _)| k == "args") {
            Some((_, v)) => *v = ns,
            None => {
                self.entries.insert(0, ("args".into(), ns));
                if let Some((_, at)) = &mut self.model_slot {
                    *at += 1;
                }
            }
        }
    }

    /// The checkpoint object: the carried entries with `model` (as an OrderedDict) in
    /// its slot.
    pub fn with_model(&self, model: Vec<(String, RawTensor)>) -> Py {
        let state = Py::OrderedDict(
            model
                .into_iter()
                .map(|(k, t)| (Py::Str(k), Py::Tensor(t)))
                .collect(),
        );
        let Some((key, at)) = &self.model_slot else {
            return state;
        };
        let mut pairs: Vec<(Py, Py)> = self
            .entries
            .iter()
            .map(|(k, v)| (Py::Str(k.clone()), v.clone()))
            .collect();
        pairs.insert((*at).min(pairs.len()), (Py::Str(key.clone()), state));
        Py::Dict(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::pickle;

    fn unpickle(b: &[u8]) -> Value {
        pickle::parse(b, &mut |pid| Ok(pid)).expect("our pickle parses")
    }

    #[test]
    fn scalars_round_trip() {
        let big = -(1i64 << 40);
        let v = Py::List(vec![
            Py::None,
            Py::Bool(true),
            Py::Int(7),
            Py::Int(300),
            Py::Int(-5),
            Py::Int(big),
            Py::Int(i64::MIN),
            Py::Float(0.25),
            Py::str("é"),
            Py::Bytes(vec![0, 200, 255]),
            Py::Tuple(vec![Py::Int(1); 5]),
            Py::Dict(vec![(Py::str("k"), Py::Int(1))]),
        ]);
        let (b, storages) = pickle(&v);
        assert!(storages.is_empty());
        let Value::List(items) = unpickle(&b) else {
            panic!("a list")
        };
        assert_eq!(items[0], Value::None);
        assert_eq!(items[1], Value::Bool(true));
        assert_eq!(items[2], Value::Int(7));
        assert_eq!(items[3], Value::Int(300));
        assert_eq!(items[4], Value::Int(-5));
        assert_eq!(items[5], Value::Int(big));
        assert_eq!(items[6], Value::Int(i64::MIN));
        assert_eq!(items[7], Value::Float(0.25));
        assert_eq!(items[8], Value::Str("é".into()));
        assert_eq!(items[9], Value::Bytes(vec![0, 200, 255]));
        assert_eq!(items[10], Value::Tuple(vec![Value::Int(1); 5]));
        assert_eq!(items[11].get("k"), Some(&Value::Int(1)));
    }

    #[test]
    fn objects_round_trip() {
        let ns = Py::namespace(vec![("arch".into(), Py::str("transformer"))]);
        let meter = Py::Reduce {
            module: "fairseq.meters".into(),
            name: "AverageMeter".into(),
            args: vec![Py::Int(1)],
            state: Some(Box::new(Py::Dict(vec![(Py::str("val"), Py::Float(1.5))]))),
        };
        let (b, _) = pickle(&Py::Tuple(vec![ns, meter]));
        let Value::Tuple(items) = unpickle(&b) else {
            panic!("a tuple")
        };
        assert_eq!(
            items[0].get("arch"),
            Some(&Value::Str("transformer".into()))
        );
        let Value::Object { module, args, .. } = &items[1] else {
            panic!("an object")
        };
        assert_eq!(module, "fairseq.meters");
        assert_eq!(args, &vec![Value::Int(1)]);
        assert_eq!(items[1].get("val"), Some(&Value::Float(1.5)));
    }

    #[test]
    fn tied_tensors_share_a_storage() {
        let t = RawTensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let u = RawTensor::from_f32(vec![3], &[1.0, 2.0, 3.0]);
        let sd = Py::OrderedDict(vec![
            (Py::str("a"), Py::Tensor(t.clone())),
            (Py::str("b"), Py::Tensor(t)),
            (Py::str("c"), Py::Tensor(u)),
        ]);
        let (_, storages) = pickle(&sd);
        assert_eq!(storages.len(), 2);
    }
}
