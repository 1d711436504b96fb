//! Sequential read bandwidth of whole files through the runner's own I/O
//! path: the backend `--io` selects (auto: io_uring with O_DIRECT and 16
//! requests of 4 MiB in flight, else pread), reading each file in one piece
//! into a reused aligned buffer, as the prefetch thread reads layer files.
//! Dividing the bytes a token reads by this bandwidth gives the I/O limit of
//! streaming them.
//!
//! ```text
//! cargo run --release -p strata-runner --example read_bandwidth -- DIR/layer.*.strata
//! ```
//!
//! Prints one JSON line: `{"backend", "files", "bytes", "seconds", "bytes_per_s"}`.
//! Drop the page cache first for a cold figure (with mmap, or without O_DIRECT,
//! cached pages are served from memory).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use strata_runner::io::{AlignedBuf, Backend, IoChoice, Span, UnitBytes};

/// Measure read bandwidth through the runner's I/O path.
#[derive(Parser)]
struct Args {
    /// I/O path.
    #[arg(long, value_enum, default_value_t = IoChoice::Auto)]
    io: IoChoice,
    /// Files to read, in order.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let backend = Backend::select(a.io, &a.files[0])?;
    let mut buf: Option<AlignedBuf> = None;
    let mut bytes = 0u64;
    let started = Instant::now();
    for f in &a.files {
        let len = std::fs::metadata(f)
            .with_context(|| format!("cannot stat {}", f.display()))?
            .len();
        let (unit, _) = backend.read(f, Span { offset: 0, len }, buf.take())?;
        match unit {
            UnitBytes::Owned(b) => buf = Some(b),
            // A mapping reads nothing until touched: fault every page in.
            UnitBytes::Mapped(m) => {
                std::hint::black_box(m.iter().step_by(4096).map(|&b| u64::from(b)).sum::<u64>());
            }
        }
        bytes += len;
    }
    let seconds = started.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "backend": backend.name(),
        "files": a.files.len(),
        "bytes": bytes,
        "seconds": seconds,
        "bytes_per_s": bytes as f64 / seconds.max(1e-9),
    });
    println!("{out}");
    Ok(())
}
