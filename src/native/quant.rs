//! Reduced-precision linear maps for the native engine: int8 and bfloat16
//! weights, packed at load time, with kernels chosen from the CPU's flags.
//!
//! ## int8: per-row weight scales, per-row activation scales
//!
//! Weights are quantized once, symmetrically, with one scale per output
//! channel (a row of fairseq's `[out, in]` matrix): `s_w[j] = max_k |W[j,k]|
//! / 127`, `Wq = round(W / s_w)`. Activations are quantized on the fly with
//! one scale per row (per token): `s_x[i] = max_k |x[i,k]| / 127`. Then
//! `y[i,j] = s_x[i] · s_w[j] · Σ_k xq[i,k] · Wq[j,k] + b[j]`.
//!
//! Why this scheme: per-channel weight scales cost nothing at run time
//! (they factor out of the sum) and keep a channel with small weights from
//! being flattened by another channel's outliers; per-row activation scales
//! follow each token's own range (a LayerNorm output and a ReLU output have
//! very different ranges, and so do tokens), need no calibration data, and
//! also factor out. Both are symmetric, so the integer sum needs no zero
//! point corrections beyond the one VNNI's unsigned operand needs (below).
//! This is CTranslate2's int8 scheme too.
//!
//! The integer sum `Σ xq · Wq` is exact in `i32` (|term| ≤ 127², k ≤ 2¹⁷),
//! so every kernel returns the same integers: the kernels are tested for
//! equality with the portable one, and a row's result does not depend on
//! the batch it is in.
//!
//! * AVX-512 VNNI (`vpdpbusd`, unsigned × signed bytes): the activation
//!   bytes are flipped to `xq + 128` and `128 · Σ_k Wq[j,k]` (kept per
//!   column) is subtracted at the end.
//! * AVX2 (`vpmaddubsw` + `vpmaddwd`): `|xq|` × `sign(xq) · Wq`; a pair sum
//!   is at most 2 · 127 · 127 < 2¹⁵, so `vpmaddubsw` never saturates.
//! * portable: plain integer loops.
//!
//! ## bfloat16
//!
//! Weights and activations rounded to bfloat16 (round to nearest even),
//! products summed in float32 with AVX512_BF16 `vdpbf16ps`; the portable
//! kernel computes the same products (exact in float32) in the same order.
//!
//! Weights are quantized straight from the model's float32 rows into their
//! packed panels: no full-precision packed copy is ever made.

use super::gemm::check_cols;
use half::bf16;
use std::ops::Range;
use std::sync::OnceLock;

/// Output columns of one packed panel (int8 and bf16).
pub const NQ: usize = 32;
/// Rows of one kernel call.
pub const MQ: usize = 6;

super::multiversion! {
/// Symmetric int8 quantization of `x` with scale `max|x| / 127`; returns
/// the scale (1 for an all-zero row).
pub fn quantize_row(x: &[f32], out: &mut [i8]) -> f32 {
    let max = super::model::abs_max(x);
    let scale = if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    };
    let inv = 1.0 / scale;
    for (o, &v) in out.iter_mut().zip(x) {
        // round() (half away from zero) then clamp to ±127, without a libm
        // call or a saturating conversion, so that the loop vectorises:
        // trunc(y ± 0.5) of the clamped value (NaN → 0 as before).
        let y = v * inv;
        let y = if y.is_nan() {
            0.0
        } else {
            y.clamp(-127.0, 127.0)
        };
        // SAFETY: |y + 0.5| ≤ 127.5 fits an i32.
        let r: i32 = unsafe { (y + 0.5f32.copysign(y)).to_int_unchecked() };
        *o = r as i8;
    }
    scale
}
}

/// A weight `[n, k]` quantized to int8 with per-row scales, packed in
/// panels of [`NQ`] columns: panel `p` is `[k4 / 4][NQ][4]` bytes.
#[derive(Clone, Debug)]
pub struct QPacked {
    pub k: usize,
    pub n: usize,
    /// `k` rounded up to a multiple of 4.
    k4: usize,
    panels: Vec<i8>,
    scales: Vec<f32>,
    /// `Σ_k Wq[j, k]` per column (VNNI's correction), padded to whole panels.
    colsum: Vec<i32>,
    bias: Option<Vec<f32>>,
}

impl QPacked {
    /// Quantizes and packs the rows `rows()` (each of length `k`).
    pub fn new<'a>(
        k: usize,
        rows: impl ExactSizeIterator<Item = &'a [f32]>,
        bias: Option<Vec<f32>>,
    ) -> QPacked {
        let n = rows.len();
        let k4 = k.div_ceil(4) * 4;
        let np = n.div_ceil(NQ);
        let mut panels = vec![0i8; np * k4 * NQ];
        let mut scales = vec![1.0f32; n];
        let mut colsum = vec![0i32; np * NQ];
        let mut q = vec![0i8; k];
        for (j, row) in rows.enumerate() {
            assert_eq!(row.len(), k, "weight row length");
            scales[j] = quantize_row(row, &mut q);
            let (p, c) = (j / NQ, j % NQ);
            let base = p * k4 * NQ;
            for (kk, &v) in q.iter().enumerate() {
                panels[base + (kk / 4) * NQ * 4 + c * 4 + kk % 4] = v;
            }
            colsum[j] = q.iter().map(|&v| v as i32).sum();
        }
        if let Some(b) = &bias {
            assert_eq!(b.len(), n, "bias length");
        }
        QPacked {
            k,
            n,
            k4,
            panels,
            scales,
            colsum,
            bias,
        }
    }

    /// Resident bytes of the packed weight.
    pub fn bytes(&self) -> usize {
        self.panels.len() + 4 * (self.scales.len() + self.colsum.len())
    }

    /// `out[m × n] = x[m × k] · Wᵀ + b`, activations quantized per row.
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.forward_with(int8_kernel(), x, m, 0..self.n, out)
    }

    /// Columns `cols` of [`QPacked::forward`] into `out[m × cols.len()]`
    /// (same bits); `cols` aligned to [`NQ`] as in
    /// [`super::gemm::Packed::forward_cols`].
    pub fn forward_cols(&self, x: &[f32], m: usize, cols: Range<usize>, out: &mut [f32]) {
        self.forward_with(int8_kernel(), x, m, cols, out)
    }

    fn forward_with(
        &self,
        kernel: QKernel,
        x: &[f32],
        m: usize,
        cols: Range<usize>,
        out: &mut [f32],
    ) {
        q_forward(self, kernel, x, m, cols, out)
    }
}

super::multiversion! {
/// [`QPacked::forward_cols`] with `kernel`, the loops around the kernel
/// (quantization, scales, bias) compiled for the widest vectors the CPU has.
fn q_forward(
    q: &QPacked,
    kernel: QKernel,
    x: &[f32],
    m: usize,
    cols: Range<usize>,
    out: &mut [f32]
) -> () {
    let (k, k4) = (q.k, q.k4);
    check_cols(&cols, q.n, NQ);
    let w = cols.len();
    assert!(x.len() >= m * k && out.len() >= m * w, "gemm operand sizes");
    let mut xq = vec![0i8; m * k4];
    let mut xs = vec![0f32; m];
    for i in 0..m {
        xs[i] = quantize_row(&x[i * k..(i + 1) * k], &mut xq[i * k4..i * k4 + k]);
    }
    let mut tile = [0i32; MQ * NQ];
    for p in cols.start / NQ..cols.end.div_ceil(NQ) {
        let b = &q.panels[p * k4 * NQ..][..k4 * NQ];
        let cs = &q.colsum[p * NQ..][..NQ];
        let width = NQ.min(cols.end - p * NQ);
        let sw = &q.scales[p * NQ..][..width];
        for i in (0..m).step_by(MQ) {
            let mr = MQ.min(m - i);
            kernel(mr, k4 / 4, &xq[i * k4..], k4, b, cs, &mut tile);
            for r in 0..mr {
                let o = &mut out[(i + r) * w + p * NQ - cols.start..][..width];
                let sx = xs[i + r];
                for (c, o) in o.iter_mut().enumerate() {
                    *o = tile[r * NQ + c] as f32 * (sx * sw[c]);
                }
                if let Some(bias) = &q.bias {
                    for (o, b) in o.iter_mut().zip(&bias[p * NQ..]) {
                        *o += b;
                    }
                }
            }
        }
    }
}
}

/// `tile[r][c] = Σ_{g,t} a[r·lda + 4g + t] · b[g·4NQ + 4c + t]` for
/// `r < mr`, `g < groups`; `colsum` is the panel's `Σ b` per column.
type QKernel = fn(usize, usize, &[i8], usize, &[i8], &[i32], &mut [i32; MQ * NQ]);

/// The int8 kernels this CPU runs (under `ADMIN_CONVERT_KERNELS`'s cap),
/// fastest first (the portable one last).
pub fn int8_kernels() -> Vec<(&'static str, QKernel)> {
    let mut v: Vec<(&'static str, QKernel)> = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        use super::KernelCap;
        let cap = super::cap();
        if cap >= KernelCap::Native && x86::has_vnni() {
            v.push(("avx512-vnni", x86::int8_vnni));
        }
        if cap >= KernelCap::Avx2 && std::arch::is_x86_feature_detected!("avx2") {
            v.push(("avx2", x86::int8_avx2));
        }
    }
    v.push(("portable", int8_portable));
    v
}

fn int8_kernel() -> QKernel {
    static K: OnceLock<QKernel> = OnceLock::new();
    *K.get_or_init(|| int8_kernels()[0].1)
}

/// The name of the int8 kernel in use.
pub fn int8_kernel_name() -> &'static str {
    int8_kernels()[0].0
}

fn int8_portable(
    mr: usize,
    groups: usize,
    a: &[i8],
    lda: usize,
    b: &[i8],
    _colsum: &[i32],
    tile: &mut [i32; MQ * NQ],
) {
    tile.fill(0);
    for r in 0..mr {
        let a = &a[r * lda..][..groups * 4];
        let t = &mut tile[r * NQ..][..NQ];
        for (g, a4) in a.chunks_exact(4).enumerate() {
            let b = &b[g * 4 * NQ..][..4 * NQ];
            for (c, t) in t.iter_mut().enumerate() {
                let w = &b[c * 4..c * 4 + 4];
                *t += (0..4).map(|u| a4[u] as i32 * w[u] as i32).sum::<i32>();
            }
        }
    }
}

/// A weight `[n, k]` rounded to bfloat16, packed in panels of [`NQ`]
/// columns: panel `p` is `[k2 / 2][NQ][2]` values.
#[derive(Clone, Debug)]
pub struct BPacked {
    pub k: usize,
    pub n: usize,
    /// `k` rounded up to a multiple of 2.
    k2: usize,
    panels: Vec<u16>,
    bias: Option<Vec<f32>>,
}

fn to_bf16(v: f32) -> u16 {
    bf16::from_f32(v).to_bits()
}

impl BPacked {
    pub fn new<'a>(
        k: usize,
        rows: impl ExactSizeIterator<Item = &'a [f32]>,
        bias: Option<Vec<f32>>,
    ) -> BPacked {
        let n = rows.len();
        let k2 = k.div_ceil(2) * 2;
        let np = n.div_ceil(NQ);
        let mut panels = vec![0u16; np * k2 * NQ];
        for (j, row) in rows.enumerate() {
            assert_eq!(row.len(), k, "weight row length");
            let (p, c) = (j / NQ, j % NQ);
            let base = p * k2 * NQ;
            for (kk, &v) in row.iter().enumerate() {
                panels[base + (kk / 2) * NQ * 2 + c * 2 + kk % 2] = to_bf16(v);
            }
        }
        if let Some(b) = &bias {
            assert_eq!(b.len(), n, "bias length");
        }
        BPacked {
            k,
            n,
            k2,
            panels,
            bias,
        }
    }

    pub fn bytes(&self) -> usize {
        2 * self.panels.len()
    }

    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) {
        let kernel = bf16_kernel().expect("bf16 kernel");
        self.forward_with(kernel, x, m, 0..self.n, out)
    }

    /// Columns `cols` of [`BPacked::forward`] (same bits), as
    /// [`QPacked::forward_cols`].
    pub fn forward_cols(&self, x: &[f32], m: usize, cols: Range<usize>, out: &mut [f32]) {
        self.forward_with(bf16_kernel().expect("bf16 kernel"), x, m, cols, out)
    }

    fn forward_with(
        &self,
        kernel: BKernel,
        x: &[f32],
        m: usize,
        cols: Range<usize>,
        out: &mut [f32],
    ) {
        let (k, k2) = (self.k, self.k2);
        check_cols(&cols, self.n, NQ);
        let w = cols.len();
        assert!(x.len() >= m * k && out.len() >= m * w, "gemm operand sizes");
        let mut xb = vec![0u16; m * k2];
        for i in 0..m {
            for (o, &v) in xb[i * k2..i * k2 + k].iter_mut().zip(&x[i * k..]) {
                *o = to_bf16(v);
            }
        }
        let mut tile = [0f32; MQ * NQ];
        for p in cols.start / NQ..cols.end.div_ceil(NQ) {
            let b = &self.panels[p * k2 * NQ..][..k2 * NQ];
            let width = NQ.min(cols.end - p * NQ);
            for i in (0..m).step_by(MQ) {
                let mr = MQ.min(m - i);
                kernel(mr, k2 / 2, &xb[i * k2..], k2, b, &mut tile);
                for r in 0..mr {
                    let o = &mut out[(i + r) * w + p * NQ - cols.start..][..width];
                    o.copy_from_slice(&tile[r * NQ..][..width]);
                    if let Some(bias) = &self.bias {
                        for (o, b) in o.iter_mut().zip(&bias[p * NQ..]) {
                            *o += b;
                        }
                    }
                }
            }
        }
    }
}

/// `tile[r][c] = Σ_{g,t} a[r·lda + 2g + t] · b[g·2NQ + 2c + t]` (bf16 in, f32 sums).
type BKernel = fn(usize, usize, &[u16], usize, &[u16], &mut [f32; MQ * NQ]);

/// The bf16 kernels this CPU runs, fastest first (the portable one last).
pub fn bf16_kernels() -> Vec<(&'static str, BKernel)> {
    let mut v: Vec<(&'static str, BKernel)> = vec![];
    #[cfg(target_arch = "x86_64")]
    if super::cap() >= super::KernelCap::Native && x86::has_bf16() {
        v.push(("avx512-bf16", x86::bf16_avx512));
    }
    v.push(("portable", bf16_portable));
    v
}

/// The hardware bf16 kernel, if this CPU has one (bf16 on the portable
/// kernel is slower than float32 and is not offered).
pub fn bf16_kernel() -> Option<BKernel> {
    static K: OnceLock<Option<BKernel>> = OnceLock::new();
    *K.get_or_init(|| {
        let ks = bf16_kernels();
        (ks.len() > 1).then(|| ks[0].1)
    })
}

fn bf16_portable(
    mr: usize,
    pairs: usize,
    a: &[u16],
    lda: usize,
    b: &[u16],
    tile: &mut [f32; MQ * NQ],
) {
    let f = |v: u16| bf16::from_bits(v).to_f32();
    tile.fill(0.0);
    for r in 0..mr {
        let a = &a[r * lda..][..pairs * 2];
        let t = &mut tile[r * NQ..][..NQ];
        for (g, a2) in a.chunks_exact(2).enumerate() {
            let b = &b[g * 2 * NQ..][..2 * NQ];
            for (c, t) in t.iter_mut().enumerate() {
                // Products of two bf16 values are exact in f32.
                *t = (*t + f(a2[1]) * f(b[c * 2 + 1])) + f(a2[0]) * f(b[c * 2]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MQ, NQ};
    use std::arch::x86_64::*;

    pub fn has_vnni() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    pub fn has_bf16() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }

    fn check<T>(mr: usize, steps: usize, a: &[T], lda: usize, b: &[T], per: usize) {
        assert!((1..=MQ).contains(&mr) && b.len() >= steps * per * NQ);
        assert!(a.len() >= (mr - 1) * lda + steps * per);
    }

    pub fn int8_vnni(
        mr: usize,
        groups: usize,
        a: &[i8],
        lda: usize,
        b: &[i8],
        colsum: &[i32],
        tile: &mut [i32; MQ * NQ],
    ) {
        check(mr, groups, a, lda, b, 4);
        assert!(colsum.len() >= NQ);
        // SAFETY: chosen only when `has_vnni()`; `check` bounds every read.
        unsafe {
            let (a, b) = (a.as_ptr(), b.as_ptr());
            match mr {
                6 => vnni::<6>(groups, a, lda, b, colsum, tile),
                5 => vnni::<5>(groups, a, lda, b, colsum, tile),
                4 => vnni::<4>(groups, a, lda, b, colsum, tile),
                3 => vnni::<3>(groups, a, lda, b, colsum, tile),
                2 => vnni::<2>(groups, a, lda, b, colsum, tile),
                _ => vnni::<1>(groups, a, lda, b, colsum, tile),
            }
        }
    }

    /// `R` rows (a constant, so the 2·R accumulators stay in registers).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni<const R: usize>(
        groups: usize,
        a: *const i8,
        lda: usize,
        b: *const i8,
        colsum: &[i32],
        tile: &mut [i32; MQ * NQ],
    ) {
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        for g in 0..groups {
            let w0 = _mm512_loadu_si512(b.add(g * 4 * NQ) as *const _);
            let w1 = _mm512_loadu_si512(b.add(g * 4 * NQ + 64) as *const _);
            for (r, acc) in acc.iter_mut().enumerate() {
                // The activation bytes flipped to unsigned (xq + 128).
                let a4 = (a.add(r * lda + g * 4) as *const i32).read_unaligned();
                let av = _mm512_set1_epi32(a4 ^ 0x8080_8080u32 as i32);
                acc[0] = _mm512_dpbusd_epi32(acc[0], av, w0);
                acc[1] = _mm512_dpbusd_epi32(acc[1], av, w1);
            }
        }
        let c128 = |h: usize| {
            let cs = _mm512_loadu_si512(colsum.as_ptr().add(h * 16) as *const _);
            _mm512_slli_epi32(cs, 7)
        };
        let (k0, k1) = (c128(0), c128(1));
        for (r, acc) in acc.iter().enumerate() {
            let t = tile.as_mut_ptr().add(r * NQ);
            _mm512_storeu_si512(t as *mut _, _mm512_sub_epi32(acc[0], k0));
            _mm512_storeu_si512(t.add(16) as *mut _, _mm512_sub_epi32(acc[1], k1));
        }
    }

    pub fn int8_avx2(
        mr: usize,
        groups: usize,
        a: &[i8],
        lda: usize,
        b: &[i8],
        _colsum: &[i32],
        tile: &mut [i32; MQ * NQ],
    ) {
        check(mr, groups, a, lda, b, 4);
        // SAFETY: chosen only when AVX2 is detected; `check` bounds every read.
        unsafe {
            for r in (0..mr).step_by(2) {
                let rows = 2.min(mr - r);
                avx2(
                    rows,
                    groups,
                    a.as_ptr().add(r * lda),
                    lda,
                    b.as_ptr(),
                    tile,
                    r,
                );
            }
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2(
        rows: usize,
        groups: usize,
        a: *const i8,
        lda: usize,
        b: *const i8,
        tile: &mut [i32; MQ * NQ],
        r0: usize,
    ) {
        let mut acc = [[_mm256_setzero_si256(); 4]; 2];
        let ones = _mm256_set1_epi16(1);
        for g in 0..groups {
            let w =
                [0, 1, 2, 3].map(|h| _mm256_loadu_si256(b.add(g * 4 * NQ + 32 * h) as *const _));
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                let a4 = (a.add(r * lda + g * 4) as *const i32).read_unaligned();
                let av = _mm256_set1_epi32(a4);
                let ua = _mm256_abs_epi8(av);
                for h in 0..4 {
                    let sw = _mm256_sign_epi8(w[h], av);
                    let p16 = _mm256_maddubs_epi16(ua, sw);
                    acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(p16, ones));
                }
            }
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let t = tile.as_mut_ptr().add((r0 + r) * NQ);
            for (h, v) in acc.iter().enumerate() {
                _mm256_storeu_si256(t.add(8 * h) as *mut _, *v);
            }
        }
    }

    pub fn bf16_avx512(
        mr: usize,
        pairs: usize,
        a: &[u16],
        lda: usize,
        b: &[u16],
        tile: &mut [f32; MQ * NQ],
    ) {
        check(mr, pairs, a, lda, b, 2);
        // SAFETY: chosen only when `has_bf16()`; `check` bounds every read.
        unsafe { bf16(mr, pairs, a.as_ptr(), lda, b.as_ptr(), tile) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn bf16(
        mr: usize,
        pairs: usize,
        a: *const u16,
        lda: usize,
        b: *const u16,
        tile: &mut [f32; MQ * NQ],
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MQ];
        for g in 0..pairs {
            let w0: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(g * 2 * NQ) as *const _));
            let w1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(g * 2 * NQ + 32) as *const _));
            for (r, acc) in acc.iter_mut().enumerate().take(mr) {
                let a2 = (a.add(r * lda + g * 2) as *const i32).read_unaligned();
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(a2));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, w0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, w1);
            }
        }
        for (r, acc) in acc.iter().enumerate().take(mr) {
            let t = tile.as_mut_ptr().add(r * NQ);
            _mm512_storeu_ps(t, acc[0]);
            _mm512_storeu_ps(t.add(16), acc[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(seed: &mut u32) -> f32 {
        *seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        (*seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    }

    const SIZES: [(usize, usize, usize); 6] = [
        (1, 1, 1),
        (7, 300, 33),
        (13, 512, 16),
        (100, 257, 40),
        (6, 5, 65),
        (9, 1030, 70),
    ];

    fn problem(m: usize, k: usize, n: usize, seed: &mut u32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let w: Vec<f32> = (0..n * k).map(|_| rnd(seed)).collect();
        let b: Vec<f32> = (0..n).map(|_| rnd(seed)).collect();
        let x: Vec<f32> = (0..m * k).map(|_| rnd(seed) * 4.0).collect();
        (w, b, x)
    }

    #[test]
    fn every_int8_kernel_equals_the_portable_one() {
        let mut seed = 7;
        let kernels = int8_kernels();
        let names: Vec<_> = kernels.iter().map(|k| k.0).collect();
        eprintln!("int8 kernels on this CPU: {names:?}");
        for &(m, k, n) in &SIZES {
            let (w, b, x) = problem(m, k, n, &mut seed);
            let q = QPacked::new(k, w.chunks_exact(k), Some(b.clone()));
            let mut want = vec![f32::NAN; m * n];
            q.forward_with(int8_portable, &x, m, 0..n, &mut want);
            // Any panel-aligned column range gives the same bits.
            for c0 in (0..n).step_by(NQ) {
                let c1 = (c0 + NQ).min(n);
                let mut part = vec![f32::NAN; m * (c1 - c0)];
                q.forward_with(int8_portable, &x, m, c0..c1, &mut part);
                for i in 0..m {
                    assert_eq!(
                        &part[i * (c1 - c0)..][..c1 - c0],
                        &want[i * n + c0..i * n + c1]
                    );
                }
            }
            for (name, kern) in &kernels {
                let mut y = vec![f32::NAN; m * n];
                q.forward_with(*kern, &x, m, 0..n, &mut y);
                assert_eq!(y, want, "{name} at {m}x{k}x{n}");
            }
            // Against float32: each product is off by at most the two
            // rounding errors (half a step of each scale).
            for i in 0..m {
                for j in 0..n {
                    let xr = &x[i * k..(i + 1) * k];
                    let wr = &w[j * k..(j + 1) * k];
                    let exact: f64 = xr
                        .iter()
                        .zip(wr)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        + b[j] as f64;
                    let sx = xr.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                    let sw = wr.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                    let bound: f64 = xr
                        .iter()
                        .zip(wr)
                        .map(|(a, b)| (*a as f64).abs() * sw / 2.0 + (*b as f64).abs() * sx / 2.0)
                        .sum::<f64>()
                        + k as f64 * sx * sw / 4.0
                        + 1e-4;
                    let got = want[i * n + j] as f64;
                    assert!(
                        (got - exact).abs() <= bound,
                        "{m}x{k}x{n} [{i},{j}]: {got} vs {exact} (bound {bound})"
                    );
                }
            }
            // A row's result does not depend on the rows around it.
            let mut one = vec![0.0; n];
            q.forward(&x[(m - 1) * k..], 1, &mut one);
            assert_eq!(
                &one[..],
                &want[(m - 1) * n..],
                "{m}x{k}x{n}: last row alone"
            );
        }
    }

    #[test]
    fn every_bf16_kernel_matches_the_portable_one() {
        let mut seed = 11;
        let kernels = bf16_kernels();
        let names: Vec<_> = kernels.iter().map(|k| k.0).collect();
        eprintln!("bf16 kernels on this CPU: {names:?}");
        for &(m, k, n) in &SIZES {
            let (w, b, x) = problem(m, k, n, &mut seed);
            let q = BPacked::new(k, w.chunks_exact(k), Some(b.clone()));
            let mut want = vec![f32::NAN; m * n];
            q.forward_with(bf16_portable, &x, m, 0..n, &mut want);
            for (name, kern) in &kernels {
                let mut y = vec![f32::NAN; m * n];
                q.forward_with(*kern, &x, m, 0..n, &mut y);
                // Same exact products; the hardware may order the pair's two
                // additions differently (one f32 rounding each): k roundings of
                // at most ulp(Σ|terms|) / 2.
                for i in 0..m {
                    let xr = &x[i * k..(i + 1) * k];
                    for j in 0..n {
                        let wr = &w[j * k..(j + 1) * k];
                        let mag: f32 = xr.iter().zip(wr).map(|(a, b)| (a * b).abs()).sum();
                        let tol = k as f32 * mag * f32::EPSILON + 1e-30;
                        let (g, e) = (y[i * n + j], want[i * n + j]);
                        assert!((g - e).abs() <= tol, "{name} at {m}x{k}x{n}: {g} vs {e}");
                    }
                }
            }
        }
    }
}
