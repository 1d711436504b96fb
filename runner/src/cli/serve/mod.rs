//! `runner serve DIR`: an HTTP server speaking the OpenAI API
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/models`) and Ollama's
//! (`/api/chat`, `/api/generate`, `/api/tags`), with a chat page at `/`.
//!
//! One engine thread owns the model and decodes up to `--parallel` requests
//! together ([`strata_runner::batching`]): each streamed layer serves every
//! sequence in flight, and a new request joins at the next token. Requests
//! beyond that wait in a queue of `--queue` (503 when it is full). The HTTP
//! side (axum on a small tokio runtime) renders chat templates, tokenizes,
//! checks requests and turns the engine's text events into JSON, server-sent
//! events or NDJSON.

mod api;
mod routes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use strata_runner::batching::{self, Event, Request, Sink};
use strata_runner::engine::Engine;
use strata_runner::model::Want;
use strata_runner::plan::PlanSizes;
use strata_runner::sampling::SamplerConfig;
use strata_runner::stream::IoStats;
use strata_runner::text::chat::ChatTemplate;
use strata_runner::text::tokenizer::TextTokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::generate::{DraftArgs, SamplerArgs};
use crate::{Common, Dir};

/// Test hook: milliseconds to stay in the loading phase before the first
/// pass (so that a test can see `/health` answer 503).
const WARMUP_DELAY_ENV: &str = "STRATA_TEST_WARMUP_DELAY_MS";

/// Most sequences decoded together: the output head computes one row per
/// sequence, and up to this many rows take the fused kernels, whose result
/// for a row does not depend on the others.
const MAX_PARALLEL: usize = strata_runner::kernels::MAX_FUSED_ROWS;

/// Arguments of `serve`.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    dir: Dir,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the chosen one is logged).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests decoded together (1 to 64); each gets a KV cache of --ctx positions.
    #[arg(long, default_value_t = 4, value_name = "N")]
    parallel: usize,
    /// Requests waiting for a slot beyond --parallel; more get 503.
    #[arg(long, default_value_t = 64, value_name = "N")]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on the API (also STRATA_API_KEY).
    #[arg(long, env = "STRATA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model's name in the API (default: the container directory's name).
    #[arg(long)]
    model_name: Option<String>,
    #[command(flatten)]
    sampler: SamplerArgs,
    #[command(flatten)]
    draft: DraftArgs,
    #[command(flatten)]
    common: Common,
}

/// Where the model is on its way to serving.
#[derive(Debug, Clone)]
enum Phase {
    /// Opening, or reading every layer once (verifying checksums, filling
    /// the resident set): `bytes` of `total` read so far.
    Loading {
        stats: Option<Arc<IoStats>>,
        total: u64,
    },
    /// Serving, with this context per sequence.
    Ready { ctx: usize },
}

/// What the HTTP handlers share.
pub struct State {
    /// The model's name.
    name: String,
    /// Unix time the server started (the model's `created`).
    created: u64,
    /// Loading or ready.
    phase: Mutex<Phase>,
    /// Requests for the engine thread.
    requests: SyncSender<Request>,
    /// The tokenizer (a copy of the engine's).
    tokenizer: TextTokenizer,
    /// The chat template, when the model has one.
    template: Option<ChatTemplate>,
    /// Required bearer token.
    api_key: Option<String>,
    /// Sampling defaults.
    defaults: SamplerConfig,
    /// `--queue`.
    queue: usize,
    /// Requests handed to the engine and not yet ended (decoding or waiting).
    outstanding: Arc<AtomicUsize>,
    /// `--parallel` + `--queue`: more outstanding requests get 503.
    limit: usize,
    /// Request ids.
    next_id: AtomicU64,
    /// The container's manifest (for `/api/tags`).
    family: String,
    quantization: String,
    size: u64,
    digest: String,
}

/// The engine's answer to one request.
pub struct Answer {
    /// Text pieces, then `Done` or `Failed`.
    pub events: UnboundedReceiver<Event>,
}

/// Why a request was not handed to the engine.
pub enum Refusal {
    /// The model is still loading: 503.
    Loading(String),
    /// The queue is full: 503.
    Busy(String),
    /// Bad input: 400.
    Bad(String),
}

/// A [`Sink`] writing into a tokio channel (the HTTP response). It counts
/// as one outstanding request until the engine drops it (the request ended,
/// was refused, or its client left).
struct ChannelSink {
    tx: UnboundedSender<Event>,
    outstanding: Arc<AtomicUsize>,
}

impl Sink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.tx.send(event).is_ok()
    }
    fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}

impl Drop for ChannelSink {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl State {
    /// The context per sequence once the model is ready.
    fn ctx(&self) -> Result<usize, Refusal> {
        match &*self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
            Phase::Ready { ctx } => Ok(*ctx),
            Phase::Loading { .. } => Err(Refusal::Loading(format!(
                "the model {} is still loading; GET /health says when it is ready",
                self.name
            ))),
        }
    }

    /// A fresh request id.
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands `prompt` to the engine: the answer's events, or why not.
    fn submit(
        &self,
        prompt: Vec<u32>,
        params: api::GenParams,
        ctx: usize,
    ) -> Result<Answer, Refusal> {
        if prompt.is_empty() {
            return Err(Refusal::Bad("the prompt is empty".into()));
        }
        if prompt.len() >= ctx {
            return Err(Refusal::Bad(format!(
                "the prompt is {} tokens; the context holds {ctx} (start the server with a larger --ctx, or shorten the prompt)",
                prompt.len()
            )));
        }
        // As `runner generate`: tokens are sampled until the cache is full,
        // the last one sampled and not fed, so ctx − prompt + 1 of them.
        let room = ctx - prompt.len() + 1;
        // At most --parallel decoding and --queue waiting.
        if self.outstanding.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Busy(format!(
                "the server is busy: {} requests are waiting (--queue {}); try again later",
                self.queue, self.queue
            )));
        }
        let (tx, rx) = unbounded_channel();
        let req = Request {
            prompt,
            sampling: params.sampler,
            max_new_tokens: params.max_tokens.unwrap_or(room).min(room),
            stop: params.stop,
            ignore_eos: params.ignore_eos,
            sink: Box::new(ChannelSink {
                tx,
                outstanding: self.outstanding.clone(),
            }),
            received: Instant::now(),
        };
        match self.requests.try_send(req) {
            Ok(()) => Ok(Answer { events: rx }),
            Err(TrySendError::Full(_)) => Err(Refusal::Busy(format!(
                "the server is busy: {} requests are waiting (--queue {}); try again later",
                self.queue, self.queue
            ))),
            Err(TrySendError::Disconnected(_)) => {
                Err(Refusal::Busy("the engine has stopped".into()))
            }
        }
    }

    /// Loading progress as a fraction (1 when ready).
    fn progress(&self) -> Option<f64> {
        match &*self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
            Phase::Ready { .. } => None,
            Phase::Loading { stats, total } => Some(stats.as_ref().map_or(0.0, |s| {
                (s.bytes_read.load(Ordering::Relaxed) as f64 / (*total).max(1) as f64).min(1.0)
            })),
        }
    }
}

/// Runs `serve`.
pub fn run(mut a: ServeArgs) -> Result<i32> {
    a.common.setup()?;
    a.dir.resolve()?;
    a.draft.resolve(&a.dir.remote)?;
    let dir = a.dir.dir.clone();
    if a.parallel == 0 || a.parallel > MAX_PARALLEL {
        anyhow::bail!(
            "--parallel {}: between 1 and {MAX_PARALLEL} sequences (beyond that the output head's product would take another path and batched answers could differ from single ones)",
            a.parallel
        );
    }
    let tokenizer = TextTokenizer::load(&dir)?.with_context(|| {
        format!(
            "{} has no tokenizer.json: the server needs one to read and write text",
            dir.display()
        )
    })?;
    let template = ChatTemplate::load(&dir)?;
    if template.is_none() {
        log::warn!(
            "{} has no chat template: the chat endpoints will refuse requests",
            dir.display()
        );
    }
    let manifest_path = dir.join("manifest.json");
    let manifest = std::fs::read(&manifest_path)
        .with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let m = strata_format::manifest::Manifest::from_json(&manifest, &manifest_path)?;
    let name = a.model_name.clone().unwrap_or_else(|| model_name(&dir));
    // The engine takes requests at token boundaries; `outstanding` bounds
    // what waits, so the channel never fills before the 503.
    let limit = a.queue.saturating_add(a.parallel);
    let (tx, rx) = sync_channel(limit);
    let state = Arc::new(State {
        name,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        phase: Mutex::new(Phase::Loading {
            stats: None,
            total: 0,
        }),
        requests: tx,
        tokenizer,
        template,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        defaults: a.sampler.config(),
        queue: a.queue,
        outstanding: Arc::new(AtomicUsize::new(0)),
        limit,
        next_id: AtomicU64::new(1),
        family: m.architecture.family.clone(),
        quantization: format!("{:?}", m.quantization.weights).to_uppercase(),
        size: m.files.iter().map(|f| f.bytes).sum(),
        digest: strata_format::checksum::sha256_hex(&manifest),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let addr = format!("{}:{}", a.host, a.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&addr))
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local: SocketAddr = listener.local_addr()?;
    log::info!(
        "listening on http://{local}/ (OpenAI API under /v1, Ollama API under /api, chat page at /)"
    );

    // The engine thread: open, read every layer once, then serve.
    let mut opts = a.common.engine_options();
    opts.sequences = a.parallel;
    let draft = a.draft.clone();
    if draft.draft.is_some() && a.parallel > 1 {
        log::info!("--draft: one request at a time (each pass verifies one sequence's drafts)");
        opts.sequences = 1;
    }
    let engine_state = state.clone();
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || -> Result<()> {
            let (mut engine, spec) = draft.open(&dir, &opts)?;
            warm_up(&mut engine, &engine_state)?;
            *engine_state.phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Ready {
                ctx: engine.model.ctx(),
            };
            log::info!(
                "model {} ready: {} sequences of up to {} tokens",
                engine_state.name,
                engine.model.batch_size(),
                engine.model.ctx()
            );
            match spec {
                Some(mut spec) => batching::serve_speculative(&mut engine, &mut spec, &rx)?,
                None => batching::serve(&mut engine, &rx)?,
            }
            Ok(())
        })
        .context("cannot start the engine thread")?;

    let app = routes::router(state.clone());
    let server = runtime.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    });
    // The engine thread ends only on an error (the request channel lives in
    // `state`); the server ends on Ctrl-C.
    loop {
        if engine.is_finished() {
            return match engine.join() {
                Ok(Ok(())) => Ok(0),
                Ok(Err(e)) => Err(e.context("the engine stopped")),
                Err(_) => anyhow::bail!("the engine thread panicked"),
            };
        }
        if server.is_finished() {
            runtime
                .block_on(server)
                .context("the HTTP server task failed")?
                .context("the HTTP server failed")?;
            log::info!("stopped");
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Reads every layer once (checksums verified, resident layers loaded) with a
/// one-token pass, so that the first request does not pay for it and
/// `/health` can show progress; then forgets the pass.
fn warm_up(engine: &mut Engine, state: &State) -> Result<()> {
    // The pass reads every layer and the head (of the embeddings, only the
    // rows of its token).
    let total = PlanSizes::of_container(&engine.container)?.total();
    *state.phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::Loading {
        stats: Some(engine.streamer.stats().clone()),
        total,
    };
    // For tests of /health while loading: hold the loading phase this long.
    if let Some(ms) = std::env::var(WARMUP_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let first = engine
        .container
        .manifest
        .tokenizer
        .bos_token_id
        .unwrap_or(0);
    let started = Instant::now();
    engine
        .model
        .forward_batch(&mut engine.streamer, &[(0, &[first])], Want::Last)
        .context("the first pass over the model failed")?;
    engine.model.reset_sequence(0);
    log::info!(
        "read the model once in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The default model name: the container directory's name (the URL's last
/// part for a remote container).
fn model_name(dir: &Path) -> String {
    if let Some(r) = strata_runner::remote::lookup(dir) {
        if let Some(last) = r.url().rsplit('/').next().filter(|l| !l.is_empty()) {
            return last.to_string();
        }
    }
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
}
