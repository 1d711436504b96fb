//! The streaming engine: resident stages loaded once, streamed stages read
//! by a prefetch thread that runs `--prefetch` units ahead of compute and
//! carries on across token boundaries, into a fixed pool of reused buffers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::container::{Container, StageInfo, Weight};
use crate::error::{Result, RunnerError};
use crate::io::{read_small, AlignedBuf, Backend, Span, UnitBytes, IO_ALIGN};
use crate::plan::MemoryPlan;

/// I/O counters shared with the prefetch thread.
#[derive(Debug, Default)]
pub struct IoStats {
    /// Bytes read from container files.
    pub bytes_read: AtomicU64,
    /// Nanoseconds spent reading.
    pub read_nanos: AtomicU64,
    /// Nanoseconds compute waited for the disk.
    pub wait_nanos: AtomicU64,
}

impl IoStats {
    fn add_read(&self, bytes: u64, started: Instant) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        self.read_nanos
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

#[derive(Debug, Clone)]
struct Unit {
    kind: UnitKind,
    stage: StageInfo,
    span: Span,
    whole_file: bool,
}

/// Rows `r0..r1` of the head weight and the aligned span that holds them.
#[derive(Debug, Clone, Copy)]
struct HeadChunk {
    r0: usize,
    r1: usize,
    span: Span,
    /// Offset of row `r0` inside the span.
    skip: usize,
}

struct Prefetcher {
    ready: Option<Receiver<Result<(UnitKind, UnitBytes)>>>,
    free: Option<Sender<Option<AlignedBuf>>>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing both channels makes the thread's next send or receive fail,
        // so it exits after at most the read in progress.
        self.free.take();
        self.ready.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Serves layer and head bytes to the model in execution order.
pub struct Streamer {
    container: Arc<Container>,
    backend: Arc<Backend>,
    resident_layers: Vec<Option<UnitBytes>>,
    head_chunks: Vec<HeadChunk>,
    resident_head: Option<UnitBytes>,
    prefetcher: Option<Prefetcher>,
    stats: Arc<IoStats>,
}

fn align_down(x: u64) -> u64 {
    x / IO_ALIGN as u64 * IO_ALIGN as u64
}

fn span_for(start: u64, len: u64, file_len: u64) -> (Span, usize) {
    let a = align_down(start);
    let end = (start + len)
        .next_multiple_of(IO_ALIGN as u64)
        .min(file_len);
    (
        Span {
            offset: a,
            len: end - a,
        },
        (start - a) as usize,
    )
}

impl Streamer {
    /// Loads the resident stages (verifying them), checks the partially-read
    /// files, and starts the prefetch thread for the streamed ones.
    pub fn new(container: Arc<Container>, backend: Backend, plan: &MemoryPlan) -> Result<Streamer> {
        let backend = Arc::new(backend);
        let stats = Arc::new(IoStats::default());
        // Files read in parts are verified as a whole, once, up front.
        container.check_from_disk(&container.embed)?;
        container.check_from_disk(&container.head)?;

        let (hstage, hname) = container.head_weight_stage();
        let hentry = hstage.entry(hname)?.clone();
        let rows = hentry.shape.first().copied().unwrap_or(1) as usize;
        let row_bytes = (hentry.length as usize) / rows.max(1);
        let per_chunk = if plan.head_resident {
            rows.max(1)
        } else {
            ((plan.unit as usize).saturating_sub(2 * IO_ALIGN) / row_bytes.max(1))
                .clamp(1, rows.max(1))
        };
        let head_chunks: Vec<HeadChunk> = (0..rows)
            .step_by(per_chunk)
            .map(|r0| {
                let r1 = (r0 + per_chunk).min(rows);
                let (span, skip) = span_for(
                    hentry.offset + (r0 * row_bytes) as u64,
                    ((r1 - r0) * row_bytes) as u64,
                    hstage.len,
                );
                HeadChunk { r0, r1, span, skip }
            })
            .collect();

        let mut resident_layers = Vec::with_capacity(container.layers.len());
        for (i, l) in container.layers.iter().enumerate() {
            if plan.resident_layers[i] {
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
                resident_layers.push(Some(bytes));
            } else {
                resident_layers.push(None);
            }
        }
        let resident_head = if plan.head_resident {
            let c = head_chunks[0];
            let started = Instant::now();
            let (bytes, _) = backend.read(&hstage.path, c.span, None)?;
            stats.add_read(c.span.len, started);
            Some(bytes)
        } else {
            None
        };

        let mut units = Vec::new();
        for (i, l) in container.layers.iter().enumerate() {
            if !plan.resident_layers[i] {
                units.push(Unit {
                    kind: UnitKind::Layer(i),
                    stage: l.clone(),
                    span: Span {
                        offset: 0,
                        len: l.len,
                    },
                    whole_file: true,
                });
            }
        }
        if !plan.head_resident {
            for (k, c) in head_chunks.iter().enumerate() {
                units.push(Unit {
                    kind: UnitKind::Head(k),
                    stage: hstage.clone(),
                    span: c.span,
                    whole_file: false,
                });
            }
        }
        let prefetcher = if units.is_empty() {
            None
        } else {
            Some(start_prefetcher(
                container.clone(),
                backend.clone(),
                stats.clone(),
                units,
                plan.prefetch,
                plan.unit,
            )?)
        };
        Ok(Streamer {
            container,
            backend,
            resident_layers,
            head_chunks,
            resident_head,
            prefetcher,
            stats,
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

    /// Runs `f` on layer `i`'s whole-file bytes.
    pub fn with_layer<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&StageInfo, &[u8]) -> Result<R>,
    ) -> Result<R> {
        let container = self.container.clone();
        let stage = &container.layers[i];
        if let Some(b) = &self.resident_layers[i] {
            return f(stage, b.bytes());
        }
        let bytes = self.next_unit(UnitKind::Layer(i))?;
        let out = f(stage, bytes.bytes());
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
            let mut view = |bytes: &[u8]| -> Result<()> {
                let rows = stage.weight_rows(&bytes[c.skip..], name, c.r0, c.r1)?;
                f(c.r0, rows)
            };
            if let Some(b) = &self.resident_head {
                view(b.bytes())?;
            } else {
                let bytes = self.next_unit(UnitKind::Head(k))?;
                let out = view(bytes.bytes());
                self.release(bytes);
                out?;
            }
        }
        Ok(())
    }

    /// Reads embedding rows for `ids` from the embeddings file (or the
    /// resident head when it is the tied embedding matrix).
    pub fn embedding_rows(&self, ids: &[u32]) -> Result<Vec<Vec<u8>>> {
        let c = &self.container;
        let e = c.embed.entry(strata_format::names::EMBED_TOKENS)?;
        let vocab = e.shape.first().copied().unwrap_or(0);
        let row_bytes = (e.length / vocab.max(1)) as usize;
        let tied_resident =
            c.manifest.architecture.tie_word_embeddings && self.resident_head.is_some();
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
                    let skip = self.head_chunks[0].skip;
                    return Ok(b[skip + start..skip + start + row_bytes].to_vec());
                }
                let started = Instant::now();
                let v = read_small(&c.embed.path, e.offset + start as u64, row_bytes)?;
                self.stats.add_read(row_bytes as u64, started);
                Ok(v)
            })
            .collect()
    }
}

fn start_prefetcher(
    container: Arc<Container>,
    backend: Arc<Backend>,
    stats: Arc<IoStats>,
    units: Vec<Unit>,
    depth: usize,
    unit_bytes: u64,
) -> Result<Prefetcher> {
    let depth = depth.max(1);
    let (ready_tx, ready_rx) = sync_channel::<Result<(UnitKind, UnitBytes)>>(depth);
    let (free_tx, free_rx) = channel::<Option<AlignedBuf>>();
    // depth units may wait in the queue, one is being read and one computed.
    for _ in 0..depth + 1 {
        let buf = if backend.maps() {
            None
        } else {
            Some(
                AlignedBuf::new(unit_bytes as usize).ok_or_else(|| RunnerError::Memory {
                    budget: crate::units::human(unit_bytes),
                    reason: "cannot allocate a read buffer".into(),
                })?,
            )
        };
        let _ = free_tx.send(buf);
    }
    let handle = std::thread::Builder::new()
        .name("strata-prefetch".into())
        .spawn(move || {
            for unit in units.iter().cycle() {
                let Ok(buf) = free_rx.recv() else { return };
                let started = Instant::now();
                let res = backend
                    .read(&unit.stage.path, unit.span, buf)
                    .and_then(|(bytes, _)| {
                        stats.add_read(unit.span.len, started);
                        if unit.whole_file {
                            container.check_whole(&unit.stage, bytes.bytes())?;
                        }
                        Ok((unit.kind, bytes))
                    });
                let failed = res.is_err();
                if ready_tx.send(res).is_err() || failed {
                    return;
                }
            }
        })
        .map_err(|e| RunnerError::Prefetch(e.to_string()))?;
    Ok(Prefetcher {
        ready: Some(ready_rx),
        free: Some(free_tx),
        handle: Some(handle),
    })
}
