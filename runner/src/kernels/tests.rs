//! Every kernel path against the scalar reference, and the scalar reference
//! against `codec::decode` followed by a plain f64 dot product.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_format::codec::{self, nf4::CODES};
use strata_format::{CodecError, DType};

use super::nf4::NF4_I16;
use super::quant_act::{quantize, Order};
use super::*;

/// How test values are drawn.
#[derive(Debug, Clone, Copy)]
pub(super) enum Data {
    /// Standard normal.
    Normal,
    /// Cauchy, clipped to ±1000: mostly small values with huge outliers.
    HeavyTailed,
}

/// `len` values drawn as `data` says.
pub(super) fn values(rng: &mut StdRng, len: usize, data: Data) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            match data {
                Data::Normal => ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32,
                Data::HeavyTailed => (std::f64::consts::PI * (u - 0.5))
                    .tan()
                    .clamp(-1000.0, 1000.0) as f32,
            }
        })
        .collect()
}

/// A weight over `bytes`.
pub(super) fn weight<'a>(
    dtype: DType,
    rows: usize,
    cols: usize,
    block: usize,
    bytes: &'a [u8],
) -> Weight<'a> {
    Weight {
        dtype,
        rows,
        cols,
        block,
        bytes,
        layout: Layout::Rows,
    }
}

fn encode(dtype: DType, w: &[f32], rows: usize, cols: usize, block: usize) -> Vec<u8> {
    let block = dtype.is_quantized().then_some(block as u32);
    codec::encode(dtype, w, &[rows as u64, cols as u64], block).expect("encodes")
}

fn decode(dtype: DType, bytes: &[u8], rows: usize, cols: usize, block: usize) -> Vec<f32> {
    let block = dtype.is_quantized().then_some(block as u32);
    codec::decode(dtype, bytes, &[rows as u64, cols as u64], block).expect("decodes")
}

/// `Σ |w · x|` of every output (the scale of the f32 rounding error).
pub(super) fn magnitudes(wd: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f64> {
    let mut m = vec![0f64; rows * n];
    for r in 0..rows {
        for t in 0..n {
            m[r * n + t] = (0..cols)
                .map(|c| f64::from(wd[r * cols + c] * x[t * cols + c]).abs())
                .sum();
        }
    }
    m
}

/// Exact `x · Wᵀ` of the decoded weights, in f64, laid out like `linear_t`.
pub(super) fn exact(wd: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0f64; rows * n];
    for r in 0..rows {
        for t in 0..n {
            y[r * n + t] = (0..cols)
                .map(|c| f64::from(wd[r * cols + c]) * f64::from(x[t * cols + c]))
                .sum();
        }
    }
    y
}

/// Largest error the integer kernels may make against the exact product of
/// the decoded weights: activations are rounded by at most half a step
/// (`d_x / 2`) and NF4 code values by at most `scale_w × 0.5 / 1024`.
fn quantization_bounds(w: &Weight<'_>, wd: &[f32], x: &[f32], n: usize) -> Vec<f64> {
    let (dtype, bytes, rows, cols, block) = (w.dtype, w.bytes, w.rows, w.cols, w.block);
    if ggml::Own::of(dtype, block, cols).is_some() && AQ.get() == ActQuant::Int8 {
        return int8_bounds(w, wd, x, n);
    }
    let qa = quantize(x, n, cols, block, Order::Natural);
    let rb = codec::row_bytes(dtype, cols, block);
    let bb = rb / cols.div_ceil(block);
    let mut bound = vec![0f64; rows * n];
    for r in 0..rows {
        for t in 0..n {
            let q = qa.row(t);
            let mut e = 0f64;
            for b in 0..cols.div_ceil(block) {
                let dx = f64::from(q.scales[b]);
                let dw = f64::from(
                    half::f16::from_le_bytes([bytes[r * rb + b * bb], bytes[r * rb + b * bb + 1]])
                        .to_f32(),
                );
                for c in b * block..((b + 1) * block).min(cols) {
                    e += f64::from(wd[r * cols + c]).abs() * dx / 2.0;
                    if dtype == DType::Nf4 {
                        e += f64::from(q.qs[c]).abs() * dx * dw * 0.5 / 1024.0;
                    }
                }
            }
            bound[r * n + t] = e;
        }
    }
    bound
}

/// `linear_t` on the `isa` path, into a fresh output.
pub(super) fn run(isa: Isa, w: &Weight<'_>, x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; w.rows * n];
    linear_t_with(isa, AQ.get(), w, x, n, &mut out).expect("runs");
    out
}

thread_local! {
    /// The activation quantization [`run`] asks for on this test's thread.
    static AQ: std::cell::Cell<ActQuant> = const { std::cell::Cell::new(ActQuant::Int8) };
}

/// Runs `f` once with each [`ActQuant`] (as [`run`] and the bounds see it).
fn each_act_quant(mut f: impl FnMut(ActQuant)) {
    for aq in [ActQuant::Int8, ActQuant::Int16] {
        AQ.set(aq);
        f(aq);
    }
    AQ.set(ActQuant::Int8);
}

/// Checks every available path against the scalar reference (f32 rounding
/// only) and the reference against the exact product (within `bounds`).
pub(super) fn check_paths(
    what: &str,
    w: &Weight<'_>,
    wd: &[f32],
    x: &[f32],
    n: usize,
    bounds: &[f64],
) {
    let (rows, cols) = (w.rows, w.cols);
    let reference = run(Isa::Scalar, w, x, n);
    let want = exact(wd, x, rows, cols, n);
    let mags = magnitudes(wd, x, rows, cols, n);
    for i in 0..rows * n {
        let slack = 1e-5 * mags[i] + 1e-6;
        let err = (f64::from(reference[i]) - want[i]).abs();
        assert!(
            err <= bounds[i] + slack,
            "{what}: scalar output {i} = {} vs exact {} (error {err}, bound {})",
            reference[i],
            want[i],
            bounds[i]
        );
    }
    for isa in Isa::available() {
        let got = run(isa, w, x, n);
        for i in 0..rows * n {
            let base = f64::from(reference[i]);
            let err = (f64::from(got[i]) - base).abs();
            assert!(
                err <= 1e-5 * mags[i] + 1e-6,
                "{what}: {isa} output {i} = {} vs scalar {base}",
                got[i]
            );
        }
    }
}

#[test]
fn the_nf4_table_is_the_codes_times_1024_rounded() {
    for (i, &c) in CODES.iter().enumerate() {
        assert_eq!(
            i32::from(NF4_I16[i]),
            (c * 1024.0).round() as i32,
            "code {i}"
        );
    }
}

#[test]
fn scalar_is_available_and_the_selected_path_too() {
    let all = Isa::available();
    assert_eq!(all.first(), Some(&Isa::Scalar));
    assert!(all.contains(&Isa::selected()));
    eprintln!("kernel paths on this machine: {all:?}");
}

/// [`quantization_bounds`] for the int8 kernels (`ggml::own`): activations
/// rounded by at most `d_x / 2` (blocks of [`ggml::OWN_ACT_BLOCK`]) and NF4
/// code values by at most `scale_w × 0.5 / 64`.
fn int8_bounds(w: &Weight<'_>, wd: &[f32], x: &[f32], n: usize) -> Vec<f64> {
    let (dtype, bytes, rows, cols, block) = (w.dtype, w.bytes, w.rows, w.cols, w.block);
    let ab = ggml::OWN_ACT_BLOCK;
    let qa = ggml::quantize(x, n, cols, ab);
    let rb = codec::row_bytes(dtype, cols, block);
    let bb = rb / cols.div_ceil(block);
    let mut bound = vec![0f64; rows * n];
    for r in 0..rows {
        for t in 0..n {
            let q = qa.row(t);
            let mut e = 0f64;
            for c in 0..cols {
                let dx = f64::from(q.d[c / ab]);
                let at = r * rb + c / block * bb;
                let dw = f64::from(half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32());
                e += f64::from(wd[r * cols + c]).abs() * dx / 2.0;
                if dtype == DType::Nf4 {
                    e += f64::from(q.qs[c]).abs() * dx * dw * 0.5 / f64::from(ggml::NF4_ONE);
                }
            }
            bound[r * n + t] = e;
        }
    }
    bound
}

#[test]
fn the_int8_nf4_table_is_the_codes_times_64_rounded() {
    for (i, &c) in CODES.iter().enumerate() {
        assert_eq!(
            i32::from(ggml::NF4_I8[i]),
            (c * ggml::NF4_ONE as f32).round() as i32,
            "code {i}"
        );
    }
}

#[test]
fn quantized_paths_agree() {
    each_act_quant(|aq| {
        let mut rng = StdRng::seed_from_u64(5);
        for dtype in [DType::Nf4, DType::Int8] {
            for block in [32, 64, 96, 128, 384] {
                for (rows, cols) in [(3, 32), (5, 64), (7, 100), (4, 200), (9, 576), (2, 1000)] {
                    for data in [Data::Normal, Data::HeavyTailed] {
                        for n in 1..=5 {
                            let wv = values(&mut rng, rows * cols, data);
                            let x = values(&mut rng, n * cols, data);
                            let bytes = encode(dtype, &wv, rows, cols, block);
                            let wd = decode(dtype, &bytes, rows, cols, block);
                            let w = weight(dtype, rows, cols, block, &bytes);
                            let bounds = quantization_bounds(&w, &wd, &x, n);
                            let what = format!(
                                "{dtype} block {block} {rows}×{cols} {data:?} n={n} {aq:?}"
                            );
                            check_paths(&what, &w, &wd, &x, n, &bounds);
                        }
                    }
                }
            }
        }
        let _ = aq;
    });
}

#[test]
fn float_paths_agree() {
    let mut rng = StdRng::seed_from_u64(6);
    for dtype in [DType::F32, DType::F16, DType::Bf16] {
        for cols in [1, 7, 8, 15, 16, 17, 31, 33, 48, 100, 576] {
            for data in [Data::Normal, Data::HeavyTailed] {
                for n in 1..=5 {
                    let rows = 6;
                    let wv = values(&mut rng, rows * cols, data);
                    let x = values(&mut rng, n * cols, data);
                    let bytes = encode(dtype, &wv, rows, cols, 1);
                    let wd = decode(dtype, &bytes, rows, cols, 1);
                    let w = weight(dtype, rows, cols, 1, &bytes);
                    let what = format!("{dtype} {rows}×{cols} {data:?} n={n}");
                    check_paths(&what, &w, &wd, &x, n, &vec![0.0; rows * n]);
                }
            }
        }
    }
}

#[test]
fn large_products_split_over_threads_agree() {
    each_act_quant(|aq| {
        // Big enough to be cut into several rayon tasks.
        let mut rng = StdRng::seed_from_u64(7);
        let (rows, cols) = (301, 576);
        for dtype in [DType::Nf4, DType::Int8, DType::Bf16] {
            for n in [1, 3, 8] {
                let wv = values(&mut rng, rows * cols, Data::Normal);
                let x = values(&mut rng, n * cols, Data::Normal);
                let bytes = encode(dtype, &wv, rows, cols, 64);
                let wd = decode(dtype, &bytes, rows, cols, 64);
                let w = weight(dtype, rows, cols, 64, &bytes);
                let bounds = if dtype.is_quantized() {
                    quantization_bounds(&w, &wd, &x, n)
                } else {
                    vec![0.0; rows * n]
                };
                check_paths(&format!("{dtype} n={n}"), &w, &wd, &x, n, &bounds);
            }
        }
        let _ = aq;
    });
}

#[test]
fn extreme_values_do_not_overflow() {
    each_act_quant(|aq| {
        // Every weight at the largest magnitude and every activation at its
        // block's maximum, in the largest block: the integer sums are at their
        // bounds.
        let (cols, block) = (4096, 4096);
        let x = vec![3.0f32; cols];
        for (dtype, code, value) in [
            (DType::Int8, 0x80u8, -128.0),
            (DType::Nf4, 0x00, -1.0),
            (DType::Nf4, 0xff, 1.0),
        ] {
            let mut bytes = half::f16::from_f32(1.0).to_le_bytes().to_vec();
            bytes.resize(codec::row_bytes(dtype, cols, block), code);
            let w = weight(dtype, 1, cols, block, &bytes);
            let want = value * 3.0 * cols as f32;
            for isa in Isa::available() {
                let got = run(isa, &w, &x, 1)[0];
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs(),
                    "{dtype} {isa}: {got} vs {want}"
                );
            }
        }
        let _ = aq;
    });
}

#[test]
fn invalid_block_scales_are_refused_by_every_path() {
    each_act_quant(|aq| {
        // 10 blocks a row: two groups of 4 and 2 more (the kernels for
        // blocks of 64 check a group's scales together), 16 rows (two
        // groups of 8 rows for several activation rows).
        let (rows, cols, block) = (16, 640, 64);
        let wv: Vec<f32> = (0..rows * cols).map(|i| (i % 17) as f32 - 8.0).collect();
        for dtype in [DType::Nf4, DType::Int8] {
            let good = encode(dtype, &wv, rows, cols, block);
            let rb = codec::row_bytes(dtype, cols, block);
            let bb = rb / 10;
            for (bits, valid) in [
                (0x7e00u16, false),
                (0x7c00, false),
                (0xfc00, false),
                (0xbc00, false),
                (0x8001, false),
                (0x8000, true),
                (0x7bff, true),
            ] {
                for (r, b) in [(2, 1), (9, 6), (15, 9)] {
                    let mut bytes = good.clone();
                    let at = r * rb + b * bb;
                    bytes[at..at + 2].copy_from_slice(&bits.to_le_bytes());
                    let w = weight(dtype, rows, cols, block, &bytes);
                    for n in [1, 3] {
                        let x = vec![1.0f32; n * cols];
                        for isa in Isa::available() {
                            let mut out = vec![0f32; rows * n];
                            let what = format!("{dtype} {isa} {bits:#x} row {r} block {b} n {n}");
                            match linear_t_with(isa, aq, &w, &x, n, &mut out) {
                                Err(CodecError::BadScale { block, .. }) => {
                                    assert!(!valid && block == b, "{what}: block {block}")
                                }
                                Ok(()) => assert!(valid, "{what} accepted"),
                                Err(e) => panic!("{what}: {e}"),
                            }
                        }
                    }
                }
            }
        }
        let _ = aq;
    });
}

#[test]
fn inconsistent_lengths_are_errors() {
    let bytes = vec![0u8; 2 * 34];
    let w = weight(DType::Nf4, 2, 64, 64, &bytes);
    let mut out = vec![0f32; 2];
    let length = |what, expected, actual| CodecError::Length {
        what,
        expected,
        actual,
    };
    assert_eq!(
        linear_t(Isa::Scalar, &w, &[0.0; 63], 1, &mut out).map_err(|e| e.to_string()),
        Err(length("activations", 64, 63).to_string())
    );
    assert_eq!(
        linear_t(Isa::Scalar, &w, &[0.0; 64], 1, &mut out[..1]).map_err(|e| e.to_string()),
        Err(length("outputs", 2, 1).to_string())
    );
    let short = weight(DType::Nf4, 2, 64, 64, &bytes[..60]);
    assert_eq!(
        linear_t(Isa::Scalar, &short, &[0.0; 64], 1, &mut out).map_err(|e| e.to_string()),
        Err(length("weight bytes", 68, 60).to_string())
    );
    let odd = weight(DType::Nf4, 2, 64, 48, &bytes);
    assert!(matches!(
        linear_t(Isa::Scalar, &odd, &[0.0; 64], 1, &mut out),
        Err(CodecError::BlockSize(48))
    ));
    let empty = weight(DType::Int8, 3, 0, 64, &[]);
    let mut out = vec![f32::NAN; 6];
    linear_t(Isa::Scalar, &empty, &[], 2, &mut out).expect("empty rows");
    assert_eq!(out, vec![0.0; 6]);
}

/// Speculative decoding verifies several tokens in one product and relies on
/// each row coming out bit for bit as a single-token product would (greedy
/// output must equal plain decoding's): for every available path and
/// encoding, `n` rows at once equal `n` one-row products exactly, for every
/// tile size and across a split into parallel tasks.
#[test]
fn several_rows_equal_one_row_products_bit_for_bit() {
    each_act_quant(|aq| {
        let mut rng = StdRng::seed_from_u64(11);
        // Rows in groups of 8 and not; 4 and 5 blocks of 64 per row (the
        // 64-block kernels take 4 at a time).
        for (rows, cols, block) in [(300, 256, 64), (21, 320, 64)] {
            let wv = values(&mut rng, rows * cols, Data::Normal);
            for dtype in [DType::F32, DType::F16, DType::Bf16, DType::Int8, DType::Nf4] {
                let bytes = encode(dtype, &wv, rows, cols, block);
                let w = weight(dtype, rows, cols, block, &bytes);
                for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon] {
                    if !isa.is_available() {
                        continue;
                    }
                    for n in [2, 3, 4, 5, 9, 17, MAX_FUSED_ROWS] {
                        let x = values(&mut rng, n * cols, Data::HeavyTailed);
                        let all = run(isa, &w, &x, n);
                        for t in 0..n {
                            let one = run(isa, &w, &x[t * cols..(t + 1) * cols], 1);
                            for r in 0..rows {
                                assert_eq!(
                                    all[r * n + t].to_bits(),
                                    one[r].to_bits(),
                                    "{dtype} {isa:?} n{n} row {t} output {r}"
                                );
                            }
                        }
                    }
                }
            }
        }
        let _ = aq;
    });
}

/// Weights interleaved in groups of 8 rows ([`interleave`], done to resident
/// weights) give the outputs of the rows as stored, bit for bit, on every
/// path and activation quantization and for any number of activation rows
/// (whole groups, rows after the last group, a split into parallel tasks);
/// [`stored_rows`] undoes the interleaving; a weight with an invalid block
/// scale is left as stored (for the kernels to name the block).
#[test]
fn interleaved_rows_equal_stored_rows_bit_for_bit() {
    each_act_quant(|_| {
        let mut rng = StdRng::seed_from_u64(12);
        for (rows, cols) in [(8, 64), (21, 320), (300, 256), (64, 1024)] {
            let wv = values(&mut rng, rows * cols, Data::Normal);
            for dtype in [DType::Int8, DType::Nf4] {
                let bytes = encode(dtype, &wv, rows, cols, 64);
                let w = weight(dtype, rows, cols, 64, &bytes);
                let mut inter = bytes.clone();
                let rb = row_bytes(dtype, cols, 64);
                ggml::interleave(&mut inter, rb, row_bytes(dtype, 64, 64));
                assert_ne!(inter, bytes, "{dtype} {rows}×{cols}");
                let wi = Weight {
                    bytes: &inter,
                    layout: Layout::Interleaved8,
                    ..w
                };
                assert_eq!(&*stored_rows(&wi), &bytes[..], "{dtype} {rows}×{cols}");
                for isa in Isa::available() {
                    for n in [1, 2, 3, 4, 5, 9, 17, MAX_FUSED_ROWS] {
                        let x = values(&mut rng, n * cols, Data::HeavyTailed);
                        let want = run(isa, &w, &x, n);
                        let got = run(isa, &wi, &x, n);
                        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                a.to_bits(),
                                b.to_bits(),
                                "{dtype} {rows}×{cols} {isa:?} n{n} output {i}"
                            );
                        }
                    }
                }
            }
        }
    });
    // An invalid scale: not interleaved, the bytes untouched.
    let (rows, cols) = (16, 128);
    let wv = values(&mut StdRng::seed_from_u64(13), rows * cols, Data::Normal);
    for isa in Isa::available() {
        let mut bytes = encode(DType::Nf4, &wv, rows, cols, 64);
        let rb = row_bytes(DType::Nf4, cols, 64);
        bytes[3 * rb + 34..3 * rb + 36].copy_from_slice(&0x7e00u16.to_le_bytes());
        let before = bytes.clone();
        let w = weight(DType::Nf4, rows, cols, 64, &before);
        assert_eq!(interleave(isa, &w, &mut bytes), Layout::Rows, "{isa:?}");
        assert_eq!(bytes, before, "{isa:?}");
        // A valid one is interleaved where the path has the int8 kernels.
        let good = encode(DType::Nf4, &wv, rows, cols, 64);
        let mut inter = good.clone();
        let w = weight(DType::Nf4, rows, cols, 64, &good);
        let laid = interleave(isa, &w, &mut inter);
        let kernels = !matches!(isa, Isa::Scalar) && ActQuant::selected() == ActQuant::Int8;
        assert_eq!(laid == Layout::Interleaved8, kernels, "{isa:?}");
        assert_eq!(inter != good, kernels, "{isa:?}");
    }
}

/// Times one 1536×8960 `nf4` and `int8` (block 64) matrix × 1 to × 128
/// activation rows with int8 and with int16 activations ([`ActQuant`]), on
/// `STRATA_BENCH_THREADS` threads (default 1), "hot" (the same matrix again
/// and again) and "streamed" (8 copies in turn, from memory as in decoding);
/// best of 1 s each. Run with
/// `cargo test -p strata-runner --release --lib own_speed -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn own_speed() {
    use std::time::Instant;

    let threads = std::env::var("STRATA_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    // `STRATA_BENCH_SHAPE=ROWS,COLS` times another shape.
    let (rows, cols) = std::env::var("STRATA_BENCH_SHAPE")
        .ok()
        .and_then(|s| {
            let (r, c) = s.split_once(',')?;
            Some((r.trim().parse().ok()?, c.trim().parse().ok()?))
        })
        .unwrap_or((1536, 8960));
    // `STRATA_BENCH_N=1,2` times only these numbers of activation rows.
    let ns: Vec<usize> = std::env::var("STRATA_BENCH_N")
        .ok()
        .and_then(|s| s.split(',').map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3, 4, 8, 16, 128]);
    let (block, copies) = (64, 8);
    let mut rng = StdRng::seed_from_u64(29);
    let isa = Isa::selected();
    let time = |k: usize, f: &mut dyn FnMut(usize)| {
        (0..k).for_each(&mut *f);
        let mut best = f64::INFINITY;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < 1.0 {
            let t = Instant::now();
            (0..k).for_each(&mut *f);
            best = best.min(t.elapsed().as_secs_f64() / k as f64);
        }
        best
    };
    eprintln!("{rows}×{cols} block {block}, {threads} threads, kernels {isa}");
    for dtype in [DType::Nf4, DType::Int8] {
        let all: Vec<Vec<u8>> = (0..copies)
            .map(|_| {
                let wv = values(&mut rng, rows * cols, Data::Normal);
                encode(dtype, &wv, rows, cols, block)
            })
            .collect();
        let rb = row_bytes(dtype, cols, block);
        // In huge pages where the runner has them (its resident weights).
        let huge = |b: &[u8]| {
            let mut buf = crate::io::AlignedBuf::new(b.len()).expect("allocates");
            buf.as_mut_full()[..b.len()].copy_from_slice(b);
            buf.set_len(b.len());
            buf
        };
        let inter: Vec<_> = all
            .iter()
            .map(|b| {
                let mut b = b.clone();
                ggml::interleave(&mut b, rb, row_bytes(dtype, block, block));
                huge(&b)
            })
            .collect();
        let all: Vec<_> = all.iter().map(|b| huge(b)).collect();
        for &n in &ns {
            let x = values(&mut rng, n * cols, Data::Normal);
            let mut out = vec![0f32; rows * n];
            for (what, k) in [("hot", 1), ("streamed", copies)] {
                let mut ms = [0f64; 3];
                let runs = [
                    (ActQuant::Int8, Layout::Rows),
                    (ActQuant::Int8, Layout::Interleaved8),
                    (ActQuant::Int16, Layout::Rows),
                ];
                for (i, (aq, layout)) in runs.into_iter().enumerate() {
                    let bytes = match layout {
                        Layout::Rows => &all[..],
                        Layout::Interleaved8 => &inter[..],
                    };
                    ms[i] = 1e3
                        * time(k, &mut |c| {
                            let w = Weight {
                                layout,
                                ..weight(dtype, rows, cols, block, bytes[c].as_slice())
                            };
                            pool.install(|| {
                                linear_t_with(isa, aq, &w, &x, n, &mut out).expect("runs")
                            })
                        });
                }
                eprintln!(
                    "{dtype} n={n} {what:>8}: int8 acts {:6.3} ms | interleaved {:6.3} ms | int16 acts {:6.3} ms",
                    ms[0], ms[1], ms[2]
                );
            }
        }
    }
}
