//! [`Backend`] on tract (pure Rust, CPU). Each graph is parsed with its
//! symbolic dimensions, optimised once and kept as a runnable plan that
//! serves every batch size and length; graphs load on first use.

use super::{parse_info, Backend, GraphSource, Outputs, Repr, Value};
use crate::export::{GraphInfo, GraphKind, Precision};
use anyhow::{Context, Result};
use std::path::Path;
use tract_onnx::prelude::*;

struct Loaded {
    state: TypedSimpleState,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

pub struct TractBackend {
    source: GraphSource,
    info: GraphInfo,
    graphs: [Option<Loaded>; 3],
}

impl TractBackend {
    /// Prepares a backend; the encoder is loaded now (to read the model's
    /// dimensions), the decoders on first use.
    pub fn new(source: GraphSource) -> Result<TractBackend> {
        let (info, encoder) = match &source {
            GraphSource::Memory(g) => (g.info, None),
            GraphSource::Dir(..) => {
                let path = source.path(GraphKind::Encoder).expect("a directory source");
                let model = parse(&source, GraphKind::Encoder)?;
                let info = parse_info(property(&model, "admin_convert.info"), &path)?;
                (info, Some(prepare(model, &path)?))
            }
        };
        let mut b = TractBackend {
            source,
            info,
            graphs: [None, None, None],
        };
        b.graphs[0] = encoder;
        Ok(b)
    }

    /// Loads (parses and optimises) every graph now instead of on first use.
    pub fn load_all(&mut self) -> Result<()> {
        for k in GraphKind::ALL {
            self.load(k)?;
        }
        Ok(())
    }

    fn load(&mut self, kind: GraphKind) -> Result<&mut Loaded> {
        let i = kind.index();
        if self.graphs[i].is_none() {
            let what = self
                .source
                .path(kind)
                .unwrap_or_else(|| kind.file_name(self.source.precision()).into());
            let model = parse(&self.source, kind)?;
            self.graphs[i] = Some(prepare(model, &what)?);
        }
        Ok(self.graphs[i].as_mut().expect("loaded just above"))
    }
}

fn parse(source: &GraphSource, kind: GraphKind) -> Result<InferenceModel> {
    let onnx = tract_onnx::onnx();
    match source {
        GraphSource::Memory(g) => onnx
            .model_for_proto_model(g.get(kind))
            .with_context(|| format!("tract: loading the {} graph", kind.name())),
        GraphSource::Dir(..) => {
            let path = source.path(kind).expect("a directory source");
            onnx.model_for_path(&path)
                .with_context(|| format!("tract: loading {}", path.display()))
        }
    }
}

fn property(model: &InferenceModel, key: &str) -> Option<String> {
    let t = model
        .properties
        .get(&format!("onnx.metadata_props.{key}"))?;
    t.try_as_plain_ram()
        .ok()?
        .to_scalar::<String>()
        .ok()
        .cloned()
}

/// tract shares constants of equal value and pre-packs a constant matrix
/// operand only when no other node reads it. The output projection is a
/// `Gemm` with `transB = 1` over an initializer that a tied model's Gather
/// also reads: multiplied unpacked, decoding steps are 7× slower. Such a
/// Gemm gets a plain MatMul over its own transposed copy (in memory only;
/// the file keeps one table).
fn unshare_gemm_operands(model: &mut InferenceModel) -> Result<()> {
    use tract_onnx::tract_core::ops::konst::Const;
    use tract_onnx::tract_hir::ops::{expandable::expand, matmul::MatMulInference};
    for id in 0..model.nodes.len() {
        let node = model.node(id);
        let plain = "Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true }";
        if node.inputs.len() != 2 || format!("{:?}", node.op) != plain {
            continue;
        }
        let b = node.inputs[1];
        let Some(table) = model.node(b.node).op_as::<Const>().map(|c| c.val().clone()) else {
            continue;
        };
        if model.outlet_successors(b).len() < 2 || table.rank() != 2 {
            continue;
        }
        let name = format!("{}.transposed", model.node(b.node).name);
        let t = model.add_const(name, (*table).clone().permute_axes(&[1, 0])?)?;
        model.add_edge(t, InletId::new(id, 1))?;
        model.node_mut(id).op = expand(MatMulInference::default());
    }
    Ok(())
}

fn prepare(mut model: InferenceModel, what: &Path) -> Result<Loaded> {
    unshare_gemm_operands(&mut model)
        .with_context(|| format!("tract: preparing {}", what.display()))?;
    let inputs = model
        .input_outlets()?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let outputs = model
        .output_outlets()?
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect();
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .with_context(|| format!("tract: optimising {}", what.display()))?;
    let state = plan.spawn()?;
    Ok(Loaded {
        state,
        inputs,
        outputs,
    })
}

impl Backend for TractBackend {
    fn name(&self) -> String {
        "tract".into()
    }

    fn info(&self) -> &GraphInfo {
        &self.info
    }

    fn precision(&self) -> Precision {
        self.source.precision()
    }

    fn run(&mut self, kind: GraphKind, inputs: &[(&str, &Value)]) -> Result<Outputs> {
        let g = self.load(kind)?;
        let mut values: TVec<TValue> = tvec![];
        for name in &g.inputs {
            let v = inputs.iter().find(|(n, _)| n == name).with_context(|| {
                format!("no value for input {name} of the {} graph", kind.name())
            })?;
            values.push(v.1.to_tract()?);
        }
        let out = g
            .state
            .run(values)
            .with_context(|| format!("tract: running the {} graph", kind.name()))?;
        Ok(Outputs(
            g.outputs
                .iter()
                .cloned()
                .zip(out.into_iter().map(|t| Value(Repr::Tract(t))))
                .collect(),
        ))
    }
}
