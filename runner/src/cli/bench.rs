//! `runner bench DIR [--prompt-tokens N] [--new-tokens M]`: one JSON line.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use strata_runner::engine::Engine;
use strata_runner::model::Want;
use strata_runner::units::peak_rss;

use crate::{Common, Dir};

/// Arguments of `bench`.
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    dir: Dir,
    /// Prompt length (synthetic token ids).
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Tokens decoded greedily after the prompt.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    #[command(flatten)]
    common: Common,
}

/// Runs `bench`.
pub fn run(a: BenchArgs) -> Result<i32> {
    a.common.setup()?;
    let mut engine = Engine::open(&a.dir.dir, &a.common.engine_options())?;
    let vocab = engine.container.manifest.architecture.vocab_size as usize;
    let prompt: Vec<u32> = (0..a.prompt_tokens.max(1))
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    let io0 = engine.io();
    let t0 = Instant::now();
    let mut logits = engine.forward(&prompt, Want::Last)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let io1 = engine.io();
    let t1 = Instant::now();
    let mut decoded = 0usize;
    for _ in 0..a.new_tokens {
        if engine.model.position() >= engine.model.ctx() {
            break;
        }
        let row = logits.row(0);
        let next = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b }) as u32;
        logits = engine.forward(&[next], Want::Last)?;
        decoded += 1;
    }
    let decode_secs = t1.elapsed().as_secs_f64();
    let io2 = engine.io();
    let per = |x: f64| if decoded > 0 { x / decoded as f64 } else { 0.0 };
    let out = serde_json::json!({
        "prompt_tokens": prompt.len(),
        "new_tokens": decoded,
        "prefill_tokens_per_s": prompt.len() as f64 / prefill_secs,
        "decode_tokens_per_s": if decode_secs > 0.0 { decoded as f64 / decode_secs } else { 0.0 },
        "bytes_read_per_token": per((io2.bytes_read - io1.bytes_read) as f64),
        "prefill_bytes_read": io1.bytes_read - io0.bytes_read,
        "io_wait_fraction": if decode_secs > 0.0 { (io2.wait_secs - io1.wait_secs) / decode_secs } else { 0.0 },
        "peak_rss_bytes": peak_rss().unwrap_or(0),
        "io_backend": engine.streamer.backend_name(),
        "resident_bytes": engine.plan.resident_bytes,
        "streamed_bytes_per_pass": engine.plan.streamed_bytes,
        "threads": rayon::current_num_threads(),
    });
    println!("{out}");
    Ok(0)
}
