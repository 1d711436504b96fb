//! `runner bench DIR [--prompt-tokens N] [--new-tokens M] [--verify-pass K]`:
//! one JSON line.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use strata_runner::engine::Engine;
use strata_runner::model::Want;
use strata_runner::sampling::{Sampler, SamplerConfig};
use strata_runner::speculative::Speculator;
use strata_runner::units::peak_rss;

use super::generate::DraftArgs;
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
    /// Sequences run together (each streamed layer serves all of them);
    /// token rates count the tokens of every sequence.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// A text prompt (tokenized, no chat template) instead of synthetic ids;
    /// speculative decoding's acceptance is only meaningful on real text.
    #[arg(long)]
    prompt: Option<String>,
    /// Also time a speculative verification pass of K drafted tokens: after
    /// the prompt's prefill, 3 passes each feed K+1 synthetic tokens at once
    /// with the logits of every position wanted (as the pass that checks K
    /// drafted tokens does), the cache rolled back to the prompt after each;
    /// adds `verify_pass_k`, `verify_pass_seconds` (the median) and
    /// `verify_pass_seconds_each` to the JSON. Batch 1, without --draft.
    #[arg(long, value_name = "K")]
    verify_pass: Option<usize>,
    #[command(flatten)]
    draft: DraftArgs,
    #[command(flatten)]
    common: Common,
}

/// Passes timed by `--verify-pass`.
const VERIFY_PASSES: usize = 3;

/// Runs `bench`.
pub fn run(mut a: BenchArgs) -> Result<i32> {
    a.common.setup()?;
    a.dir.resolve()?;
    a.draft.resolve(&a.dir.remote)?;
    if a.draft.draft.is_some() && a.batch > 1 {
        anyhow::bail!("--draft runs one sequence: drop --batch");
    }
    if a.verify_pass.is_some() && (a.draft.draft.is_some() || a.batch > 1) {
        anyhow::bail!("--verify-pass times one sequence without a draft: drop --draft and --batch");
    }
    let (mut engine, spec) = a.draft.open(&a.dir.dir, &a.common.engine_options())?;
    let vocab = engine.container.manifest.architecture.vocab_size as usize;
    let k = a.batch.max(1);
    let prompts: Vec<Vec<u32>> = match &a.prompt {
        Some(text) => vec![super::tokenizer(&engine)?.encode(text, true)?; k],
        None => (0..k)
            .map(|s| {
                (0..a.prompt_tokens.max(1))
                    .map(|i| ((i * 7919 + s * 104_729 + 13) % vocab) as u32)
                    .collect()
            })
            .collect(),
    };
    if let Some(spec) = spec {
        return bench_speculative(&a, engine, spec, &prompts[0]);
    }
    engine.model.set_batch(k);
    let io0 = engine.io();
    let t0 = Instant::now();
    let batch: Vec<(usize, &[u32])> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.as_slice()))
        .collect();
    let mut logits = engine
        .model
        .forward_batch(&mut engine.streamer, &batch, Want::Last)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let io_prefill = engine.io();
    let verify = match a.verify_pass {
        Some(kd) => Some(verify_passes(&mut engine, prompts[0].len(), kd, vocab)?),
        None => None,
    };
    let io1 = engine.io();
    let t1 = Instant::now();
    let mut decoded = 0usize;
    let ctx = engine.model.ctx();
    for step in 0..a.new_tokens {
        if prompts[0].len() + step >= ctx {
            break;
        }
        let next: Vec<[u32; 1]> = logits
            .iter()
            .map(|l| {
                let row = l.row(0);
                [(0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b }) as u32]
            })
            .collect();
        let feed: Vec<(usize, &[u32])> = next
            .iter()
            .enumerate()
            .map(|(i, t)| (i, t.as_slice()))
            .collect();
        logits = engine
            .model
            .forward_batch(&mut engine.streamer, &feed, Want::Last)?;
        decoded += k;
    }
    let decode_secs = t1.elapsed().as_secs_f64();
    let io2 = engine.io();
    let prompt_total: usize = prompts.iter().map(Vec::len).sum();
    let per = |x: f64| if decoded > 0 { x / decoded as f64 } else { 0.0 };
    // The routed experts' bytes in the layer files (each file's tail, §6).
    let mut expert_file_bytes = 0u64;
    if engine.container.manifest.architecture.moe.is_some() {
        for l in &engine.container.layers {
            expert_file_bytes += l.len - strata_runner::stream::experts_start(l)?;
        }
    }
    let expert_per_token = per((io2.expert_bytes_read - io1.expert_bytes_read) as f64);
    let mut out = serde_json::json!({
        "batch": k,
        "prompt_tokens": prompt_total,
        "new_tokens": decoded,
        "prefill_tokens_per_s": prompt_total as f64 / prefill_secs,
        "decode_tokens_per_s": if decode_secs > 0.0 { decoded as f64 / decode_secs } else { 0.0 },
        "bytes_read_per_token": per((io2.bytes_read - io1.bytes_read) as f64),
        "prefill_bytes_read": io_prefill.bytes_read - io0.bytes_read,
        "expert_bytes_read_per_token": expert_per_token,
        "expert_bytes_in_layer_files": expert_file_bytes,
        "expert_bytes_read_share_per_token": if expert_file_bytes > 0 { expert_per_token / expert_file_bytes as f64 } else { 0.0 },
        "prefill_expert_bytes_read": io_prefill.expert_bytes_read - io0.expert_bytes_read,
        "expert_cache_bytes": engine.plan.expert_cache,
        "io_wait_fraction": if decode_secs > 0.0 { (io2.wait_secs - io1.wait_secs) / decode_secs } else { 0.0 },
        "decode_seconds": decode_secs,
        "decompress_seconds_per_token": per(io2.decode_secs - io1.decode_secs),
        "compressed": engine.plan.decode_unit > 0,
        "keep_compressed": engine.plan.keep_compressed,
        "peak_rss_bytes": peak_rss().unwrap_or(0),
        "io_backend": engine.streamer.backend_name(),
        "resident_bytes": engine.plan.resident_bytes,
        "streamed_bytes_per_pass": engine.plan.streamed_bytes,
        "threads": rayon::current_num_threads(),
    });
    if let (Some(kd), Some(secs)) = (a.verify_pass, verify) {
        let mut sorted = secs.clone();
        sorted.sort_by(f64::total_cmp);
        out["verify_pass_k"] = kd.into();
        out["verify_pass_seconds"] = sorted[sorted.len() / 2].into();
        out["verify_pass_seconds_each"] = secs.into();
    }
    println!("{out}");
    Ok(0)
}

/// `--verify-pass K`: with the prompt's `prompt_len` positions cached, times
/// [`VERIFY_PASSES`] passes that each feed K+1 synthetic tokens with
/// `Want::All` (the shape of a speculative pass verifying K drafted tokens),
/// truncating the cache back to the prompt after each. Returns the seconds of
/// each pass.
fn verify_passes(
    engine: &mut Engine,
    prompt_len: usize,
    kd: usize,
    vocab: usize,
) -> Result<Vec<f64>> {
    let ctx = engine.model.ctx();
    if prompt_len + kd + 1 > ctx {
        anyhow::bail!(
            "--verify-pass {kd} feeds {} tokens after the {prompt_len}-token prompt: past the context of {ctx} (raise --ctx)",
            kd + 1
        );
    }
    let feed: Vec<u32> = (0..=kd)
        .map(|i| (((prompt_len + i) * 7919 + 17) % vocab) as u32)
        .collect();
    let mut secs = Vec::with_capacity(VERIFY_PASSES);
    for _ in 0..VERIFY_PASSES {
        let t = Instant::now();
        let logits = engine.forward(&feed, Want::All)?;
        secs.push(t.elapsed().as_secs_f64());
        debug_assert_eq!(logits.rows(), kd + 1);
        engine.model.truncate(prompt_len);
    }
    Ok(secs)
}

/// `bench --draft`: greedy decoding of `new_tokens` tokens after `prompt`
/// with speculative decoding; one JSON line with the speculative counters.
fn bench_speculative(
    a: &BenchArgs,
    mut engine: Engine,
    mut spec: Speculator,
    prompt: &[u32],
) -> Result<i32> {
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: 0.0,
        ..SamplerConfig::default()
    });
    let ctx = engine.model.ctx();
    let io0 = engine.io();
    let t0 = Instant::now();
    let logits = engine.forward(prompt, Want::Last)?;
    let mut history = prompt.to_vec();
    let mut next = sampler.sample(logits.row(0), &history);
    let prefill_secs = t0.elapsed().as_secs_f64();
    let io1 = engine.io();
    let t1 = Instant::now();
    let mut decoded = 0usize;
    while decoded < a.new_tokens && history.len() + 1 < ctx {
        let left = a.new_tokens - decoded;
        let tokens = spec.step(&mut engine, &mut history, next, &mut sampler, left - 1)?;
        decoded += tokens.len();
        next = *tokens.last().expect("a pass yields a token");
    }
    let decode_secs = t1.elapsed().as_secs_f64();
    let io2 = engine.io();
    let per = |x: f64| if decoded > 0 { x / decoded as f64 } else { 0.0 };
    let stats = spec.stats();
    let draft_resident = spec
        .draft_engine()
        .map_or(0, |d| d.plan.resident_bytes + d.plan.kv_cache);
    let out = serde_json::json!({
        "batch": 1,
        "prompt_tokens": prompt.len(),
        "new_tokens": decoded,
        "prefill_tokens_per_s": prompt.len() as f64 / prefill_secs,
        "decode_tokens_per_s": if decode_secs > 0.0 { decoded as f64 / decode_secs } else { 0.0 },
        "bytes_read_per_token": per((io2.bytes_read - io1.bytes_read) as f64),
        "prefill_bytes_read": io1.bytes_read - io0.bytes_read,
        "io_wait_fraction": if decode_secs > 0.0 { (io2.wait_secs - io1.wait_secs) / decode_secs } else { 0.0 },
        "decode_seconds": decode_secs,
        "peak_rss_bytes": peak_rss().unwrap_or(0),
        "io_backend": engine.streamer.backend_name(),
        "resident_bytes": engine.plan.resident_bytes,
        "streamed_bytes_per_pass": engine.plan.streamed_bytes,
        "draft": a.draft.draft.as_ref().map(|d| d.display().to_string()),
        "draft_resident_bytes": draft_resident,
        "draft_max": a.draft.draft_max,
        "speculative": stats.to_json(),
        "threads": rayon::current_num_threads(),
    });
    println!("{out}");
    Ok(0)
}
