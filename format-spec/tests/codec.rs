//! Codec tests: exact bytes against an independent Python reference, round
//! trips for every dtype, and reconstruction error bounds.

use strata_format::codec::{self, nf4};
use strata_format::{CodecError, DType};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn nf4_code_table_matches_bitsandbytes() {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("vectors/codec_vectors.json")).unwrap();
    let codes = f32s(&unhex(v["nf4_codes_f32_hex"].as_str().unwrap()));
    assert_eq!(codes.len(), 16);
    for (i, (&ours, &theirs)) in nf4::CODES.iter().zip(&codes).enumerate() {
        assert_eq!(ours.to_bits(), theirs.to_bits(), "code {i}");
    }
    assert_eq!(nf4::CODES[usize::from(nf4::ZERO_CODE)], 0.0);
}

#[test]
fn codec_vectors() {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("vectors/codec_vectors.json")).unwrap();
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let rows = case["rows"].as_u64().unwrap();
        let cols = case["cols"].as_u64().unwrap();
        let block = case["block"].as_u64().unwrap() as u32;
        let data = f32s(&unhex(case["data_f32_hex"].as_str().unwrap()));
        for (dtype, key) in [(DType::Nf4, "nf4_hex"), (DType::Int8, "int8_hex")] {
            let want = unhex(case[key].as_str().unwrap());
            let got = codec::encode(dtype, &data, &[rows, cols], Some(block)).unwrap();
            assert_eq!(got.len(), want.len(), "{name} {dtype} length");
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{name} {dtype}: first differing byte at {i}: got {:#04x}, want {:#04x}",
                    got[i], want[i]
                );
            }
        }
    }
}

#[test]
fn nf4_nibble_order_is_low_first_half_split() {
    // One block of 64: element j holds code j % 16 so every nibble is known.
    let codes: Vec<f32> = (0..64).map(|j| nf4::CODES[j % 16]).collect();
    let bytes = codec::encode(DType::Nf4, &codes, &[1, 64], Some(64)).unwrap();
    assert_eq!(bytes.len(), 34);
    // scale is the absmax 1.0 in f16
    assert_eq!(&bytes[..2], &half::f16::from_f32(1.0).to_le_bytes());
    for j in 0..32 {
        let lo = (j % 16) as u8;
        let hi = ((j + 32) % 16) as u8;
        assert_eq!(bytes[2 + j], lo | (hi << 4), "byte {j}");
    }
    let back = codec::decode(DType::Nf4, &bytes, &[1, 64], Some(64)).unwrap();
    assert_eq!(back, codes);
}

/// Deterministic pseudo-random values: uniform or heavy-tailed (Student-t-like).
fn sample(n: usize, seed: u64, heavy: bool) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64).max(1e-12)
    };
    (0..n)
        .map(|_| {
            // Box-Muller normal
            let (u1, u2) = (next(), next());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let v = if heavy {
                // divide by sqrt of a chi-square-ish term: heavy tails
                let w = next();
                z / (w.sqrt() + 0.05)
            } else {
                z
            };
            (v * 0.02) as f32
        })
        .collect()
}

fn rel_rmse(a: &[f32], b: &[f32]) -> f64 {
    let err: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let sig: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    (err / sig).sqrt()
}

#[test]
fn float_round_trips() {
    let data = sample(1000, 1, true);
    let shape = [10u64, 100];
    let f = codec::encode(DType::F32, &data, &shape, None).unwrap();
    assert_eq!(codec::decode(DType::F32, &f, &shape, None).unwrap(), data);
    for dtype in [DType::F16, DType::Bf16] {
        let once = codec::decode(
            dtype,
            &codec::encode(dtype, &data, &shape, None).unwrap(),
            &shape,
            None,
        )
        .unwrap();
        // Re-encoding decoded values is exact, and the first rounding is within half an ulp.
        let twice = codec::decode(
            dtype,
            &codec::encode(dtype, &once, &shape, None).unwrap(),
            &shape,
            None,
        )
        .unwrap();
        assert_eq!(once, twice, "{dtype}");
        let ulp = if dtype == DType::F16 {
            2f32.powi(-11)
        } else {
            2f32.powi(-8)
        };
        for (x, y) in data.iter().zip(&once) {
            assert!((x - y).abs() <= x.abs() * ulp + 1e-7, "{dtype}: {x} -> {y}");
        }
    }
}

#[test]
fn quantized_error_bounds() {
    for heavy in [false, true] {
        let data = sample(64 * 1000, 7 + heavy as u64, heavy);
        let shape = [100u64, 640];
        // Bounds: measured values plus ~15% (normal data: int8 ~0.006, NF4 ~0.09).
        for (dtype, block, normal_bound, heavy_bound) in [
            (DType::Int8, 64, 0.007, 0.012),
            (DType::Int8, 32, 0.0065, 0.0095),
            (DType::Nf4, 64, 0.10, 0.14),
            (DType::Nf4, 32, 0.095, 0.115),
        ] {
            let bound = if heavy { heavy_bound } else { normal_bound };
            let enc = codec::encode(dtype, &data, &shape, Some(block)).unwrap();
            assert_eq!(
                enc.len() as u64,
                dtype.encoded_len(&shape, Some(block)).unwrap()
            );
            let dec = codec::decode(dtype, &enc, &shape, Some(block)).unwrap();
            let e = rel_rmse(&data, &dec);
            assert!(
                e < bound,
                "{dtype} block {block} heavy={heavy}: relative RMSE {e} >= {bound}"
            );
            for (r, (row_in, row_out)) in data.chunks(640).zip(dec.chunks(640)).enumerate() {
                for (b, (bi, bo)) in row_in
                    .chunks(block as usize)
                    .zip(row_out.chunks(block as usize))
                    .enumerate()
                {
                    let absmax = bi.iter().fold(0f32, |m, v| m.max(v.abs()));
                    if dtype == DType::Int8 {
                        // Every element is within half a step of its block's scale.
                        for (x, y) in bi.iter().zip(bo) {
                            assert!(
                                (x - y).abs() <= absmax / 127.0 / 2.0 * 1.01 + 1e-6,
                                "{dtype} row {r} block {b}: {x} -> {y}"
                            );
                        }
                        continue;
                    }
                    // NF4's scale search: its weighted squared error (weights
                    // σ² + x²) is no larger than that of the plain absmax scale.
                    let sigma2 = 2.0 * bi.iter().map(|x| x * x).sum::<f32>() / bi.len() as f32;
                    let weighted = |dec: &[f32]| -> f64 {
                        bi.iter()
                            .zip(dec)
                            .map(|(x, y)| f64::from(sigma2 + x * x) * f64::from(x - y).powi(2))
                            .sum()
                    };
                    let d = half::f16::from_f32(absmax).to_f32();
                    let plain: Vec<f32> = bi.iter().map(|x| nearest_value(x / d) * d).collect();
                    let (searched, absmax_rule) = (weighted(bo), weighted(&plain));
                    assert!(
                        searched <= absmax_rule * 1.002 + 1e-12,
                        "{dtype} block {block} row {r} block {b}: weighted error {searched} > {absmax_rule}"
                    );
                }
            }
        }
    }
}

#[test]
fn padded_rows_decode_to_their_length() {
    let data = sample(3 * 100, 3, false);
    for dtype in [DType::Nf4, DType::Int8] {
        let enc = codec::encode(dtype, &data, &[3, 100], Some(64)).unwrap();
        let dec = codec::decode(dtype, &enc, &[3, 100], Some(64)).unwrap();
        assert_eq!(dec.len(), 300);
        assert!(rel_rmse(&data, &dec) < 0.12);
    }
}

#[test]
fn refuses_bad_input() {
    let mut data = vec![0.5f32; 64];
    data[5] = f32::NAN;
    assert!(matches!(
        codec::encode(DType::Nf4, &data, &[1, 64], Some(64)),
        Err(CodecError::NonFinite { index: 5, .. })
    ));
    data[5] = 1e6;
    assert!(matches!(
        codec::encode(DType::Nf4, &data, &[1, 64], Some(64)),
        Err(CodecError::ScaleOverflow { index: 0, .. })
    ));
    assert!(matches!(
        codec::encode(DType::F16, &data, &[1, 64], None),
        Err(CodecError::OutOfRange { index: 5, .. })
    ));
    assert!(matches!(
        codec::encode(DType::Int8, &data[..10], &[1, 64], Some(64)),
        Err(CodecError::Length { .. })
    ));
    assert!(matches!(
        codec::encode(DType::Int8, &data, &[1, 64], Some(48)),
        Err(CodecError::BlockSize(48))
    ));
    // A stored NaN scale is refused on decode.
    let mut enc = codec::encode(DType::Int8, &[0.5f32; 64], &[1, 64], Some(64)).unwrap();
    enc[..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    assert!(matches!(
        codec::decode(DType::Int8, &enc, &[1, 64], Some(64)),
        Err(CodecError::BadScale { block: 0, .. })
    ));
}

/// The NF4 code value nearest to `y` (ties to the larger), as the absmax rule
/// encodes `y = x / scale`.
fn nearest_value(y: f32) -> f32 {
    let codes = strata_format::codec::nf4::CODES;
    let mut c = 0;
    for i in 0..15 {
        if y >= (codes[i] + codes[i + 1]) / 2.0 {
            c = i + 1;
        }
    }
    codes[c]
}

#[test]
fn quantized_rows_of_the_wrong_length_are_errors() {
    use strata_format::codec::int8;
    let vals = [0.5f32; 40];
    let mut out = [0f32; 40];
    // 40 values in blocks of 32: two blocks (the second padded).
    let (nf4_len, int8_len) = (2 * (2 + 16), 2 * (2 + 32));
    for (name, len, encode, decode) in [
        (
            "nf4",
            nf4_len,
            nf4::encode_row as fn(&[f32], usize, &mut [u8]) -> Result<(), CodecError>,
            nf4::decode_row as fn(&[u8], usize, &mut [f32]) -> Result<(), CodecError>,
        ),
        ("int8", int8_len, int8::encode_row, int8::decode_row),
    ] {
        let mut good = vec![0u8; len];
        encode(&vals, 32, &mut good).unwrap_or_else(|e| panic!("{name}: {e}"));
        decode(&good, 32, &mut out).unwrap_or_else(|e| panic!("{name}: {e}"));
        for wrong in [0, len - 1, len + 1, 3 * len] {
            let mut dst = vec![0u8; wrong];
            assert!(
                matches!(encode(&vals, 32, &mut dst), Err(CodecError::Length { .. })),
                "{name}: encode into {wrong} bytes"
            );
            assert!(
                matches!(decode(&dst, 32, &mut out), Err(CodecError::Length { .. })),
                "{name}: decode {wrong} bytes"
            );
        }
        assert!(matches!(
            encode(&vals, 0, &mut good),
            Err(CodecError::BlockSize(0))
        ));
        assert!(matches!(
            decode(&good, 0, &mut out),
            Err(CodecError::BlockSize(0))
        ));
    }
}

/// The GGML block decoders against gguf-py's dequantizers
/// (tests/vectors/ggml_vectors.json, scripts/make-ggml-vectors.py): every
/// value bit for bit.
#[test]
fn ggml_vectors() {
    use strata_format::codec::ggml::GgmlType;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/ggml_vectors.json"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("ggml_vectors.json")).expect("json");
    let types = v["types"].as_object().expect("types");
    assert_eq!(types.len(), 10, "every block type has vectors");
    for (name, case) in types {
        let t = (0..32)
            .filter_map(GgmlType::from_id)
            .find(|t| t.name() == name)
            .unwrap_or_else(|| panic!("no GgmlType named {name}"));
        let hex = case["bytes"].as_str().expect("bytes");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        let want: Vec<u32> = case["f32_bits"]
            .as_array()
            .expect("f32_bits")
            .iter()
            .map(|x| x.as_u64().expect("bits") as u32)
            .collect();
        let mut got = vec![0f32; want.len()];
        t.decode(&bytes, &mut got).expect("decodes");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                *w,
                "{name} value {i}: {g} vs gguf-py {}",
                f32::from_bits(*w)
            );
        }
    }
}
