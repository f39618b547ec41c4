//! A small ONNX graph builder: values are names (`String`), every op call
//! appends one node and returns its output name(s), so model code reads
//! like the equations it implements.
//!
//! The builder has a compute float type (`float32` or `float16`): weights
//! added with [`Graph::weight`] are stored in it; LayerNorm and softmax
//! helpers compute in float32 whatever it is. Weights go to a
//! [`WeightStore`] (inline, or a data file the graphs share); the small
//! constants of the graph structure are always inline.

use super::onnx::{self, attr_float, attr_int, attr_ints, Dim, Elem, WeightStore};
use std::borrow::Cow;
use std::collections::HashMap;
use tract_onnx::pb;

pub type V = String;

/// Names of the graph's own small constants (always inline: numbered per
/// graph, so equal names in two graphs may hold different values).
pub const CONST_PREFIX: &str = "const_";

pub struct Graph<'s> {
    name: String,
    store: &'s mut WeightStore,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    counter: usize,
    /// Small constants by content, so each is stored once.
    consts: HashMap<String, V>,
    /// Compute type of activations and weights.
    pub float: Elem,
}

impl<'s> Graph<'s> {
    pub fn new(name: &str, float: Elem, store: &'s mut WeightStore) -> Graph<'s> {
        Graph {
            name: name.into(),
            store,
            nodes: vec![],
            initializers: vec![],
            inputs: vec![],
            outputs: vec![],
            counter: 0,
            consts: HashMap::new(),
            float,
        }
    }

    pub fn finish(self) -> pb::GraphProto {
        pb::GraphProto {
            node: self.nodes,
            name: self.name,
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> V {
        self.inputs.push(onnx::value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares `value` as the graph output `name` (through an Identity
    /// node when the names differ).
    pub fn output(&mut self, value: &str, name: &str, elem: Elem, dims: &[Dim]) {
        if value != name {
            self.nodes.push(pb::NodeProto {
                input: vec![value.into()],
                output: vec![name.into()],
                name: format!("output_{name}"),
                op_type: "Identity".into(),
                ..Default::default()
            });
        }
        self.outputs.push(onnx::value_info(name, elem, dims));
    }

    /// A float initializer in the compute type.
    pub fn weight(&mut self, name: &str, dims: &[usize], data: &[f32]) -> V {
        let elem = self.float;
        self.weight_with(name, dims, elem, || Cow::Borrowed(data))
    }

    /// A float initializer in an explicit type.
    pub fn weight_as(&mut self, name: &str, dims: &[usize], data: &[f32], elem: Elem) -> V {
        self.weight_with(name, dims, elem, || Cow::Borrowed(data))
    }

    /// A float initializer whose row-major values `data` computes, called
    /// only when the store does not hold `name` yet.
    pub fn weight_with<'d>(
        &mut self,
        name: &str,
        dims: &[usize],
        elem: Elem,
        data: impl FnOnce() -> Cow<'d, [f32]>,
    ) -> V {
        let t = self.store.tensor(name, dims, elem, data);
        self.initializers.push(t);
        name.to_string()
    }

    /// A 1-D int64 constant (deduplicated).
    pub fn ints(&mut self, v: &[i64]) -> V {
        self.int_const(v, &[v.len()])
    }

    /// A 0-D int64 constant (deduplicated).
    pub fn int_scalar(&mut self, v: i64) -> V {
        self.int_const(&[v], &[])
    }

    fn int_const(&mut self, v: &[i64], dims: &[usize]) -> V {
        let key = format!("i64{dims:?}{v:?}");
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.fresh(&format!("{CONST_PREFIX}i64"));
        self.initializers.push(onnx::tensor_i64(&name, dims, v));
        self.consts.insert(key, name.clone());
        name
    }

    /// A 0-D int32 constant (deduplicated).
    pub fn i32_scalar(&mut self, v: i32) -> V {
        let key = format!("i32:{v}");
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.fresh(&format!("{CONST_PREFIX}i32"));
        self.initializers.push(onnx::tensor_i32(&name, &[], &[v]));
        self.consts.insert(key, name.clone());
        name
    }

    /// A 0-D float constant of type `elem` (deduplicated).
    pub fn float_scalar(&mut self, v: f32, elem: Elem) -> V {
        let key = format!("{}:{:08x}", elem.name(), v.to_bits());
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.fresh(&format!("{CONST_PREFIX}f"));
        self.initializers
            .push(onnx::tensor_f32(&name, &[], &[v], elem));
        self.consts.insert(key, name.clone());
        name
    }

    pub fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
        n: usize,
    ) -> Vec<V> {
        let base = self.fresh(&op.to_lowercase());
        let outputs: Vec<String> = if n == 1 {
            vec![base.clone()]
        } else {
            (0..n).map(|i| format!("{base}.{i}")).collect()
        };
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.clone(),
            name: base,
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        outputs
    }

    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> V {
        self.op_n(op, inputs, attrs, 1).remove(0)
    }

    // ---- elementwise and shape helpers --------------------------------

    pub fn add(&mut self, a: &str, b: &str) -> V {
        self.op("Add", &[a, b], vec![])
    }
    pub fn mul(&mut self, a: &str, b: &str) -> V {
        self.op("Mul", &[a, b], vec![])
    }
    pub fn matmul(&mut self, a: &str, b: &str) -> V {
        self.op("MatMul", &[a, b], vec![])
    }
    pub fn cast(&mut self, x: &str, to: Elem) -> V {
        self.op("Cast", &[x], vec![attr_int("to", to.onnx() as i64)])
    }
    /// Casts to `to` unless `from == to`.
    pub fn cast_if(&mut self, x: &str, from: Elem, to: Elem) -> V {
        if from == to {
            x.to_string()
        } else {
            self.cast(x, to)
        }
    }
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> V {
        let s = self.ints(shape);
        self.op("Reshape", &[x, &s], vec![])
    }
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> V {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)])
    }
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> V {
        let a = self.ints(axes);
        self.op("Unsqueeze", &[x, &a], vec![])
    }
    pub fn gather(&mut self, data: &str, idx: &str, axis: i64) -> V {
        self.op("Gather", &[data, idx], vec![attr_int("axis", axis)])
    }
    pub fn concat(&mut self, xs: &[&str], axis: i64) -> V {
        self.op("Concat", xs, vec![attr_int("axis", axis)])
    }
    /// Splits the last axis into equal parts of `size`.
    pub fn split_last(&mut self, x: &str, size: usize, parts: usize) -> Vec<V> {
        let s = self.ints(&vec![size as i64; parts]);
        self.op_n("Split", &[x, &s], vec![attr_int("axis", -1)], parts)
    }
    /// `where(cond, a, b)`.
    pub fn where_(&mut self, cond: &str, a: &str, b: &str) -> V {
        self.op("Where", &[cond, a, b], vec![])
    }

    /// Softmax over the last axis, computed in float32; returns the input type.
    pub fn softmax_f32(&mut self, x: &str, elem: Elem) -> V {
        let x = self.cast_if(x, elem, Elem::F32);
        let y = self.op("Softmax", &[&x], vec![attr_int("axis", -1)]);
        self.cast_if(&y, Elem::F32, elem)
    }

    /// LayerNormalization over the last axis in float32 (`gamma`, `beta`
    /// must be float32 initializers); returns the input type.
    pub fn layer_norm_f32(&mut self, x: &str, elem: Elem, gamma: &str, beta: &str, eps: f32) -> V {
        let x = self.cast_if(x, elem, Elem::F32);
        let y = self.op(
            "LayerNormalization",
            &[&x, gamma, beta],
            vec![attr_int("axis", -1), attr_float("epsilon", eps)],
        );
        self.cast_if(&y, Elem::F32, elem)
    }
}
