//! dtype conversion with accounting: values that overflow the target
//! (|x| > 65504 for fp16), flush to zero, or are already NaN / Inf are
//! counted so `cast` can refuse or report them instead of hiding them.

use crate::tensor::{DType, RawTensor};
use half::{bf16, f16};
use serde::Serialize;

/// Counts of values a conversion could not keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CastStats {
    /// Finite values that became ±Inf.
    pub overflow: usize,
    /// Non-zero values that became zero.
    pub flushed_to_zero: usize,
    /// NaN already present in the input.
    pub nan: usize,
    /// ±Inf already present in the input.
    pub inf: usize,
}

impl CastStats {
    pub fn add(&mut self, o: &CastStats) {
        self.overflow += o.overflow;
        self.flushed_to_zero += o.flushed_to_zero;
        self.nan += o.nan;
        self.inf += o.inf;
    }
    /// Values that the conversion itself damaged.
    pub fn lossy(&self) -> bool {
        self.overflow + self.flushed_to_zero > 0
    }
}

/// A half-width conversion: the stored bytes and the value they read back as.
type HalfConv = fn(f32) -> ([u8; 2], f32);

/// Convert `data` to a float `dtype` (f32, f16, bf16), counting losses.
pub fn from_f32(dtype: DType, shape: Vec<usize>, data: &[f32]) -> (RawTensor, CastStats) {
    let mut st = CastStats::default();
    for &x in data {
        if x.is_nan() {
            st.nan += 1;
        } else if x.is_infinite() {
            st.inf += 1;
        }
    }
    let half: Option<HalfConv> = match dtype {
        DType::F16 => Some(|x| {
            let h = f16::from_f32(x);
            (h.to_le_bytes(), h.to_f32())
        }),
        DType::BF16 => Some(|x| {
            let h = bf16::from_f32(x);
            (h.to_le_bytes(), h.to_f32())
        }),
        _ => None,
    };
    let bytes: Vec<u8> = match half {
        Some(conv) => {
            let mut out = Vec::with_capacity(data.len() * 2);
            for &x in data {
                let (b, back) = conv(x);
                if x.is_finite() && back.is_infinite() {
                    st.overflow += 1;
                } else if x != 0.0 && x.is_finite() && back == 0.0 {
                    st.flushed_to_zero += 1;
                }
                out.extend_from_slice(&b);
            }
            out
        }
        None => bytemuck::cast_slice::<f32, u8>(data).to_vec(),
    };
    let dtype = if matches!(dtype, DType::F16 | DType::BF16) {
        dtype
    } else {
        DType::F32
    };
    (
        RawTensor {
            dtype,
            shape,
            bytes: bytes.into(),
        },
        st,
    )
}

/// A float dtype a command writes (`--dtype` of `cast`, `fold`, `average`),
/// fairseq's and torch's spellings accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatDType {
    #[value(alias = "f32", alias = "float32", alias = "float")]
    Fp32,
    #[value(alias = "f16", alias = "float16", alias = "half")]
    Fp16,
    #[value(alias = "bfloat16")]
    Bf16,
}

impl From<FloatDType> for DType {
    fn from(d: FloatDType) -> DType {
        match d {
            FloatDType::Fp32 => DType::F32,
            FloatDType::Fp16 => DType::F16,
            FloatDType::Bf16 => DType::BF16,
        }
    }
}

/// Convert a float tensor to float `dtype` (f32, f16, bf16), counting losses; a tensor
/// already in `dtype` is returned as is (its NaN / Inf still counted), non-float tensors
/// are returned unchanged. f64 is rounded once, straight to the target.
pub fn cast_tensor(t: &RawTensor, dtype: DType) -> (RawTensor, CastStats) {
    if !t.dtype.is_float() {
        return (t.clone(), CastStats::default());
    }
    if t.dtype == dtype {
        let mut st = CastStats::default();
        for x in t.to_f32() {
            if x.is_nan() {
                st.nan += 1;
            } else if x.is_infinite() {
                st.inf += 1;
            }
        }
        return (t.clone(), st);
    }
    if t.dtype != DType::F64 {
        return from_f32(dtype, t.shape.clone(), &t.to_f32());
    }
    let mut st = CastStats::default();
    let mut out = Vec::with_capacity(t.numel() * dtype.size());
    for x in t.to_f64() {
        let back = match dtype {
            DType::F16 => {
                let h = f16::from_f64(x);
                out.extend_from_slice(&h.to_le_bytes());
                h.to_f64()
            }
            DType::BF16 => {
                let h = bf16::from_f64(x);
                out.extend_from_slice(&h.to_le_bytes());
                h.to_f64()
            }
            _ => {
                let h = x as f32;
                out.extend_from_slice(&h.to_le_bytes());
                h as f64
            }
        };
        if x.is_nan() {
            st.nan += 1;
        } else if x.is_infinite() {
            st.inf += 1;
        } else if back.is_infinite() {
            st.overflow += 1;
        } else if x != 0.0 && back == 0.0 {
            st.flushed_to_zero += 1;
        }
    }
    let dtype = if matches!(dtype, DType::F16 | DType::BF16) {
        dtype
    } else {
        DType::F32
    };
    (
        RawTensor {
            dtype,
            shape: t.shape.clone(),
            bytes: out.into(),
        },
        st,
    )
}
