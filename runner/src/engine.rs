//! The engine: an opened container, its memory plan, the streamer, the model
//! and (when the container has one) the tokenizer, set up from the runner's
//! common options.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::container::Container;
use crate::error::Result;
use crate::io::{Backend, IoChoice};
use crate::model::{Logits, Model, Want};
use crate::plan::{self, MemoryPlan, PlanRequest, PlanSizes};
use crate::stream::Streamer;
use crate::text::tokenizer::TextTokenizer;

/// Default context when the model allows more.
pub const DEFAULT_CTX: usize = 4096;

/// The options every command shares.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// `--max-memory` (`Some(0)`: keep nothing resident).
    pub max_memory: Option<u64>,
    /// `--io`.
    pub io: IoChoice,
    /// `--prefetch`.
    pub prefetch: usize,
    /// `--no-verify` negated.
    pub verify: bool,
    /// `--ctx` (default: min(max_position_embeddings, 4096)).
    pub ctx: Option<usize>,
    /// `--keep-compressed` (`None`: auto).
    pub keep_compressed: Option<bool>,
}

/// I/O counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct IoSnapshot {
    /// Bytes read so far.
    pub bytes_read: u64,
    /// Seconds compute waited on reads so far.
    pub wait_secs: f64,
    /// Seconds spent decompressing so far (decode thread and load).
    pub decode_secs: f64,
    /// Bytes of routed experts read so far (part of `bytes_read`).
    pub expert_bytes_read: u64,
}

/// Everything needed to run a container.
pub struct Engine {
    /// The container.
    pub container: Arc<Container>,
    /// The plan in force.
    pub plan: MemoryPlan,
    /// The streamer.
    pub streamer: Streamer,
    /// The model state (KV cache).
    pub model: Model,
    /// The tokenizer, when the container ships one.
    pub tokenizer: Option<TextTokenizer>,
}

impl Engine {
    /// Opens `dir` and prepares to run it.
    pub fn open(dir: &Path, o: &EngineOptions) -> Result<Engine> {
        let container = Arc::new(Container::open(dir, o.verify)?);
        let arch = &container.manifest.architecture;
        let sizes = PlanSizes::of_container(&container)?;
        // The budget is read once, so that the context chosen for it and the
        // plan agree (`Some(0)`: keep nothing resident).
        let budget = plan::resolve_budget(o.max_memory);
        let ctx = match o.ctx {
            Some(ctx) => ctx.max(1),
            None => {
                let want = (arch.max_position_embeddings as usize).min(DEFAULT_CTX);
                let (ctx, note) = plan::fit_default_ctx(&sizes, budget, o.prefetch, want)?;
                if let Some(note) = note {
                    log::warn!("{note}");
                }
                ctx
            }
        };
        let plan = MemoryPlan::for_sizes(
            &sizes,
            PlanRequest {
                max_memory: Some(budget.unwrap_or(0)),
                prefetch: o.prefetch,
                ctx,
                keep_compressed: o.keep_compressed,
            },
        )?;
        log::info!("{}", plan.describe());
        let model = Model::new(&container, ctx)?;
        let backend = Backend::select(o.io, &container.head.path)?;
        log::debug!("io backend: {}", backend.name());
        let streamer = Streamer::new(container.clone(), backend, &plan)?;
        let tokenizer = TextTokenizer::load(dir)?;
        Ok(Engine {
            container,
            plan,
            streamer,
            model,
            tokenizer,
        })
    }

    /// Runs `ids` after the cached positions (see [`Model::forward`]).
    pub fn forward(&mut self, ids: &[u32], want: Want) -> Result<Logits> {
        self.model.forward(&mut self.streamer, ids, want)
    }

    /// The I/O counters now.
    pub fn io(&self) -> IoSnapshot {
        let s = self.streamer.stats();
        IoSnapshot {
            bytes_read: s.bytes_read.load(Ordering::Relaxed),
            wait_secs: s.wait_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            decode_secs: s.decode_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            expert_bytes_read: s.expert_bytes_read.load(Ordering::Relaxed),
        }
    }

    /// The end-of-sequence ids: the manifest's, plus the tokenizer's eos token.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = self.container.manifest.tokenizer.eos_token_ids.clone();
        if let Some(t) = &self.tokenizer {
            if let Some(id) = t.eos_token().and_then(|s| t.token_to_id(s)) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }
}
