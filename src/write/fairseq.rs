//! A [`Model`] as fairseq 0.12 names it: separate q/k/v projections,
//! `decoder.output_projection.weight`, `*.version` buffers, learned position
//! tables when present; plus the fairseq model arguments that rebuild it
//! (`load_state_dict(strict=True)` into `TransformerModel.build_model`).
//! [`plain_carried`] puts a carried top level (`average` / `cast` `-o X.pt`) into the same
//! plain layout [`checkpoint`] writes.

use super::torch::{Carried, Py};
use crate::spec::*;
use crate::tensor::{DType, RawTensor};
use crate::transform::cast::{self, CastStats};
use ndarray::{Array1, Array2};
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// Named tensors in fairseq's `state_dict()` order, converted to `dtype`.
pub struct StateDict {
    pub tensors: Vec<(String, RawTensor)>,
    pub stats: CastStats,
}

/// One tensor of the state dict as float32 values borrowed from the model
/// (owned only for what the model does not store: zero biases, `version`).
pub struct Entry<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [f32]>,
}

struct Builder<'a> {
    out: Vec<Entry<'a>>,
}

impl<'a> Builder<'a> {
    fn push(&mut self, name: String, shape: Vec<usize>, data: Cow<'a, [f32]>) {
        self.out.push(Entry { name, shape, data });
    }
    fn mat(&mut self, name: String, m: &'a Array2<f32>) {
        let data = match m.as_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(m.iter().copied().collect()),
        };
        self.push(name, m.shape().to_vec(), data);
    }
    fn vec(&mut self, name: String, a: &'a Array1<f32>) {
        let data = match a.as_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(a.to_vec()),
        };
        self.push(name, vec![a.len()], data);
    }
    fn linear(&mut self, p: &str, l: &'a Linear) {
        self.mat(format!("{p}.weight"), &l.weight);
        match &l.bias {
            Some(b) => self.vec(format!("{p}.bias"), b),
            None => {
                let n = l.weight.nrows();
                self.push(format!("{p}.bias"), vec![n], Cow::Owned(vec![0.0; n]))
            }
        }
    }
    fn norm(&mut self, p: &str, n: &'a Option<LayerNorm>) {
        if let Some(n) = n {
            self.vec(format!("{p}.weight"), &n.gamma);
            self.vec(format!("{p}.bias"), &n.beta);
        }
    }
    fn attention(&mut self, p: &str, a: &'a Attention) {
        // fairseq 0.12 MultiheadAttention registers k, v, q, out in this order.
        self.linear(&format!("{p}.k_proj"), &a.k);
        self.linear(&format!("{p}.v_proj"), &a.v);
        self.linear(&format!("{p}.q_proj"), &a.q);
        self.linear(&format!("{p}.out_proj"), &a.out);
    }
    fn embedding(&mut self, stack: &str, e: &'a Embedding) {
        self.mat(format!("{stack}.embed_tokens.weight"), &e.tokens);
        if let Positions::Learned(t) = &e.positions {
            self.mat(format!("{stack}.embed_positions.weight"), t);
        }
        self.norm(&format!("{stack}.layernorm_embedding"), &e.layernorm);
    }
    fn version(&mut self, stack: &str) {
        self.push(format!("{stack}.version"), vec![1], Cow::Owned(vec![3.0]));
    }
}

/// The model's weights under fairseq 0.12 names, in `state_dict()` order,
/// borrowed (no copy): what [`state_dict`] converts and what
/// [`super::safetensors::write_entries`] streams to a file.
/// Residual scales must have been folded first (they have no fairseq name).
pub fn entries(m: &Model) -> Vec<Entry<'_>> {
    let w = &m.weights;
    let mut b = Builder { out: Vec::new() };
    b.version("encoder");
    b.embedding("encoder", &w.encoder_embed);
    for (i, l) in w.encoder_layers.iter().enumerate() {
        let p = format!("encoder.layers.{i}");
        b.attention(&format!("{p}.self_attn"), &l.self_attn.f);
        b.norm(&format!("{p}.self_attn_layer_norm"), &l.self_attn.norm);
        b.linear(&format!("{p}.fc1"), &l.ffn.f.fc1);
        b.linear(&format!("{p}.fc2"), &l.ffn.f.fc2);
        b.norm(&format!("{p}.final_layer_norm"), &l.ffn.norm);
    }
    b.norm("encoder.layer_norm", &w.encoder_final_norm);
    b.version("decoder");
    b.embedding("decoder", &w.decoder_embed);
    for (i, l) in w.decoder_layers.iter().enumerate() {
        let p = format!("decoder.layers.{i}");
        b.attention(&format!("{p}.self_attn"), &l.self_attn.f);
        b.norm(&format!("{p}.self_attn_layer_norm"), &l.self_attn.norm);
        b.attention(&format!("{p}.encoder_attn"), &l.cross_attn.f);
        b.norm(&format!("{p}.encoder_attn_layer_norm"), &l.cross_attn.norm);
        b.linear(&format!("{p}.fc1"), &l.ffn.f.fc1);
        b.linear(&format!("{p}.fc2"), &l.ffn.f.fc2);
        b.norm(&format!("{p}.final_layer_norm"), &l.ffn.norm);
    }
    b.norm("decoder.layer_norm", &w.decoder_final_norm);
    b.mat(
        "decoder.output_projection.weight".into(),
        &w.output_projection,
    );
    b.out
}

/// Elements converted at a time when counting or streaming (4 MB of f32).
pub const CHUNK: usize = 1 << 20;

/// What converting `entries` to `dtype` would lose (and the NaN / Inf they
/// hold), counted a chunk at a time without a converted copy of the model.
pub fn cast_stats(entries: &[Entry], dtype: DType) -> CastStats {
    let mut stats = CastStats::default();
    for e in entries {
        for c in e.data.chunks(CHUNK) {
            let st = if dtype == DType::F32 {
                CastStats {
                    nan: c.iter().filter(|x| x.is_nan()).count(),
                    inf: c.iter().filter(|x| x.is_infinite()).count(),
                    ..CastStats::default()
                }
            } else {
                cast::from_f32(dtype, vec![c.len()], c).1
            };
            stats.add(&st);
        }
    }
    stats
}

/// The model's weights under fairseq 0.12 names, in `dtype` (f32/f16/bf16):
/// [`entries`] converted, a full copy (streaming writers use [`entries`]).
pub fn state_dict(m: &Model, dtype: DType) -> StateDict {
    let mut stats = CastStats::default();
    let tensors = entries(m)
        .into_iter()
        .map(|e| {
            let (t, st) = cast::from_f32(dtype, e.shape, &e.data);
            stats.add(&st);
            (e.name, t)
        })
        .collect();
    StateDict { tensors, stats }
}

/// fairseq model arguments that rebuild `m` with `--arch transformer`.
pub fn fairseq_args(m: &Model) -> Map<String, Value> {
    let c = &m.config;
    let v = json!({
        "arch": "transformer",
        "encoder_layers": c.encoder_layers,
        "decoder_layers": c.decoder_layers,
        "encoder_embed_dim": c.encoder_embed_dim,
        "decoder_embed_dim": c.decoder_embed_dim,
        "decoder_output_dim": c.decoder_embed_dim,
        "decoder_input_dim": c.decoder_embed_dim,
        "encoder_ffn_embed_dim": c.encoder_ffn_embed_dim,
        "decoder_ffn_embed_dim": c.decoder_ffn_embed_dim,
        "encoder_attention_heads": c.encoder_attention_heads,
        "decoder_attention_heads": c.decoder_attention_heads,
        "activation_fn": c.activation_fn.name(),
        "encoder_normalize_before": c.encoder_normalize_before,
        "decoder_normalize_before": c.decoder_normalize_before,
        "share_all_embeddings": c.share_all_embeddings,
        "share_decoder_input_output_embed": c.share_decoder_input_output_embed,
        "no_scale_embedding": c.no_scale_embedding,
        "layernorm_embedding": c.layernorm_embedding,
        "encoder_learned_pos": c.encoder_learned_pos,
        "decoder_learned_pos": c.decoder_learned_pos,
        "no_token_positional_embeddings": c.no_token_positional_embeddings,
        "max_source_positions": c.max_source_positions,
        "max_target_positions": c.max_target_positions,
        "no_decoder_final_norm": c.decoder_normalize_before && m.weights.decoder_final_norm.is_none(),
        "adaptive_input": false,
        "tie_adaptive_weights": false,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
    });
    match v {
        Value::Object(o) => o,
        _ => Map::new(),
    }
}

/// A dict that is also a Namespace: `collections.OrderedDict(items)` with
/// the same pairs as attributes (pickle BUILD). fairseq reads `cfg['model']`
/// by key, `ct2-fairseq-converter` by attribute, and
/// `torch.load(weights_only=True)` accepts both (no class is pickled).
fn attr_dict(pairs: Vec<(String, Py)>) -> Py {
    let items = pairs
        .iter()
        .map(|(k, v)| Py::Tuple(vec![Py::Str(k.clone()), v.clone()]))
        .collect();
    let state = pairs.into_iter().map(|(k, v)| (Py::Str(k), v)).collect();
    Py::Reduce {
        module: "collections".into(),
        name: "OrderedDict".into(),
        args: vec![Py::List(items)],
        state: Some(Box::new(Py::Dict(state))),
    }
}

fn dict(pairs: Vec<(&str, Py)>) -> Py {
    Py::Dict(pairs.into_iter().map(|(k, v)| (Py::str(k), v)).collect())
}

/// `m` as a fairseq 0.12 checkpoint object (`torch.save` layout): `args`
/// None, `cfg` plain nested dicts (`cfg['model']` an attribute-carrying
/// OrderedDict, see [`attr_dict`]), `model` the state dict in `dtype` with
/// tied tables sharing one storage, and the optimizer history / extra
/// state fairseq's loader expects. No pickled classes, so
/// `torch.load(weights_only=True)` reads it.
pub fn checkpoint(m: &Model, dtype: DType) -> (Py, CastStats) {
    let mut sd = state_dict(m, dtype);
    tie(&mut sd.tensors, m.tying);
    let mut args: Vec<(String, Py)> = fairseq_args(m)
        .iter()
        .map(|(k, v)| (k.clone(), Py::from_json(v)))
        .collect();
    args.push(("_name".into(), Py::str("transformer")));
    args.push(("task".into(), Py::str("translation")));
    let cfg = dict(vec![
        ("_name", Py::None),
        ("common", dict(vec![("_name", Py::None)])),
        ("model", attr_dict(args)),
        (
            "task",
            dict(vec![
                ("_name", Py::str("translation")),
                ("data", Py::str("")),
            ]),
        ),
    ]);
    let history = Py::List(vec![dict(vec![
        ("criterion_name", Py::str("CrossEntropyCriterion")),
        ("optimizer_name", Py::str("FairseqAdam")),
        ("lr_scheduler_state", dict(vec![("best", Py::None)])),
        ("num_updates", Py::Int(0)),
    ])]);
    let model = Py::OrderedDict(
        sd.tensors
            .into_iter()
            .map(|(k, t)| (Py::Str(k), Py::Tensor(t)))
            .collect(),
    );
    let top = dict(vec![
        ("args", Py::None),
        ("cfg", cfg),
        ("model", model),
        ("optimizer_history", history),
        (
            "extra_state",
            dict(vec![("train_iterator", dict(vec![("epoch", Py::Int(0))]))]),
        ),
        ("last_optimizer_state", Py::None),
    ]);
    (top, sd.stats)
}

/// Make tied tables one tensor again (one storage in the `.pt`).
pub fn tie(tensors: &mut [(String, RawTensor)], t: Tying) {
    let find = |ts: &[(String, RawTensor)], n: &str| ts.iter().position(|(k, _)| k == n);
    let mut share = |from: &str, to: &str| {
        if let (Some(a), Some(b)) = (find(tensors, from), find(tensors, to)) {
            if tensors[a].1.shape == tensors[b].1.shape {
                tensors[b].1 = tensors[a].1.clone();
            }
        }
    };
    if t.encoder_decoder {
        share("encoder.embed_tokens.weight", "decoder.embed_tokens.weight");
    }
    if t.decoder_output {
        share(
            "decoder.embed_tokens.weight",
            "decoder.output_projection.weight",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Carried top levels in fairseq 0.12's plain layout

/// Fields of fairseq 0.12's `TranslationConfig`: `cfg['task']` may hold only these
/// (fairseq merges it into the dataclass, which refuses unknown keys).
const TRANSLATION_FIELDS: &[&str] = &[
    "data",
    "source_lang",
    "target_lang",
    "load_alignments",
    "left_pad_source",
    "left_pad_target",
    "max_source_positions",
    "max_target_positions",
    "upsample_primary",
    "truncate_source",
    "num_batch_buckets",
    "train_subset",
    "dataset_impl",
    "required_seq_len_multiple",
];

/// `v` reduced to plain data (None, bools, numbers, strings, lists, tuples, dicts with
/// string keys; an `argparse.Namespace` becomes a dict of its attributes), or `None`
/// when it is none of these. Entries that are not plain data are dropped.
pub fn plain(v: &Py) -> Option<Py> {
    let pairs = |d: &[(Py, Py)]| -> Vec<(Py, Py)> {
        d.iter()
            .filter(|(k, _)| matches!(k, Py::Str(_)))
            .filter_map(|(k, v)| Some((k.clone(), plain(v)?)))
            .collect()
    };
    Some(match v {
        Py::None | Py::Bool(_) | Py::Int(_) | Py::BigInt(_) | Py::Float(_) | Py::Str(_) => {
            v.clone()
        }
        Py::List(l) => Py::List(l.iter().filter_map(plain).collect()),
        Py::Tuple(l) => Py::Tuple(l.iter().filter_map(plain).collect()),
        Py::Dict(d) | Py::OrderedDict(d) => Py::Dict(pairs(d)),
        Py::NewObj {
            module,
            name,
            state: Some(s),
        } if module == "argparse" && name == "Namespace" => match s.as_ref() {
            Py::Dict(d) => Py::Dict(pairs(d)),
            _ => return None,
        },
        _ => return None,
    })
}

/// The string-keyed pairs of a plain dict.
fn str_pairs(v: &Py) -> Vec<(String, Py)> {
    match v {
        Py::Dict(d) => d
            .iter()
            .filter_map(|(k, v)| match k {
                Py::Str(k) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn lookup<'a>(pairs: &'a [(String, Py)], key: &str) -> Option<&'a Py> {
    pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// `cfg` built from fairseq < 0.10 `args` (plain attributes): the model group carries
/// every attribute, the task group the translation fields.
fn cfg_from_args(args: &[(String, Py)]) -> Py {
    let mut model = args.to_vec();
    if lookup(&model, "_name").is_none() {
        let arch = lookup(args, "arch").cloned().unwrap_or(Py::None);
        model.push(("_name".into(), arch));
    }
    let task_name = lookup(args, "task")
        .cloned()
        .unwrap_or_else(|| Py::str("translation"));
    let mut task = vec![("_name", task_name)];
    for f in TRANSLATION_FIELDS {
        if let Some(v) = lookup(args, f) {
            task.push((f, v.clone()));
        }
    }
    dict(vec![
        ("_name", Py::None),
        ("common", dict(vec![("_name", Py::None)])),
        ("model", attr_dict(model)),
        ("task", dict(task)),
    ])
}

/// `carried` in fairseq 0.12's layout with no pickled classes, so
/// `torch.load(weights_only=True)` reads it: `args` None; `cfg` plain nested dicts from
/// the input's `cfg` or `args` (`cfg['model']` an attribute-carrying OrderedDict, as
/// [`checkpoint`] writes it); every other entry reduced to [`plain`] data (dropped when
/// nothing is left); `last_optimizer_state` None. A bare state dict stays bare.
pub fn plain_carried(carried: &Carried) -> Carried {
    if carried.model_slot.is_none() {
        return carried.clone();
    }
    let get = |key: &str| {
        carried
            .entries
            .iter()
            .find(|(k, v)| k == key && !matches!(v, Py::None))
            .and_then(|(_, v)| plain(v))
    };
    let args = get("args").map(|a| str_pairs(&a));
    let cfg = match (get("cfg"), &args) {
        (_, Some(args)) if !args.is_empty() => Some(cfg_from_args(args)),
        (Some(cfg), _) => {
            let groups = str_pairs(&cfg)
                .into_iter()
                .map(|(k, v)| match k.as_str() {
                    "model" if matches!(v, Py::Dict(_)) => (k, attr_dict(str_pairs(&v))),
                    _ => (k, v),
                })
                .map(|(k, v)| (Py::Str(k), v))
                .collect();
            Some(Py::Dict(groups))
        }
        _ => None,
    };
    let mut entries = vec![("args".to_string(), Py::None)];
    if let Some(cfg) = cfg {
        entries.push(("cfg".into(), cfg));
    }
    let model_at = entries.len();
    for (k, v) in &carried.entries {
        if matches!(k.as_str(), "args" | "cfg" | "last_optimizer_state") {
            continue;
        }
        if let Some(p) = plain(v) {
            entries.push((k.clone(), p));
        }
    }
    entries.push(("last_optimizer_state".into(), Py::None));
    let (model_key, _) = carried.model_slot.clone().unwrap_or_default();
    Carried {
        entries,
        model_slot: Some((model_key, model_at)),
        notes: carried.notes.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> Py {
        Py::NewObj {
            module: "fairseq.meters".into(),
            name: "AverageMeter".into(),
            state: Some(Box::new(Py::Dict(vec![(Py::str("val"), Py::Float(1.0))]))),
        }
    }

    /// fairseq < 0.10 `args` become `cfg` (all of them in the model group, the
    /// translation fields in the task group); meters are dropped; `args` is None.
    #[test]
    fn args_namespace_becomes_plain_cfg() {
        let carried = Carried {
            entries: vec![
                (
                    "args".into(),
                    Py::namespace(vec![
                        ("arch".into(), Py::str("transformer")),
                        ("task".into(), Py::str("translation")),
                        ("data".into(), Py::str("bin")),
                        ("dropout".into(), Py::Float(0.1)),
                        ("odd".into(), meter()),
                    ]),
                ),
                (
                    "extra_state".into(),
                    Py::Dict(vec![
                        (Py::str("epoch"), Py::Int(3)),
                        (
                            Py::str("meters"),
                            Py::Dict(vec![(Py::str("loss"), meter())]),
                        ),
                    ]),
                ),
            ],
            model_slot: Some(("model".into(), 1)),
            notes: Vec::new(),
        };
        let p = plain_carried(&carried);
        let keys: Vec<&str> = p.entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["args", "cfg", "extra_state", "last_optimizer_state"]);
        assert!(matches!(p.entries[0].1, Py::None));
        let cfg = format!("{:?}", p.entries[1].1);
        assert!(
            !cfg.contains("fairseq.meters") && !cfg.contains("argparse"),
            "{cfg}"
        );
        assert!(
            cfg.contains("\"dropout\"") && cfg.contains("\"_name\""),
            "{cfg}"
        );
        let extra = format!("{:?}", p.entries[2].1);
        assert_eq!(
            extra,
            r#"Dict([(Str("epoch"), Int(3)), (Str("meters"), Dict([]))])"#
        );
        assert_eq!(p.model_slot, Some(("model".into(), 2)));
    }

    /// A bare state dict stays bare.
    #[test]
    fn bare_state_dict_stays_bare() {
        let c = Carried {
            entries: Vec::new(),
            model_slot: None,
            notes: Vec::new(),
        };
        assert!(plain_carried(&c).model_slot.is_none());
    }
}
