//! Continuous batching: several generation requests decoded together, each
//! forward pass (so each streamed layer read) serving every sequence in
//! flight. A request joins at the next token boundary, its whole prompt fed in
//! the pass it joins; a finished request, or one whose client went away, frees
//! its slot for the next one waiting.
//!
//! Each sequence is computed exactly as it would be alone (the model keeps a
//! KV cache per slot, and [`crate::model::linear::linear_groups`] takes each
//! sequence's rows the way it would alone), so at temperature 0 a request's
//! text does not depend on what it was batched with. (For mixture-of-experts
//! models the routed experts' products are shared across sequences and may
//! round differently.)

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use crate::engine::Engine;
use crate::error::{Result, RunnerError};
use crate::model::Want;
use crate::sampling::{Sampler, SamplerConfig};
use crate::speculative::Speculator;
use crate::text::stream::TextStream;

/// Why a request's generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens`, or the context is full.
    Length,
}

impl FinishReason {
    /// The OpenAI API's name: `stop` or `length`.
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// How a request ended, with its counts and times.
#[derive(Debug, Clone, Copy)]
pub struct Finish {
    /// Why it ended.
    pub reason: FinishReason,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (an end-of-sequence token not counted).
    pub completion_tokens: usize,
    /// Seconds from joining the batch to the first token.
    pub prompt_secs: f64,
    /// Seconds from joining the batch to the end.
    pub total_secs: f64,
    /// Seconds the request waited for a slot.
    pub queued_secs: f64,
}

/// What a request's [`Sink`] receives, in order: text pieces, then one
/// `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum Event {
    /// The next piece of text (never a partial UTF-8 character, never the
    /// start of a stop string that may still complete).
    Text(String),
    /// Generation ended.
    Done(Finish),
    /// The forward pass failed (an I/O or data error); the request is dropped.
    Failed(String),
}

/// Where a request's events go (an HTTP response being written).
pub trait Sink: Send {
    /// Delivers `event`; false when the receiver is gone (the client
    /// disconnected), which ends the request and frees its slot.
    fn send(&mut self, event: Event) -> bool;
    /// Whether the receiver is still there (checked before each pass).
    fn is_open(&self) -> bool;
}

/// One generation request.
pub struct Request {
    /// The prompt's token ids (at least one, fewer than the context).
    pub prompt: Vec<u32>,
    /// Sampling settings (temperature 0: greedy).
    pub sampling: SamplerConfig,
    /// Most tokens to generate (at least 1).
    pub max_new_tokens: usize,
    /// Stop strings: generation ends before the first one.
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Where the text goes.
    pub sink: Box<dyn Sink>,
    /// When the request was made (for the time it queued).
    pub received: Instant,
}

/// A request decoding in one slot of the batch.
struct Active {
    req: Request,
    sampler: Sampler,
    stream: TextStream,
    /// Prompt and generated tokens, oldest first (the sampler's history).
    history: Vec<u32>,
    /// The token to feed next pass (`None`: the prompt has not been fed).
    next: Option<u32>,
    generated: usize,
    joined: Instant,
    first_token_secs: f64,
}

/// Serves `requests` on `engine` until the channel closes and every request
/// in flight has finished, decoding up to the engine's batch size
/// ([`crate::model::Model::batch_size`]) together. A request whose prompt does
/// not fit the context is refused through its sink. Errors of a forward pass
/// fail the requests in flight (they are told) and serving goes on.
pub fn serve(engine: &mut Engine, requests: &Receiver<Request>) -> Result<()> {
    let slots_n = engine.model.batch_size();
    let eos = engine.eos_ids();
    let mut slots: Vec<Option<Active>> = (0..slots_n).map(|_| None).collect();
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut closed = false;
    loop {
        // Take every request that arrived (waiting for one when idle), forget
        // those whose client left while waiting, and fill the free slots.
        if !closed && waiting.is_empty() && slots.iter().all(Option::is_none) {
            match requests.recv() {
                Ok(r) => waiting.push_back(r),
                Err(_) => closed = true,
            }
        }
        while !closed {
            match requests.try_recv() {
                Ok(r) => waiting.push_back(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closed = true,
            }
        }
        waiting.retain(|r| r.sink.is_open());
        for (slot, cell) in slots.iter_mut().enumerate() {
            if cell.is_some() {
                continue;
            }
            while let Some(req) = waiting.pop_front() {
                if let Some(a) = admit(engine, req) {
                    engine.model.reset_sequence(slot);
                    *cell = Some(a);
                    break;
                }
            }
        }
        // Drop requests whose client is gone.
        for s in slots.iter_mut() {
            if s.as_ref().is_some_and(|a| !a.req.sink.is_open()) {
                *s = None;
            }
        }
        if slots.iter().all(Option::is_none) {
            if closed && waiting.is_empty() {
                return Ok(());
            }
            continue;
        }
        let fed: Vec<(usize, Vec<u32>)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref().map(|a| match a.next {
                    Some(id) => (i, vec![id]),
                    None => (i, a.req.prompt.clone()),
                })
            })
            .collect();
        let batch: Vec<(usize, &[u32])> = fed.iter().map(|(i, ids)| (*i, ids.as_slice())).collect();
        let logits = match engine
            .model
            .forward_batch(&mut engine.streamer, &batch, Want::Last)
        {
            Ok(l) => l,
            Err(err) => {
                log::error!("forward pass failed: {err}");
                for (slot, _) in &fed {
                    if let Some(mut a) = slots[*slot].take() {
                        a.req.sink.send(Event::Failed(err.to_string()));
                    }
                }
                continue;
            }
        };
        for ((slot, ids), l) in fed.iter().zip(&logits) {
            let Some(a) = slots[*slot].as_mut() else {
                continue;
            };
            a.history.extend_from_slice(ids);
            let done = step(engine, a, *slot, l.row(0), &eos);
            if done {
                slots[*slot] = None;
            }
        }
    }
}

/// Checks a request and makes its decoding state; refuses (through its sink)
/// a request with no prompt, no room to generate, or a prompt past the context.
fn admit(engine: &Engine, req: Request) -> Option<Active> {
    let ctx = engine.model.ctx();
    let refuse = |mut req: Request, why: String| {
        req.sink.send(Event::Failed(why));
        None
    };
    if req.prompt.is_empty() {
        return refuse(req, "the prompt has no tokens".into());
    }
    if req.prompt.len() >= ctx {
        let n = req.prompt.len();
        return refuse(
            req,
            format!("the prompt has {n} tokens; the context holds {ctx}, so it must be shorter"),
        );
    }
    let vocab = engine.model.arch().vocab_size;
    if let Some(id) = req.prompt.iter().find(|&&id| u64::from(id) >= vocab) {
        let id = *id;
        return refuse(
            req,
            format!("the prompt holds token id {id}, outside the model's vocabulary of {vocab}"),
        );
    }
    if req.max_new_tokens == 0 {
        return refuse(req, "max_new_tokens must be at least 1".into());
    }
    Some(Active {
        sampler: Sampler::new(req.sampling.clone()),
        stream: TextStream::new(req.stop.clone()),
        history: Vec::with_capacity(req.prompt.len() + req.max_new_tokens.min(ctx)),
        next: None,
        generated: 0,
        joined: Instant::now(),
        first_token_secs: 0.0,
        req,
    })
}

/// Samples the next token of `a` from `logits` and emits it ([`emit`]);
/// returns whether the request ended.
fn step(engine: &Engine, a: &mut Active, slot: usize, logits: &[f32], eos: &[u32]) -> bool {
    let id = a.sampler.sample(logits, &a.history);
    if a.next.is_none() {
        a.first_token_secs = a.joined.elapsed().as_secs_f64();
    }
    a.next = Some(id);
    emit(engine, a, id, engine.model.position_of(slot), eos)
}

/// Sends the text of token `id` (the sequence's cache holding `cached`
/// positions, `id` not fed); returns whether the request ended (the end is
/// sent). Follows the single-sequence loop of `runner generate` exactly: an
/// end-of-sequence token ends it unprinted; a stop string, `max_new_tokens`
/// or a full context end it after the token.
fn emit(engine: &Engine, a: &mut Active, id: u32, cached: usize, eos: &[u32]) -> bool {
    if !a.req.ignore_eos && eos.contains(&id) {
        return finish(engine, a, FinishReason::Stop);
    }
    a.generated += 1;
    let Some(tok) = engine.tokenizer.as_ref() else {
        a.req
            .sink
            .send(Event::Failed(no_tokenizer(engine).to_string()));
        return true;
    };
    let (text, stop) = match a.stream.push(tok, id) {
        Ok(r) => r,
        Err(err) => {
            a.req.sink.send(Event::Failed(err.to_string()));
            return true;
        }
    };
    if !text.is_empty() && !a.req.sink.send(Event::Text(text)) {
        return true;
    }
    if stop {
        return finish(engine, a, FinishReason::Stop);
    }
    if a.generated >= a.req.max_new_tokens || cached >= engine.model.ctx() {
        return finish(engine, a, FinishReason::Length);
    }
    false
}

/// Flushes the text held back and sends the end; returns true.
fn finish(engine: &Engine, a: &mut Active, reason: FinishReason) -> bool {
    let tail = engine
        .tokenizer
        .as_ref()
        .map(|t| a.stream.finish(t))
        .transpose();
    match tail {
        Ok(tail) => {
            if let Some(tail) = tail.filter(|t| !t.is_empty()) {
                a.req.sink.send(Event::Text(tail));
            }
            a.req.sink.send(Event::Done(Finish {
                reason,
                prompt_tokens: a.req.prompt.len(),
                completion_tokens: a.generated,
                prompt_secs: a.first_token_secs,
                total_secs: a.joined.elapsed().as_secs_f64(),
                queued_secs: a.joined.duration_since(a.req.received).as_secs_f64(),
            }));
        }
        Err(err) => {
            a.req.sink.send(Event::Failed(err.to_string()));
        }
    }
    true
}

/// [`serve`] with speculative decoding: one request at a time (the engine's
/// first sequence), each target pass verifying what `spec` drafts, exactly
/// as `runner generate --draft` does: greedy text is plain decoding's, and
/// sampled text keeps the target's distribution.
pub fn serve_speculative(
    engine: &mut Engine,
    spec: &mut Speculator,
    requests: &Receiver<Request>,
) -> Result<()> {
    let eos = engine.eos_ids();
    while let Ok(req) = requests.recv() {
        let Some(mut a) = admit(engine, req) else {
            continue;
        };
        engine.model.truncate(0);
        if let Err(err) = speculate(engine, spec, &mut a, &eos) {
            log::error!("forward pass failed: {err}");
            a.req.sink.send(Event::Failed(err.to_string()));
        }
    }
    Ok(())
}

/// Generates `a` with `spec` (see [`serve_speculative`]).
fn speculate(
    engine: &mut Engine,
    spec: &mut Speculator,
    a: &mut Active,
    eos: &[u32],
) -> Result<()> {
    let logits = engine.forward(&a.req.prompt, Want::Last)?;
    a.history.extend_from_slice(&a.req.prompt);
    let mut next = a.sampler.sample(logits.row(0), &a.history);
    a.first_token_secs = a.joined.elapsed().as_secs_f64();
    loop {
        if emit(engine, a, next, a.history.len(), eos) || !a.req.sink.is_open() {
            return Ok(());
        }
        let base = a.history.len();
        let limit = a.req.max_new_tokens.saturating_sub(a.generated);
        let tokens = spec.step(
            engine,
            &mut a.history,
            next,
            &mut a.sampler,
            limit.saturating_sub(1),
        )?;
        let Some((last, accepted)) = tokens.split_last() else {
            return Err(RunnerError::Invalid(
                "a verification pass gave no token".into(),
            ));
        };
        for (j, &id) in accepted.iter().enumerate() {
            // Before `id` the cache holds the history up to it.
            if emit(engine, a, id, base + 1 + j, eos) {
                return Ok(());
            }
        }
        next = *last;
    }
}

/// The error for a container without a tokenizer.
fn no_tokenizer(engine: &Engine) -> RunnerError {
    RunnerError::Invalid(format!(
        "{} has no tokenizer.json: it cannot turn tokens into text",
        engine.container.dir.display()
    ))
}
