//! The engine: an opened container, its memory plan, the streamer, the model
//! and (when the container has one) the tokenizer, set up from the runner's
//! common options.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::container::Container;
use crate::error::{Result, RunnerError};
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
    /// Sequences decoded together (`serve --parallel`), each with a KV cache
    /// of `ctx` positions, all counted in the plan; 0 counts as 1.
    pub sequences: usize,
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
        let seqs = o.sequences.max(1);
        let ctx = match o.ctx {
            Some(ctx) => ctx.max(1),
            None => {
                // The KV cache grows with positions × sequences: fit the total.
                let want = (arch.max_position_embeddings as usize).min(DEFAULT_CTX);
                let (total, note) =
                    plan::fit_default_ctx(&sizes, budget, o.prefetch, want.saturating_mul(seqs))?;
                let ctx = per_sequence_ctx(total, seqs);
                if let Some(note) = note {
                    log::warn!("{note}");
                    if seqs > 1 {
                        log::warn!("memory: that is --ctx {ctx} for each of {seqs} sequences");
                    }
                }
                ctx
            }
        };
        let plan = MemoryPlan::for_sizes(
            &sizes,
            PlanRequest {
                max_memory: Some(budget.unwrap_or(0)),
                prefetch: o.prefetch,
                ctx: ctx.saturating_mul(seqs),
                keep_compressed: o.keep_compressed,
            },
        )?;
        log::info!("{}", plan.describe());
        let tokenizer = TextTokenizer::load(dir)?;
        let mut engine = Engine::with_plan(container, tokenizer, plan, ctx, o.io)?;
        engine.model.set_batch(seqs);
        Ok(engine)
    }

    /// Opens the container `dir` (the target) and `draft_dir` (a smaller
    /// model of the same vocabulary, for speculative decoding). The draft is
    /// kept wholly resident, and its weights and KV cache are counted first in
    /// the budget: the target plans with what is left, and a budget that
    /// cannot hold the draft plus the target's streaming minimum is refused
    /// with the numbers. Without `--ctx`, both get the longest default context
    /// that fits. Refuses a draft whose vocabulary differs from the target's,
    /// naming the first difference.
    pub fn open_with_draft(
        dir: &Path,
        draft_dir: &Path,
        o: &EngineOptions,
    ) -> Result<(Engine, Engine)> {
        let target = Arc::new(Container::open(dir, o.verify)?);
        let draft = Arc::new(Container::open(draft_dir, o.verify)?);
        let target_tok = TextTokenizer::load(dir)?;
        let draft_tok = TextTokenizer::load(draft_dir)?;
        if let Some(diff) =
            vocabulary_difference(&target, target_tok.as_ref(), &draft, draft_tok.as_ref())
        {
            return Err(RunnerError::Invalid(format!(
                "the draft {} does not share the vocabulary of {}: {diff}",
                draft_dir.display(),
                dir.display()
            )));
        }
        let tsizes = PlanSizes::of_container(&target)?;
        let dsizes = PlanSizes::of_container(&draft)?;
        let budget = plan::resolve_budget(o.max_memory);
        let ctx = match o.ctx {
            Some(ctx) => ctx.max(1),
            None => {
                let max_pos = target
                    .manifest
                    .architecture
                    .max_position_embeddings
                    .min(draft.manifest.architecture.max_position_embeddings);
                let want = (max_pos as usize).min(DEFAULT_CTX);
                let (ctx, note) = plan::fit_pair_ctx(&tsizes, &dsizes, budget, o.prefetch, want)?;
                if let Some(note) = note {
                    log::warn!("{note}");
                }
                ctx
            }
        };
        let draft_need = plan::draft_bytes(&dsizes, ctx);
        let target_budget = match budget {
            None => None,
            Some(b) => {
                let need = tsizes.smallest_budget(ctx, o.prefetch);
                match b.checked_sub(draft_need).filter(|&left| left >= need) {
                    Some(left) => Some(left),
                    None => {
                        return Err(RunnerError::Memory {
                            budget: crate::units::human(b),
                            reason: format!(
                                "the draft {} needs {} resident (weights {}, KV cache {} for --ctx {ctx}) and the target at least {} to stream (KV cache {}, runtime and read buffers with --prefetch {}): {} in all; raise --max-memory, lower --ctx, or use a smaller draft",
                                draft_dir.display(),
                                crate::units::human(draft_need),
                                crate::units::human(dsizes.total_decoded()),
                                crate::units::human(dsizes.kv_cache(ctx)),
                                crate::units::human(need),
                                crate::units::human(tsizes.kv_cache(ctx)),
                                o.prefetch,
                                crate::units::human(draft_need.saturating_add(need)),
                            ),
                        });
                    }
                }
            }
        };
        let target_plan = MemoryPlan::for_sizes(
            &tsizes,
            PlanRequest {
                max_memory: Some(target_budget.unwrap_or(0)),
                prefetch: o.prefetch,
                ctx,
                keep_compressed: o.keep_compressed,
            },
        )?;
        let draft_plan = MemoryPlan::for_sizes(
            &dsizes,
            PlanRequest {
                max_memory: Some(draft_need.saturating_add(plan::OVERHEAD)),
                prefetch: 1,
                ctx,
                keep_compressed: Some(false),
            },
        )?;
        log::info!(
            "draft {}: {} resident (weights {}, KV cache {}), counted first in the budget",
            draft_dir.display(),
            crate::units::human(draft_need),
            crate::units::human(dsizes.total_decoded()),
            crate::units::human(dsizes.kv_cache(ctx)),
        );
        log::info!("target: {}", target_plan.describe());
        let draft = Engine::with_plan(draft, draft_tok, draft_plan, ctx, o.io)?;
        let target = Engine::with_plan(target, target_tok, target_plan, ctx, o.io)?;
        Ok((target, draft))
    }

    /// The engine for an opened container, its tokenizer (if it ships one) and its plan.
    fn with_plan(
        container: Arc<Container>,
        tokenizer: Option<TextTokenizer>,
        plan: MemoryPlan,
        ctx: usize,
        io: IoChoice,
    ) -> Result<Engine> {
        let model = Model::new(&container, ctx)?;
        let backend = match container.remote() {
            Some(r) => {
                log::info!("remote: {}", r.describe());
                Backend::remote(io, r.clone())?
            }
            None => Backend::select(io, &container.head.path)?,
        };
        log::debug!("io backend: {}", backend.name());
        let streamer = Streamer::new(container.clone(), backend, &plan)?;
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

/// The context of each of `seqs` sequences sharing `total` positions: a
/// multiple of [`plan::CTX_STEP`] where that leaves at least one step.
fn per_sequence_ctx(total: usize, seqs: usize) -> usize {
    let per = total / seqs.max(1);
    if per >= plan::CTX_STEP {
        per / plan::CTX_STEP * plan::CTX_STEP
    } else {
        per.max(1)
    }
}

/// The first way in which a draft's vocabulary differs from the target's, if
/// any: the manifest's special token ids, then (when both ship a tokenizer)
/// the number of tokens, each token's text by id, and the begin/end tokens.
/// Containers without a tokenizer compare their manifests' vocabulary sizes.
pub fn vocabulary_difference(
    target: &Container,
    target_tok: Option<&TextTokenizer>,
    draft: &Container,
    draft_tok: Option<&TextTokenizer>,
) -> Option<String> {
    let (t, d) = (&target.manifest.tokenizer, &draft.manifest.tokenizer);
    if t.bos_token_id != d.bos_token_id {
        return Some(format!(
            "begin-of-sequence id {:?} in the target, {:?} in the draft",
            t.bos_token_id, d.bos_token_id
        ));
    }
    let (mut te, mut de) = (t.eos_token_ids.clone(), d.eos_token_ids.clone());
    te.sort_unstable();
    de.sort_unstable();
    if te != de {
        return Some(format!(
            "end-of-sequence ids {te:?} in the target, {de:?} in the draft"
        ));
    }
    match (target_tok, draft_tok) {
        (None, None) => {
            let (tv, dv) = (
                target.manifest.architecture.vocab_size,
                draft.manifest.architecture.vocab_size,
            );
            (tv != dv).then(|| {
                format!(
                    "no tokenizer in either, and vocabulary sizes {tv} (target) and {dv} (draft)"
                )
            })
        }
        (Some(_), None) => Some("the draft has no tokenizer.json, the target has one".into()),
        (None, Some(_)) => Some("the target has no tokenizer.json, the draft has one".into()),
        (Some(t), Some(d)) => t.first_difference(d),
    }
}
