//! Checkpoint averaging with the semantics of fairseq's `scripts/average_checkpoints.py`,
//! in bounded memory: inputs are opened one at a time (memory-mapped) and summed tensor by
//! tensor, in the order given, into one accumulator per storage (tied tables are read and
//! summed once while every input ties them, and stay tied in the output); then floats are
//! divided by N (true division) and integers floor-divided. Every input's key list must
//! equal the first's. Each input tensor's mapped pages are released once it is added, so
//! the peak is one model of sums plus one input tensor.
//!
//! Accumulators: f32 for f32 / f16 / bf16 (fairseq upcasts only f16 and would sum bf16 in
//! bf16; we deliberately upcast bf16 too), f64 for f64, i64 for integers. The top level
//! besides the state dict is the first input's (fairseq's `new_state`), see [`Carried`].

use crate::read::{Checkpoint, Hparams, ReadError};
use crate::tensor::{DType, RawTensor};
use crate::write::torch::Carried;
use indicatif::ProgressBar;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The result of [`average`].
pub struct Averaged {
    pub inputs: Vec<PathBuf>,
    /// The averaged state dict in the first input's key order: float tensors in f32 (f64
    /// stays f64), integer tensors in their own dtype.
    pub tensors: Vec<(String, RawTensor)>,
    /// The first input's top level besides its state dict.
    pub carried: Carried,
    /// The first input's hyper-parameters.
    pub hparams: Hparams,
    /// The first input's safetensors metadata (empty for torch files).
    pub metadata: BTreeMap<String, String>,
    /// How many input tensors (over all inputs) were stored in each dtype.
    pub input_dtypes: BTreeMap<DType, usize>,
    pub notes: Vec<String>,
}

/// A running sum.
#[derive(Clone)]
enum Acc {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Int(Vec<i64>, DType),
    /// Booleans cannot be summed (torch refuses to floor-divide them): they must agree.
    Bool(Vec<u8>),
}

fn ints(t: &RawTensor) -> Vec<i64> {
    let b = t.bytes.as_slice();
    match t.dtype {
        DType::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        DType::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64)
            .collect(),
        DType::I16 => b
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
        DType::U8 => b.iter().map(|&x| x as i64).collect(),
        _ => t.to_f64().into_iter().map(|x| x as i64).collect(),
    }
}

fn int_bytes(v: &[i64], d: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * d.size());
    for &x in v {
        match d {
            DType::I32 => out.extend_from_slice(&(x as i32).to_le_bytes()),
            DType::I16 => out.extend_from_slice(&(x as i16).to_le_bytes()),
            DType::I8 => out.push(x as i8 as u8),
            DType::U8 => out.push(x as u8),
            _ => out.extend_from_slice(&x.to_le_bytes()),
        }
    }
    out
}

/// Python's `//` for integers: rounds towards negative infinity.
fn floor_div(a: i64, n: i64) -> i64 {
    let q = a.wrapping_div(n);
    if a % n != 0 && ((a < 0) != (n < 0)) {
        q - 1
    } else {
        q
    }
}

impl Acc {
    fn start(t: &RawTensor) -> Acc {
        match t.dtype {
            DType::F64 => Acc::F64(t.to_f64()),
            d if d.is_float() => Acc::F32(t.to_f32()),
            DType::Bool => Acc::Bool(t.bytes.as_slice().to_vec()),
            d => Acc::Int(ints(t), d),
        }
    }

    /// `acc += t` as torch computes it in place (the accumulator keeps its dtype).
    fn add(&mut self, t: &RawTensor) -> Result<(), String> {
        match self {
            Acc::F32(acc) if t.dtype == DType::F64 => {
                for (a, x) in acc.iter_mut().zip(t.to_f64()) {
                    *a = (*a as f64 + x) as f32;
                }
            }
            Acc::F32(acc) => match bytemuck::try_cast_slice::<u8, f32>(t.bytes.as_slice()) {
                // f32 storages are usually aligned in the map: add them without a copy.
                Ok(xs) if t.dtype == DType::F32 && cfg!(target_endian = "little") => {
                    for (a, x) in acc.iter_mut().zip(xs) {
                        *a += x;
                    }
                }
                _ => {
                    for (a, x) in acc.iter_mut().zip(t.to_f32()) {
                        *a += x;
                    }
                }
            },
            Acc::F64(acc) => {
                for (a, x) in acc.iter_mut().zip(t.to_f64()) {
                    *a += x;
                }
            }
            Acc::Int(acc, _) if t.dtype.is_float() => {
                return Err(format!(
                    "is {} here but an integer tensor in the first checkpoint",
                    t.dtype
                ))
            }
            Acc::Int(acc, _) => {
                for (a, x) in acc.iter_mut().zip(ints(t)) {
                    *a = a.wrapping_add(x);
                }
            }
            Acc::Bool(acc) => {
                if t.dtype != DType::Bool || t.bytes.as_slice() != acc.as_slice() {
                    return Err(
                        "is a bool tensor that differs between checkpoints (booleans cannot be averaged)"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Divide by `n`: floats by true division, integers by floor division.
    fn finish(self, shape: Vec<usize>, n: usize) -> RawTensor {
        match self {
            Acc::F32(mut v) => {
                let d = n as f32;
                v.iter_mut().for_each(|x| *x /= d);
                RawTensor::from_f32(shape, &v)
            }
            Acc::F64(v) => {
                let d = n as f64;
                let bytes: Vec<u8> = v.iter().flat_map(|x| (x / d).to_le_bytes()).collect();
                RawTensor {
                    dtype: DType::F64,
                    shape,
                    bytes: bytes.into(),
                }
            }
            Acc::Int(v, dtype) => {
                let q: Vec<i64> = v.iter().map(|&x| floor_div(x, n as i64)).collect();
                RawTensor {
                    dtype,
                    shape,
                    bytes: int_bytes(&q, dtype).into(),
                }
            }
            Acc::Bool(v) => RawTensor {
                dtype: DType::Bool,
                shape,
                bytes: v.into(),
            },
        }
    }
}

/// The running sum of one state-dict entry.
enum Slot {
    Sum(Acc),
    /// Tied to the earlier entry at this index (never itself tied) in every input so far,
    /// so summed there and not read again.
    Tied(usize),
}

/// Entries tied in the inputs so far but not in the one being opened (`tied_here`, entry
/// → the entry it shares storage with) get their own sum from here on: the sum so far of
/// the entry they were tied to (every input so far held the same values in both).
fn untie_where_untied(accs: &mut [(Vec<usize>, Slot)], tied_here: &HashMap<usize, usize>) {
    for j in 0..accs.len() {
        if let Slot::Tied(k) = accs[j].1 {
            if tied_here.get(&j) != Some(&k) {
                if let Slot::Sum(a) = &accs[k].1 {
                    accs[j].1 = Slot::Sum(a.clone());
                }
            }
        }
    }
}

/// An entry still marked tied although [`untie_where_untied`] ran: cannot happen (ties
/// point at entries that are never tied themselves); an error rather than a panic.
fn unreachable_tie<T>(path: &Path, name: &str) -> Result<T, ReadError> {
    Err(ReadError::new(
        path,
        format!("internal error: tensor {name} lost its tied sum"),
    ))
}

/// Where two key lists first differ, as a message.
fn key_difference(first: &[String], other: &[String], first_path: &Path) -> Option<String> {
    let base = first_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| first_path.display().to_string());
    for (i, (a, b)) in first.iter().zip(other).enumerate() {
        if a != b {
            let why = if !other.contains(a) {
                format!("lacks '{a}' (position {i} in {base})")
            } else if !first.contains(b) {
                format!("has '{b}' which {base} lacks")
            } else {
                format!(
                    "has '{b}' at position {i} where {base} has '{a}' (same keys, different order)"
                )
            };
            return Some(format!("state dict keys differ from {base}'s: {why}"));
        }
    }
    match other.len().cmp(&first.len()) {
        std::cmp::Ordering::Less => Some(format!(
            "state dict keys differ from {base}'s: lacks '{}'",
            first[other.len()]
        )),
        std::cmp::Ordering::Greater => Some(format!(
            "state dict keys differ from {base}'s: has '{}' which {base} lacks",
            other[first.len()]
        )),
        std::cmp::Ordering::Equal => None,
    }
}

/// The (entry, earlier entry) index pairs of `ckpt` that share one storage (tied tables).
fn input_ties(ckpt: &Checkpoint) -> Vec<(usize, usize)> {
    let index: std::collections::HashMap<&str, usize> = ckpt
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.name.as_str(), i))
        .collect();
    ckpt.entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i, *index.get(e.tied_to.as_deref()?)?)))
        .collect()
}

/// Make the averages of tied entries one tensor again (one storage in a `.pt`), where
/// their averaged bytes agree (they do when every input ties them).
fn retie(tensors: &mut [(String, RawTensor)], ties: &[(usize, usize)]) {
    for &(i, j) in ties {
        let (Some(a), Some(b)) = (tensors.get(i), tensors.get(j)) else {
            continue;
        };
        let same = a.1.dtype == b.1.dtype
            && a.1.shape == b.1.shape
            && a.1.bytes.as_slice() == b.1.bytes.as_slice();
        if same {
            tensors[i].1 = tensors[j].1.clone();
        }
    }
}

/// Average `inputs` in the order given (fairseq's `--inputs`). Peak memory is one
/// accumulator per storage plus the one input tensor being read. `progress` advances once per
/// tensor read; its length is set when the first input is open.
pub fn average(inputs: &[PathBuf], progress: &ProgressBar) -> Result<Averaged, ReadError> {
    let Some(first_path) = inputs.first() else {
        return Err(ReadError::new(Path::new("average"), "no checkpoints given"));
    };
    let n = inputs.len();
    let mut keys: Vec<String> = Vec::new();
    // (entry, earlier entry) pairs sharing one storage in the first input.
    let mut ties: Vec<(usize, usize)> = Vec::new();
    let mut accs: Vec<(Vec<usize>, Slot)> = Vec::new();
    let mut carried = None;
    let mut hparams = Hparams::new();
    let mut metadata = BTreeMap::new();
    let mut input_dtypes: BTreeMap<DType, usize> = BTreeMap::new();
    for (i, path) in inputs.iter().enumerate() {
        progress.set_message(
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let ckpt = Checkpoint::open(path)?;
        let names: Vec<String> = ckpt.entries.iter().map(|e| e.name.clone()).collect();
        let tied_here: HashMap<usize, usize> = input_ties(&ckpt).into_iter().collect();
        if i == 0 {
            if names.is_empty() {
                return Err(ReadError::new(path, "state dict holds no tensors"));
            }
            progress.set_length((n * names.len()) as u64);
            carried = Some(Carried::from_checkpoint(&ckpt));
            hparams = ckpt.hparams.clone();
            metadata = ckpt.metadata.clone();
            ties = input_ties(&ckpt);
            keys = names;
        } else if let Some(msg) = key_difference(&keys, &names, first_path) {
            return Err(ReadError::new(path, msg));
        } else {
            untie_where_untied(&mut accs, &tied_here);
        }
        for (j, name) in keys.iter().enumerate() {
            let e = &ckpt.entries[j];
            *input_dtypes.entry(e.dtype).or_default() += 1;
            progress.inc(1);
            let tie = tied_here.get(&j).copied();
            if i == 0 {
                if let Some(k) = tie {
                    accs.push((e.shape.clone(), Slot::Tied(k)));
                    continue;
                }
                let t = ckpt.tensor(name)?;
                accs.push((t.shape.clone(), Slot::Sum(Acc::start(&t))));
                continue;
            }
            let (shape, slot) = &mut accs[j];
            let acc = match slot {
                Slot::Tied(k) if tie == Some(*k) => continue, // summed with entry k
                Slot::Tied(_) => unreachable_tie(path, name)?,
                Slot::Sum(acc) => acc,
            };
            let t = ckpt.tensor(name)?;
            if *shape != t.shape {
                return Err(ReadError::new(
                    path,
                    format!(
                        "tensor {name} has shape {:?}, {} has {shape:?}",
                        t.shape,
                        first_path.display()
                    ),
                ));
            }
            acc.add(&t)
                .map_err(|m| ReadError::new(path, format!("tensor {name} {m}")))?;
            // `t` dropped: its mapped pages leave the resident set.
        }
        // `ckpt` (and its memory map) is dropped here, before the next input opens.
    }
    let mut tensors: Vec<(String, RawTensor)> = Vec::with_capacity(keys.len());
    for (name, (shape, slot)) in keys.into_iter().zip(accs) {
        let t = match slot {
            // One buffer: a `.pt` output keeps the tie.
            Slot::Tied(k) => tensors[k].1.clone(),
            Slot::Sum(acc) => acc.finish(shape, n),
        };
        tensors.push((name, t));
    }
    retie(&mut tensors, &ties);
    let mut notes = Vec::new();
    if input_dtypes.contains_key(&DType::F16) {
        notes.push("f16 tensors were upcast to f32 before summing (as fairseq does)".into());
    }
    if input_dtypes.contains_key(&DType::BF16) {
        notes.push(
            "bf16 tensors were upcast to f32 before summing (fairseq would sum them in bf16)"
                .into(),
        );
    }
    let carried = carried.unwrap_or_else(|| Carried::skeleton(&hparams));
    notes.extend(carried.notes.iter().cloned());
    Ok(Averaged {
        inputs: inputs.to_vec(),
        tensors,
        carried,
        hparams,
        metadata,
        input_dtypes,
        notes,
    })
}

/// The checkpoints fairseq's `--num-epoch-checkpoints N` (`checkpointE.pt`, by epoch E) or
/// `--num-update-checkpoints N` (`checkpoint_E_U.pt`, by update U) picks in `dir`: the N
/// newest, newest first.
pub fn last_checkpoints(dir: &Path, n: usize, by_update: bool) -> Result<Vec<PathBuf>, ReadError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ReadError::new(dir, e.to_string()))?;
    let mut found: Vec<(u64, String)> = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| ReadError::new(dir, e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(k) = checkpoint_number(&name, by_update) {
            found.push((k, name));
        }
    }
    if n == 0 {
        return Err(ReadError::new(dir, "need at least one checkpoint"));
    }
    if found.len() < n {
        let pattern = if by_update {
            "checkpoint_E_U.pt"
        } else {
            "checkpointN.pt"
        };
        return Err(ReadError::new(
            dir,
            format!(
                "found {} {pattern} files but need at least {n}",
                found.len()
            ),
        ));
    }
    // fairseq: sorted((number, name), reverse=True)[:n]
    found.sort_by(|a, b| b.cmp(a));
    Ok(found
        .into_iter()
        .take(n)
        .map(|(_, name)| dir.join(name))
        .collect())
}

/// `checkpoint(\d+)\.pt` → epoch, or `checkpoint_\d+_(\d+)\.pt` → update (whole name).
fn checkpoint_number(name: &str, by_update: bool) -> Option<u64> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let stem = name.strip_prefix("checkpoint")?.strip_suffix(".pt")?;
    if by_update {
        let (e, u) = stem.strip_prefix('_')?.split_once('_')?;
        (digits(e) && digits(u)).then(|| u.parse().ok()).flatten()
    } else {
        digits(stem).then(|| stem.parse().ok()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_division_rounds_down() {
        assert_eq!(floor_div(9, 2), 4);
        assert_eq!(floor_div(-9, 2), -5);
        assert_eq!(floor_div(-8, 2), -4);
        assert_eq!(floor_div(0, 5), 0);
    }

    #[test]
    fn checkpoint_names() {
        assert_eq!(checkpoint_number("checkpoint40.pt", false), Some(40));
        assert_eq!(checkpoint_number("checkpoint_best.pt", false), None);
        assert_eq!(checkpoint_number("checkpoint_last.pt", false), None);
        assert_eq!(checkpoint_number("checkpoint_3_1200.pt", false), None);
        assert_eq!(checkpoint_number("checkpoint_3_1200.pt", true), Some(1200));
        assert_eq!(checkpoint_number("checkpoint40.pt", true), None);
        assert_eq!(checkpoint_number("checkpoint.pt", false), None);
    }

    #[test]
    fn key_differences_name_the_key() {
        let a: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        let p = Path::new("dir/c1.pt");
        assert_eq!(key_difference(&a, &a, p), None);
        let b: Vec<String> = ["x", "z"].map(String::from).to_vec();
        assert!(key_difference(&a, &b, p).unwrap().contains("lacks 'y'"));
        let c: Vec<String> = ["x", "y", "z", "w"].map(String::from).to_vec();
        assert!(key_difference(&a, &c, p).unwrap().contains("has 'w'"));
        let d: Vec<String> = ["x", "z", "y"].map(String::from).to_vec();
        assert!(key_difference(&a, &d, p)
            .unwrap()
            .contains("different order"));
    }
}
