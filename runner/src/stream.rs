//! The streaming engine: resident stages loaded once, streamed stages read
//! by a prefetch thread that runs `--prefetch` units ahead of compute and
//! carries on across token boundaries, into a fixed pool of reused buffers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use strata_format::compress::{Decoder, Frames};
use strata_format::layout;

use crate::container::{slice_range, Container, StageInfo, Weight};
use crate::error::{Result, RunnerError};
use crate::io::{AlignedBuf, Backend, Span, UnitBytes, IO_ALIGN};
use crate::kernels::{self, Isa, Layout};
use crate::lru::ByteLru;
use crate::plan::MemoryPlan;

/// What is done with one routed expert's bytes: `f(expert, bytes, base)`,
/// where `bytes` holds that expert's tensors and starts at file offset `base`.
pub type ExpertUse<'a> = dyn FnMut(usize, &[u8], u64) -> Result<()> + 'a;

/// The bytes of some routed experts: calls the [`ExpertUse`] for each expert
/// asked for (with the whole layer's bytes and base 0 when it is all in memory).
pub type ExpertFetch<'a> = dyn FnMut(&[usize], &mut ExpertUse<'_>) -> Result<()> + 'a;

/// I/O counters shared with the prefetch thread.
#[derive(Debug, Default)]
pub struct IoStats {
    /// Bytes read from container files.
    pub bytes_read: AtomicU64,
    /// Nanoseconds spent reading.
    pub read_nanos: AtomicU64,
    /// Nanoseconds compute waited for the disk.
    pub wait_nanos: AtomicU64,
    /// Nanoseconds spent decompressing (on the decode thread, or at load).
    pub decode_nanos: AtomicU64,
    /// Bytes of routed experts read from streamed MoE layer files (also
    /// counted in `bytes_read`).
    pub expert_bytes_read: AtomicU64,
}

impl IoStats {
    fn add_read(&self, bytes: u64, started: Instant) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.read_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn add_decode(&self, started: Instant) {
        self.decode_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

/// What a read unit holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnitKind {
    /// A whole layer file.
    Layer(usize),
    /// Rows of the head weight (index into the head chunks).
    Head(usize),
}

/// What the decode thread does with a unit's bytes before the model sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decode {
    /// Nothing: handed over as read (copied into a decode buffer when the
    /// pipeline has a decode stage).
    Nothing,
    /// A whole stage file, decoded to its layout ([`crate::container::DecodedLayout`]).
    Stage,
    /// Frames `f0..f1` of the head weight, whose stored bytes start `skip`
    /// bytes into the span read.
    Frames { f0: usize, f1: usize, skip: usize },
}

/// Where a unit's bytes come from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Read from the file.
    Disk(Span),
    /// A layer held resident in its compressed form.
    Held(usize),
}

#[derive(Debug, Clone)]
struct Unit {
    kind: UnitKind,
    stage: StageInfo,
    source: Source,
    whole_file: bool,
    decode: Decode,
}

/// Rows `r0..r1` of the head weight and the aligned span that holds them.
#[derive(Debug, Clone, Copy)]
struct HeadChunk {
    r0: usize,
    r1: usize,
    span: Span,
    /// How the chunk's bytes are decoded.
    decode: Decode,
    /// Offset of row `r0` in the bytes the model is handed.
    view_skip: usize,
}

/// A resident layer: ready to compute with, or held compressed.
enum Resident {
    Ready(UnitBytes),
    Compressed,
}

struct Prefetcher {
    ready: Option<Receiver<Result<(UnitKind, UnitBytes)>>>,
    free: Option<Sender<Option<AlignedBuf>>>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing both channels makes the threads' next send or receive fail,
        // so they exit after at most the read or decode in progress.
        self.free.take();
        self.ready.take();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Serves layer and head bytes to the model in execution order.
pub struct Streamer {
    container: Arc<Container>,
    backend: Arc<Backend>,
    resident_layers: Vec<Option<Resident>>,
    /// Per layer: the resident tensors interleaved for the kernels.
    interleaved: Vec<Vec<String>>,
    /// Whether the resident head weight is interleaved for the kernels.
    head_interleaved: bool,
    head_chunks: Vec<HeadChunk>,
    resident_head: Option<UnitBytes>,
    prefetcher: Option<Prefetcher>,
    stats: Arc<IoStats>,
    /// Per layer: whether it streams expert-selectively (its unit is the part
    /// before the experts; the routed experts are read on demand).
    selective: Vec<bool>,
    experts: ExpertCache,
}

/// Recently used routed experts of streamed MoE layers, least recently used
/// evicted first, within a byte budget (the memory plan's `expert_cache`).
struct ExpertCache {
    /// `(layer, expert)` → (bytes from file offset `base`, base).
    held: ByteLru<(usize, usize), (UnitBytes, u64)>,
}

impl ExpertCache {
    /// Calls `f` with expert `e` of layer `l` (`stage`), reading its byte range
    /// unless it is held, and keeps it if it fits the budget.
    fn with(
        &mut self,
        backend: &Backend,
        stats: &IoStats,
        stage: &StageInfo,
        l: usize,
        e: usize,
        f: &mut ExpertUse<'_>,
    ) -> Result<()> {
        if let Some((bytes, base)) = self.held.get(&(l, e)) {
            return f(e, bytes.bytes(), *base);
        }
        let (start, end) =
            layout::expert_range(&stage.header, Path::new(&stage.name), stage.len, e as u64)?;
        let span = Span {
            offset: start,
            len: end - start,
        };
        let buf = if backend.maps() {
            None
        } else {
            Some(alloc(span.len, "an expert's bytes")?)
        };
        let started = Instant::now();
        let (bytes, _) = backend.read(&stage.path, span, buf)?;
        stats.add_read(span.len, started);
        stats
            .expert_bytes_read
            .fetch_add(span.len, Ordering::Relaxed);
        f(e, bytes.bytes(), start)?;
        self.held.insert((l, e), (bytes, start), span.len);
        Ok(())
    }
}

/// Whether layer `stage` can stream expert-selectively: an MoE layer whose
/// tensors are stored uncompressed (a compressed layer is read whole).
fn selective_layer(c: &Container, stage: &StageInfo) -> bool {
    c.manifest.architecture.moe.is_some() && !stage.compressed()
}

/// Where the routed experts of a layer file begin (its first expert's offset).
pub fn experts_start(stage: &StageInfo) -> Result<u64> {
    Ok(layout::experts_start(
        &stage.header,
        Path::new(&stage.name),
    )?)
}

fn align_down(x: u64) -> u64 {
    x / IO_ALIGN as u64 * IO_ALIGN as u64
}

fn span_for(start: u64, len: u64, file_len: u64) -> (Span, usize) {
    let a = align_down(start);
    // Saturating: the container's checks keep `start + len` within the file.
    let end = start
        .saturating_add(len)
        .checked_next_multiple_of(IO_ALIGN as u64)
        .unwrap_or(u64::MAX)
        .min(file_len);
    (
        Span {
            offset: a,
            len: end - a,
        },
        (start - a) as usize,
    )
}

fn alloc(bytes: u64, what: &str) -> Result<AlignedBuf> {
    AlignedBuf::new(bytes as usize).ok_or_else(|| RunnerError::Memory {
        budget: crate::units::human(bytes),
        reason: format!("cannot allocate {what}"),
    })
}

fn new_decoder() -> Result<Decoder> {
    Decoder::new().map_err(|e| RunnerError::Prefetch(format!("zstd decoder: {e}")))
}

/// The head weight's chunks: rows per chunk bounded by the read unit (or the
/// whole weight when resident), whole frames when the weight is compressed.
fn head_chunks(c: &Container, plan: &MemoryPlan) -> Result<Vec<HeadChunk>> {
    let (hstage, hname) = c.head_weight_stage();
    let hentry = hstage.entry(hname)?.clone();
    let rows = hentry.shape.first().copied().unwrap_or(1) as usize;
    let row_bytes = (hentry.encoded_length() as usize) / rows.max(1);
    let fit = ((plan.unit as usize).saturating_sub(2 * IO_ALIGN) / row_bytes.max(1)).max(1);
    if hentry.compression.is_none() {
        let per_chunk = if plan.head_resident {
            rows.max(1)
        } else {
            fit.min(rows.max(1))
        };
        return Ok((0..rows)
            .step_by(per_chunk)
            .map(|r0| {
                let r1 = (r0 + per_chunk).min(rows);
                let (span, skip) = span_for(
                    hentry.offset + (r0 * row_bytes) as u64,
                    ((r1 - r0) * row_bytes) as u64,
                    hstage.len,
                );
                HeadChunk {
                    r0,
                    r1,
                    span,
                    decode: Decode::Nothing,
                    view_skip: skip,
                }
            })
            .collect());
    }
    let fr = hstage.frames(&hentry.name)?;
    let frame_rows = fr.frame_rows() as usize;
    let per_chunk = if plan.head_resident {
        fr.count()
    } else {
        (fit / frame_rows).max(1)
    };
    (0..fr.count())
        .step_by(per_chunk)
        .map(|f0| {
            let f1 = (f0 + per_chunk).min(fr.count());
            let (r0, r1) = fr.rows_of(f0, f1);
            let sr = frames_range(fr, f0, f1, &hstage.name, &hentry.name)?;
            let (span, skip) = span_for(hentry.offset + sr.start, sr.end - sr.start, hstage.len);
            Ok(HeadChunk {
                r0: r0 as usize,
                r1: r1 as usize,
                span,
                decode: Decode::Frames { f0, f1, skip },
                view_skip: 0,
            })
        })
        .collect()
}

/// The stored byte range of frames `f0..f1` of tensor `tensor` of `file`.
fn frames_range(
    fr: &Frames,
    f0: usize,
    f1: usize,
    file: &str,
    tensor: &str,
) -> Result<std::ops::Range<u64>> {
    fr.stored_range(f0, f1).ok_or_else(|| RunnerError::Tensor {
        file: file.into(),
        tensor: tensor.into(),
        reason: format!("frames {f0}..{f1} of {}", fr.count()),
    })
}

/// Decodes one unit's bytes `src` into `out` as `unit.decode` says; returns the length.
fn decode_unit(
    container: &Container,
    unit: &Unit,
    src: &[u8],
    out: &mut AlignedBuf,
    dec: &mut Decoder,
) -> Result<usize> {
    match unit.decode {
        Decode::Nothing => {
            let dst = out.as_mut_full().get_mut(..src.len()).ok_or_else(|| {
                RunnerError::Prefetch(format!("{}: decode buffer too small", unit.stage.name))
            })?;
            dst.copy_from_slice(src);
            Ok(src.len())
        }
        Decode::Stage => {
            unit.stage.decode_into(src, out.as_mut_full(), dec)?;
            Ok(unit.stage.view_len() as usize)
        }
        Decode::Frames { f0, f1, skip } => {
            let (stage, name) = container.head_weight_stage();
            let e = stage.entry(name)?;
            let fr = stage.frames(name)?;
            let sr = frames_range(fr, f0, f1, &stage.name, name)?;
            let (r0, r1) = fr.rows_of(f0, f1);
            let n = ((r1 - r0) * fr.row_bytes()) as usize;
            let stored = src
                .get(skip..skip + (sr.end - sr.start) as usize)
                .ok_or_else(|| RunnerError::Prefetch(format!("{}: short head read", stage.name)))?;
            let dst = out.as_mut_full().get_mut(..n).ok_or_else(|| {
                RunnerError::Prefetch(format!("{}: decode buffer too small", stage.name))
            })?;
            dec.decode(e, fr, f0, f1, stored, dst, &stage.path)?;
            Ok(n)
        }
    }
}

impl Streamer {
    /// Loads the resident stages (verifying them, decoding what is held
    /// decoded), checks the partially-read files, and starts the prefetch
    /// thread (and the decode thread, when something is decoded on the way)
    /// for the streamed ones.
    pub fn new(container: Arc<Container>, backend: Backend, plan: &MemoryPlan) -> Result<Streamer> {
        let backend = Arc::new(backend);
        let stats = Arc::new(IoStats::default());
        // Files read in parts are verified as a whole, once, up front.
        container.check_from_disk(&container.embed)?;
        container.check_from_disk(&container.head)?;

        let (hstage, _) = container.head_weight_stage();
        let head_chunks = head_chunks(&container, plan)?;
        let mut dec = new_decoder()?;

        let mut resident_layers = Vec::with_capacity(container.layers.len());
        let mut held = Vec::with_capacity(container.layers.len());
        for (i, l) in container.layers.iter().enumerate() {
            if !plan.resident_layers[i] {
                resident_layers.push(None);
                held.push(None);
                continue;
            }
            let started = Instant::now();
            let (bytes, _) = backend.read(
                &l.path,
                Span {
                    offset: 0,
                    len: l.len,
                },
                None,
            )?;
            stats.add_read(l.len, started);
            container.check_whole(l, bytes.bytes())?;
            if !l.compressed() {
                resident_layers.push(Some(Resident::Ready(bytes)));
                held.push(None);
            } else if plan.keep_compressed {
                resident_layers.push(Some(Resident::Compressed));
                held.push(Some(bytes));
            } else {
                let mut out = alloc(l.view_len(), "a decoded layer")?;
                let started = Instant::now();
                l.decode_into(bytes.bytes(), out.as_mut_full(), &mut dec)?;
                out.set_len(l.view_len() as usize);
                stats.add_decode(started);
                resident_layers.push(Some(Resident::Ready(UnitBytes::Owned(out))));
                held.push(None);
            }
        }
        // Resident weights laid out once for the kernels (decoding reads them
        // once a token); MoE layers keep the stored layout (their experts are
        // sliced by the MoE code).
        let interleaved = match container.manifest.architecture.moe {
            None => {
                use rayon::prelude::*;
                resident_layers
                    .par_iter_mut()
                    .zip(&container.layers)
                    .map(|(r, l)| match r {
                        Some(Resident::Ready(UnitBytes::Owned(buf))) => interleave_layer(l, buf),
                        _ => Ok(Vec::new()),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            Some(_) => vec![Vec::new(); container.layers.len()],
        };
        let resident_head = if plan.head_resident {
            let c = head_chunks[0];
            let started = Instant::now();
            let (bytes, _) = backend.read(&hstage.path, c.span, None)?;
            stats.add_read(c.span.len, started);
            if c.decode == Decode::Nothing {
                Some(bytes)
            } else {
                let unit = Unit {
                    kind: UnitKind::Head(0),
                    stage: hstage.clone(),
                    source: Source::Disk(c.span),
                    whole_file: false,
                    decode: c.decode,
                };
                let rows = (c.r1 - c.r0) as u64;
                let row_bytes = container.head_weight_row_bytes()?;
                let mut out = alloc(rows * row_bytes, "the decoded head")?;
                let started = Instant::now();
                let n = decode_unit(&container, &unit, bytes.bytes(), &mut out, &mut dec)?;
                out.set_len(n);
                stats.add_decode(started);
                Some(UnitBytes::Owned(out))
            }
        } else {
            None
        };

        let mut resident_head = resident_head;
        let head_interleaved = match (&mut resident_head, head_chunks.as_slice()) {
            (Some(UnitBytes::Owned(buf)), [c]) => {
                let (stage, name) = container.head_weight_stage();
                let len = buf.as_slice().len();
                let tail = buf.as_mut_full()[..len]
                    .get_mut(c.view_skip..)
                    .unwrap_or_default();
                let shape: Weight<'static> = Weight {
                    bytes: &[],
                    ..stage.weight_rows(tail, name, c.r0, c.r1)?
                };
                let need = shape.rows * shape.row_bytes();
                kernels::interleave(Isa::selected(), &shape, &mut tail[..need])
                    == Layout::Interleaved8
            }
            _ => false,
        };
        let mut units = Vec::new();
        let mut selective = vec![false; container.layers.len()];
        for (i, l) in container.layers.iter().enumerate() {
            let decode = if l.compressed() {
                Decode::Stage
            } else {
                Decode::Nothing
            };
            let mut whole_file = true;
            let source = match &resident_layers[i] {
                None if selective_layer(&container, l) => {
                    // Only the part before the experts; the routed experts
                    // are read on demand, so the file is verified up front.
                    container.check_from_disk(l)?;
                    selective[i] = true;
                    whole_file = false;
                    Source::Disk(Span {
                        offset: 0,
                        len: experts_start(l)?,
                    })
                }
                None => Source::Disk(Span {
                    offset: 0,
                    len: l.len,
                }),
                Some(Resident::Compressed) => Source::Held(i),
                Some(Resident::Ready(_)) => continue,
            };
            units.push(Unit {
                kind: UnitKind::Layer(i),
                stage: l.clone(),
                source,
                whole_file,
                decode,
            });
        }
        if !plan.head_resident {
            for (k, c) in head_chunks.iter().enumerate() {
                units.push(Unit {
                    kind: UnitKind::Head(k),
                    stage: hstage.clone(),
                    source: Source::Disk(c.span),
                    whole_file: false,
                    decode: c.decode,
                });
            }
        }
        let prefetcher = if units.is_empty() {
            None
        } else {
            Some(start_prefetcher(
                Pipeline {
                    container: container.clone(),
                    backend: backend.clone(),
                    stats: stats.clone(),
                    units,
                    held: Arc::new(held),
                },
                plan,
            )?)
        };
        Ok(Streamer {
            container,
            backend,
            resident_layers,
            interleaved,
            head_interleaved,
            head_chunks,
            resident_head,
            prefetcher,
            stats,
            selective,
            experts: ExpertCache {
                held: ByteLru::new(plan.expert_cache),
            },
        })
    }

    /// The shared I/O counters.
    pub fn stats(&self) -> &Arc<IoStats> {
        &self.stats
    }

    /// The backend's name.
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// The container.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    fn next_unit(&mut self, want: UnitKind) -> Result<UnitBytes> {
        let p = self
            .prefetcher
            .as_mut()
            .ok_or_else(|| RunnerError::Prefetch("no prefetcher for a streamed stage".into()))?;
        let started = Instant::now();
        let got = p
            .ready
            .as_ref()
            .ok_or_else(|| RunnerError::Prefetch("the reader is stopped".into()))?
            .recv()
            .map_err(|_| RunnerError::Prefetch("the reader thread exited".into()))??;
        self.stats
            .wait_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if got.0 != want {
            return Err(RunnerError::Prefetch(format!(
                "expected {want:?}, the reader delivered {:?}",
                got.0
            )));
        }
        Ok(got.1)
    }

    /// Hands a unit's buffer back to the pool (a mapping is unmapped; its
    /// pool slot is returned all the same, so read-ahead stays bounded).
    fn release(&self, bytes: UnitBytes) {
        if let Some(tx) = self.prefetcher.as_ref().and_then(|p| p.free.as_ref()) {
            let slot = match bytes {
                UnitBytes::Owned(buf) => Some(buf),
                UnitBytes::Mapped(_) => None,
            };
            let _ = tx.send(slot);
        }
    }

    /// Runs `f` on layer `i`'s bytes (with the names of its tensors laid
    /// out for the kernels, [`Layout::Interleaved8`]), with a way to fetch
    /// the bytes of the routed experts an MoE layer picks.
    pub fn with_layer<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&StageInfo, &[u8], &[String], &mut ExpertFetch<'_>) -> Result<R>,
    ) -> Result<R> {
        let container = self.container.clone();
        let stage = &container.layers[i];
        if let Some(Resident::Ready(b)) = &self.resident_layers[i] {
            let inter = &self.interleaved[i];
            return f(stage, b.bytes(), inter, &mut whole_layer(b.bytes()));
        }
        let bytes = self.next_unit(UnitKind::Layer(i))?;
        let out = if self.selective[i] {
            let (cache, backend, stats) = (&mut self.experts, &self.backend, &self.stats);
            let mut fetch = |experts: &[usize], g: &mut ExpertUse<'_>| {
                experts
                    .iter()
                    .try_for_each(|&e| cache.with(backend, stats, stage, i, e, g))
            };
            f(stage, bytes.bytes(), &[], &mut fetch)
        } else {
            f(stage, bytes.bytes(), &[], &mut whole_layer(bytes.bytes()))
        };
        self.release(bytes);
        out
    }

    /// Runs `f(r0, rows r0..r1 of the head weight)` for every head chunk, in order.
    pub fn for_each_head_chunk(
        &mut self,
        mut f: impl FnMut(usize, Weight<'_>) -> Result<()>,
    ) -> Result<()> {
        let container = self.container.clone();
        let (stage, name) = container.head_weight_stage();
        for k in 0..self.head_chunks.len() {
            let c = self.head_chunks[k];
            let mut view = |bytes: &[u8], layout: Layout| -> Result<()> {
                let rows = stage.weight_rows(&bytes[c.view_skip..], name, c.r0, c.r1)?;
                f(c.r0, Weight { layout, ..rows })
            };
            if let Some(b) = &self.resident_head {
                let layout = match self.head_interleaved {
                    true => Layout::Interleaved8,
                    false => Layout::Rows,
                };
                view(b.bytes(), layout)?;
            } else {
                let bytes = self.next_unit(UnitKind::Head(k))?;
                let out = view(bytes.bytes(), Layout::Rows);
                self.release(bytes);
                out?;
            }
        }
        Ok(())
    }

    /// Reads embedding rows for `ids` from the embeddings file (or the
    /// resident head when it is the tied embedding matrix). Rows of a
    /// compressed matrix are read and decoded one frame at a time.
    pub fn embedding_rows(&self, ids: &[u32]) -> Result<Vec<Vec<u8>>> {
        let c = &self.container;
        let e = c.embed.entry(strata_format::names::EMBED_TOKENS)?;
        let vocab = e.shape.first().copied().unwrap_or(0);
        let row_bytes = (e.encoded_length() / vocab.max(1)) as usize;
        let tied_resident =
            c.manifest.architecture.tie_word_embeddings && self.resident_head.is_some();
        let frames = match (&e.compression, tied_resident) {
            (Some(_), false) => Some(c.embed.frames(strata_format::names::EMBED_TOKENS)?),
            _ => None,
        };
        let mut dec = None;
        let mut decoded: HashMap<usize, Vec<u8>> = HashMap::new();
        ids.iter()
            .map(|&id| {
                if u64::from(id) >= vocab {
                    return Err(RunnerError::Invalid(format!(
                        "token id {id} is outside the vocabulary (0..{vocab})"
                    )));
                }
                let start = id as usize * row_bytes;
                if tied_resident {
                    let b = self
                        .resident_head
                        .as_ref()
                        .map(|b| b.bytes())
                        .unwrap_or(&[]);
                    let skip = self.head_chunks.first().map_or(0, |h| h.view_skip);
                    let from = skip + start;
                    if self.head_interleaved {
                        // Rows of the weight as laid out for the kernels.
                        let (stage, name) = c.head_weight_stage();
                        let w = stage.weight_rows(&b[skip..], name, 0, vocab as usize)?;
                        let w = Weight {
                            layout: Layout::Interleaved8,
                            ..w
                        };
                        return kernels::stored_row(&w, id as usize).ok_or_else(|| {
                            RunnerError::Invalid(format!("token id {id}: no such head row"))
                        });
                    }
                    return b
                        .get(from..from.saturating_add(row_bytes))
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| RunnerError::Tensor {
                            file: c.head.name.clone(),
                            tensor: strata_format::names::EMBED_TOKENS.into(),
                            reason: format!(
                                "row {id} ({row_bytes} bytes at {from}) is outside the {} resident bytes",
                                b.len()
                            ),
                        });
                }
                let Some(fr) = &frames else {
                    let started = Instant::now();
                    let v = c.embed.read_at(e.offset + start as u64, row_bytes)?;
                    self.stats.add_read(row_bytes as u64, started);
                    return Ok(v);
                };
                let f = fr.frame_of_row(u64::from(id));
                let rows = match decoded.entry(f) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let sr = frames_range(fr, f, f + 1, &c.embed.name, &e.name)?;
                        let started = Instant::now();
                        let stored =
                            c.embed.read_at(e.offset + sr.start, (sr.end - sr.start) as usize)?;
                        self.stats.add_read(sr.end - sr.start, started);
                        let (r0, r1) = fr.rows_of(f, f + 1);
                        let mut out = vec![0u8; ((r1 - r0) * fr.row_bytes()) as usize];
                        let started = Instant::now();
                        let d = match &mut dec {
                            Some(d) => d,
                            None => dec.insert(new_decoder()?),
                        };
                        d.decode(e, fr, f, f + 1, &stored, &mut out, &c.embed.path)?;
                        self.stats.add_decode(started);
                        v.insert(out)
                    }
                };
                let at = (u64::from(id) - fr.rows_of(f, f + 1).0) as usize * row_bytes;
                Ok(rows[at..at + row_bytes].to_vec())
            })
            .collect()
    }
}

/// Interleaves, in place, the tensors of a resident layer (`buf`, the bytes
/// the model is handed) that the dense layer multiplies by, where the
/// kernels take them so ([`kernels::interleave`]); returns their names.
fn interleave_layer(stage: &StageInfo, buf: &mut AlignedBuf) -> Result<Vec<String>> {
    use strata_format::names::{ATTN_K, ATTN_O, ATTN_Q, ATTN_V, MLP_DOWN, MLP_GATE, MLP_UP};
    let isa = Isa::selected();
    let len = buf.as_slice().len();
    let bytes = &mut buf.as_mut_full()[..len];
    let mut done = Vec::new();
    for name in [ATTN_Q, ATTN_K, ATTN_V, ATTN_O, MLP_GATE, MLP_UP, MLP_DOWN] {
        if stage.view_entry(name).is_err() {
            continue;
        }
        let shape: Weight<'static> = Weight {
            bytes: &[],
            ..stage.weight(bytes, 0, name)?
        };
        let e = stage.view_entry(name)?;
        // Where `weight` found the tensor's bytes.
        let range = slice_range(e.offset, e.length).and_then(|r| bytes.get_mut(r));
        let Some(range) = range else {
            continue;
        };
        if kernels::interleave(isa, &shape, range) == Layout::Interleaved8 {
            done.push(name.to_string());
        }
    }
    Ok(done)
}

/// Expert bytes from a layer held whole in memory.
fn whole_layer(bytes: &[u8]) -> impl FnMut(&[usize], &mut ExpertUse<'_>) -> Result<()> + '_ {
    move |experts, f| experts.iter().try_for_each(|&e| f(e, bytes, 0))
}

/// What the prefetch (and decode) threads work from.
struct Pipeline {
    container: Arc<Container>,
    backend: Arc<Backend>,
    stats: Arc<IoStats>,
    units: Vec<Unit>,
    /// Layers held resident compressed, by index.
    held: Arc<Vec<Option<UnitBytes>>>,
}

/// A unit on its way from the reader to the decode thread.
type Read = (usize, Option<UnitBytes>);

fn start_prefetcher(p: Pipeline, plan: &MemoryPlan) -> Result<Prefetcher> {
    let depth = plan.prefetch.max(1);
    let (ready_tx, ready_rx) = sync_channel::<Result<(UnitKind, UnitBytes)>>(depth);
    let (free_tx, free_rx) = channel::<Option<AlignedBuf>>();
    let decoding = p
        .units
        .iter()
        .any(|u| u.decode != Decode::Nothing || matches!(u.source, Source::Held(_)));
    let read_buf = |backend: &Backend| -> Result<Option<AlignedBuf>> {
        if backend.maps() {
            Ok(None)
        } else {
            alloc(plan.unit, "a read buffer").map(Some)
        }
    };
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| RunnerError::Prefetch(e.to_string()))
    };
    if !decoding {
        // depth units may wait in the queue, one is being read and one computed.
        for _ in 0..depth + 1 {
            let _ = free_tx.send(read_buf(&p.backend)?);
        }
        let handle = spawn(
            "strata-prefetch",
            Box::new(move || {
                for unit in p.units.iter().cycle() {
                    let Ok(buf) = free_rx.recv() else { return };
                    let res = read_unit(&p, unit, buf).map(|b| (unit.kind, b));
                    let failed = res.is_err();
                    if ready_tx.send(res).is_err() || failed {
                        return;
                    }
                }
            }),
        )?;
        return Ok(Prefetcher {
            ready: Some(ready_rx),
            free: Some(free_tx),
            handles: vec![handle],
        });
    }
    // Reader -> decode thread -> model. Two read buffers (one being read, one
    // being decoded); depth + 1 decode buffers (queued, being decoded or computed).
    for _ in 0..depth + 1 {
        let _ = free_tx.send(Some(alloc(plan.decode_unit, "a decode buffer")?));
    }
    let (read_free_tx, read_free_rx) = channel::<Option<AlignedBuf>>();
    for _ in 0..2 {
        let _ = read_free_tx.send(read_buf(&p.backend)?);
    }
    let (mid_tx, mid_rx) = sync_channel::<Result<Read>>(1);
    let p = Arc::new(p);
    let reader = {
        let p = p.clone();
        spawn(
            "strata-prefetch",
            Box::new(move || {
                for (i, unit) in p.units.iter().enumerate().cycle() {
                    let res = match unit.source {
                        Source::Held(_) => Ok((i, None)),
                        Source::Disk(_) => {
                            let Ok(buf) = read_free_rx.recv() else { return };
                            read_unit(&p, unit, buf).map(|b| (i, Some(b)))
                        }
                    };
                    let failed = res.is_err();
                    if mid_tx.send(res).is_err() || failed {
                        return;
                    }
                }
            }),
        )?
    };
    let decoder = spawn(
        "strata-decode",
        Box::new(move || {
            let mut dec = match new_decoder() {
                Ok(d) => d,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Ok(msg) = mid_rx.recv() {
                let res = msg.and_then(|(i, read)| {
                    let unit = &p.units[i];
                    let Ok(Some(mut out)) = free_rx.recv() else {
                        return Err(RunnerError::Prefetch("the model stopped".into()));
                    };
                    let started = Instant::now();
                    let src = match (&read, unit.source) {
                        (Some(b), _) => b.bytes(),
                        (None, Source::Held(l)) => {
                            p.held[l].as_ref().map_or(&[][..], |b| b.bytes())
                        }
                        (None, Source::Disk(_)) => &[][..],
                    };
                    let n = decode_unit(&p.container, unit, src, &mut out, &mut dec)?;
                    out.set_len(n);
                    p.stats.add_decode(started);
                    if let Some(UnitBytes::Owned(b)) = read {
                        let _ = read_free_tx.send(Some(b));
                    } else if read.is_some() {
                        let _ = read_free_tx.send(None);
                    }
                    Ok((unit.kind, UnitBytes::Owned(out)))
                });
                let failed = res.is_err();
                if ready_tx.send(res).is_err() || failed {
                    return;
                }
            }
        }),
    )?;
    Ok(Prefetcher {
        ready: Some(ready_rx),
        free: Some(free_tx),
        handles: vec![reader, decoder],
    })
}

/// Reads one unit from disk into `buf` (or maps it), counting and checking it.
fn read_unit(p: &Pipeline, unit: &Unit, buf: Option<AlignedBuf>) -> Result<UnitBytes> {
    let Source::Disk(span) = unit.source else {
        return Err(RunnerError::Prefetch(
            "a held unit has nothing to read".into(),
        ));
    };
    let started = Instant::now();
    let (bytes, _) = p.backend.read(&unit.stage.path, span, buf)?;
    p.stats.add_read(span.len, started);
    if unit.whole_file {
        p.container.check_whole(&unit.stage, bytes.bytes())?;
    }
    Ok(bytes)
}
