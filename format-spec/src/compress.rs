//! Per-tensor compression of the stored bytes (SPEC.md §3.4): the encoded
//! tensor is cut into frames of whole rows, each frame one zstd frame, so a
//! reader can decompress any run of rows (a head chunk, one embedding row)
//! without the rest. Codec `zstd-bytesplit` (2-byte dtypes only) stores each
//! frame's low bytes before its high bytes, which compresses 16-bit floats
//! better because their high bytes (sign and exponent) are highly redundant.

use std::path::Path;

use rayon::prelude::*;

use crate::dtype::DType;
use crate::error::{FormatError, Result};
use crate::header::{Compression, TensorEntry};

/// Codec name: zstd frames of the encoded bytes.
pub const ZSTD: &str = "zstd";
/// Codec name: zstd frames of the byte-split encoded bytes (f16 and bf16).
pub const ZSTD_BYTESPLIT: &str = "zstd-bytesplit";
/// Decoded bytes per frame that writers aim for (a frame holds at least one row).
pub const FRAME_TARGET_BYTES: u64 = 1 << 20;

/// Most decoded bytes [`Decoder::decode_all`] accepts per stored byte (twice
/// zstd's largest expansion).
const MAX_EXPANSION: u64 = 1 << 16;

/// What a writer compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    /// zstd level (1..=22).
    pub level: i32,
    /// Split 16-bit values into low and high byte planes before compressing
    /// (applied to f16 and bf16 tensors only).
    pub bytesplit: bool,
}

/// Rows of a tensor of `shape` as the framing counts them (all dimensions but
/// the last; 1 for a scalar or a vector) and the bytes of one row of its
/// `encoded_length` bytes; `None` when the rows do not divide the length.
pub fn rows_and_row_bytes(shape: &[u64], encoded_length: u64) -> Option<(u64, u64)> {
    let rows = match shape.split_last() {
        None | Some((_, [])) => 1,
        Some((_, outer)) => outer.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?,
    };
    let len = encoded_length;
    if rows == 0 || len % rows != 0 {
        return None;
    }
    Some((rows, len / rows))
}

/// Rows per frame a writer uses for rows of `row_bytes` bytes.
pub fn frame_rows_for(row_bytes: u64) -> u64 {
    (FRAME_TARGET_BYTES / row_bytes.max(1)).max(1)
}

/// Checks an entry's compression fields against its dtype, shape and stored
/// length (SPEC.md §3.4). `decoded_length` is checked by the header validation.
pub fn validate(e: &TensorEntry, c: &Compression) -> std::result::Result<(), String> {
    match c.codec.as_str() {
        ZSTD => {}
        ZSTD_BYTESPLIT => {
            if !matches!(e.dtype, DType::F16 | DType::Bf16) {
                return Err(format!(
                    "codec {ZSTD_BYTESPLIT} applies to f16/bf16, not {}",
                    e.dtype
                ));
            }
        }
        other => {
            return Err(format!(
                "unknown compression codec {:?}",
                other.chars().take(64).collect::<String>()
            ))
        }
    }
    if c.decoded_length == 0 {
        return Err("an empty tensor cannot be compressed".into());
    }
    match (c.frame_rows, &c.frames) {
        (None, None) => Ok(()),
        (Some(fr), Some(frames)) => {
            let (rows, _) = rows_and_row_bytes(&e.shape, e.encoded_length())
                .ok_or_else(|| "rows do not divide the length".to_string())?;
            if fr == 0 {
                return Err("frame_rows is 0".into());
            }
            let n = rows.div_ceil(fr);
            if frames.len() as u64 != n {
                return Err(format!(
                    "{} frames listed, {rows} rows of {fr} per frame make {n}",
                    frames.len()
                ));
            }
            let mut sum = 0u64;
            for &f in frames {
                if f == 0 {
                    return Err("a frame of 0 bytes".into());
                }
                sum = sum
                    .checked_add(f)
                    .ok_or_else(|| "frame lengths overflow".to_string())?;
            }
            if sum != e.length {
                return Err(format!(
                    "frames add up to {sum} bytes, the stored length is {}",
                    e.length
                ));
            }
            Ok(())
        }
        _ => Err("frame_rows and frames go together".into()),
    }
}

/// A compressed tensor: the header fields and the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    /// The entry's `compression` object.
    pub compression: Compression,
    /// The stored bytes (all frames, in order).
    pub bytes: Vec<u8>,
}

fn split_bytes(src: &[u8]) -> Vec<u8> {
    let half = src.len() / 2;
    let mut out = vec![0u8; src.len()];
    let (lo, hi) = out.split_at_mut(half);
    for ((pair, l), h) in src.chunks_exact(2).zip(lo.iter_mut()).zip(hi.iter_mut()) {
        *l = pair[0];
        *h = pair[1];
    }
    out
}

fn join_bytes(split: &[u8], out: &mut [u8]) {
    let half = split.len() / 2;
    let (lo, hi) = split.split_at(half);
    for ((pair, &l), &h) in out.chunks_exact_mut(2).zip(lo).zip(hi) {
        pair[0] = l;
        pair[1] = h;
    }
}

/// Compresses the encoded bytes of a tensor with `rows` rows of `row_bytes`
/// bytes, `frame_rows` rows per frame, frames in parallel. Each frame carries
/// its content size and zstd's content checksum. `bytesplit` must only be set
/// for 2-byte dtypes.
pub fn compress(
    encoded: &[u8],
    row_bytes: usize,
    frame_rows: usize,
    codec: Codec,
    path: &Path,
    tensor: &str,
) -> Result<Compressed> {
    let err = |reason: String| FormatError::BadTensor {
        path: path.to_path_buf(),
        tensor: tensor.into(),
        reason,
    };
    if row_bytes == 0 || encoded.is_empty() || encoded.len() % row_bytes != 0 || frame_rows == 0 {
        return Err(err(format!(
            "cannot frame {} bytes in rows of {row_bytes}",
            encoded.len()
        )));
    }
    let frames: Vec<Vec<u8>> = encoded
        .par_chunks(row_bytes * frame_rows)
        .map(|chunk| {
            let mut c = zstd::bulk::Compressor::new(codec.level)?;
            c.include_checksum(true)?;
            c.include_contentsize(true)?;
            if codec.bytesplit {
                c.compress(&split_bytes(chunk))
            } else {
                c.compress(chunk)
            }
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| err(format!("zstd: {e}")))?;
    let lengths: Vec<u64> = frames.iter().map(|f| f.len() as u64).collect();
    Ok(Compressed {
        compression: Compression {
            codec: if codec.bytesplit {
                ZSTD_BYTESPLIT
            } else {
                ZSTD
            }
            .into(),
            decoded_length: encoded.len() as u64,
            frame_rows: Some(frame_rows as u64),
            frames: Some(lengths),
        },
        bytes: frames.concat(),
    })
}

/// The frames of a compressed tensor: where each sits in the stored bytes and
/// which rows it decodes to.
#[derive(Debug, Clone)]
pub struct Frames {
    /// Start of each frame in the stored bytes, plus the end.
    starts: Vec<u64>,
    frame_rows: u64,
    rows: u64,
    row_bytes: u64,
    bytesplit: bool,
}

impl Frames {
    /// The framing of a compressed entry (its header must have been validated).
    pub fn of(e: &TensorEntry, path: &Path) -> Result<Frames> {
        let bad = |reason: String| FormatError::BadTensor {
            path: path.to_path_buf(),
            tensor: e.name.clone(),
            reason,
        };
        let c = e
            .compression
            .as_ref()
            .ok_or_else(|| bad("not compressed".into()))?;
        validate(e, c).map_err(bad)?;
        let (rows, row_bytes) = rows_and_row_bytes(&e.shape, e.encoded_length())
            .ok_or_else(|| bad("rows do not divide the length".into()))?;
        let lengths = c.frames.clone().unwrap_or_else(|| vec![e.length]);
        let mut starts = Vec::with_capacity(lengths.len() + 1);
        let mut at = 0u64;
        starts.push(0);
        for l in lengths {
            at += l;
            starts.push(at);
        }
        Ok(Frames {
            starts,
            frame_rows: c.frame_rows.unwrap_or(rows),
            rows,
            row_bytes,
            bytesplit: c.codec == ZSTD_BYTESPLIT,
        })
    }

    /// Number of frames.
    pub fn count(&self) -> usize {
        self.starts.len() - 1
    }

    /// Rows per frame (the last frame may hold fewer).
    pub fn frame_rows(&self) -> u64 {
        self.frame_rows
    }

    /// Encoded bytes of one row.
    pub fn row_bytes(&self) -> u64 {
        self.row_bytes
    }

    /// Rows `r0..r1` decoded by frames `f0..f1` (clamped to the tensor's rows).
    pub fn rows_of(&self, f0: usize, f1: usize) -> (u64, u64) {
        (
            (f0 as u64).saturating_mul(self.frame_rows).min(self.rows),
            (f1 as u64).saturating_mul(self.frame_rows).min(self.rows),
        )
    }

    /// Byte range, relative to the tensor's stored data, of frames `f0..f1`;
    /// `None` unless `f0 <= f1 <= count()`.
    pub fn stored_range(&self, f0: usize, f1: usize) -> Option<std::ops::Range<u64>> {
        if f0 > f1 {
            return None;
        }
        Some(*self.starts.get(f0)?..*self.starts.get(f1)?)
    }

    /// The frame holding row `r`.
    pub fn frame_of_row(&self, r: u64) -> usize {
        (r / self.frame_rows) as usize
    }
}

/// Decompresses frames of tensors, reusing its zstd context and scratch space.
pub struct Decoder {
    ctx: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
}

impl Decoder {
    /// A new decoder.
    pub fn new() -> std::io::Result<Decoder> {
        Ok(Decoder {
            ctx: zstd::bulk::Decompressor::new()?,
            scratch: Vec::new(),
        })
    }

    /// Decodes frames `f0..f1` of tensor `e` (framing `fr`) from `stored`, the
    /// bytes of exactly those frames, into `out`, which must be exactly the
    /// size of their rows. Every frame must decode to exactly its rows' bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        &mut self,
        e: &TensorEntry,
        fr: &Frames,
        f0: usize,
        f1: usize,
        stored: &[u8],
        out: &mut [u8],
        path: &Path,
    ) -> Result<()> {
        let bad = |reason: String| FormatError::BadTensor {
            path: path.to_path_buf(),
            tensor: e.name.clone(),
            reason,
        };
        let (r0, r1) = fr.rows_of(f0, f1);
        if f1 > fr.count()
            || f0 > f1
            || stored.len() as u64 != fr.starts[f1] - fr.starts[f0]
            || out.len() as u64 != (r1 - r0) * fr.row_bytes
        {
            return Err(bad(format!(
                "frames {f0}..{f1}: {} stored and {} decoded bytes do not match the frame table",
                stored.len(),
                out.len()
            )));
        }
        let mut out_at = 0usize;
        for f in f0..f1 {
            let src = &stored[(fr.starts[f] - fr.starts[f0]) as usize
                ..(fr.starts[f + 1] - fr.starts[f0]) as usize];
            let (a, b) = fr.rows_of(f, f + 1);
            let want = ((b - a) * fr.row_bytes) as usize;
            let dst = &mut out[out_at..out_at + want];
            let got = if fr.bytesplit {
                self.scratch.resize(want, 0);
                let n = self
                    .ctx
                    .decompress_to_buffer(src, &mut self.scratch[..])
                    .map_err(|err| bad(format!("frame {f}: zstd: {err}")))?;
                join_bytes(&self.scratch[..n], dst);
                n
            } else {
                self.ctx
                    .decompress_to_buffer(src, dst)
                    .map_err(|err| bad(format!("frame {f}: zstd: {err}")))?
            };
            if got != want {
                return Err(bad(format!(
                    "frame {f} decodes to {got} bytes, its rows need {want}"
                )));
            }
            out_at += want;
        }
        Ok(())
    }

    /// Decodes a whole compressed tensor from its stored bytes. The decoded
    /// length the entry claims must be what its shape and dtype take, and the
    /// buffer is allocated fallibly: a claim beyond memory is an error naming
    /// the tensor, never an abort.
    pub fn decode_all(&mut self, e: &TensorEntry, stored: &[u8], path: &Path) -> Result<Vec<u8>> {
        let bad = |reason: String| FormatError::BadTensor {
            path: path.to_path_buf(),
            tensor: e.name.clone(),
            reason,
        };
        let claimed = e.encoded_length();
        if e.dtype.encoded_len(&e.shape, e.block_size) != Some(claimed) {
            return Err(bad(format!(
                "decoded length {claimed} but shape {:?} as {} takes {}",
                e.shape,
                e.dtype,
                e.dtype
                    .encoded_len(&e.shape, e.block_size)
                    .map_or("no valid size".to_string(), |n| format!("{n} bytes"))
            )));
        }
        // zstd cannot expand a stored byte into more than 32768 (an RLE
        // block: a 3-byte header and 1 byte for 128 KiB); twice that bound
        // leaves room and still stops a small file claiming terabytes.
        let most = (stored.len() as u64).saturating_mul(MAX_EXPANSION);
        if claimed > most {
            return Err(bad(format!(
                "decoded length {claimed} is more than {} stored bytes can decode to",
                stored.len()
            )));
        }
        let fr = Frames::of(e, path)?;
        let len = usize::try_from(claimed).map_err(|_| {
            bad(format!(
                "decoded length {claimed} exceeds the address space"
            ))
        })?;
        let mut out = Vec::new();
        out.try_reserve_exact(len).map_err(|err| {
            bad(format!(
                "cannot allocate the {claimed}-byte decoded tensor: {err}"
            ))
        })?;
        out.resize(len, 0);
        self.decode(e, &fr, 0, fr.count(), stored, &mut out, path)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dtype: DType, shape: Vec<u64>, c: &Compressed) -> TensorEntry {
        TensorEntry {
            name: "w".into(),
            dtype,
            shape,
            block_size: None,
            offset: 4096,
            length: c.bytes.len() as u64,
            compression: Some(c.compression.clone()),
        }
    }

    fn bf16_rows(rows: usize, cols: usize) -> Vec<u8> {
        (0..rows * cols)
            .flat_map(|i| {
                let x = ((i as f32) * 0.37).sin() * 0.05;
                half::bf16::from_f32(x).to_le_bytes()
            })
            .collect()
    }

    #[test]
    fn round_trip_every_frame_range_and_both_codecs() {
        let (rows, cols) = (37, 48);
        let enc = bf16_rows(rows, cols);
        let p = Path::new("t");
        for bytesplit in [false, true] {
            let c = compress(
                &enc,
                cols * 2,
                5,
                Codec {
                    level: 3,
                    bytesplit,
                },
                p,
                "w",
            )
            .unwrap();
            let e = entry(DType::Bf16, vec![rows as u64, cols as u64], &c);
            validate(&e, e.compression.as_ref().unwrap()).unwrap();
            let fr = Frames::of(&e, p).unwrap();
            assert_eq!(fr.count(), 8);
            let mut d = Decoder::new().unwrap();
            assert_eq!(d.decode_all(&e, &c.bytes, p).unwrap(), enc);
            for f0 in 0..fr.count() {
                for f1 in f0..=fr.count() {
                    let (r0, r1) = fr.rows_of(f0, f1);
                    let sr = fr.stored_range(f0, f1).unwrap();
                    let mut out = vec![0u8; ((r1 - r0) as usize) * cols * 2];
                    d.decode(
                        &e,
                        &fr,
                        f0,
                        f1,
                        &c.bytes[sr.start as usize..sr.end as usize],
                        &mut out,
                        p,
                    )
                    .unwrap();
                    assert_eq!(out, enc[r0 as usize * cols * 2..r1 as usize * cols * 2]);
                }
            }
        }
    }

    #[test]
    fn bytesplit_compresses_bf16_better() {
        let enc = bf16_rows(256, 256);
        let p = Path::new("t");
        let plain = compress(
            &enc,
            512,
            64,
            Codec {
                level: 3,
                bytesplit: false,
            },
            p,
            "w",
        )
        .unwrap();
        let split = compress(
            &enc,
            512,
            64,
            Codec {
                level: 3,
                bytesplit: true,
            },
            p,
            "w",
        )
        .unwrap();
        assert!(
            split.bytes.len() < plain.bytes.len(),
            "{} vs {}",
            split.bytes.len(),
            plain.bytes.len()
        );
    }

    #[test]
    fn damage_and_bad_tables_are_named_errors() {
        let enc = bf16_rows(16, 64);
        let p = Path::new("t");
        let c = compress(
            &enc,
            128,
            4,
            Codec {
                level: 3,
                bytesplit: false,
            },
            p,
            "w",
        )
        .unwrap();
        let e = entry(DType::Bf16, vec![16, 64], &c);
        let mut d = Decoder::new().unwrap();
        // Every single-byte change is caught (zstd's frame checks and content
        // checksum, or the frame size check).
        for i in (0..c.bytes.len()).step_by(7) {
            let mut bad = c.bytes.clone();
            bad[i] ^= 0x5a;
            match d.decode_all(&e, &bad, p) {
                Err(FormatError::BadTensor { tensor, .. }) => assert_eq!(tensor, "w"),
                Ok(v) => panic!("byte {i} changed, decoded {} bytes without error", v.len()),
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        let assert_refused = |wrong: &TensorEntry, why: &str| {
            let e = validate(wrong, wrong.compression.as_ref().unwrap()).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        };
        let mut wrong = e.clone();
        wrong
            .compression
            .as_mut()
            .unwrap()
            .frames
            .as_mut()
            .unwrap()
            .pop();
        assert_refused(&wrong, "frames listed");
        let mut wrong = e.clone();
        wrong.compression.as_mut().unwrap().frame_rows = Some(0);
        assert_refused(&wrong, "frame_rows is 0");
        let mut wrong = e.clone();
        wrong.length += 1;
        assert_refused(&wrong, "frames add up to");
        let mut wrong = e.clone();
        wrong.dtype = DType::F32;
        wrong.compression.as_mut().unwrap().codec = ZSTD_BYTESPLIT.into();
        assert_refused(&wrong, "applies to f16/bf16, not f32");
        let mut wrong = e;
        wrong.compression.as_mut().unwrap().codec = "lz4".into();
        assert_refused(&wrong, "unknown compression codec \"lz4\"");
    }

    #[test]
    fn huge_claimed_lengths_are_errors_before_any_allocation() {
        let p = Path::new("t");
        let stored = vec![0u8; 4096];
        let huge = |shape: Vec<u64>, decoded_length: u64| TensorEntry {
            name: "w".into(),
            dtype: DType::F32,
            shape,
            block_size: None,
            offset: 4096,
            length: 4096,
            compression: Some(Compression {
                codec: ZSTD.into(),
                decoded_length,
                frame_rows: None,
                frames: None,
            }),
        };
        let mut d = Decoder::new().unwrap();
        // Terabytes its shape does not take, terabytes its shape takes, and
        // more than the address space: each an error naming the tensor.
        for e in [
            huge(vec![4, 4], 1 << 40),
            huge(vec![1 << 19, 1 << 19], 1 << 40),
            huge(vec![1 << 31, 1 << 31], u64::MAX),
        ] {
            match d.decode_all(&e, &stored, p) {
                Err(FormatError::BadTensor { tensor, reason, .. }) => {
                    assert_eq!(tensor, "w");
                    assert!(reason.contains("decoded length"), "{reason}");
                }
                other => panic!("{:?}", other.map(|v| v.len())),
            }
        }
    }

    #[test]
    fn stored_range_outside_the_frames_is_none() {
        let enc = bf16_rows(16, 64);
        let p = Path::new("t");
        let codec = Codec {
            level: 3,
            bytesplit: false,
        };
        let c = compress(&enc, 128, 4, codec, p, "w").unwrap();
        let fr = Frames::of(&entry(DType::Bf16, vec![16, 64], &c), p).unwrap();
        assert_eq!(fr.count(), 4);
        assert_eq!(fr.stored_range(0, 4), Some(0..c.bytes.len() as u64));
        assert_eq!(fr.stored_range(2, 2).map(|r| r.is_empty()), Some(true));
        assert_eq!(fr.stored_range(3, 2), None);
        assert_eq!(fr.stored_range(0, 5), None);
        assert_eq!(fr.stored_range(usize::MAX, usize::MAX), None);
        assert_eq!(fr.rows_of(usize::MAX, usize::MAX), (16, 16));
    }
}
