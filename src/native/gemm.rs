//! `y = x · Wᵀ (+ b)` for the native engine: weights packed once at load
//! time into panels of [`NR`] output columns, register-blocked AVX-512F and
//! AVX2/FMA micro-kernels ([`MR`] rows × [`NR`] columns, chosen from the
//! CPU's flags: [`kernels`]), and a portable fallback.
//!
//! Every output element is summed in the same order whatever the number of
//! rows and whichever row it is on: `k` runs upwards in blocks of [`KC`],
//! each block summed from zero with fused multiply-adds and then added to
//! the running total. A sentence's log-probs therefore do not depend on the
//! batch it is decoded in (tract's do, in the last bits).

use std::ops::Range;
use std::sync::OnceLock;

/// Rows of the micro-kernel.
pub const MR: usize = 6;
/// Columns of the micro-kernel (two AVX registers).
pub const NR: usize = 16;
/// Depth of one block of `k`.
pub const KC: usize = 256;
/// Rows of `x` kept in the L2 cache while a block of weights streams by.
const MC: usize = 96;

/// A linear map with its weight packed for [`Packed::forward`].
#[derive(Clone, Debug)]
pub struct Packed {
    /// Input width.
    pub k: usize,
    /// Output width.
    pub n: usize,
    /// `ceil(n / NR)` panels, each `k × NR` (row-major, zero-padded columns).
    panels: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Packed {
    /// Packs `weight` given as `[n, k]` rows (fairseq's `[out, in]`).
    pub fn new(weight: ndarray::ArrayView2<f32>, bias: Option<&[f32]>) -> Packed {
        let (n, k) = weight.dim();
        let np = n.div_ceil(NR);
        let mut panels = vec![0.0f32; np * k * NR];
        for (j, row) in weight.rows().into_iter().enumerate() {
            let (p, c) = (j / NR, j % NR);
            let base = p * k * NR;
            for (kk, &w) in row.iter().enumerate() {
                panels[base + kk * NR + c] = w;
            }
        }
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias length");
        }
        Packed {
            k,
            n,
            panels,
            bias: bias.map(<[f32]>::to_vec),
        }
    }

    /// Row `j` of the `[n, k]` weight as packed (the same values): lets
    /// a token table tied to this projection be read from here.
    pub fn row(&self, j: usize) -> impl Iterator<Item = f32> + '_ {
        let base = (j / NR) * self.k * NR + j % NR;
        self.panels[base..].iter().step_by(NR).take(self.k).copied()
    }

    /// Resident bytes of the packed weight.
    pub fn bytes(&self) -> usize {
        4 * (self.panels.len() + self.bias.as_ref().map_or(0, Vec::len))
    }

    /// `out[m × n] = x[m × k] · Wᵀ + b` (`x` and `out` row-major, contiguous).
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.forward_with(kernel(), x, m, 0..self.n, out)
    }

    /// Columns `cols` of [`Packed::forward`] into `out[m × cols.len()]`,
    /// with the same bits. `cols.start` is a multiple of [`NR`], and so is
    /// `cols.end` unless it is `n`.
    pub fn forward_cols(&self, x: &[f32], m: usize, cols: Range<usize>, out: &mut [f32]) {
        self.forward_with(kernel(), x, m, cols, out)
    }

    fn forward_with(
        &self,
        kernel: Kernel,
        x: &[f32],
        m: usize,
        cols: Range<usize>,
        out: &mut [f32],
    ) {
        let k = self.k;
        check_cols(&cols, self.n, NR);
        let w = cols.len();
        assert!(x.len() >= m * k && out.len() >= m * w, "gemm operand sizes");
        if m == 0 || w == 0 {
            return;
        }
        if k == 0 {
            out[..m * w].fill(0.0);
        }
        let (p0, p1) = (cols.start / NR, cols.end.div_ceil(NR));
        let mut tile = [0.0f32; MR * NR];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let first = k0 == 0;
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                for p in p0..p1 {
                    let b = &self.panels[p * k * NR + k0 * NR..][..kc * NR];
                    let width = NR.min(cols.end - p * NR);
                    for i in (i0..i0 + mc).step_by(MR) {
                        let mr = MR.min(i0 + mc - i);
                        let a = &x[i * k + k0..];
                        kernel(mr, kc, a, k, b, &mut tile);
                        for r in 0..mr {
                            let c = &mut out[(i + r) * w + (p - p0) * NR..][..width];
                            let t = &tile[r * NR..][..width];
                            if first {
                                c.copy_from_slice(t);
                            } else {
                                for (c, t) in c.iter_mut().zip(t) {
                                    *c += t;
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(b) = &self.bias {
            for row in out[..m * w].chunks_exact_mut(w) {
                for (c, b) in row.iter_mut().zip(&b[cols.clone()]) {
                    *c += b;
                }
            }
        }
    }
}

/// Checks a column range for `forward_cols`: panel-aligned start, end a
/// panel boundary or `n`.
pub(crate) fn check_cols(cols: &Range<usize>, n: usize, panel: usize) {
    assert!(
        cols.start <= cols.end
            && cols.end <= n
            && cols.start.is_multiple_of(panel)
            && (cols.end.is_multiple_of(panel) || cols.end == n),
        "column range {cols:?} of {n} is not panel-aligned"
    );
}

/// `tile[r][c] = Σ_p a[r·lda + p] · b[p·NR + c]` for `r < mr`, `p < kc`.
type Kernel = fn(usize, usize, &[f32], usize, &[f32], &mut [f32; MR * NR]);

/// The float32 kernels this CPU runs (under `ADMIN_CONVERT_KERNELS`'s
/// cap), fastest first (the portable one last). All sum every element in the same order (one fused multiply-add
/// per `p`, upwards), so they give the same bits.
pub fn kernels() -> Vec<(&'static str, Kernel)> {
    let mut v: Vec<(&'static str, Kernel)> = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        use super::KernelCap;
        let cap = super::cap();
        if cap >= KernelCap::Native && std::arch::is_x86_feature_detected!("avx512f") {
            v.push(("avx512f", x86::kernel512 as Kernel));
        }
        if cap >= KernelCap::Avx2
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            v.push(("avx2-fma", x86::kernel as Kernel));
        }
    }
    v.push(("portable", portable as Kernel));
    v
}

fn kernel() -> Kernel {
    static K: OnceLock<Kernel> = OnceLock::new();
    *K.get_or_init(|| kernels()[0].1)
}

/// True when the AVX2/FMA micro-kernel runs on this CPU.
pub fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn portable(mr: usize, kc: usize, a: &[f32], lda: usize, b: &[f32], tile: &mut [f32; MR * NR]) {
    tile.fill(0.0);
    for r in 0..mr {
        let a = &a[r * lda..][..kc];
        let t = &mut tile[r * NR..][..NR];
        for (p, &av) in a.iter().enumerate() {
            let b = &b[p * NR..][..NR];
            for (t, &bv) in t.iter_mut().zip(b) {
                *t = av.mul_add(bv, *t);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    pub fn kernel(
        mr: usize,
        kc: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        tile: &mut [f32; MR * NR],
    ) {
        assert!((1..=MR).contains(&mr) && b.len() >= kc * NR);
        assert!(a.len() >= (mr - 1) * lda + kc);
        // SAFETY: `kernel()` selects this function only when AVX2 and FMA
        // are available; the asserts above bound every read of `a` and `b`.
        unsafe {
            match mr {
                6 => run::<6>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                5 => run::<5>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                4 => run::<4>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                3 => run::<3>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                2 => run::<2>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                _ => run::<1>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
            }
        }
    }

    pub fn kernel512(
        mr: usize,
        kc: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        tile: &mut [f32; MR * NR],
    ) {
        assert!((1..=MR).contains(&mr) && b.len() >= kc * NR);
        assert!(a.len() >= (mr - 1) * lda + kc);
        // SAFETY: chosen only when AVX-512F is available; the asserts above
        // bound every read of `a` and `b`.
        unsafe {
            match mr {
                6 => run512::<6>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                5 => run512::<5>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                4 => run512::<4>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                3 => run512::<3>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                2 => run512::<2>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
                _ => run512::<1>(kc, a.as_ptr(), lda, b.as_ptr(), tile),
            }
        }
    }

    /// One 16-wide register per row: every element gets the same fused
    /// multiply-adds in the same order as in [`run`].
    #[target_feature(enable = "avx512f")]
    unsafe fn run512<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        tile: &mut [f32; MR * NR],
    ) {
        let mut c = [_mm512_setzero_ps(); R];
        for p in 0..kc {
            let bv = _mm512_loadu_ps(b.add(p * NR));
            for (r, c) in c.iter_mut().enumerate() {
                *c = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(r * lda + p)), bv, *c);
            }
        }
        for (r, c) in c.iter().enumerate() {
            _mm512_storeu_ps(tile.as_mut_ptr().add(r * NR), *c);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const R: usize>(
        kc: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        tile: &mut [f32; MR * NR],
    ) {
        let mut c0 = [_mm256_setzero_ps(); R];
        let mut c1 = [_mm256_setzero_ps(); R];
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            for r in 0..R {
                let av = _mm256_broadcast_ss(&*a.add(r * lda + p));
                c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR), c0[r]);
            _mm256_storeu_ps(tile.as_mut_ptr().add(r * NR + 8), c1[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn reference(x: &[f32], m: usize, w: &Array2<f32>, b: Option<&[f32]>) -> Vec<f32> {
        let (n, k) = w.dim();
        let mut y = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = b.map_or(0.0, |b| b[j] as f64);
                for p in 0..k {
                    s += x[i * k + p] as f64 * w[[j, p]] as f64;
                }
                y[i * n + j] = s;
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    /// A packed row reads back the weight row bit for bit (embeddings tied
    /// to the output projection are read this way), tails included.
    #[test]
    fn packed_rows_read_back_the_weight_rows() {
        for (n, k) in [(1, 1), (17, 5), (33, 64), (40, 300)] {
            let w = Array2::from_shape_fn((n, k), |(j, p)| (j * 1000 + p) as f32 * 0.5 - 7.0);
            let packed = Packed::new(w.view(), None);
            for j in 0..n {
                let got: Vec<f32> = packed.row(j).collect();
                assert_eq!(got, w.row(j).to_vec(), "row {j} of {n}×{k}");
            }
        }
    }

    #[test]
    fn matches_a_plain_product_at_odd_sizes() {
        let names: Vec<_> = kernels().iter().map(|k| k.0).collect();
        eprintln!("float32 kernels on this CPU: {names:?}");
        let mut seed = 1u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 300, 33),
            (13, 512, 16),
            (100, 257, 40),
            (6, 5, 17),
        ] {
            let w = Array2::from_shape_fn((n, k), |_| rnd());
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let x: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let p = Packed::new(w.view(), Some(&b));
            let mut y = vec![f32::NAN; m * n];
            p.forward(&x, m, &mut y);
            let r = reference(&x, m, &w, Some(&b));
            for (a, e) in y.iter().zip(&r) {
                assert!(
                    (a - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "{m}x{k}x{n}: {a} vs {e}"
                );
            }
            // A row's result does not depend on the rows around it.
            let mut one = vec![0.0; n];
            p.forward(&x[(m - 1) * k..], 1, &mut one);
            assert_eq!(&one[..], &y[(m - 1) * n..], "{m}x{k}x{n}: last row alone");
            // Any panel-aligned column range gives the same bits.
            for c0 in (0..n).step_by(NR) {
                let c1 = (c0 + 2 * NR).min(n);
                let mut part = vec![f32::NAN; m * (c1 - c0)];
                p.forward_cols(&x, m, c0..c1, &mut part);
                for i in 0..m {
                    assert_eq!(
                        &part[i * (c1 - c0)..][..c1 - c0],
                        &y[i * n + c0..i * n + c1]
                    );
                }
            }
            // Every kernel gives the portable kernel's bits.
            let mut want = vec![f32::NAN; m * n];
            p.forward_with(portable, &x, m, 0..n, &mut want);
            for (name, kern) in kernels() {
                let mut got = vec![f32::NAN; m * n];
                p.forward_with(kern, &x, m, 0..n, &mut got);
                assert_eq!(got, want, "{name} at {m}x{k}x{n}");
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// `cargo test --release --lib bench_gemm -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_gemm() {
        for &(m, k, n) in &[
            (128, 512, 1536),
            (64, 512, 2048),
            (64, 2048, 512),
            (400, 512, 512),
        ] {
            let w = ndarray::Array2::from_shape_fn((n, k), |(i, j)| {
                ((i * 7 + j * 3) % 11) as f32 * 0.01
            });
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
            let p = Packed::new(w.view(), None);
            let mut y = vec![0.0; m * n];
            let reps = 200;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                p.forward(&x, m, &mut y);
            }
            let s = t.elapsed().as_secs_f64();
            let gflops = 2.0 * (m * k * n * reps) as f64 / s / 1e9;
            println!("{m}x{k}x{n}: {gflops:.1} GFLOP/s");
        }
    }
}
