//! The GGML kernels: every path against the scalar integer reference (f32
//! reassociation only), and the reference against the exact product of the
//! decoded weights (within the activations' quantization error), on random
//! blocks of every type.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata_format::codec::ggml::GgmlType;
use strata_format::{CodecError, DType};

use super::*;
use crate::container::Weight;
use crate::kernels::tests::{check_paths, exact, magnitudes, run, values, weight, Data};
use crate::kernels::{linear_t, MAX_FUSED_ROWS};

/// Every type, in the order of how much real GGUF files use them.
const TYPES: [GgmlType; 10] = [
    GgmlType::Q4K,
    GgmlType::Q6K,
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5K,
    GgmlType::Q3K,
    GgmlType::Q2K,
    GgmlType::Q5_1,
];

/// Byte offsets of a block's f16 scales and minimums.
fn scale_offsets(t: GgmlType) -> &'static [usize] {
    match t {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
    }
}

/// `rows × cols` weights of type `t`: random bytes, with f16 scales and
/// minimums of either sign and magnitudes in `[0.001, 0.05)`.
fn random_weights(rng: &mut StdRng, t: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; rows * cols / t.block_elems() * t.block_bytes()];
    rng.fill(&mut bytes[..]);
    for blk in bytes.chunks_exact_mut(t.block_bytes()) {
        for &o in scale_offsets(t) {
            let mag: f32 = rng.random_range(0.001..0.05);
            let v = if rng.random() { mag } else { -mag };
            blk[o..o + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    bytes
}

/// The weight `rows × cols` of type `t` in `bytes`.
fn ggml_weight(t: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Weight<'_> {
    weight(DType::from_ggml(t), rows, cols, 0, bytes)
}

/// The values of the weight, by the format's reference decoder.
fn decode(t: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
    let mut wd = vec![0f32; rows * cols];
    t.decode(bytes, &mut wd).expect("decodes");
    wd
}

/// Largest error the kernels may make against the exact product of the
/// decoded weights: each activation is rounded by at most half its block's
/// step `d_x / 2`.
fn bounds(t: GgmlType, wd: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f64> {
    let be = t.block_elems();
    let qa = quantize(x, n, cols, be);
    let mut b = vec![0f64; rows * n];
    for r in 0..rows {
        for tt in 0..n {
            let d = qa.row(tt).d;
            b[r * n + tt] = (0..cols)
                .map(|c| f64::from(wd[r * cols + c]).abs() * f64::from(d[c / be]) / 2.0)
                .sum();
        }
    }
    b
}

/// Checks every path (through `linear_t`) on `w` and `x`: the scalar
/// reference against the exact product of the decoded weights (within the
/// activations' rounding), the integer kernels against the reference (up
/// to f32 rounding).
fn check(what: &str, t: GgmlType, bytes: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) {
    let w = ggml_weight(t, rows, cols, bytes);
    let wd = decode(t, bytes, rows, cols);
    let b = bounds(t, &wd, x, rows, cols, n);
    check_paths(what, &w, &wd, x, n, &b);
}

#[test]
fn every_type_agrees_with_the_reference_and_the_exact_product() {
    let mut rng = StdRng::seed_from_u64(21);
    for t in TYPES {
        let shapes: &[(usize, usize)] = if t.block_elems() == 32 {
            &[(3, 32), (7, 96), (2, 256), (5, 1024)]
        } else {
            &[(3, 256), (4, 768), (2, 2048)]
        };
        for &(rows, cols) in shapes {
            for data in [Data::Normal, Data::HeavyTailed] {
                for n in [1, 2, 3, 4, 5, 17, 64] {
                    let bytes = random_weights(&mut rng, t, rows, cols);
                    let x = values(&mut rng, n * cols, data);
                    let what = format!("{} {rows}×{cols} {data:?} n={n}", t.name());
                    check(&what, t, &bytes, rows, cols, &x, n);
                }
            }
        }
    }
}

#[test]
fn normal_activations_stay_within_one_percent() {
    // The brief's yardstick: with normal activations the quantized product
    // is within 1% of Σ|w·x| of the exact one (the bound above is the
    // rigorous version).
    let mut rng = StdRng::seed_from_u64(22);
    let (rows, cols, n) = (16, 1024, 3);
    for t in TYPES {
        let bytes = random_weights(&mut rng, t, rows, cols);
        let x = values(&mut rng, n * cols, Data::Normal);
        let wd = decode(t, &bytes, rows, cols);
        let (want, mags) = (
            exact(&wd, &x, rows, cols, n),
            magnitudes(&wd, &x, rows, cols, n),
        );
        let w = ggml_weight(t, rows, cols, &bytes);
        for isa in Isa::available() {
            let got = run(isa, &w, &x, n);
            for i in 0..rows * n {
                let err = (f64::from(got[i]) - want[i]).abs();
                assert!(
                    err <= 1e-2 * mags[i],
                    "{} {isa} output {i}: {err} vs {}",
                    t.name(),
                    mags[i]
                );
            }
        }
    }
}

#[test]
fn every_simd_vocabulary_equals_the_scalar_reference() {
    // Straight to `rows` with each ISA named, so that a path the dispatcher
    // would not pick is still tested where it runs.
    let mut rng = StdRng::seed_from_u64(23);
    let mut ran = vec![];
    for isa in [Isa::Avx2, Isa::Avx512, Isa::Neon] {
        if !isa.is_available() {
            continue;
        }
        ran.push(isa);
        for t in TYPES {
            let (rows, cols, n) = (9, 1024, 6);
            let bytes = random_weights(&mut rng, t, rows, cols);
            let x = values(&mut rng, n * cols, Data::HeavyTailed);
            let qa = quantize(&x, n, cols, t.block_elems());
            let rb = cols / t.block_elems() * t.block_bytes();
            let (mut want, mut got) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            scalar::rows(t, &bytes, rb, &qa, n, &mut want);
            super::rows(isa, t, &bytes, rb, &qa, n, &mut got);
            let wd = decode(t, &bytes, rows, cols);
            let mags = magnitudes(&wd, &x, rows, cols, n);
            for i in 0..rows * n {
                let err = f64::from((got[i] - want[i]).abs());
                assert!(
                    err <= 1e-5 * mags[i] + 1e-6,
                    "{} {isa} output {i}: {} vs {}",
                    t.name(),
                    got[i],
                    want[i]
                );
            }
        }
    }
    eprintln!("GGML kernel paths tested on this machine: scalar, {ran:?}");
    #[cfg(target_arch = "aarch64")]
    eprintln!(
        "NEON with the dot product extension (sdot): {}",
        std::arch::is_aarch64_feature_detected!("dotprod")
    );
}

#[test]
fn extreme_blocks_do_not_saturate() {
    // Every byte the same (all codes at their largest, −1 or −128 for
    // Q8_0), scales 1, activations at their block's maximum with one sign
    // or alternating: the int16 pair sums are at their bounds.
    let (rows, cols) = (2, 512);
    let mut x = vec![3.0f32; 4 * cols];
    for (i, v) in x[cols..2 * cols].iter_mut().enumerate() {
        *v = if i % 2 == 0 { -3.0 } else { 3.0 };
    }
    x[2 * cols..3 * cols].fill(-3.0);
    for (i, v) in x[3 * cols..].iter_mut().enumerate() {
        *v = if i % 3 == 0 { -3.0 } else { 3.0 };
    }
    for t in TYPES {
        for fill in [0xffu8, 0x80, 0x7f, 0x00] {
            let mut bytes = vec![fill; rows * cols / t.block_elems() * t.block_bytes()];
            for blk in bytes.chunks_exact_mut(t.block_bytes()) {
                for &o in scale_offsets(t) {
                    blk[o..o + 2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
                }
            }
            let what = format!("{} filled with {fill:#x}", t.name());
            check(&what, t, &bytes, rows, cols, &x, 4);
        }
    }
}

#[test]
fn large_products_split_over_threads_agree() {
    let mut rng = StdRng::seed_from_u64(24);
    let (rows, cols) = (301, 1024);
    for t in TYPES {
        for n in [1, 3, 8] {
            let bytes = random_weights(&mut rng, t, rows, cols);
            let x = values(&mut rng, n * cols, Data::Normal);
            check(&format!("{} n={n}", t.name()), t, &bytes, rows, cols, &x, n);
        }
    }
}

/// As for the other encodings (see `kernels::tests`): `n` rows at once equal
/// `n` one-row products bit for bit, on every path, for every tile size.
#[test]
fn several_rows_equal_one_row_products_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(25);
    let (rows, cols) = (37, 512);
    for t in TYPES {
        let bytes = random_weights(&mut rng, t, rows, cols);
        let w = ggml_weight(t, rows, cols, &bytes);
        for isa in Isa::available() {
            for n in [2, 3, 4, 5, 9, 17, MAX_FUSED_ROWS] {
                let x = values(&mut rng, n * cols, Data::HeavyTailed);
                let all = run(isa, &w, &x, n);
                for tt in 0..n {
                    let one = run(isa, &w, &x[tt * cols..(tt + 1) * cols], 1);
                    for r in 0..rows {
                        assert_eq!(
                            all[r * n + tt].to_bits(),
                            one[r].to_bits(),
                            "{} {isa} n{n} row {tt} output {r}",
                            t.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_former_decoding_path_agrees() {
    // The f32 path of the decoded weights (the benchmarks' baseline) against
    // the exact product: f32 rounding only.
    let mut rng = StdRng::seed_from_u64(26);
    let (rows, cols, n) = (5, 768, 3);
    for t in TYPES {
        let bytes = random_weights(&mut rng, t, rows, cols);
        let x = values(&mut rng, n * cols, Data::Normal);
        let wd = decode(t, &bytes, rows, cols);
        let (want, mags) = (
            exact(&wd, &x, rows, cols, n),
            magnitudes(&wd, &x, rows, cols, n),
        );
        let rb = cols / t.block_elems() * t.block_bytes();
        for isa in Isa::available() {
            let mut got = vec![0f32; rows * n];
            decoded_rows(isa, t, &bytes, rb, &x, cols, n, &mut got);
            for i in 0..rows * n {
                assert!((f64::from(got[i]) - want[i]).abs() <= 1e-5 * mags[i] + 1e-6);
            }
        }
    }
}

#[test]
fn partial_blocks_are_refused_and_bad_scales_give_nan() {
    let t = GgmlType::Q4K;
    // 300 columns: not a whole number of 256-element blocks, though the
    // byte length (two blocks a row) is what `row_bytes` says.
    let bytes = vec![0u8; 2 * 2 * t.block_bytes()];
    let w = ggml_weight(t, 2, 300, &bytes);
    let mut out = vec![0f32; 2];
    for isa in Isa::available() {
        assert!(matches!(
            linear_t(isa, &w, &[0.0; 300], 1, &mut out),
            Err(CodecError::Length {
                expected: 512,
                actual: 300,
                ..
            })
        ));
    }
    // A NaN scale decodes to NaN (SPEC.md §4.6: readers need not refuse
    // it); the kernels give NaN for its row and do not fail.
    let mut rng = StdRng::seed_from_u64(27);
    for t in TYPES {
        let (rows, cols) = (3, 512);
        let mut bytes = random_weights(&mut rng, t, rows, cols);
        let rb = cols / t.block_elems() * t.block_bytes();
        let o = rb + scale_offsets(t)[0];
        bytes[o..o + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
        let x = values(&mut rng, cols, Data::Normal);
        let w = ggml_weight(t, rows, cols, &bytes);
        for isa in Isa::available() {
            let got = run(isa, &w, &x, 1);
            assert!(
                got[0].is_finite() && got[2].is_finite(),
                "{} {isa}",
                t.name()
            );
            assert!(got[1].is_nan(), "{} {isa}", t.name());
        }
    }
}

/// Times one 1536×8960 Q4_K and Q6_K matrix × 1 and × 8 activation rows on
/// 2 threads (rayon, as the runner calls it): the former decode-then-f32 path
/// against the integer kernels (scalar reference and the selected ISA).
/// "hot": the same matrix again and again (it stays in the last-level
/// cache); "streamed": 8 copies in turn, 62 MB or more, so that the weights
/// come from memory as in decoding. Best of 1 s (`STRATA_BENCH_SECONDS`)
/// each. Run with
/// `cargo test -p strata-runner --release --lib ggml_speed -- --ignored --nocapture --exact kernels::ggml::tests::ggml_speed`
/// (`STRATA_BENCH_TYPES=q8_0,q4_0` picks other types, `STRATA_BENCH_ROWS=1`
/// other activation rows, `STRATA_BENCH_QUICK=1` times the integer kernels
/// only).
#[test]
#[ignore = "benchmark"]
fn ggml_speed() {
    use rayon::prelude::*;
    use std::time::Instant;

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    let (rows, cols, copies) = (1536, 8960, 8);
    let mut rng = StdRng::seed_from_u64(28);
    let isa = Isa::selected();
    let seconds: f64 = std::env::var("STRATA_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let types: Vec<GgmlType> = match std::env::var("STRATA_BENCH_TYPES") {
        Ok(v) => TYPES
            .into_iter()
            .filter(|t| {
                v.to_lowercase()
                    .split(',')
                    .any(|n| n == t.name().to_lowercase())
            })
            .collect(),
        Err(_) => vec![GgmlType::Q4K, GgmlType::Q6K],
    };
    let ns: Vec<usize> = match std::env::var("STRATA_BENCH_ROWS") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => vec![1, 8],
    };
    let quick = std::env::var_os("STRATA_BENCH_QUICK").is_some();
    // Seconds per matrix of `f(copy)` over `k` copies, best of `seconds`.
    let time = |k: usize, f: &mut dyn FnMut(usize)| {
        (0..k).for_each(&mut *f);
        let mut best = f64::INFINITY;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < seconds {
            let t = Instant::now();
            (0..k).for_each(&mut *f);
            best = best.min(t.elapsed().as_secs_f64() / k as f64);
        }
        best
    };
    eprintln!("{rows}×{cols}, 2 threads, best of {seconds} s; kernels: {isa}");
    for t in types {
        let all: Vec<Vec<u8>> = (0..copies)
            .map(|_| random_weights(&mut rng, t, rows, cols))
            .collect();
        let rb = cols / t.block_elems() * t.block_bytes();
        for &n in &ns {
            let x = values(&mut rng, n * cols, Data::Normal);
            let mut out = vec![0f32; rows * n];
            for (what, k) in [("hot", 1), ("streamed", copies)] {
                let per = rows.div_ceil(8);
                let mut base = f64::NAN;
                let mut scalar = f64::NAN;
                let mut new = |isa| {
                    time(k, &mut |c| {
                        let w = ggml_weight(t, rows, cols, &all[c]);
                        pool.install(|| linear_t(isa, &w, &x, n, &mut out).expect("runs"))
                    })
                };
                let simd = new(isa);
                if !quick {
                    scalar = new(Isa::Scalar);
                    base = time(k, &mut |c| {
                        pool.install(|| {
                            out.par_chunks_mut(per * n)
                                .zip(all[c].par_chunks(per * rb))
                                .for_each(|(o, wb)| decoded_rows(isa, t, wb, rb, &x, cols, n, o))
                        })
                    });
                }
                let gbs = |s: f64| all[0].len() as f64 / s / 1e9;
                eprintln!(
                    "{} n={n} {what:>8}: decode+f32 {:6.2} ms ({:4.1} GB/s) | integer scalar {:6.2} ms ({:4.1} GB/s) | integer {isa} {:5.2} ms ({:4.1} GB/s) | {:4.1}× the former",
                    t.name(),
                    base * 1e3,
                    gbs(base),
                    scalar * 1e3,
                    gbs(scalar),
                    simd * 1e3,
                    gbs(simd),
                    base / simd
                );
            }
        }
    }
}

/// Thread CPU time of `f` in seconds (not counting time the thread waited
/// for a CPU, so that other work on the machine disturbs it less).
fn cpu_time(f: &mut dyn FnMut()) -> f64 {
    let now = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write; the clock id is a constant.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    };
    f();
    let mut best = f64::INFINITY;
    for _ in 0..20 {
        let t = now();
        f();
        best = best.min(now() - t);
    }
    best
}

/// One thread, every type: CPU time of a 1536×8960 product with 1, 4 and 8
/// activation rows, integer kernels (selected ISA) against the scalar
/// reference and the former decode-then-f32 path. Run with
/// `cargo test -p strata-runner --release --lib ggml_speed_one_thread -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn ggml_speed_one_thread() {
    let (rows, cols) = (1536, 8960);
    let mut rng = StdRng::seed_from_u64(29);
    let isa = Isa::selected();
    eprintln!("{rows}×{cols}, one thread, CPU time, best of 20; kernels: {isa}");
    // STRATA_BENCH_TYPES=q4_k,q6_k and STRATA_BENCH_ROWS=1,8 narrow it down
    // (and STRATA_BENCH_QUICK=1 leaves out the scalar and decoding paths).
    let quick = std::env::var_os("STRATA_BENCH_QUICK").is_some();
    let only = |var: &str| std::env::var(var).ok().map(|v| v.to_lowercase());
    let (types, ns) = (only("STRATA_BENCH_TYPES"), only("STRATA_BENCH_ROWS"));
    for t in TYPES {
        if types
            .as_ref()
            .is_some_and(|v| !v.split(',').any(|n| n == t.name().to_lowercase()))
        {
            continue;
        }
        let bytes = random_weights(&mut rng, t, rows, cols);
        let rb = cols / t.block_elems() * t.block_bytes();
        // STRATA_BENCH_STREAMED=1: 8 copies in turn (time per matrix), so
        // that the weights come from memory.
        let copies: Vec<Vec<u8>> = match std::env::var_os("STRATA_BENCH_STREAMED") {
            Some(_) => (0..8)
                .map(|_| random_weights(&mut rng, t, rows, cols))
                .collect(),
            None => vec![bytes.clone()],
        };
        let k = copies.len() as f64;
        for n in [1, 4, 8] {
            if ns
                .as_ref()
                .is_some_and(|v| !v.split(',').any(|k| k == n.to_string()))
            {
                continue;
            }
            let x = values(&mut rng, n * cols, Data::Normal);
            let mut out = vec![0f32; rows * n];
            let base = if quick {
                f64::NAN
            } else {
                cpu_time(&mut || decoded_rows(isa, t, &bytes, rb, &x, cols, n, &mut out))
            };
            let mut new = |isa| {
                cpu_time(&mut || {
                    for w in &copies {
                        let qa = quantize(&x, n, cols, t.block_elems());
                        super::rows(isa, t, w, rb, &qa, n, &mut out)
                    }
                }) / k
            };
            let simd = new(isa);
            let scalar = if quick { f64::NAN } else { new(Isa::Scalar) };
            let gbs = |s: f64| bytes.len() as f64 / s / 1e9;
            eprintln!(
                "{:>4} n={n}: decode+f32 {:7.2} ms | scalar {:7.2} ms | {isa} {:6.2} ms ({:5.1} GB/s, {:4.1} ns/block/row) | {:5.1}× the former",
                t.name(),
                base * 1e3,
                scalar * 1e3,
                simd * 1e3,
                gbs(simd),
                simd * 1e9 / (rows * cols / t.block_elems() * n) as f64,
                base / simd
            );
        }
    }
}

#[test]
fn f16_conversion_is_exact_for_every_value() {
    for bits in 0..=u16::MAX {
        let (got, want) = (f16_to_f32(bits), half::f16::from_bits(bits).to_f32());
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{bits:#06x}: {got} vs {want}"
        );
    }
}

#[test]
fn four_scales_are_checked_together_as_one_at_a_time() {
    for j in 0..4 {
        for h in 0..=u16::MAX {
            // 1.0 in the other three.
            let mut bits = 0x3c00_3c00_3c00_3c00u64 & !(0xffff << (16 * j));
            bits |= u64::from(h) << (16 * j);
            let got = super::own::bad_scales4(bits);
            let want = if crate::kernels::scale_is_bad(h) {
                0x8000 << (16 * j)
            } else {
                0
            };
            assert_eq!(got, want, "{h:#x} in value {j}");
        }
    }
}
