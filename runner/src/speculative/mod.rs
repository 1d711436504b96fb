//! Speculative decoding: a cheap proposer (a small draft model kept resident,
//! or prompt lookup) guesses the next few tokens, and one pass of the target
//! model — one read of each streamed layer — scores them all at once. The
//! target's own choice decides every token: with greedy decoding the text is
//! exactly what plain decoding writes; with sampling, each drafted token is
//! accepted with probability min(1, p/q) and otherwise replaced by a draw
//! from the normalized max(0, p − q), so the output follows the target's
//! distribution (Leviathan et al., Chen et al., 2023).

pub mod adapt;
pub mod ngram;

use std::time::Instant;

use crate::engine::Engine;
use crate::error::Result;
use crate::kernels;
use crate::model::Want;
use crate::sampling::{Dist, Sampler, Verdict};
use adapt::DraftLength;

/// Most tokens drafted per pass: a pass then feeds at most
/// [`kernels::MAX_FUSED_ROWS`] rows, which the fused kernels compute row by
/// row exactly as they compute a single token, so that greedy output is
/// bit-for-bit plain decoding's (longer inputs take another matrix product,
/// whose rounding differs).
pub const MAX_DRAFT: usize = kernels::MAX_FUSED_ROWS - 1;

/// Where drafted tokens come from.
pub enum Proposer {
    /// A smaller model of the same vocabulary, kept resident.
    Model(Box<Engine>),
    /// Continuations of earlier occurrences of the text's last tokens.
    Ngram,
}

/// Counters of a speculative generation.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecStats {
    /// Target passes (each reads the streamed layers once).
    pub passes: u64,
    /// Tokens proposed.
    pub drafted: u64,
    /// Proposed tokens the target accepted.
    pub accepted: u64,
    /// Tokens the passes produced (accepted plus the target's own, one per pass).
    pub produced: u64,
    /// Seconds spent proposing (draft model forward passes and lookups).
    pub draft_secs: f64,
    /// Seconds spent in target passes.
    pub target_secs: f64,
}

impl SpecStats {
    /// Accepted share of the proposed tokens (0 when none were proposed).
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }

    /// Tokens produced per target pass.
    pub fn tokens_per_pass(&self) -> f64 {
        if self.passes == 0 {
            0.0
        } else {
            self.produced as f64 / self.passes as f64
        }
    }

    /// Seconds of proposing per proposed token.
    pub fn draft_secs_per_token(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.draft_secs / self.drafted as f64
        }
    }

    /// Seconds per target pass.
    pub fn target_secs_per_pass(&self) -> f64 {
        if self.passes == 0 {
            0.0
        } else {
            self.target_secs / self.passes as f64
        }
    }

    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "passes": self.passes,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance": self.acceptance(),
            "tokens_per_pass": self.tokens_per_pass(),
            "draft_seconds_per_token": self.draft_secs_per_token(),
            "target_seconds_per_pass": self.target_secs_per_pass(),
        })
    }

    /// One line for the end of a generation.
    pub fn summary(&self) -> String {
        format!(
            "speculative: acceptance {:.0}% ({}/{}), {:.2} tokens per target pass, draft {:.3} s/token, target {:.3} s/pass",
            100.0 * self.acceptance(),
            self.accepted,
            self.drafted,
            self.tokens_per_pass(),
            self.draft_secs_per_token(),
            self.target_secs_per_pass()
        )
    }
}

/// Drafts tokens and verifies them with the target, one pass at a time.
pub struct Speculator {
    proposer: Proposer,
    /// Token ids the draft model's KV cache holds, in order.
    draft_ids: Vec<u32>,
    /// The tokens drafted for the last pass.
    last: Vec<u32>,
    length: DraftLength,
    stats: SpecStats,
}

impl Speculator {
    /// A speculator drafting from `min_draft` to `max_draft` tokens per
    /// pass (as the measured acceptance and timings say pays best), at most
    /// [`MAX_DRAFT`].
    pub fn new(proposer: Proposer, min_draft: usize, max_draft: usize) -> Speculator {
        Speculator {
            proposer,
            draft_ids: Vec::new(),
            last: Vec::new(),
            length: DraftLength::new(min_draft, max_draft.min(MAX_DRAFT)),
            stats: SpecStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> SpecStats {
        self.stats
    }

    /// Resets the counters (the draft's cache and the learned draft length stay).
    pub fn reset_stats(&mut self) {
        self.stats = SpecStats::default();
    }

    /// The tokens drafted for the last pass (accepted or not).
    pub fn last_drafted(&self) -> &[u32] {
        &self.last
    }

    /// The draft model, when drafting with one.
    pub fn draft_engine(&self) -> Option<&Engine> {
        match &self.proposer {
            Proposer::Model(e) => Some(e),
            Proposer::Ngram => None,
        }
    }

    /// One pass. On entry the target's KV cache (its first sequence) holds
    /// exactly `history`, and `next` is the token chosen after it, not yet
    /// fed. Drafts up to `limit` tokens after `next` (fewer when the context
    /// is short or the controller says so), runs `next` and the drafted
    /// tokens through the target at once, and decides each drafted token with
    /// `sampler`. Returns the accepted drafted tokens followed by one token
    /// chosen by the target (a correction, or the token after the last
    /// accepted one); on return `history` has grown by `next` and the
    /// accepted tokens, the target's cache holds exactly `history` again, and
    /// the last returned token is not fed.
    pub fn step(
        &mut self,
        target: &mut Engine,
        history: &mut Vec<u32>,
        next: u32,
        sampler: &mut Sampler,
        limit: usize,
    ) -> Result<Vec<u32>> {
        let ctx = target.model.ctx();
        // The pass feeds `next` and k drafted tokens after `history`.
        let room = ctx.saturating_sub(history.len() + 1);
        let k = self.length.next(room.min(limit));
        let mut seq = history.clone();
        seq.push(next);
        let t0 = Instant::now();
        let (drafted, q) = self.propose(&seq, k, sampler)?;
        let draft_secs = t0.elapsed().as_secs_f64();
        self.last.clone_from(&drafted);

        let mut feed = Vec::with_capacity(drafted.len() + 1);
        feed.push(next);
        feed.extend_from_slice(&drafted);
        let t1 = Instant::now();
        let logits = target.forward(&feed, Want::All)?;
        let pass_secs = t1.elapsed().as_secs_f64();

        let mut out = Vec::with_capacity(drafted.len() + 1);
        let mut accepted = 0;
        for (i, &d) in drafted.iter().enumerate() {
            let p = sampler.distribution(logits.row(i), &seq);
            let verdict = match &q {
                Some(q) => sampler.accept_draft(&p, &q[i], d),
                None => sampler.accept_draft(&p, &Dist::one_hot(d), d),
            };
            match verdict {
                Verdict::Accept => {
                    out.push(d);
                    seq.push(d);
                    accepted += 1;
                }
                Verdict::Reject(y) => {
                    out.push(y);
                    break;
                }
            }
        }
        if accepted == drafted.len() {
            let p = sampler.distribution(logits.row(drafted.len()), &seq);
            out.push(sampler.draw(&p));
        }
        // The target fed `next` and every drafted token; keep what stands.
        history.push(next);
        history.extend_from_slice(&drafted[..accepted]);
        target.model.truncate(history.len());

        self.length
            .record(drafted.len(), accepted, draft_secs, pass_secs);
        self.stats.passes += 1;
        self.stats.drafted += drafted.len() as u64;
        self.stats.accepted += accepted as u64;
        self.stats.produced += out.len() as u64;
        self.stats.draft_secs += draft_secs;
        self.stats.target_secs += pass_secs;
        Ok(out)
    }

    /// Proposes up to `k` tokens to follow `seq`, with the draft's
    /// distribution for each (`None` for prompt lookup, whose proposals are
    /// certain: one-hot).
    fn propose(
        &mut self,
        seq: &[u32],
        k: usize,
        sampler: &mut Sampler,
    ) -> Result<(Vec<u32>, Option<Vec<Dist>>)> {
        if k == 0 {
            return Ok((Vec::new(), None));
        }
        let draft = match &mut self.proposer {
            Proposer::Ngram => return Ok((ngram::propose(seq, k), None)),
            Proposer::Model(draft) => draft,
        };
        // Bring the draft's cache to a prefix of `seq`, then feed the rest.
        let common = self
            .draft_ids
            .iter()
            .zip(seq)
            .take_while(|(a, b)| a == b)
            .count()
            .min(seq.len() - 1);
        draft.model.truncate(common);
        self.draft_ids.truncate(common);
        let mut feed = seq[common..].to_vec();
        let mut ctx_seq = seq.to_vec();
        let mut tokens = Vec::with_capacity(k);
        let mut dists = Vec::with_capacity(k);
        while tokens.len() < k {
            let logits = draft.forward(&feed, Want::Last)?;
            self.draft_ids.extend_from_slice(&feed);
            let q = sampler.distribution(logits.row(0), &ctx_seq);
            let d = if q.probs.len() == 1 {
                q.argmax()
            } else {
                sampler.draw(&q)
            };
            tokens.push(d);
            dists.push(q);
            ctx_seq.push(d);
            feed = vec![d];
        }
        Ok((tokens, Some(dists)))
    }
}
