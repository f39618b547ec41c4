//! A safe pickle reader: a pickle VM for protocols 0–5 that builds a plain [`Value`] tree and
//! never executes code. Globals must be on an allow-list; calls are recorded as
//! [`Value::Object`], except a few data constructors (`OrderedDict`, `set`, `_codecs.encode`, ...)
//! and torch's tensor rebuild functions, which yield [`Value::Tensor`].
//!
//! Containers are shared while parsing (an arena indexed by the memo), then unfolded into a tree
//! at STOP: a reference back to an enclosing container (a cycle, such as omegaconf's `_parent`)
//! becomes [`Value::None`]; nesting beyond [`MAX_DEPTH`] and runaway expansion of shared
//! references are errors.

use crate::read::torch::{StorageRef, TensorRef};
use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting of containers accepted in the result.
pub const MAX_DEPTH: usize = 500;

/// A parsed pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// LONG1/LONG4 too big for i64: minimal little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Pairs in pickle order (a duplicated key keeps both; [`Value::get`] sees the last).
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    Global {
        module: String,
        name: String,
    },
    /// An instance of an allow-listed class (REDUCE / NEWOBJ / NEWOBJ_EX / OBJ / INST), recorded,
    /// never executed. `state` is what BUILD set.
    Object {
        module: String,
        name: String,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    /// Returned by the torch layer's persistent_load.
    Storage(StorageRef),
    /// Built by torch's `_rebuild_tensor_v2` / `_rebuild_parameter`.
    Tensor(TensorRef),
}

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("truncated pickle: {need} more bytes needed at offset {offset}, {left} left")]
    Truncated {
        offset: usize,
        need: usize,
        left: usize,
    },
    #[error("unknown opcode 0x{op:02x} at offset {offset}")]
    UnknownOpcode { op: u8, offset: usize },
    #[error("pickle references forbidden global {module}.{name} at offset {offset}")]
    ForbiddenGlobal {
        module: String,
        name: String,
        offset: usize,
    },
    #[error("{msg} at offset {offset}")]
    Invalid { msg: String, offset: usize },
    #[error("pickle nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error(
        "pickle needs more than {0} bytes of memory to unpickle (shared references or copies)"
    )]
    TooLarge(usize),
    /// An error raised by the caller's persistent_load.
    #[error("{0}")]
    Custom(String),
}

type Result<T> = std::result::Result<T, PickleError>;

impl Value {
    /// Look up a string key in a Dict, or in the state dict of an Object
    /// (`argparse.Namespace`, omegaconf nodes).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(pairs) => pairs
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            Value::Object {
                state: Some(state), ..
            } => match state.as_ref() {
                Value::Dict(_) => state.get(key),
                // `(dict_state, slot_state)` of classes with `__slots__`.
                Value::Tuple(parts) => parts.iter().rev().find_map(|p| match p {
                    Value::Dict(_) => p.get(key),
                    _ => None,
                }),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A Float, or an Int as a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// Replace omegaconf containers and nodes by plain values: `DictConfig` → Dict of its
    /// `_content`, `ListConfig` → List, value nodes (`AnyNode`, `StringNode`, ...) → their `_val`.
    /// Plain containers are walked too; everything else is returned as is.
    pub fn unwrap_omegaconf(&self) -> Value {
        match self {
            Value::Object { module, name, .. }
                if module == "omegaconf" || module.starts_with("omegaconf.") =>
            {
                let field = match name.as_str() {
                    "DictConfig" | "ListConfig" => "_content",
                    _ => "_val",
                };
                match self.get(field) {
                    Some(inner) => inner.unwrap_omegaconf(),
                    None => self.clone(),
                }
            }
            Value::Dict(pairs) => Value::Dict(
                pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.unwrap_omegaconf()))
                    .collect(),
            ),
            Value::List(items) => Value::List(items.iter().map(Value::unwrap_omegaconf).collect()),
            Value::Tuple(items) => {
                Value::Tuple(items.iter().map(Value::unwrap_omegaconf).collect())
            }
            other => other.clone(),
        }
    }
}

/// Parse one pickle, ignoring anything after its STOP opcode.
pub fn parse(
    data: &[u8],
    persistent_load: &mut dyn FnMut(Value) -> Result<Value>,
) -> Result<Value> {
    parse_prefix(data, persistent_load).map(|(value, _)| value)
}

/// Parse the pickle at the start of `data`; also returns how many bytes it took (through STOP).
pub fn parse_prefix(
    data: &[u8],
    persistent_load: &mut dyn FnMut(Value) -> Result<Value>,
) -> Result<(Value, usize)> {
    let mut vm = Vm {
        input: Input { data, pos: 0 },
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: budget_for(data.len()),
        on_path: Vec::new(),
    };
    let value = vm.run(persistent_load)?;
    Ok((value, vm.input.pos))
}

/// The budget of a pickle of `len` bytes.
fn budget_for(len: usize) -> usize {
    BUDGET_BASE
        .saturating_add(len.saturating_mul(BUDGET_PER_BYTE))
        .min(BUDGET_MAX)
}

/// Memory budget, in approximate bytes: everything the VM allocates is charged to it while
/// parsing (each value pushed, container built, reference copied by DUP / GET / memo PUT,
/// and the item lists that `tuple(list)`, `dict(pairs)`, REDUCE arguments ... copy), and
/// again while unfolding shared references into the tree. Without it a small hostile pickle
/// expands exponentially (shared references) or quadratically (copying opcodes).
/// 256 MiB plus 16 bytes per input byte: a real checkpoint's pickle (fairseq 0.12 with
/// optimizer history: a few hundred KB) uses a few MB; a 20 MB pickle stops at 576 MiB,
/// any pickle at [`BUDGET_MAX`].
const BUDGET_BASE: usize = 256 << 20;
const BUDGET_PER_BYTE: usize = 16;
/// Whatever the pickle's size (a deflated `data.pkl` can be large and cheap to
/// ship): with the VM's bookkeeping this keeps a hostile pickle under 1 GB.
const BUDGET_MAX: usize = 640 << 20;
/// Cost of one value besides its string / bytes payload.
const VALUE_COST: usize = std::mem::size_of::<Value>();
/// Cost of one reference to a value (a stack, memo or container slot).
const REF_COST: usize = std::mem::size_of::<V>();
/// Cost of one leaf on the arena: the value and its `Rc` header.
const LEAF_COST: usize = VALUE_COST + 16;
/// Cost of one container on the arena, besides its slots.
const NODE_COST: usize = std::mem::size_of::<Node>();

// ---------------------------------------------------------------------------------------------
// Internal representation while parsing

/// A stack / memo entry: a leaf value (shared cheaply), or a container in the arena.
#[derive(Clone)]
enum V {
    Leaf(Rc<Value>),
    Node(usize),
}

/// A container: shared by index, mutated in place by APPENDS / SETITEMS / BUILD.
enum Node {
    List(Vec<V>),
    Tuple(Vec<V>),
    Set(Vec<V>),
    Dict(Vec<(V, V)>),
    Object {
        module: String,
        name: String,
        args: Vec<V>,
        state: Option<V>,
    },
}

fn leaf(v: Value) -> V {
    V::Leaf(Rc::new(v))
}

struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return Err(PickleError::Truncated {
                offset: self.pos,
                need: n,
                left,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// A length field, checked against what is left before anything is allocated.
    fn len_u64(&mut self, raw: u64) -> Result<usize> {
        let left = self.data.len() - self.pos;
        match usize::try_from(raw) {
            Ok(n) if n <= left => Ok(n),
            _ => Err(PickleError::Truncated {
                offset: self.pos,
                need: usize::try_from(raw).unwrap_or(usize::MAX),
                left,
            }),
        }
    }

    /// Bytes up to (not including) the next newline, which is consumed.
    fn line(&mut self) -> Result<&'a [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(PickleError::Truncated {
                offset: self.pos,
                need: rest.len() + 1,
                left: rest.len(),
            }),
        }
    }
}

struct Vm<'a> {
    input: Input<'a>,
    nodes: Vec<Node>,
    stack: Vec<V>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<usize, V>,
    budget: usize,
    /// Scratch for [`Vm::unfold`]: marks the containers enclosing the one being unfolded.
    on_path: Vec<bool>,
}

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
}

fn invalid<T>(msg: impl Into<String>, offset: usize) -> Result<T> {
    Err(PickleError::Invalid {
        msg: msg.into(),
        offset,
    })
}

impl Vm<'_> {
    fn run(&mut self, persistent_load: &mut dyn FnMut(Value) -> Result<Value>) -> Result<Value> {
        loop {
            let at = self.input.pos;
            let code = self.input.u8()?;
            match code {
                op::PROTO => {
                    let p = self.input.u8()?;
                    if p > 5 {
                        return invalid(format!("unsupported pickle protocol {p}"), at);
                    }
                }
                op::FRAME => {
                    self.input.take(8)?;
                }
                op::STOP => {
                    let top = self.pop(at)?;
                    return self.unfold_value(&top);
                }
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop(at)?;
                    }
                }
                op::POP_MARK => {
                    self.pop_mark(at)?;
                }
                op::DUP => {
                    self.charge(REF_COST)?;
                    let top = self.top(at)?.clone();
                    self.stack.push(top);
                }

                // Scalars
                op::NONE => self.push_leaf(Value::None)?,
                op::NEWTRUE => self.push_leaf(Value::Bool(true))?,
                op::NEWFALSE => self.push_leaf(Value::Bool(false))?,
                op::INT => {
                    let line = self.input.line()?;
                    let v = match line {
                        b"00" => Value::Bool(false),
                        b"01" => Value::Bool(true),
                        _ => parse_decimal(line, at)?,
                    };
                    self.push_leaf(v)?;
                }
                op::LONG => {
                    let line = self.input.line()?;
                    let digits = line.strip_suffix(b"L").unwrap_or(line);
                    let v = parse_decimal(digits, at)?;
                    self.push_leaf(v)?;
                }
                op::BININT => {
                    let v = i32::from_le_bytes(self.input.array()?);
                    self.push_leaf(Value::Int(v.into()))?;
                }
                op::BININT1 => {
                    let v = self.input.u8()?;
                    self.push_leaf(Value::Int(v.into()))?;
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.input.array()?);
                    self.push_leaf(Value::Int(v.into()))?;
                }
                op::LONG1 => {
                    let n = self.input.u8()? as usize;
                    let bytes = self.input.take(n)?;
                    self.push_leaf(int_from_le(bytes))?;
                }
                op::LONG4 => {
                    let n = i32::from_le_bytes(self.input.array()?);
                    if n < 0 {
                        return invalid("negative LONG4 length", at);
                    }
                    let n = self.input.len_u64(n as u64)?;
                    let bytes = self.input.take(n)?;
                    self.push_leaf(int_from_le(bytes))?;
                }
                op::FLOAT => {
                    let line = self.input.line()?;
                    let text = std::str::from_utf8(line).unwrap_or("");
                    match text.trim().parse::<f64>() {
                        Ok(f) => self.push_leaf(Value::Float(f))?,
                        Err(_) => return invalid("bad FLOAT literal", at),
                    }
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(self.input.array()?);
                    self.push_leaf(Value::Float(v))?;
                }

                // Strings and bytes
                op::STRING => {
                    let line = self.input.line()?;
                    let bytes = unquote_string(line, at)?;
                    self.push_leaf(py2_str(bytes))?;
                }
                op::BINSTRING => {
                    let n = i32::from_le_bytes(self.input.array()?);
                    if n < 0 {
                        return invalid("negative BINSTRING length", at);
                    }
                    let n = self.input.len_u64(n as u64)?;
                    let bytes = self.input.take(n)?.to_vec();
                    self.push_leaf(py2_str(bytes))?;
                }
                op::SHORT_BINSTRING => {
                    let n = self.input.u8()? as usize;
                    let bytes = self.input.take(n)?.to_vec();
                    self.push_leaf(py2_str(bytes))?;
                }
                op::UNICODE => {
                    let line = self.input.line()?;
                    let s = raw_unicode_escape(line, at)?;
                    self.push_leaf(Value::Str(s))?;
                }
                op::BINUNICODE | op::SHORT_BINUNICODE | op::BINUNICODE8 => {
                    let n = self.read_len(code)?;
                    let bytes = self.input.take(n)?;
                    match std::str::from_utf8(bytes) {
                        Ok(s) => self.push_leaf(Value::Str(s.to_owned()))?,
                        Err(_) => return invalid("invalid UTF-8 in unicode string", at),
                    }
                }
                op::BINBYTES | op::SHORT_BINBYTES | op::BINBYTES8 | op::BYTEARRAY8 => {
                    let n = self.read_len(code)?;
                    let bytes = self.input.take(n)?.to_vec();
                    self.push_leaf(Value::Bytes(bytes))?;
                }

                // Containers
                op::EMPTY_TUPLE => self.push_node(Node::Tuple(Vec::new()))?,
                op::TUPLE => {
                    let items = self.pop_mark(at)?;
                    self.push_node(Node::Tuple(items))?;
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = (code - op::TUPLE1 + 1) as usize;
                    let items = self.pop_n(n, at)?;
                    self.push_node(Node::Tuple(items))?;
                }
                op::EMPTY_LIST => self.push_node(Node::List(Vec::new()))?,
                op::LIST => {
                    let items = self.pop_mark(at)?;
                    self.push_node(Node::List(items))?;
                }
                op::APPEND => {
                    let item = self.pop(at)?;
                    self.extend_list(vec![item], at)?;
                }
                op::APPENDS => {
                    let items = self.pop_mark(at)?;
                    self.extend_list(items, at)?;
                }
                op::EMPTY_DICT => self.push_node(Node::Dict(Vec::new()))?,
                op::DICT => {
                    let items = self.pop_mark(at)?;
                    let pairs = pairs_of(items, at)?;
                    self.push_node(Node::Dict(pairs))?;
                }
                op::SETITEM => {
                    let items = self.pop_n(2, at)?;
                    let pairs = pairs_of(items, at)?;
                    self.extend_dict(pairs, at)?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark(at)?;
                    let pairs = pairs_of(items, at)?;
                    self.extend_dict(pairs, at)?;
                }
                op::EMPTY_SET => self.push_node(Node::Set(Vec::new()))?,
                op::ADDITEMS => {
                    let items = self.pop_mark(at)?;
                    let target = self.top(at)?.clone();
                    match self.node_mut(&target) {
                        Some(Node::Set(set)) => set.extend(items),
                        _ => return invalid("ADDITEMS on a non-set", at),
                    }
                }
                op::FROZENSET => {
                    let items = self.pop_mark(at)?;
                    self.push_node(Node::Set(items))?;
                }

                // Memo
                op::PUT => {
                    let line = self.input.line()?;
                    let idx = memo_index(line, at)?;
                    self.put(idx, at)?;
                }
                op::BINPUT => {
                    let idx = self.input.u8()? as usize;
                    self.put(idx, at)?;
                }
                op::LONG_BINPUT => {
                    let idx = u32::from_le_bytes(self.input.array()?) as usize;
                    self.put(idx, at)?;
                }
                op::MEMOIZE => {
                    let idx = self.memo.len();
                    self.put(idx, at)?;
                }
                op::GET => {
                    let line = self.input.line()?;
                    let idx = memo_index(line, at)?;
                    self.get(idx, at)?;
                }
                op::BINGET => {
                    let idx = self.input.u8()? as usize;
                    self.get(idx, at)?;
                }
                op::LONG_BINGET => {
                    let idx = u32::from_le_bytes(self.input.array()?) as usize;
                    self.get(idx, at)?;
                }

                // Globals and objects
                op::GLOBAL => {
                    let module = utf8_line(self.input.line()?, at)?;
                    let name = utf8_line(self.input.line()?, at)?;
                    let g = global(module, name, at)?;
                    self.push_leaf(g)?;
                }
                op::STACK_GLOBAL => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let (Some(module), Some(name)) = (self.leaf_str(&module), self.leaf_str(&name))
                    else {
                        return invalid("STACK_GLOBAL needs two strings", at);
                    };
                    let g = global(module.to_owned(), name.to_owned(), at)?;
                    self.push_leaf(g)?;
                }
                op::REDUCE => {
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let args = self.tuple_items(&args, "REDUCE arguments", at)?;
                    let v = self.call(&func, args, at)?;
                    self.stack.push(v);
                }
                op::NEWOBJ => {
                    let args = self.pop(at)?;
                    let cls = self.pop(at)?;
                    let args = self.tuple_items(&args, "NEWOBJ arguments", at)?;
                    let v = self.call(&cls, args, at)?;
                    self.stack.push(v);
                }
                op::NEWOBJ_EX => {
                    let kwargs = self.pop(at)?;
                    let args = self.pop(at)?;
                    let cls = self.pop(at)?;
                    let mut args = self.tuple_items(&args, "NEWOBJ_EX arguments", at)?;
                    if matches!(self.node(&kwargs), Some(Node::Dict(d)) if !d.is_empty()) {
                        args.push(kwargs);
                    }
                    let v = self.call(&cls, args, at)?;
                    self.stack.push(v);
                }
                op::OBJ => {
                    let mut items = self.pop_mark(at)?;
                    if items.is_empty() {
                        return invalid("OBJ without a class", at);
                    }
                    let cls = items.remove(0);
                    let v = self.call(&cls, items, at)?;
                    self.stack.push(v);
                }
                op::INST => {
                    let module = utf8_line(self.input.line()?, at)?;
                    let name = utf8_line(self.input.line()?, at)?;
                    let cls = leaf(global(module, name, at)?);
                    let args = self.pop_mark(at)?;
                    let v = self.call(&cls, args, at)?;
                    self.stack.push(v);
                }
                op::BUILD => {
                    let state = self.pop(at)?;
                    let target = self.top(at)?.clone();
                    // Only recorded objects keep a state; BUILD on anything else (a tensor
                    // with attributes, a dict subclass) is ignored.
                    if let Some(Node::Object { state: slot, .. }) = self.node_mut(&target) {
                        *slot = Some(state);
                    }
                }

                // Persistent ids
                op::PERSID => {
                    let pid = utf8_line(self.input.line()?, at)?;
                    let v = persistent_load(Value::Str(pid))?;
                    let v = self.lift(v)?;
                    self.stack.push(v);
                }
                op::BINPERSID => {
                    let pid = self.pop(at)?;
                    let pid = self.unfold_value(&pid)?;
                    let v = persistent_load(pid)?;
                    let v = self.lift(v)?;
                    self.stack.push(v);
                }

                _ => {
                    return Err(PickleError::UnknownOpcode {
                        op: code,
                        offset: at,
                    })
                }
            }
        }
    }

    fn read_len(&mut self, code: u8) -> Result<usize> {
        let raw = match code {
            op::SHORT_BINUNICODE | op::SHORT_BINBYTES => self.input.u8()? as u64,
            op::BINUNICODE | op::BINBYTES => u32::from_le_bytes(self.input.array()?) as u64,
            _ => u64::from_le_bytes(self.input.array()?),
        };
        self.input.len_u64(raw)
    }

    // --- stack --------------------------------------------------------------------------------

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, at: usize) -> Result<V> {
        if self.stack.len() <= self.floor() {
            return invalid("pickle stack underflow", at);
        }
        Ok(self.stack.pop().expect("length checked"))
    }

    fn pop_n(&mut self, n: usize, at: usize) -> Result<Vec<V>> {
        if self.stack.len() < self.floor() + n {
            return invalid("pickle stack underflow", at);
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn top(&self, at: usize) -> Result<&V> {
        if self.stack.len() <= self.floor() {
            return invalid("pickle stack underflow", at);
        }
        Ok(self.stack.last().expect("length checked"))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<V>> {
        match self.marks.pop() {
            Some(mark) => Ok(self.stack.split_off(mark)),
            None => invalid("MARK expected", at),
        }
    }

    fn push_leaf(&mut self, v: Value) -> Result<()> {
        self.charge(LEAF_COST + REF_COST + payload(&v))?;
        self.stack.push(leaf(v));
        Ok(())
    }

    /// A container onto the arena, charged for itself and its slots.
    fn new_node(&mut self, node: Node) -> Result<V> {
        let slots = match &node {
            Node::List(items) | Node::Tuple(items) | Node::Set(items) => items.len(),
            Node::Dict(pairs) => 2 * pairs.len(),
            Node::Object { args, .. } => args.len() + 1,
        };
        self.charge(NODE_COST + REF_COST + slots.saturating_mul(REF_COST))?;
        self.nodes.push(node);
        Ok(V::Node(self.nodes.len() - 1))
    }

    fn push_node(&mut self, node: Node) -> Result<()> {
        let v = self.new_node(node)?;
        self.stack.push(v);
        Ok(())
    }

    fn node(&self, v: &V) -> Option<&Node> {
        match v {
            V::Node(i) => Some(&self.nodes[*i]),
            V::Leaf(_) => None,
        }
    }

    fn node_mut(&mut self, v: &V) -> Option<&mut Node> {
        match v {
            V::Node(i) => Some(&mut self.nodes[*i]),
            V::Leaf(_) => None,
        }
    }

    fn leaf_str<'v>(&self, v: &'v V) -> Option<&'v str> {
        match v {
            V::Leaf(l) => l.as_str(),
            V::Node(_) => None,
        }
    }

    fn extend_list(&mut self, items: Vec<V>, at: usize) -> Result<()> {
        let target = self.top(at)?.clone();
        match self.node_mut(&target) {
            Some(Node::List(list)) => {
                list.extend(items);
                Ok(())
            }
            _ => invalid("APPEND to a non-list", at),
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(V, V)>, at: usize) -> Result<()> {
        let target = self.top(at)?.clone();
        match self.node_mut(&target) {
            Some(Node::Dict(dict)) => {
                dict.extend(pairs);
                Ok(())
            }
            _ => invalid("SETITEM on a non-dict", at),
        }
    }

    fn put(&mut self, idx: usize, at: usize) -> Result<()> {
        self.charge(4 * REF_COST)?;
        let top = self.top(at)?.clone();
        self.memo.insert(idx, top);
        Ok(())
    }

    fn get(&mut self, idx: usize, at: usize) -> Result<()> {
        self.charge(REF_COST)?;
        match self.memo.get(&idx) {
            Some(v) => {
                self.stack.push(v.clone());
                Ok(())
            }
            None => invalid(format!("memo key {idx} not found"), at),
        }
    }

    fn tuple_items(&self, v: &V, what: &str, at: usize) -> Result<Vec<V>> {
        match self.node(v) {
            Some(Node::Tuple(items)) => Ok(items.clone()),
            _ => invalid(format!("{what} are not a tuple"), at),
        }
    }

    // --- calls ------------------------------------------------------------------------------

    /// REDUCE / NEWOBJ / OBJ / INST of an allow-listed global: recorded, never executed.
    fn call(&mut self, func: &V, args: Vec<V>, at: usize) -> Result<V> {
        let (module, name) = match func {
            V::Leaf(l) => match l.as_ref() {
                Value::Global { module, name } => (module.clone(), name.clone()),
                _ => return invalid("call of a value that is not a global", at),
            },
            V::Node(_) => return invalid("call of a value that is not a global", at),
        };
        let builtin = module == "builtins" || module == "__builtin__";
        match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict" | "defaultdict") => {
                let pairs = match (name.as_str(), args.first()) {
                    ("OrderedDict", Some(items)) => self.pairs_from(items, at)?,
                    _ => Vec::new(),
                };
                self.new_node(Node::Dict(pairs))
            }
            (_, "dict") if builtin => {
                let pairs = match args.first() {
                    Some(items) => self.pairs_from(items, at)?,
                    None => Vec::new(),
                };
                self.new_node(Node::Dict(pairs))
            }
            (_, "set" | "frozenset" | "list" | "tuple") if builtin => {
                let items = match args.first() {
                    Some(items) => self.items_of(items, at)?,
                    None => Vec::new(),
                };
                self.new_node(match name.as_str() {
                    "list" => Node::List(items),
                    "tuple" => Node::Tuple(items),
                    _ => Node::Set(items),
                })
            }
            ("_codecs", "encode") => {
                let text = args.first().and_then(|a| self.leaf_str(a));
                let encoding = args
                    .get(1)
                    .and_then(|a| self.leaf_str(a))
                    .unwrap_or("utf-8");
                let Some(text) = text else {
                    return invalid("_codecs.encode of a non-string", at);
                };
                let bytes = match encoding.to_ascii_lowercase().replace('_', "-").as_str() {
                    "latin1" | "latin-1" | "iso-8859-1" => text
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).ok())
                        .collect::<Option<Vec<u8>>>(),
                    "utf-8" | "utf8" => Some(text.as_bytes().to_vec()),
                    _ => None,
                };
                match bytes {
                    Some(b) => Ok(leaf(Value::Bytes(b))),
                    None => invalid(format!("_codecs.encode to {encoding} not supported"), at),
                }
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                let args: Vec<Value> = args
                    .iter()
                    .map(|a| self.unfold_value(a))
                    .collect::<Result<_>>()?;
                rebuild_tensor(&args, at).map(leaf)
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
                match args.into_iter().next() {
                    Some(data) => Ok(data),
                    None => invalid("_rebuild_parameter without arguments", at),
                }
            }
            // `Tensor.__reduce_ex__` of tensors carrying a Python state:
            // (func, type, args, state); the type and state are dropped.
            ("torch._tensor", "_rebuild_from_type_v2" | "_rebuild_from_type") => {
                let (Some(inner), Some(inner_args)) = (args.first(), args.get(2)) else {
                    return invalid(format!("{name} needs (func, type, args, state)"), at);
                };
                let nested = matches!(inner, V::Leaf(g) if matches!(g.as_ref(),
                    Value::Global { name, .. } if name.starts_with("_rebuild_from_type")));
                if nested {
                    return invalid(format!("nested {name}"), at);
                }
                let inner_args = self.tuple_items(inner_args, "rebuild arguments", at)?;
                self.call(&inner.clone(), inner_args, at)
            }
            ("copyreg" | "copy_reg", "_reconstructor") => match args.first() {
                Some(V::Leaf(cls)) => match cls.as_ref() {
                    Value::Global { module, name } => self.new_node(Node::Object {
                        module: module.clone(),
                        name: name.clone(),
                        args: Vec::new(),
                        state: None,
                    }),
                    _ => invalid("_reconstructor of a non-class", at),
                },
                _ => invalid("_reconstructor of a non-class", at),
            },
            _ => self.new_node(Node::Object {
                module,
                name,
                args,
                state: None,
            }),
        }
    }

    fn items_of(&self, v: &V, at: usize) -> Result<Vec<V>> {
        match self.node(v) {
            Some(Node::List(items) | Node::Tuple(items) | Node::Set(items)) => Ok(items.clone()),
            Some(Node::Dict(pairs)) => Ok(pairs.iter().map(|(k, _)| k.clone()).collect()),
            _ => invalid("expected a list, tuple or set", at),
        }
    }

    fn pairs_from(&self, v: &V, at: usize) -> Result<Vec<(V, V)>> {
        if let Some(Node::Dict(pairs)) = self.node(v) {
            return Ok(pairs.clone());
        }
        self.items_of(v, at)?
            .iter()
            .map(|item| match self.node(item) {
                Some(Node::Tuple(kv) | Node::List(kv)) if kv.len() == 2 => {
                    Ok((kv[0].clone(), kv[1].clone()))
                }
                _ => invalid("expected (key, value) pairs", at),
            })
            .collect()
    }

    // --- conversion -------------------------------------------------------------------------

    /// A caller-supplied value (from persistent_load) onto the arena.
    fn lift(&mut self, v: Value) -> Result<V> {
        let node = match v {
            Value::List(items) => Node::List(self.lift_all(items)?),
            Value::Tuple(items) => Node::Tuple(self.lift_all(items)?),
            Value::Set(items) => Node::Set(self.lift_all(items)?),
            Value::Dict(pairs) => Node::Dict(
                pairs
                    .into_iter()
                    .map(|(k, v)| Ok((self.lift(k)?, self.lift(v)?)))
                    .collect::<Result<_>>()?,
            ),
            Value::Object {
                module,
                name,
                args,
                state,
            } => Node::Object {
                module,
                name,
                args: self.lift_all(args)?,
                state: state.map(|s| self.lift(*s)).transpose()?,
            },
            other => {
                self.charge(LEAF_COST + payload(&other))?;
                return Ok(leaf(other));
            }
        };
        self.new_node(node)
    }

    fn lift_all(&mut self, items: Vec<Value>) -> Result<Vec<V>> {
        items.into_iter().map(|i| self.lift(i)).collect()
    }

    /// Unfold a stack entry into a plain tree (see the module doc for cycles and limits).
    fn unfold_value(&mut self, v: &V) -> Result<Value> {
        let mut on_path = std::mem::take(&mut self.on_path);
        on_path.resize(self.nodes.len(), false);
        let value = self.unfold(v, &mut on_path);
        if value.is_err() {
            on_path.fill(false);
        }
        self.on_path = on_path;
        value
    }

    /// Iterative (an explicit stack of frames), so the depth limit does not depend on the
    /// thread's stack size. `on_path[i]` marks the containers enclosing the current one.
    fn unfold(&mut self, root: &V, on_path: &mut [bool]) -> Result<Value> {
        let mut frames: Vec<Frame> = Vec::new();
        let mut entered = self.enter(root, on_path, 0)?;
        loop {
            match entered {
                Entered::Frame(f) => frames.push(f),
                Entered::Value(v) => match frames.last_mut() {
                    Some(parent) => parent.done.push(v),
                    None => return Ok(v),
                },
            }
            // Descend into the top frame's next child, or close the frame.
            let top = frames.last_mut().expect("a frame is open");
            entered = match top.children.get(top.done.len()).cloned() {
                Some(child) => self.enter(&child, on_path, frames.len())?,
                None => {
                    let frame = frames.pop().expect("a frame is open");
                    on_path[frame.idx] = false;
                    Entered::Value(self.close(frame))
                }
            };
        }
    }

    fn enter(&mut self, v: &V, on_path: &mut [bool], depth: usize) -> Result<Entered> {
        let idx = match v {
            V::Leaf(l) => {
                self.charge(VALUE_COST + payload(l))?;
                return Ok(Entered::Value(l.as_ref().clone()));
            }
            V::Node(i) => *i,
        };
        if on_path[idx] {
            return Ok(Entered::Value(Value::None));
        }
        if depth >= MAX_DEPTH {
            return Err(PickleError::TooDeep);
        }
        self.charge(VALUE_COST)?;
        on_path[idx] = true;
        let children: Vec<V> = match &self.nodes[idx] {
            Node::List(items) | Node::Tuple(items) | Node::Set(items) => items.clone(),
            Node::Dict(pairs) => pairs
                .iter()
                .flat_map(|(k, v)| [k.clone(), v.clone()])
                .collect(),
            Node::Object { args, state, .. } => args.iter().chain(state).cloned().collect(),
        };
        Ok(Entered::Frame(Frame {
            idx,
            done: Vec::with_capacity(children.len()),
            children,
        }))
    }

    /// The value of a frame whose children are all unfolded.
    fn close(&self, frame: Frame) -> Value {
        let mut done = frame.done;
        match &self.nodes[frame.idx] {
            Node::List(_) => Value::List(done),
            Node::Tuple(_) => Value::Tuple(done),
            Node::Set(_) => Value::Set(done),
            Node::Dict(_) => {
                let mut pairs = Vec::with_capacity(done.len() / 2);
                let mut it = done.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Value::Dict(pairs)
            }
            Node::Object {
                module,
                name,
                state,
                ..
            } => {
                let state = match state {
                    Some(_) => done.pop().map(Box::new),
                    None => None,
                };
                Value::Object {
                    module: module.clone(),
                    name: name.clone(),
                    args: done,
                    state,
                }
            }
        }
    }

    fn charge(&mut self, cost: usize) -> Result<()> {
        match self.budget.checked_sub(cost) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(PickleError::TooLarge(budget_for(self.input.data.len()))),
        }
    }
}

/// Heap bytes a value owns besides itself (strings, bytes, a tensor's shape and strides).
fn payload(v: &Value) -> usize {
    match v {
        Value::Str(s) => s.len(),
        Value::Bytes(b) | Value::BigInt(b) => b.len(),
        Value::Tensor(t) => 16 * t.shape.len() + t.storage.len(),
        Value::Storage(s) => s.key.len() + s.location.len(),
        _ => 0,
    }
}

/// A container being unfolded: its children, and the values of those done so far.
struct Frame {
    idx: usize,
    children: Vec<V>,
    done: Vec<Value>,
}

enum Entered {
    Value(Value),
    Frame(Frame),
}

// ---------------------------------------------------------------------------------------------
// Globals

/// Modules and names a pickle may reference. Nothing is ever called; this only keeps the reader
/// to the data types that checkpoints legitimately contain.
fn allowed(module: &str, name: &str) -> bool {
    let under = |root: &str| {
        module == root
            || module
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    if under("torch") || under("fairseq") || under("omegaconf") || under("numpy") {
        return true;
    }
    match module {
        "collections" => matches!(name, "OrderedDict" | "defaultdict"),
        "argparse" => name == "Namespace",
        "_codecs" => name == "encode",
        "copyreg" | "copy_reg" => name == "_reconstructor",
        "typing" | "enum" | "pathlib" => true,
        "builtins" | "__builtin__" => matches!(
            name,
            "set"
                | "frozenset"
                | "dict"
                | "list"
                | "tuple"
                | "int"
                | "float"
                | "str"
                | "bytes"
                | "bytearray"
                | "bool"
                | "slice"
                | "complex"
                | "object"
        ),
        _ => false,
    }
}

fn global(module: String, name: String, at: usize) -> Result<Value> {
    if allowed(&module, &name) {
        Ok(Value::Global { module, name })
    } else {
        Err(PickleError::ForbiddenGlobal {
            module,
            name,
            offset: at,
        })
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`
/// (and the older `_rebuild_tensor(storage, offset, size, stride)`).
fn rebuild_tensor(args: &[Value], at: usize) -> Result<Value> {
    let bad = |what: &str| invalid(format!("_rebuild_tensor: {what}"), at);
    let (Some(Value::Storage(storage)), Some(offset), Some(size), Some(stride)) =
        (args.first(), args.get(1), args.get(2), args.get(3))
    else {
        return bad("expected (storage, offset, size, stride, ...)");
    };
    let to_usize = |v: &Value| v.as_i64().and_then(|i| usize::try_from(i).ok());
    let dims = |v: &Value| match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(to_usize).collect(),
        _ => None,
    };
    let Some(offset) = to_usize(offset) else {
        return bad("storage offset is not a non-negative integer");
    };
    let (Some(shape), Some(stride)) = (dims(size), dims(stride)) else {
        return bad("size or stride is not a tuple of non-negative integers");
    };
    let shape: Vec<usize> = shape;
    let stride: Vec<usize> = stride;
    if shape.len() != stride.len() {
        return bad("size and stride differ in length");
    }
    Ok(Value::Tensor(TensorRef {
        storage: storage.key.clone(),
        dtype: storage.dtype,
        offset,
        shape,
        stride,
    }))
}

// ---------------------------------------------------------------------------------------------
// Literals

fn utf8_line(line: &[u8], at: usize) -> Result<String> {
    match std::str::from_utf8(line) {
        Ok(s) => Ok(s.trim_end_matches('\r').to_owned()),
        Err(_) => invalid("invalid UTF-8 in text argument", at),
    }
}

fn memo_index(line: &[u8], at: usize) -> Result<usize> {
    match std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(i) => Ok(i),
        None => invalid("bad memo index", at),
    }
}

/// A Python 2 `str`: text when it is valid UTF-8 (as torch.load's `encoding="utf-8"` does),
/// otherwise bytes.
fn py2_str(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(s) => Value::Str(s),
        Err(e) => Value::Bytes(e.into_bytes()),
    }
}

/// Little-endian two's complement bytes → Int, or BigInt when wider than i64.
fn int_from_le(bytes: &[u8]) -> Value {
    let mut b = bytes.to_vec();
    // Drop redundant sign-extension bytes.
    while b.len() > 1 {
        let last = b[b.len() - 1];
        let prev_sign = b[b.len() - 2] & 0x80;
        if (last == 0 && prev_sign == 0) || (last == 0xff && prev_sign != 0) {
            b.pop();
        } else {
            break;
        }
    }
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut full = [fill; 8];
        full[..b.len()].copy_from_slice(&b);
        return Value::Int(i64::from_le_bytes(full));
    }
    Value::BigInt(b)
}

/// A decimal INT / LONG literal.
fn parse_decimal(text: &[u8], at: usize) -> Result<Value> {
    const MAX_DIGITS: usize = 4096;
    let text = std::str::from_utf8(text).unwrap_or("").trim();
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Value::Int(i));
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.bytes().all(|c| c.is_ascii_digit())
    {
        return invalid("bad integer literal", at);
    }
    // Magnitude, little-endian base 256.
    let mut mag: Vec<u8> = vec![0];
    for d in digits.bytes() {
        let mut carry = u32::from(d - b'0');
        for byte in mag.iter_mut() {
            let x = u32::from(*byte) * 10 + carry;
            *byte = x as u8;
            carry = x >> 8;
        }
        if carry > 0 {
            mag.push(carry as u8);
        }
    }
    mag.push(0); // room for the sign bit
    if negative {
        // Two's complement: invert and add one.
        let mut carry = 1u16;
        for byte in mag.iter_mut() {
            let x = u16::from(!*byte) + carry;
            *byte = x as u8;
            carry = x >> 8;
        }
    }
    Ok(int_from_le(&mag))
}

/// The body of a protocol-0 STRING: a quoted Python `repr` with backslash escapes.
fn unquote_string(line: &[u8], at: usize) -> Result<Vec<u8>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let body = match line {
        [q, body @ .., q2] if (*q == b'\'' || *q == b'"') && q == q2 => body,
        _ => return invalid("STRING literal is not quoted", at),
    };
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = body.get(i) else {
            return invalid("STRING literal ends in a backslash", at);
        };
        i += 1;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match body.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let hex = body
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => return invalid("bad \\x escape in STRING literal", at),
                }
            }
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'\\' | b'\'' | b'"' => out.push(e),
            b'\n' => {}
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// Protocol-0 UNICODE: `raw-unicode-escape` (latin-1 bytes with `\uXXXX` / `\UXXXXXXXX`).
fn raw_unicode_escape(line: &[u8], at: usize) -> Result<String> {
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        if c == b'\\' && matches!(line.get(i + 1), Some(b'u' | b'U')) {
            let n = if line[i + 1] == b'u' { 4 } else { 8 };
            let ch = line
                .get(i + 2..i + 2 + n)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .and_then(char::from_u32);
            match ch {
                Some(ch) => out.push(ch),
                None => return invalid("bad escape in UNICODE literal", at),
            }
            i += 2 + n;
        } else {
            out.push(char::from(c));
            i += 1;
        }
    }
    Ok(out)
}

fn pairs_of(items: Vec<V>, at: usize) -> Result<Vec<(V, V)>> {
    if !items.len().is_multiple_of(2) {
        return invalid("odd number of items for a dict", at);
    }
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((k, v));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(data: &[u8]) -> Result<Value> {
        parse(data, &mut |_| {
            Err(PickleError::Custom("no persistent ids".into()))
        })
    }

    #[test]
    fn scalars_and_containers() {
        // {'a': [1, -2, 3.5, None, True], 'b': (b'xy', 'é'), 'big': 2**70}
        let v = p(b"\x80\x02}q\x00(X\x01\x00\x00\x00a]q\x01(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00bC\x02xyX\x02\x00\x00\x00\xc3\xa9\x86X\x03\x00\x00\x00big\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00@u.").unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![
                Value::Int(1),
                Value::Int(-2),
                Value::Float(3.5),
                Value::None,
                Value::Bool(true)
            ]))
        );
        assert_eq!(
            v.get("b"),
            Some(&Value::Tuple(vec![
                Value::Bytes(b"xy".to_vec()),
                Value::Str("é".into())
            ]))
        );
        assert_eq!(
            v.get("big"),
            Some(&Value::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0, 0x40]))
        );
    }

    #[test]
    fn protocol0_literals() {
        let v = p(b"(lp0\nI01\naL-12345678901234567890L\naF0.25\naS'a\\'b\\x41'\naVx\\u00e9\na.")
            .unwrap();
        let Value::List(items) = v else { panic!() };
        assert_eq!(items[0], Value::Bool(true));
        // -12345678901234567890 as two's complement little-endian.
        let expected = (-12345678901234567890i128).to_le_bytes()[..9].to_vec();
        assert_eq!(items[1], Value::BigInt(expected));
        assert_eq!(items[2], Value::Float(0.25));
        assert_eq!(items[3], Value::Str("a'bA".into()));
        assert_eq!(items[4], Value::Str("xé".into()));
    }

    #[test]
    fn ordered_dict_and_shared_memo() {
        // OrderedDict() then SETITEMS; the list is memoised and referenced twice.
        let v = p(b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00k]q\x02X\x01\x00\x00\x00lh\x02u.").unwrap();
        assert_eq!(v.get("k"), Some(&Value::List(vec![])));
        assert_eq!(v.get("l"), Some(&Value::List(vec![])));
    }

    #[test]
    fn cycles_become_none() {
        // l = []; l.append(l)
        let v = p(b"\x80\x02]q\x00h\x00a.").unwrap();
        assert_eq!(v, Value::List(vec![Value::None]));
    }

    #[test]
    fn hostile_inputs_error() {
        let e = p(b"cos\nsystem\n(S'echo hi'\ntR.").unwrap_err();
        assert!(e.to_string().contains("forbidden global os.system"), "{e}");
        let e = p(b"\x80\x02\xff.").unwrap_err();
        assert_eq!(e.to_string(), "unknown opcode 0xff at offset 2");
        let e = p(b"\x80\x02X\xff\xff\xff\xffab").unwrap_err();
        assert!(e.to_string().starts_with("truncated pickle"), "{e}");
        let e = p(b"\x80\x02]").unwrap_err();
        assert!(e.to_string().starts_with("truncated pickle"), "{e}");
        let e = p(b"a.").unwrap_err();
        assert!(e.to_string().contains("underflow"), "{e}");
        // Deep nesting: 100k TUPLE1s.
        let mut deep = b"\x80\x02N".to_vec();
        deep.extend(std::iter::repeat_n(0x85u8, 100_000));
        deep.push(b'.');
        assert!(matches!(p(&deep), Err(PickleError::TooDeep)));
        // Exponential sharing: t = (t, t) 200 times.
        let mut wide = b"\x80\x02N".to_vec();
        for _ in 0..200 {
            wide.extend(b"2\x86"); // DUP, TUPLE2
        }
        wide.push(b'.');
        assert!(matches!(p(&wide), Err(PickleError::TooLarge(_))));
    }
}
