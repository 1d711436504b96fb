//! `runner generate DIR --prompt TEXT [...]` and the generation loop shared
//! with `chat`.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use strata_runner::engine::Engine;
use strata_runner::model::Want;
use strata_runner::sampling::{Sampler, SamplerConfig};
use strata_runner::text::chat::{ChatTemplate, Message};
use strata_runner::text::stream::TextStream;
use strata_runner::units::human;

use crate::{Common, Dir};

/// Sampling options shared by `generate` and `chat`.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = SamplerConfig::default().temperature)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = all).
    #[arg(long, default_value_t = SamplerConfig::default().top_k)]
    pub top_k: usize,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = SamplerConfig::default().top_p)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the top token's probability.
    #[arg(long, default_value_t = SamplerConfig::default().min_p)]
    pub min_p: f32,
    /// Penalty for tokens seen in the last 64 (1 = off).
    #[arg(long, default_value_t = SamplerConfig::default().repeat_penalty)]
    pub repeat_penalty: f32,
    /// Random seed.
    #[arg(long, default_value_t = SamplerConfig::default().seed)]
    pub seed: u64,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// The sampler these options describe.
    pub fn sampler(&self) -> Sampler {
        Sampler::new(SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplerConfig::default()
        })
    }
}

/// Arguments of `generate`.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    dir: Dir,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    common: Common,
}

/// Statistics of one generation.
pub struct GenStats {
    /// Tokens fed before the first sampled one.
    pub prompt_tokens: usize,
    /// Tokens sampled.
    pub new_tokens: usize,
    /// Seconds until the first token was sampled.
    pub first_token_secs: f64,
    /// Seconds of the decode phase (after the first token).
    pub decode_secs: f64,
    /// Bytes read from the container during this generation.
    pub bytes_read: u64,
    /// Seconds compute waited on the disk.
    pub io_wait_secs: f64,
}

impl GenStats {
    /// Prints the statistics on stderr.
    pub fn report(&self) {
        let tps = if self.decode_secs > 0.0 {
            self.new_tokens.saturating_sub(1) as f64 / self.decode_secs
        } else {
            0.0
        };
        eprintln!(
            "\n[prompt tokens: {}, time to first token: {:.2} s, generated: {}, {:.2} tokens/s, read: {}, waiting on I/O: {:.2} s]",
            self.prompt_tokens,
            self.first_token_secs,
            self.new_tokens,
            tps,
            human(self.bytes_read),
            self.io_wait_secs
        );
    }
}

/// Feeds `new_ids` after the cached positions and samples until an EOS id, a
/// stop string or `max_new_tokens`, writing text to stdout as it comes.
/// Returns the sampled ids (without a final EOS) and the statistics.
pub fn generate(
    engine: &mut Engine,
    new_ids: &[u32],
    s: &SamplingArgs,
    history: &mut Vec<u32>,
) -> Result<(Vec<u32>, GenStats)> {
    let eos = if s.ignore_eos {
        Vec::new()
    } else {
        engine.eos_ids()
    };
    let mut sampler = s.sampler();
    let mut stream = TextStream::new(s.stop.clone());
    let io0 = engine.io();
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut logits = engine.forward(new_ids, Want::Last)?;
    history.extend_from_slice(new_ids);
    let mut first_token_secs = 0.0;
    let mut sampled = Vec::new();
    for step in 0..s.max_new_tokens {
        let id = sampler.sample(logits.row(0), history);
        if step == 0 {
            first_token_secs = started.elapsed().as_secs_f64();
        }
        if eos.contains(&id) {
            break;
        }
        sampled.push(id);
        let tok = super::tokenizer(engine)?;
        let (text, stop) = stream.push(tok, id)?;
        out.write_all(text.as_bytes())?;
        out.flush()?;
        if stop || step + 1 == s.max_new_tokens || engine.model.position() >= engine.model.ctx() {
            break;
        }
        logits = engine.forward(&[id], Want::Last)?;
        history.push(id);
    }
    let tail = stream.finish(super::tokenizer(engine)?)?;
    out.write_all(tail.as_bytes())?;
    out.flush()?;
    let io1 = engine.io();
    let stats = GenStats {
        prompt_tokens: new_ids.len(),
        new_tokens: sampled.len(),
        first_token_secs,
        decode_secs: started.elapsed().as_secs_f64() - first_token_secs,
        bytes_read: io1.bytes_read - io0.bytes_read,
        io_wait_secs: io1.wait_secs - io0.wait_secs,
    };
    Ok((sampled, stats))
}

/// Runs `generate`.
pub fn run(a: GenerateArgs) -> Result<i32> {
    a.common.setup()?;
    let mut engine = Engine::open(&a.dir.dir, &a.common.engine_options())?;
    let tok = super::tokenizer(&engine)?;
    let ids = if a.chat {
        let template = ChatTemplate::load(&a.dir.dir)?
            .with_context(|| format!("{} has no chat template", a.dir.dir.display()))?;
        let mut messages = Vec::new();
        if let Some(sys) = &a.system {
            messages.push(Message::new("system", sys.as_str()));
        }
        messages.push(Message::new("user", a.prompt.as_str()));
        let text = template.render(&messages, true)?;
        tok.encode(&text, false)?
    } else {
        tok.encode(&a.prompt, true)?
    };
    let mut history = Vec::new();
    let (_, stats) = generate(&mut engine, &ids, &a.sampling, &mut history)?;
    println!();
    if !a.common.quiet {
        stats.report();
    }
    Ok(0)
}
