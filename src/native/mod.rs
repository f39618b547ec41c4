//! The native engine (`--backend native`): the model run straight from its
//! [`crate::spec::Model`] weights on the CPU, without ONNX, built for beam
//! search speed.
//!
//! * [`gemm`]: weights packed once, an AVX2/FMA micro-kernel, a summation
//!   order that does not depend on the batch.
//! * [`model`]: the model in the engine's layout and the row-wise
//!   operations (LayerNorm, residual ω / gates, activations, attention,
//!   log-softmax), following `shared/spec/fairseq.md` like the graphs of
//!   [`crate::export`].
//! * [`engine`]: encoding and incremental decoding, data-parallel over
//!   sentences / decoder rows; the self-attention cache is never copied
//!   (rows keep their ancestry), cross-attention keys and values are kept
//!   once per sentence instead of once per beam.
//!   For beam search the output projection, log-softmax and per-row top-k
//!   run fused over column tiles ([`engine::Session::step_top`]): no
//!   `[rows, vocab]` array on large vocabularies.
//!
//! * [`quant`]: int8 (per-channel weight scales, per-row activation
//!   scales) and bfloat16 linear maps, kernels chosen from the CPU's flags
//!   (AVX-512 VNNI, AVX2, AVX512_BF16, portable); see its docs for the
//!   scheme. [`ComputeType`] picks one (`--compute-type`).
//!
//! ## Kernel override
//!
//! `ADMIN_CONVERT_KERNELS=portable|avx2|native` caps the kernels every
//! dispatch (float32, int8, bfloat16, the vectorised row operations) may
//! choose: `avx2` runs what an AVX2-only CPU would (AVX2/FMA float32, AVX2
//! int8, no bfloat16), `portable` the plain-Rust fallbacks; `native` (or
//! unset) takes the best this CPU has. A cap never raises the level above
//! what the CPU has. Any other value is refused when the engine starts
//! ([`kernel_cap`]).
//!
//! It implements [`crate::runtime::ModelEngine`] directly: [`ModelEngine::begin`]
//! (beam search) and [`ModelEngine::forced`] (scoring); it runs no ONNX graphs.
//! Everything but the linear maps (embeddings, LayerNorm, attention,
//! softmax) stays float32 whatever the compute type.

/// Defines `fn name(args) -> R { body }` compiled three times: for
/// AVX-512F, for AVX2 and for the baseline, run by what the CPU has and
/// `ADMIN_CONVERT_KERNELS` allows ([`simd_level`]). The body is plain Rust,
/// so every version does the same float32 operations in the same order
/// (Rust never fuses a multiply and an add by itself): the same bits, only
/// wider vectors.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident $(<$lt:lifetime>)? ($($a:ident: $t:ty),*) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name $(<$lt>)? ($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body $(<$lt>)? ($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn v512 $(<$lt>)? ($($a: $t),*) $(-> $r)? {
                    body($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn v256 $(<$lt>)? ($($a: $t),*) $(-> $r)? {
                    body($($a),*)
                }
                match $crate::native::simd_level() {
                    // SAFETY: simd_level() says the CPU has the feature.
                    2 => return unsafe { v512($($a),*) },
                    1 => return unsafe { v256($($a),*) },
                    _ => {}
                }
            }
            body($($a),*)
        }
    };
}
pub(crate) use multiversion;

/// 2: AVX-512F, 1: AVX2, 0: baseline; what the CPU has, capped by
/// `ADMIN_CONVERT_KERNELS`.
pub(crate) fn simd_level() -> u8 {
    static L: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    *L.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let c = cap();
            if c >= KernelCap::Native && std::arch::is_x86_feature_detected!("avx512f") {
                return 2;
            }
            if c >= KernelCap::Avx2 && std::arch::is_x86_feature_detected!("avx2") {
                return 1;
            }
        }
        0
    })
}

pub mod engine;
pub mod gemm;
pub mod model;
pub mod quant;

/// The kernel levels `ADMIN_CONVERT_KERNELS` may cap dispatch at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelCap {
    Portable,
    Avx2,
    Native,
}

/// The environment variable read by [`kernel_cap`].
pub const KERNELS_ENV: &str = "ADMIN_CONVERT_KERNELS";

/// The cap `ADMIN_CONVERT_KERNELS` sets (unset or empty: `native`).
pub fn kernel_cap() -> Result<KernelCap> {
    match std::env::var(KERNELS_ENV).as_deref() {
        Err(_) | Ok("") | Ok("native") => Ok(KernelCap::Native),
        Ok("avx2") => Ok(KernelCap::Avx2),
        Ok("portable") => Ok(KernelCap::Portable),
        Ok(other) => bail!("{KERNELS_ENV}={other:?}: expected portable, avx2 or native"),
    }
}

/// [`kernel_cap`] for the dispatchers, read once (a bad value, refused by
/// [`NativeBackend`] before any kernel runs, caps nothing here).
pub(crate) fn cap() -> KernelCap {
    static CAP: std::sync::OnceLock<KernelCap> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| kernel_cap().unwrap_or(KernelCap::Native))
}

/// The precision of the native engine's linear maps (CTranslate2's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ComputeType {
    Float32,
    Int8,
    Bfloat16,
    /// The fastest type whose accuracy gate passes on this CPU
    /// ([`ComputeType::resolve`]).
    Auto,
}

/// `auto`'s int8 gate: the largest relative reconstruction error
/// `‖W − Ŵ‖_F / ‖W‖_F` a weight matrix may have after int8 quantization
/// with per-row scales. Rows of roughly uniform or Gaussian weights land
/// near 1 % (step / √12 against a spread of a few steps×10); a matrix whose
/// rows are dominated by a few outliers goes above it.
pub const INT8_GATE: f64 = 0.02;

impl ComputeType {
    pub fn name(self) -> &'static str {
        match self {
            ComputeType::Float32 => "float32",
            ComputeType::Int8 => "int8",
            ComputeType::Bfloat16 => "bfloat16",
            ComputeType::Auto => "auto",
        }
    }

    /// A concrete type for `model` on this CPU. `auto` tries, fastest
    /// first: int8 when the CPU has an int8 SIMD kernel (VNNI or AVX2) and
    /// every weight matrix passes [`INT8_GATE`]; bfloat16 when it has
    /// AVX512_BF16 (bf16 rounding is 2⁻⁹ relative: no gate needed); else
    /// float32.
    pub fn resolve(self, model: &crate::spec::Model) -> ComputeType {
        if self != ComputeType::Auto {
            return self;
        }
        if quant::int8_kernel_name() != "portable" && int8_error(model) <= INT8_GATE {
            ComputeType::Int8
        } else if quant::bf16_kernel().is_some() {
            ComputeType::Bfloat16
        } else {
            ComputeType::Float32
        }
    }
}

/// The largest `‖W − Ŵ‖_F / ‖W‖_F` over the model's linear maps.
pub fn int8_error(model: &crate::spec::Model) -> f64 {
    let mut worst = 0.0f64;
    let mut check = |w: ndarray::ArrayView2<f32>| {
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        let mut q = vec![0i8; w.ncols()];
        for row in w.rows() {
            let row = row.to_vec();
            let s = quant::quantize_row(&row, &mut q);
            for (&v, &qv) in row.iter().zip(&q) {
                err += (v as f64 - qv as f64 * s as f64).powi(2);
                norm += (v as f64).powi(2);
            }
        }
        if norm > 0.0 {
            worst = worst.max((err / norm).sqrt());
        }
    };
    use crate::spec::{Attention, FeedForward, Linear};
    let w = &model.weights;
    fn attn(a: &Attention) -> [&Linear; 4] {
        [&a.q, &a.k, &a.v, &a.out]
    }
    fn ffn(f: &FeedForward) -> [&Linear; 2] {
        [&f.fc1, &f.fc2]
    }
    let mut linears: Vec<&Linear> = vec![];
    for l in &w.encoder_layers {
        linears.extend(attn(&l.self_attn.f).into_iter().chain(ffn(&l.ffn.f)));
    }
    for l in &w.decoder_layers {
        linears.extend(
            attn(&l.self_attn.f)
                .into_iter()
                .chain(attn(&l.cross_attn.f)),
        );
        linears.extend(ffn(&l.ffn.f));
    }
    for l in linears {
        check(l.weight.view());
    }
    check(w.output_projection.view());
    worst
}

use crate::export::{GraphInfo, Precision};
use crate::runtime::{ModelEngine, Session};
use crate::spec::PAD;
use anyhow::{bail, Result};
pub use model::NativeModel;
use ndarray::{Array2, Array3, ArrayView1, ArrayView2};

/// The native engine as a [`ModelEngine`].
pub struct NativeBackend {
    model: NativeModel,
    threads: usize,
}

impl NativeBackend {
    /// Prepares `model` (packs its weights) in float32; `threads` defaults
    /// to the number of CPUs.
    pub fn new(model: &crate::spec::Model, threads: Option<usize>) -> Result<NativeBackend> {
        NativeBackend::with_compute_type(model, threads, ComputeType::Float32)
    }

    /// As [`NativeBackend::new`], with the linear maps in `ct` (`auto`
    /// resolved here).
    pub fn with_compute_type(
        model: &crate::spec::Model,
        threads: Option<usize>,
        ct: ComputeType,
    ) -> Result<NativeBackend> {
        kernel_cap()?;
        let ct = ct.resolve(model);
        Ok(NativeBackend {
            model: NativeModel::with_compute_type(model, ct)?, // packs without a copy of `model`
            threads: default_threads(threads),
        })
    }

    /// As [`NativeBackend::with_compute_type`], consuming `model` (lower
    /// load peak: [`NativeModel::from_model`]).
    pub fn from_model(
        model: crate::spec::Model,
        threads: Option<usize>,
        ct: ComputeType,
    ) -> Result<NativeBackend> {
        kernel_cap()?;
        let ct = ct.resolve(&model);
        Ok(NativeBackend {
            model: NativeModel::from_model(model, ct)?,
            threads: default_threads(threads),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn model(&self) -> &NativeModel {
        &self.model
    }
}

/// `threads`, else the number of CPUs (at least 1).
fn default_threads(threads: Option<usize>) -> usize {
    threads
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .max(1)
}

/// The real tokens of each left-padded row.
fn unpad(src_tokens: ArrayView2<i64>, vocab: usize) -> Result<Vec<Vec<usize>>> {
    src_tokens
        .rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .filter(|&&t| t != PAD as i64)
                .map(|&t| {
                    if t < 0 || t as usize >= vocab {
                        bail!("source token id {t} is outside the vocabulary of {vocab}");
                    }
                    Ok(t as usize)
                })
                .collect()
        })
        .collect()
}

struct NativeSession<'a>(engine::Session<'a>);

impl Session for NativeSession<'_> {
    fn step(&mut self, prev_tokens: ArrayView1<i64>) -> Result<Array2<f32>> {
        let prev: Vec<i64> = prev_tokens.to_vec();
        self.0.step(&prev)
    }

    fn reorder(&mut self, rows: &[usize], _sentences_changed: bool) -> Result<()> {
        self.0.reorder(rows)
    }

    fn step_top(
        &mut self,
        prev_tokens: ArrayView1<i64>,
        req: &crate::decode::top::TopRequest,
    ) -> Result<Option<crate::decode::top::TopStep>> {
        let prev: Vec<i64> = prev_tokens.to_vec();
        self.0.step_top(&prev, req).map(Some)
    }

    fn row_lprobs(&mut self, row: usize) -> Result<Vec<f32>> {
        self.0.row_lprobs(row)
    }
}

impl ModelEngine for NativeBackend {
    fn name(&self) -> String {
        match self.model.compute_type() {
            ComputeType::Float32 => format!("native ({} threads)", self.threads),
            ct => format!(
                "native {} ({} kernel, {} threads)",
                ct.name(),
                match ct {
                    ComputeType::Int8 => quant::int8_kernel_name(),
                    _ => "avx512-bf16",
                },
                self.threads
            ),
        }
    }

    fn info(&self) -> &GraphInfo {
        self.model.info()
    }

    fn precision(&self) -> Precision {
        Precision::Fp32
    }

    fn begin<'a>(&'a mut self, src_tokens: ArrayView2<i64>) -> Result<Box<dyn Session + 'a>> {
        let sources = unpad(src_tokens, self.model.info.src_vocab)?;
        Ok(Box::new(NativeSession(engine::Session::new(
            &self.model,
            &sources,
            self.threads,
        )?)))
    }

    fn forced(
        &mut self,
        src_tokens: ArrayView2<i64>,
        prev_output_tokens: ArrayView2<i64>,
    ) -> Result<Array3<f32>> {
        let sources = unpad(src_tokens, self.model.info.src_vocab)?;
        engine::forced(&self.model, &sources, prev_output_tokens, self.threads)
    }
}
