//! `runner generate DIR --prompt TEXT [...]` and the generation loop shared
//! with `chat`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use strata_runner::engine::{Engine, EngineOptions};
use strata_runner::model::Want;
use strata_runner::sampling::{Sampler, SamplerConfig};
use strata_runner::speculative::{Proposer, SpecStats, Speculator};
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
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// The sampler's settings (shared by `generate`, `chat` and `serve`, where
/// they are the defaults of requests that do not set them).
#[derive(Args, Clone)]
pub struct SamplerArgs {
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
}

impl SamplerArgs {
    /// The sampler settings these options describe.
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplerConfig::default()
        }
    }
}

impl SamplingArgs {
    /// The sampler these options describe.
    pub fn sampler(&self) -> Sampler {
        Sampler::new(self.sampler.config())
    }
}

/// Speculative decoding options shared by `generate`, `chat` and `bench`.
#[derive(Args, Clone, Default)]
pub struct DraftArgs {
    /// Speculative decoding: a draft container of the target's vocabulary,
    /// kept resident, proposes tokens that one pass of the target verifies
    /// (greedy output is unchanged; sampled output keeps the target's
    /// distribution). `ngram` drafts from earlier text instead (prompt
    /// lookup; name a directory called ngram as ./ngram).
    #[arg(long, value_name = "DIR|ngram")]
    pub draft: Option<PathBuf>,
    /// Most tokens drafted per target pass (the length adapts below it to
    /// the measured acceptance and timings); at most 63.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub draft_max: usize,
    /// Fewest tokens drafted per target pass (while the context allows),
    /// even where the measurements say drafting does not pay.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub draft_min: usize,
}

impl DraftArgs {
    /// Attaches a draft given by URL (see `RemoteArgs::resolve`).
    pub fn resolve(&mut self, remote: &crate::RemoteArgs) -> Result<()> {
        if let Some(d) = &self.draft {
            if d.as_os_str() != "ngram" {
                self.draft = Some(remote.resolve(d)?);
            }
        }
        Ok(())
    }

    /// Opens the target `dir`, and the draft when `--draft` names one: the
    /// engine and, with `--draft`, the speculator.
    pub fn open(&self, dir: &Path, o: &EngineOptions) -> Result<(Engine, Option<Speculator>)> {
        match &self.draft {
            None => Ok((Engine::open(dir, o)?, None)),
            Some(d) if d.as_os_str() == "ngram" => Ok((
                Engine::open(dir, o)?,
                Some(Speculator::new(
                    Proposer::Ngram,
                    self.draft_min,
                    self.draft_max,
                )),
            )),
            Some(d) => {
                let (target, draft) = Engine::open_with_draft(dir, d, o)?;
                Ok((
                    target,
                    Some(Speculator::new(
                        Proposer::Model(Box::new(draft)),
                        self.draft_min,
                        self.draft_max,
                    )),
                ))
            }
        }
    }
}

/// Arguments of `generate`.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    dir: Dir,
    /// The prompt.
    #[arg(long, required_unless_present = "prompts_file")]
    prompt: Option<String>,
    /// Run every non-empty line of this file as a prompt, all as one batch (each
    /// streamed layer serves every sequence); prints one JSON line per prompt.
    #[arg(long, conflicts_with = "prompt")]
    prompts_file: Option<PathBuf>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    draft: DraftArgs,
    #[command(flatten)]
    common: Common,
}

/// Statistics of one generation.
pub struct GenStats {
    /// Tokens fed before the first sampled one.
    pub prompt_tokens: usize,
    /// Tokens sampled.
    pub new_tokens: usize,
    /// Tokens sampled by the first step (one per sequence), not counted in the decode rate.
    pub first_tokens: usize,
    /// Seconds until the first token was sampled.
    pub first_token_secs: f64,
    /// Seconds of the decode phase (after the first token).
    pub decode_secs: f64,
    /// Bytes read from the container during this generation.
    pub bytes_read: u64,
    /// Seconds compute waited on the disk.
    pub io_wait_secs: f64,
    /// Speculative decoding's counters, when it was used.
    pub spec: Option<SpecStats>,
}

impl GenStats {
    /// Prints the statistics on stderr.
    pub fn report(&self) {
        let tps = if self.decode_secs > 0.0 {
            self.new_tokens.saturating_sub(self.first_tokens) as f64 / self.decode_secs
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
        if let Some(spec) = &self.spec {
            eprintln!("[{}]", spec.summary());
        }
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
    spec: Option<&mut Speculator>,
) -> Result<(Vec<u32>, GenStats)> {
    if let Some(spec) = spec {
        return generate_speculative(engine, new_ids, s, history, spec);
    }
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
        first_tokens: 1,
        first_token_secs,
        decode_secs: started.elapsed().as_secs_f64() - first_token_secs,
        bytes_read: io1.bytes_read - io0.bytes_read,
        io_wait_secs: io1.wait_secs - io0.wait_secs,
        spec: None,
    };
    Ok((sampled, stats))
}

/// Where the emitted text goes, and when to stop.
struct Emitter {
    eos: Vec<u32>,
    stream: TextStream,
    max_new_tokens: usize,
    sampled: Vec<u32>,
}

impl Emitter {
    /// Emits `id` (unless it ends the sequence) and says whether generation
    /// ends with it.
    fn emit(&mut self, engine: &Engine, id: u32, out: &mut impl Write) -> Result<bool> {
        if self.eos.contains(&id) {
            return Ok(true);
        }
        self.sampled.push(id);
        let (text, stop) = self.stream.push(super::tokenizer(engine)?, id)?;
        out.write_all(text.as_bytes())?;
        out.flush()?;
        Ok(stop || self.sampled.len() >= self.max_new_tokens)
    }
}

/// [`generate`] with speculative decoding: each pass of the target verifies
/// the tokens `spec` drafts. Leaves the target's cache and `history` as plain
/// generation does: every emitted token but the last fed.
fn generate_speculative(
    engine: &mut Engine,
    new_ids: &[u32],
    s: &SamplingArgs,
    history: &mut Vec<u32>,
    spec: &mut Speculator,
) -> Result<(Vec<u32>, GenStats)> {
    let mut emitter = Emitter {
        eos: if s.ignore_eos {
            Vec::new()
        } else {
            engine.eos_ids()
        },
        stream: TextStream::new(s.stop.clone()),
        max_new_tokens: s.max_new_tokens,
        sampled: Vec::new(),
    };
    let mut sampler = s.sampler();
    spec.reset_stats();
    let io0 = engine.io();
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    let logits = engine.forward(new_ids, Want::Last)?;
    history.extend_from_slice(new_ids);
    let mut next = sampler.sample(logits.row(0), history);
    let first_token_secs = started.elapsed().as_secs_f64();
    if s.max_new_tokens > 0 {
        'generation: loop {
            if emitter.emit(engine, next, &mut out)? || history.len() >= engine.model.ctx() {
                break;
            }
            let base = history.len();
            let limit = s.max_new_tokens - emitter.sampled.len();
            let tokens = spec.step(engine, history, next, &mut sampler, limit.saturating_sub(1))?;
            let (last, accepted) = tokens.split_last().expect("a pass yields a token");
            for (j, &id) in accepted.iter().enumerate() {
                if emitter.emit(engine, id, &mut out)? {
                    // `id` is the last token out: the cache keeps what precedes it.
                    history.truncate(base + 1 + j);
                    engine.model.truncate(history.len());
                    break 'generation;
                }
            }
            next = *last;
        }
    }
    let tail = emitter.stream.finish(super::tokenizer(engine)?)?;
    out.write_all(tail.as_bytes())?;
    out.flush()?;
    let io1 = engine.io();
    let stats = GenStats {
        prompt_tokens: new_ids.len(),
        new_tokens: emitter.sampled.len(),
        first_tokens: 1,
        first_token_secs,
        decode_secs: started.elapsed().as_secs_f64() - first_token_secs,
        bytes_read: io1.bytes_read - io0.bytes_read,
        io_wait_secs: io1.wait_secs - io0.wait_secs,
        spec: Some(spec.stats()),
    };
    Ok((emitter.sampled, stats))
}

/// Tokenizes one prompt, through the chat template when `--chat`.
fn prompt_ids(engine: &Engine, a: &GenerateArgs, prompt: &str) -> Result<Vec<u32>> {
    let tok = super::tokenizer(engine)?;
    if !a.chat {
        return Ok(tok.encode(prompt, true)?);
    }
    let template = ChatTemplate::load(&a.dir.dir)?
        .with_context(|| format!("{} has no chat template", a.dir.dir.display()))?;
    let mut messages = Vec::new();
    if let Some(sys) = &a.system {
        messages.push(Message::new("system", sys.as_str()));
    }
    messages.push(Message::new("user", prompt));
    let text = template.render(&messages, true)?;
    Ok(tok.encode(&text, false)?)
}

/// Generates for every prompt at once: each forward pass feeds one token of
/// every unfinished sequence, so each layer is read once per step for all.
fn generate_batch(
    engine: &mut Engine,
    prompts: &[Vec<u32>],
    s: &SamplingArgs,
) -> Result<(Vec<String>, GenStats)> {
    let k = prompts.len();
    let eos = if s.ignore_eos {
        Vec::new()
    } else {
        engine.eos_ids()
    };
    engine.model.set_batch(k);
    let mut samplers: Vec<_> = (0..k).map(|_| s.sampler()).collect();
    let mut streams: Vec<TextStream> = (0..k).map(|_| TextStream::new(s.stop.clone())).collect();
    let mut texts = vec![String::new(); k];
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let io0 = engine.io();
    let started = Instant::now();
    let batch: Vec<(usize, &[u32])> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (i, p.as_slice()))
        .collect();
    let mut logits = engine
        .model
        .forward_batch(&mut engine.streamer, &batch, Want::Last)?;
    let mut active: Vec<usize> = (0..k).collect();
    let mut first_token_secs = 0.0;
    let mut new_tokens = 0;
    for step in 0..s.max_new_tokens {
        let mut next = Vec::new();
        for (j, &i) in active.iter().enumerate() {
            let id = samplers[i].sample(logits[j].row(0), &history[i]);
            if eos.contains(&id) {
                continue;
            }
            new_tokens += 1;
            let (text, stop) = streams[i].push(super::tokenizer(engine)?, id)?;
            texts[i].push_str(&text);
            history[i].push(id);
            if !stop && history[i].len() < engine.model.ctx() {
                next.push((i, [id]));
            }
        }
        if step == 0 {
            first_token_secs = started.elapsed().as_secs_f64();
        }
        if next.is_empty() || step + 1 == s.max_new_tokens {
            break;
        }
        let feed: Vec<(usize, &[u32])> = next.iter().map(|(i, id)| (*i, id.as_slice())).collect();
        logits = engine
            .model
            .forward_batch(&mut engine.streamer, &feed, Want::Last)?;
        active = next.iter().map(|(i, _)| *i).collect();
    }
    for (t, st) in texts.iter_mut().zip(&mut streams) {
        t.push_str(&st.finish(super::tokenizer(engine)?)?);
    }
    let io1 = engine.io();
    let stats = GenStats {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        new_tokens,
        first_tokens: k,
        first_token_secs,
        decode_secs: started.elapsed().as_secs_f64() - first_token_secs,
        bytes_read: io1.bytes_read - io0.bytes_read,
        io_wait_secs: io1.wait_secs - io0.wait_secs,
        spec: None,
    };
    Ok((texts, stats))
}

/// Runs `generate`.
pub fn run(mut a: GenerateArgs) -> Result<i32> {
    a.common.setup()?;
    a.dir.resolve()?;
    a.draft.resolve(&a.dir.remote)?;
    if a.prompts_file.is_some() && a.draft.draft.is_some() {
        anyhow::bail!("--draft works on one prompt at a time, not with --prompts-file");
    }
    let (mut engine, mut spec) = a.draft.open(&a.dir.dir, &a.common.engine_options())?;
    if let Some(file) = &a.prompts_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let prompts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if prompts.is_empty() {
            anyhow::bail!("{} holds no prompts (one per line)", file.display());
        }
        let ids = prompts
            .iter()
            .map(|p| prompt_ids(&engine, &a, p))
            .collect::<Result<Vec<_>>>()?;
        let (texts, stats) = generate_batch(&mut engine, &ids, &a.sampling)?;
        for (i, (p, t)) in prompts.iter().zip(&texts).enumerate() {
            println!(
                "{}",
                serde_json::json!({"index": i, "prompt": p, "text": t})
            );
        }
        if !a.common.quiet {
            stats.report();
        }
        return Ok(0);
    }
    let prompt = a.prompt.as_deref().unwrap_or_default();
    let ids = prompt_ids(&engine, &a, prompt)?;
    let mut history = Vec::new();
    let (_, stats) = generate(&mut engine, &ids, &a.sampling, &mut history, spec.as_mut())?;
    println!();
    if !a.common.quiet {
        stats.report();
    }
    Ok(0)
}
