//! Tolerances for comparing two float32 computations of the same quantity,
//! derived from float32 rounding rather than from the last bits one CPU
//! happened to produce (AVX2-only and AVX-512 machines run this suite; the
//! GEMMs, fused multiply-adds and reduction orders differ between them and
//! between engines).
//!
//! Two evaluations that differ only in the order of their operations (a
//! reassociated dot product, a scale folded into a weight, another GEMM
//! blocking) each carry a rounding error of a few ulps of the largest
//! magnitude in play; LayerNorm re-normalises every sublayer, so the error
//! does not grow with depth. A log-probability is `logit − logsumexp`: both
//! terms are of the order of the log-probability itself, and the models of
//! these tests keep every log-probability above −32 (vocabularies of
//! 100–200, a few layers), where one float32 ulp is 2⁻¹⁹ ≈ 1.9e-6.
//!
//! Measured on the fold of the Admin fork checkpoint (fold.rs, 200 test
//! sentences): 1.025e-5 on an AMD Zen 4 (AVX-512), 8.6e-6 on an AVX2-only
//! EPYC, i.e. 5.4 and 4.5 ulps; admin-torch's fold 1.3e-5 (6.8 ulps) on
//! Zen 4. [`LOGPROB`] allows 16 ulps, the bound fold.rs's `FOLD_TOL` uses.

/// One float32 ulp at magnitude `x` (the spacing of floats in `[2^e, 2^(e+1))`).
pub fn ulp(x: f64) -> f64 {
    let e = (x.abs().max(f64::MIN_POSITIVE)).log2().floor();
    2f64.powf(e - 23.0)
}

/// |Δ| allowed between two float32 evaluations of log-probabilities above
/// −32 that differ only in operation order: 16 ulps of 16..32 ≈ 3.05e-5.
pub const LOGPROB: f64 = 16.0 * 1.9073486328125e-6;

/// |Δ| allowed between two float32 evaluations of encoder outputs
/// (LayerNorm outputs, |x| < 8 in these models): 16 ulps of 4..8 ≈ 7.6e-6,
/// rounded up to the 1e-5 the export tests have always used (21 ulps).
pub const ENCODER: f64 = 1e-5;

#[test]
fn ulp_matches_float32_spacing() {
    for x in [0.75f32, 1.0, 3.0, 20.0, 31.9] {
        let next = f32::from_bits(x.to_bits() + 1);
        assert_eq!(ulp(x as f64), (next - x) as f64, "{x}");
    }
    assert_eq!(LOGPROB, 16.0 * ulp(20.0));
}

/// [`LOGPROB`] and [`ENCODER`] for float32 measurements.
pub const LOGPROB32: f32 = LOGPROB as f32;
pub const ENCODER32: f32 = ENCODER as f32;
