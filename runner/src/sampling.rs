//! Token sampling: greedy, or repeat penalty, top-k, temperature, top-p and min-p with a seeded
//! random generator; and what speculative decoding needs on top of it: the distribution a sample
//! is drawn from ([`Sampler::distribution`]), draws from such a distribution ([`Sampler::draw`]),
//! and the rule that accepts or replaces a drafted token ([`Sampler::accept_draft`]).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A sparse probability distribution over token ids: the ids with a positive probability, most
/// likely first (equal probabilities by id), probabilities adding up to 1 (up to rounding). Ids
/// not listed have probability 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Dist {
    /// (token id, probability) pairs, most likely first, equal probabilities by ascending id.
    pub probs: Vec<(u32, f32)>,
}

impl Dist {
    /// The distribution that is certain of `id`.
    pub fn one_hot(id: u32) -> Dist {
        Dist {
            probs: vec![(id, 1.0)],
        }
    }

    /// The probability of `id`; 0 for ids not listed. A linear search.
    pub fn prob(&self, id: u32) -> f32 {
        self.probs
            .iter()
            .find(|&&(i, _)| i == id)
            .map_or(0.0, |&(_, p)| p)
    }

    /// The most likely id (the first listed; the lowest id on ties); 0 if the list is empty.
    pub fn argmax(&self) -> u32 {
        self.probs.first().map_or(0, |&(id, _)| id)
    }
}

/// The outcome of [`Sampler::accept_draft`] for one drafted token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the drafted token.
    Accept,
    /// Discard the drafted token (and any drafted after it) and emit this one instead.
    Reject(u32),
}

/// Sampling settings. The defaults are llama.cpp's, except the seed.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 (or below, or NaN) means greedy: always the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probabilities add up to `top_p`;
    /// 1.0 (or more) keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Penalty for tokens seen in the last `repeat_last_n` history tokens: positive logits are
    /// divided by it, negative ones multiplied; 1.0 disables it.
    pub repeat_penalty: f32,
    /// How many of the most recent history tokens the repeat penalty looks at; 0 disables it.
    pub repeat_last_n: usize,
    /// Seed of the random generator; the same seed, logits and history give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama.cpp's defaults: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty
    /// 1.0 (off), repeat_last_n 64. The seed is fixed at 0 so that runs are reproducible by
    /// default (llama.cpp draws a random seed); pass another seed for other samples.
    fn default() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// Picks the next token from logits. Holds the random generator, so a sampler created with a
/// seed yields the same sequence for the same inputs (rand 0.9's `StdRng`, seeded with
/// `seed_from_u64`; other rand versions may give other streams).
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    /// Scratch copy of the logits, penalized.
    logits: Vec<f32>,
    /// Scratch (token id, logit → probability) candidates.
    candidates: Vec<(u32, f32)>,
    /// Scratch list of distinct penalized ids.
    seen: Vec<u32>,
    /// Scratch copy of a draft distribution, by id.
    by_id: Vec<(u32, f32)>,
    /// Scratch residual weights max(0, p − q) of a rejection.
    residual: Vec<(u32, f64)>,
}

impl Sampler {
    /// A sampler with the given settings and a generator seeded with `cfg.seed`.
    pub fn new(cfg: SamplerConfig) -> Sampler {
        Sampler {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            logits: Vec::new(),
            candidates: Vec::new(),
            seen: Vec::new(),
            by_id: Vec::new(),
            residual: Vec::new(),
        }
    }

    /// Picks a token id from `logits` (one per vocabulary entry), given the ids so far
    /// (`history`: prompt and generated tokens, oldest first).
    ///
    /// First the repeat penalty (llama.cpp's and transformers' rule: each distinct id among
    /// the last `repeat_last_n` history tokens has its logit divided by `repeat_penalty` if
    /// positive, multiplied if negative). Then, with temperature <= 0: greedy argmax (ties go
    /// to the lowest id). Otherwise top-k, temperature, softmax, top-p, min-p, and a draw from
    /// what is left with the seeded generator. (llama.cpp applies the temperature last, after
    /// top-p and min-p; here top-p and min-p see the tempered distribution, as transformers'
    /// warpers do.)
    ///
    /// NaN logits are never picked; if no logit is a number (or `logits` is empty) the result
    /// is 0. A +inf logit is certain (several share the probability).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        if let Some(id) = self.filter(logits, history) {
            return id;
        }
        let weights = self.candidates.iter().map(|&(id, p)| (id, f64::from(p)));
        pick(&mut self.rng, weights).unwrap_or(0)
    }

    /// The distribution [`sample`](Sampler::sample) draws from for these `logits` and
    /// `history`: after the repeat penalty, top-k, temperature, softmax, top-p and min-p,
    /// renormalized over the tokens left (those whose probability did not round to 0). Greedy
    /// settings (temperature <= 0 or NaN), and inputs where `sample` needs no draw (no logit is
    /// a number, `logits` is empty, every logit is -inf), give the one-hot distribution at the
    /// id `sample` returns. Consumes no randomness.
    pub fn distribution(&mut self, logits: &[f32], history: &[u32]) -> Dist {
        if let Some(id) = self.filter(logits, history) {
            return Dist::one_hot(id);
        }
        let total: f64 = self.candidates.iter().map(|&(_, p)| f64::from(p)).sum();
        let mut probs: Vec<(u32, f32)> = self
            .candidates
            .iter()
            .map(|&(id, p)| (id, (f64::from(p) / total) as f32))
            .filter(|&(_, p)| p > 0.0)
            .collect();
        // Already by decreasing probability; this only puts equal probabilities in id order.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Dist { probs }
    }

    /// One draw from `d` with the sampler's generator, by the same cumulative-sum method as
    /// [`sample`](Sampler::sample) (one random number per call). An empty `d` gives 0.
    pub fn draw(&mut self, d: &Dist) -> u32 {
        let weights = d.probs.iter().map(|&(id, p)| (id, f64::from(p)));
        pick(&mut self.rng, weights).unwrap_or(0)
    }

    /// Speculative sampling's acceptance rule (Leviathan et al. 2023, Chen et al. 2023) for a
    /// token `drafted` that was drawn from the draft model's distribution `q`, given the
    /// target model's distribution `p` at the same position: accepted with probability
    /// min(1, p(x) / q(x)); otherwise rejected, with a replacement drawn from the residual
    /// max(0, p − q), renormalized (from `p` itself if the residual has no mass, i.e. p = q up
    /// to rounding). Whatever the draft, the emitted token (the accepted one or the
    /// replacement) is distributed as `p`, and the acceptance rate is Σ min(p, q).
    ///
    /// A one-hot (or empty) `p`, a greedy target, accepts exactly its argmax and otherwise
    /// rejects with the argmax, without randomness. Otherwise one random number decides the
    /// acceptance when p(x) < q(x) and one more draws a replacement, so at most two.
    ///
    /// q(x) = 0, which a token drawn from `q` never has, is taken as the limit of the rule
    /// (ratio +inf): accepted if p(x) > 0 and rejected otherwise, like any token that `p`
    /// lacks.
    pub fn accept_draft(&mut self, p: &Dist, q: &Dist, drafted: u32) -> Verdict {
        if p.probs.len() <= 1 {
            let best = p.argmax();
            return if drafted == best {
                Verdict::Accept
            } else {
                Verdict::Reject(best)
            };
        }
        let px = f64::from(p.prob(drafted));
        if px > 0.0 {
            let qx = f64::from(q.prob(drafted));
            if px >= qx || self.rng.random::<f64>() * qx < px {
                return Verdict::Accept;
            }
        }

        // The residual max(0, p − q): only ids of p can have mass there.
        self.by_id.clear();
        self.by_id.extend_from_slice(&q.probs);
        self.by_id.sort_unstable_by_key(|&(id, _)| id);
        self.residual.clear();
        for &(id, pi) in &p.probs {
            let qi = self
                .by_id
                .binary_search_by_key(&id, |&(i, _)| i)
                .map_or(0.0, |k| self.by_id[k].1);
            let r = f64::from(pi) - f64::from(qi);
            if r > 0.0 {
                self.residual.push((id, r));
            }
        }
        let replacement = if self.residual.is_empty() {
            let weights = p.probs.iter().map(|&(id, pi)| (id, f64::from(pi)));
            pick(&mut self.rng, weights)
        } else {
            pick(&mut self.rng, self.residual.iter().copied())
        };
        Verdict::Reject(replacement.unwrap_or_else(|| p.argmax()))
    }

    /// Leaves in `self.candidates` what [`sample`](Sampler::sample) draws from: the tokens
    /// that survive the penalty and the filters, most likely first, with their probabilities
    /// before renormalization (a positive total). Returns the token instead when no draw is
    /// needed: greedy, no logit a number, or every logit -inf.
    fn filter(&mut self, logits: &[f32], history: &[u32]) -> Option<u32> {
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.apply_repeat_penalty(history);
        let temperature = self.cfg.temperature;
        // Greedy for 0, negative and NaN temperatures.
        if temperature.is_nan() || temperature <= 0.0 {
            return Some(argmax(&self.logits));
        }

        self.candidates.clear();
        self.candidates.extend(
            self.logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (index_to_id(i), l)),
        );
        if self.candidates.is_empty() {
            return Some(0);
        }
        // Most likely first; equal logits by id, so the order never depends on the input order.
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let k = self.cfg.top_k;
        if k > 0 && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit);

        // Temperature and softmax. The largest logit is first.
        let max = self.candidates[0].1;
        if max == f32::NEG_INFINITY {
            return Some(self.candidates[0].0);
        }
        if max == f32::INFINITY {
            self.candidates.retain(|&(_, l)| l == f32::INFINITY);
            for candidate in &mut self.candidates {
                candidate.1 = 1.0;
            }
        } else {
            let scale = f64::from(temperature);
            let max = f64::from(max);
            let mut sum = 0.0f64;
            for candidate in &mut self.candidates {
                let p = ((f64::from(candidate.1) - max) / scale).exp();
                candidate.1 = p as f32;
                sum += p;
            }
            for candidate in &mut self.candidates {
                candidate.1 = (f64::from(candidate.1) / sum) as f32;
            }
        }

        // Top-p: the shortest prefix whose probabilities reach top_p (at least one token).
        let top_p = f64::from(self.cfg.top_p);
        if top_p < 1.0 {
            let mut cumulative = 0.0f64;
            let mut keep = self.candidates.len();
            for (i, &(_, p)) in self.candidates.iter().enumerate() {
                cumulative += f64::from(p);
                if cumulative >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }

        // Min-p: drop tokens below min_p × the largest probability (the first).
        let min_p = self.cfg.min_p;
        if min_p > 0.0 {
            let threshold = min_p * self.candidates[0].1;
            let keep = self
                .candidates
                .iter()
                .position(|&(_, p)| p < threshold)
                .unwrap_or(self.candidates.len());
            self.candidates.truncate(keep.max(1));
        }

        None
    }

    /// Applies the repeat penalty to the scratch logits, once per distinct recent id.
    fn apply_repeat_penalty(&mut self, history: &[u32]) {
        let penalty = self.cfg.repeat_penalty;
        if penalty == 1.0 || self.cfg.repeat_last_n == 0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(self.cfg.repeat_last_n)..];
        self.seen.clear();
        self.seen.extend_from_slice(recent);
        self.seen.sort_unstable();
        self.seen.dedup();
        for &id in &self.seen {
            if let Some(logit) = usize::try_from(id)
                .ok()
                .and_then(|i| self.logits.get_mut(i))
            {
                if *logit > 0.0 {
                    *logit /= penalty;
                } else {
                    *logit *= penalty;
                }
            }
        }
    }
}

/// Draws an id from `weights` (non-negative, in the order given): a uniform number in [0, 1)
/// times their sum, then the first id whose cumulative weight exceeds it. None if there are no
/// weights. The iterator is walked twice, for the sum and for the search.
fn pick(rng: &mut StdRng, weights: impl Iterator<Item = (u32, f64)> + Clone) -> Option<u32> {
    let total: f64 = weights.clone().map(|(_, w)| w).sum();
    let target = rng.random::<f64>() * total;
    let mut cumulative = 0.0f64;
    let mut last = None;
    for (id, w) in weights {
        cumulative += w;
        if target < cumulative {
            return Some(id);
        }
        last = Some(id);
    }
    // Rounding left the target at the very end: the last one.
    last
}

/// The index of the largest non-NaN logit, lowest index on ties; 0 if there is none.
fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map_or(0, |(i, _)| index_to_id(i))
}

/// A logits index as a token id (vocabularies are far below u32::MAX).
fn index_to_id(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        }
    }

    /// Logits whose softmax (temperature 1) is `probs`.
    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    /// Counts how often each id is drawn in `n` samples.
    fn histogram(cfg: SamplerConfig, logits: &[f32], n: usize) -> Vec<usize> {
        let mut sampler = Sampler::new(cfg);
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[sampler.sample(logits, &[]) as usize] += 1;
        }
        counts
    }

    fn plain(temperature: f32) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 7,
        }
    }

    #[test]
    fn defaults_are_llama_cpp_s() {
        let cfg = SamplerConfig::default();
        assert_eq!(cfg.temperature, 0.8);
        assert_eq!(cfg.top_k, 40);
        assert_eq!(cfg.top_p, 0.95);
        assert_eq!(cfg.min_p, 0.05);
        assert_eq!(cfg.repeat_penalty, 1.0);
        assert_eq!(cfg.repeat_last_n, 64);
        assert_eq!(cfg.seed, 0);
    }

    #[test]
    fn greedy_is_argmax_with_lowest_id_on_ties() {
        let mut sampler = Sampler::new(greedy());
        assert_eq!(sampler.sample(&[0.1, 2.0, -1.0, 1.9], &[]), 1);
        assert_eq!(sampler.sample(&[3.0, 5.0, 5.0, 1.0], &[]), 1);
        assert_eq!(sampler.sample(&[-3.0, -2.0], &[]), 1);
        let mut negative = Sampler::new(SamplerConfig {
            temperature: -1.0,
            ..greedy()
        });
        assert_eq!(negative.sample(&[0.0, 0.5, 0.25], &[]), 1);
        let mut nan = Sampler::new(SamplerConfig {
            temperature: f32::NAN,
            ..greedy()
        });
        assert_eq!(nan.sample(&[0.0, 0.5, 0.25], &[]), 1);
    }

    #[test]
    fn nan_logits_never_panic_and_are_never_picked() {
        let logits = [f32::NAN, 1.0, f32::NAN, 0.5];
        assert_eq!(Sampler::new(greedy()).sample(&logits, &[]), 1);
        let mut sampler = Sampler::new(SamplerConfig {
            seed: 3,
            ..SamplerConfig::default()
        });
        for _ in 0..200 {
            let id = sampler.sample(&logits, &[0, 1, 2]);
            assert!(id == 1 || id == 3, "{id}");
        }
        assert_eq!(Sampler::new(greedy()).sample(&[f32::NAN; 4], &[]), 0);
        assert_eq!(Sampler::new(plain(1.0)).sample(&[f32::NAN; 4], &[]), 0);
        assert_eq!(Sampler::new(plain(1.0)).sample(&[], &[]), 0);
        assert_eq!(Sampler::new(greedy()).sample(&[], &[5]), 0);
        // Infinities: -inf everywhere falls back to the lowest id, +inf is certain.
        let mut sampler = Sampler::new(plain(1.0));
        assert_eq!(sampler.sample(&[f32::NEG_INFINITY; 3], &[]), 0);
        for _ in 0..50 {
            let id = sampler.sample(&[1.0, f32::INFINITY, 2.0, f32::INFINITY], &[]);
            assert!(id == 1 || id == 3, "{id}");
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let draw = |seed: u64| {
            let mut sampler = Sampler::new(SamplerConfig {
                seed,
                ..SamplerConfig::default()
            });
            let mut history = Vec::new();
            for _ in 0..64 {
                let id = sampler.sample(&logits, &history);
                history.push(id);
            }
            history
        };
        let a = draw(42);
        assert_eq!(a, draw(42));
        assert_ne!(a, draw(43));
        // Not degenerate: several different tokens were drawn.
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 3, "{a:?}");
    }

    #[test]
    fn top_k_1_is_argmax() {
        let logits = [0.3, 1.2, 1.19, -4.0, 1.2];
        let mut sampler = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 1,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        });
        for _ in 0..100 {
            assert_eq!(sampler.sample(&logits, &[]), 1);
        }
    }

    #[test]
    fn top_k_keeps_only_the_k_best() {
        let logits = logits_of(&[0.3, 0.25, 0.2, 0.15, 0.1]);
        let counts = histogram(
            SamplerConfig {
                top_k: 2,
                ..plain(1.0)
            },
            &logits,
            20_000,
        );
        assert_eq!(counts[2] + counts[3] + counts[4], 0, "{counts:?}");
        // Renormalized over the two kept: 0.3/0.55 ≈ 0.545.
        let share = counts[0] as f64 / 20_000.0;
        assert!((share - 0.3 / 0.55).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn unfiltered_sampling_follows_the_softmax() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        let n = 40_000;
        let counts = histogram(plain(1.0), &logits_of(&probs), n);
        for (count, p) in counts.iter().zip(probs) {
            let share = *count as f64 / n as f64;
            assert!((share - p).abs() < 0.015, "{counts:?}");
        }
        // Temperature 2 flattens: p ∝ sqrt(probs).
        let counts = histogram(plain(2.0), &logits_of(&probs), n);
        let roots: Vec<f64> = probs.iter().map(|p| p.sqrt()).collect();
        let total: f64 = roots.iter().sum();
        for (count, r) in counts.iter().zip(&roots) {
            let share = *count as f64 / n as f64;
            assert!((share - r / total).abs() < 0.015, "{counts:?}");
        }
    }

    #[test]
    fn top_p_excludes_the_unlikely_tail() {
        // Sorted probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps 0.5 + 0.3 (0.8 >= 0.75).
        let logits = logits_of(&[0.15, 0.5, 0.05, 0.3]);
        let n = 20_000;
        let counts = histogram(
            SamplerConfig {
                top_p: 0.75,
                ..plain(1.0)
            },
            &logits,
            n,
        );
        assert_eq!(counts[0] + counts[2], 0, "{counts:?}");
        let share = counts[1] as f64 / n as f64;
        assert!((share - 0.5 / 0.8).abs() < 0.02, "{counts:?}");
        // top_p 0.9 keeps the 0.15 token too (0.95 >= 0.9), still not the 0.05 one.
        let counts = histogram(
            SamplerConfig {
                top_p: 0.9,
                ..plain(1.0)
            },
            &logits,
            n,
        );
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 0, "{counts:?}");
        // A tiny top_p still keeps the best token.
        let counts = histogram(
            SamplerConfig {
                top_p: 0.01,
                ..plain(1.0)
            },
            &logits,
            1000,
        );
        assert_eq!(counts[1], 1000, "{counts:?}");
    }

    #[test]
    fn min_p_excludes_tokens_far_below_the_best() {
        // p_max 0.6: min_p 0.2 drops everything below 0.12.
        let logits = logits_of(&[0.6, 0.25, 0.1, 0.05]);
        let n = 20_000;
        let counts = histogram(
            SamplerConfig {
                min_p: 0.2,
                ..plain(1.0)
            },
            &logits,
            n,
        );
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        let share = counts[0] as f64 / n as f64;
        assert!((share - 0.6 / 0.85).abs() < 0.02, "{counts:?}");
        // With llama.cpp's default 0.05 the 0.05 token stays (0.05 / 0.6 ≈ 0.083 >= 0.05); with
        // 0.1 it goes and the 0.1 token stays (0.1 / 0.6 ≈ 0.17).
        let counts = histogram(
            SamplerConfig {
                min_p: 0.05,
                ..plain(1.0)
            },
            &logits,
            n,
        );
        assert!(counts[3] > 0, "{counts:?}");
        let counts = histogram(
            SamplerConfig {
                min_p: 0.1,
                ..plain(1.0)
            },
            &logits,
            n,
        );
        assert_eq!(counts[3], 0, "{counts:?}");
        assert!(counts[2] > 0, "{counts:?}");
    }

    #[test]
    fn repeat_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut sampler = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            repeat_last_n: 3,
            ..greedy()
        });
        let logits = [4.0, -1.0, 3.0, 0.5, -3.0];
        // Token 7 is out of range, token 0 is outside the last 3 history tokens, 1 and 2
        // repeat (penalized once each).
        sampler.sample(&logits, &[0, 2, 1, 2, 7]);
        assert_eq!(sampler.logits, vec![4.0, -2.0, 1.5, 0.5, -3.0]);
        // Greedy picks after the penalty: 0 (4.0 → 2.0) loses to 2 (3.0), and once 2 is
        // penalized too (→ 1.5), to 3 (2.5).
        let logits = [4.0, -1.0, 3.0, 2.5, -3.0];
        assert_eq!(sampler.sample(&logits, &[]), 0);
        assert_eq!(sampler.sample(&logits, &[0, 0, 0]), 2);
        assert_eq!(sampler.sample(&logits, &[2, 0]), 3);
        // A penalty of 1 or an empty window leaves the logits alone.
        let mut off = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            repeat_last_n: 0,
            ..greedy()
        });
        off.sample(&logits, &[0, 1, 2]);
        assert_eq!(off.logits, logits.to_vec());
    }

    #[test]
    fn repeat_penalty_lowers_the_sampling_probability() {
        let logits = logits_of(&[0.5, 0.5]);
        let n = 20_000;
        let mut sampler = Sampler::new(SamplerConfig {
            repeat_penalty: 1.5,
            ..plain(1.0)
        });
        let mut counts = [0usize; 2];
        for _ in 0..n {
            counts[sampler.sample(&logits, &[0]) as usize] += 1;
        }
        // ln 0.5 < 0 is multiplied by 1.5: p0 ∝ 0.5^1.5, p1 ∝ 0.5.
        let p0 = 0.5f64.powf(1.5) / (0.5f64.powf(1.5) + 0.5);
        let share = counts[0] as f64 / n as f64;
        assert!((share - p0).abs() < 0.02, "{counts:?} vs {p0}");
    }

    /// Asserts that `count` of `n` draws matches probability `p`: within 5 standard errors
    /// plus 1e-3.
    fn assert_share(what: &str, count: usize, n: usize, p: f64) {
        let share = count as f64 / n as f64;
        let tolerance = 5.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-3;
        assert!(
            (share - p).abs() <= tolerance,
            "{what}: share {share} vs p {p} (tolerance {tolerance})"
        );
    }

    /// Checks the `Dist` invariants: positive probabilities adding up to 1, most likely first,
    /// equal probabilities by id, no id twice.
    fn assert_valid(d: &Dist) {
        assert!(!d.probs.is_empty());
        assert!(d.probs.iter().all(|&(_, p)| p > 0.0), "{d:?}");
        let total: f64 = d.probs.iter().map(|&(_, p)| f64::from(p)).sum();
        assert!((total - 1.0).abs() < 1e-5, "{d:?}");
        for pair in d.probs.windows(2) {
            let ((a, pa), (b, pb)) = (pair[0], pair[1]);
            assert!(pa > pb || (pa == pb && a < b), "{d:?}");
        }
    }

    /// A normalized `Dist` from positive weights.
    fn dist(weights: &[(u32, f64)]) -> Dist {
        let total: f64 = weights.iter().map(|&(_, w)| w).sum();
        let mut probs: Vec<(u32, f32)> = weights
            .iter()
            .map(|&(id, w)| (id, (w / total) as f32))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let d = Dist { probs };
        assert_valid(&d);
        d
    }

    #[test]
    fn distribution_is_what_sample_draws_from() {
        let logits = [1.0, 2.5, -0.5, 2.0, 0.3, 1.7, -2.0, 0.9];
        let history = [1, 3, 3, 6];
        let configs = [
            ("greedy", greedy()),
            ("plain", plain(1.0)),
            ("cold", plain(0.6)),
            ("hot", plain(1.8)),
            (
                "top-k",
                SamplerConfig {
                    top_k: 3,
                    ..plain(1.0)
                },
            ),
            (
                "top-p",
                SamplerConfig {
                    top_p: 0.8,
                    ..plain(1.0)
                },
            ),
            (
                "min-p",
                SamplerConfig {
                    min_p: 0.15,
                    ..plain(1.0)
                },
            ),
            (
                "repeat penalty",
                SamplerConfig {
                    repeat_penalty: 1.8,
                    ..plain(1.0)
                },
            ),
            (
                "defaults",
                SamplerConfig {
                    seed: 11,
                    ..SamplerConfig::default()
                },
            ),
        ];
        let n = 100_000;
        for (name, cfg) in configs {
            let d = Sampler::new(cfg.clone()).distribution(&logits, &history);
            assert_valid(&d);
            // Every token that `sample` draws is in the distribution, at its frequency; every
            // token in the distribution is drawn (all have p > 1e-3 here); and `draw` from
            // the distribution does the same.
            let mut sampler = Sampler::new(cfg.clone());
            let mut drawer = Sampler::new(cfg);
            let mut sampled = vec![0usize; logits.len()];
            let mut drawn = vec![0usize; logits.len()];
            for _ in 0..n {
                sampled[sampler.sample(&logits, &history) as usize] += 1;
                drawn[drawer.draw(&d) as usize] += 1;
            }
            for id in 0..logits.len() {
                let p = f64::from(d.prob(id as u32));
                if p == 0.0 {
                    assert_eq!(sampled[id], 0, "{name}: {id} in {sampled:?}, not in {d:?}");
                    assert_eq!(drawn[id], 0, "{name}: {id} in {drawn:?}, not in {d:?}");
                } else {
                    assert!(sampled[id] > 0, "{name}: {id} in {d:?}, not in {sampled:?}");
                    assert_share(name, sampled[id], n, p);
                    assert_share(name, drawn[id], n, p);
                }
            }
        }
        // Greedy is one-hot at sample's argmax.
        let d = Sampler::new(greedy()).distribution(&logits, &history);
        assert_eq!(d, Dist::one_hot(1));
        assert_eq!(d.argmax(), Sampler::new(greedy()).sample(&logits, &history));
        // The filters did filter: top-k 3 keeps 3, top-p and min-p drop some.
        let top_k = SamplerConfig {
            top_k: 3,
            ..plain(1.0)
        };
        assert_eq!(
            Sampler::new(top_k).distribution(&logits, &[]).probs.len(),
            3
        );
        let top_p = SamplerConfig {
            top_p: 0.8,
            ..plain(1.0)
        };
        let kept = Sampler::new(top_p).distribution(&logits, &[]).probs.len();
        assert!(kept > 1 && kept < logits.len(), "{kept}");
        let min_p = SamplerConfig {
            min_p: 0.15,
            ..plain(1.0)
        };
        let kept = Sampler::new(min_p).distribution(&logits, &[]).probs.len();
        assert!(kept > 1 && kept < logits.len(), "{kept}");
    }

    #[test]
    fn distribution_handles_nan_infinities_and_empty_logits_like_sample() {
        let one_hot_cases: [(&[f32], SamplerConfig); 6] = [
            (&[], plain(1.0)),
            (&[], greedy()),
            (&[f32::NAN; 4], plain(1.0)),
            (&[f32::NAN; 4], greedy()),
            (&[f32::NEG_INFINITY; 3], plain(1.0)),
            (&[f32::NAN, 1.0, f32::NAN, 0.5], greedy()),
        ];
        for (logits, cfg) in one_hot_cases {
            let d = Sampler::new(cfg.clone()).distribution(logits, &[]);
            let id = Sampler::new(cfg).sample(logits, &[]);
            assert_eq!(d, Dist::one_hot(id), "{logits:?}");
        }
        // NaN logits are absent; +inf ones share the probability; -inf ones next to finite
        // ones are absent.
        let d = Sampler::new(plain(1.0)).distribution(&[f32::NAN, 1.0, f32::NAN, 1.0], &[]);
        assert_eq!(d.probs, vec![(1, 0.5), (3, 0.5)]);
        let d =
            Sampler::new(plain(1.0)).distribution(&[1.0, f32::INFINITY, 2.0, f32::INFINITY], &[]);
        assert_eq!(d.probs, vec![(1, 0.5), (3, 0.5)]);
        let d = Sampler::new(plain(1.0)).distribution(&[f32::NEG_INFINITY, 0.0], &[]);
        assert_eq!(d, Dist::one_hot(1));
        assert_eq!(d.prob(0), 0.0);
        assert_eq!(d.prob(1), 1.0);
    }

    #[test]
    fn distribution_consumes_no_randomness() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let cfg = SamplerConfig {
            seed: 5,
            ..SamplerConfig::default()
        };
        let mut plain_sampler = Sampler::new(cfg.clone());
        let mut asking = Sampler::new(cfg);
        for _ in 0..64 {
            let d = asking.distribution(&logits, &[]);
            assert_valid(&d);
            assert_eq!(
                asking.sample(&logits, &[]),
                plain_sampler.sample(&logits, &[])
            );
        }
    }

    /// Runs `n` rounds of speculative sampling of one token: x drawn from `q`, judged against
    /// `p`. Returns the counts of the emitted tokens (by id, `len` of them) and of acceptances.
    fn speculate(p: &Dist, q: &Dist, len: usize, n: usize, seed: u64) -> (Vec<usize>, usize) {
        let mut sampler = Sampler::new(SamplerConfig { seed, ..plain(1.0) });
        let mut counts = vec![0usize; len];
        let mut accepted = 0;
        for _ in 0..n {
            let x = sampler.draw(q);
            let token = match sampler.accept_draft(p, q, x) {
                Verdict::Accept => {
                    accepted += 1;
                    x
                }
                Verdict::Reject(y) => y,
            };
            counts[token as usize] += 1;
        }
        (counts, accepted)
    }

    #[test]
    fn accept_draft_preserves_the_target_distribution() {
        let cases = [
            (
                "same support",
                dist(&[
                    (0, 3.0),
                    (1, 1.0),
                    (2, 2.0),
                    (3, 0.5),
                    (4, 1.5),
                    (5, 0.2),
                    (6, 0.8),
                    (7, 1.0),
                ]),
                dist(&[
                    (0, 1.0),
                    (1, 2.5),
                    (2, 2.0),
                    (3, 1.0),
                    (4, 0.3),
                    (5, 1.0),
                    (6, 0.8),
                    (7, 0.4),
                ]),
            ),
            (
                "q has tokens p lacks",
                dist(&[(0, 2.0), (1, 1.0), (2, 3.0), (3, 0.5)]),
                dist(&[
                    (0, 1.0),
                    (1, 1.0),
                    (2, 1.0),
                    (3, 1.0),
                    (4, 1.0),
                    (5, 2.0),
                    (6, 0.5),
                    (7, 0.5),
                ]),
            ),
            (
                "p has tokens q lacks",
                dist(&[
                    (0, 1.0),
                    (1, 1.0),
                    (2, 2.0),
                    (3, 1.0),
                    (4, 0.5),
                    (5, 1.5),
                    (6, 0.7),
                    (7, 0.3),
                ]),
                dist(&[(1, 3.0), (2, 1.0), (5, 0.5)]),
            ),
            (
                "each has tokens the other lacks",
                dist(&[(0, 2.0), (1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5)]),
                dist(&[(2, 1.0), (3, 1.0), (4, 0.2), (5, 2.0), (6, 1.0), (7, 0.5)]),
            ),
            (
                "disjoint",
                dist(&[(0, 1.0), (1, 2.0), (2, 1.0), (3, 0.5)]),
                dist(&[(4, 1.0), (5, 1.0), (6, 1.0), (7, 1.0)]),
            ),
            (
                "p = q",
                dist(&[
                    (0, 1.0),
                    (1, 2.0),
                    (2, 0.5),
                    (3, 0.7),
                    (4, 1.1),
                    (5, 0.1),
                    (6, 3.0),
                    (7, 0.6),
                ]),
                dist(&[
                    (0, 1.0),
                    (1, 2.0),
                    (2, 0.5),
                    (3, 0.7),
                    (4, 1.1),
                    (5, 0.1),
                    (6, 3.0),
                    (7, 0.6),
                ]),
            ),
            (
                "one-hot p, q has it",
                Dist::one_hot(3),
                dist(&[(0, 1.0), (1, 1.0), (2, 1.0), (3, 2.0), (4, 0.5), (7, 1.0)]),
            ),
            (
                "one-hot p, q lacks it",
                Dist::one_hot(6),
                dist(&[(0, 1.0), (1, 1.0), (2, 1.0), (3, 2.0)]),
            ),
            (
                "one-hot q",
                dist(&[(0, 1.0), (1, 1.0), (2, 2.0), (3, 1.0), (5, 0.4)]),
                Dist::one_hot(2),
            ),
        ];
        let n = 200_000;
        for (seed, (name, p, q)) in cases.iter().enumerate() {
            let (counts, accepted) = speculate(p, q, 8, n, seed as u64);
            for (id, &count) in counts.iter().enumerate() {
                let pi = f64::from(p.prob(id as u32));
                if pi == 0.0 {
                    assert_eq!(count, 0, "{name}: {id} emitted, {counts:?}");
                } else {
                    assert_share(&format!("{name}: token {id}"), count, n, pi);
                }
            }
            let overlap: f64 = (0..8).map(|id| f64::from(p.prob(id).min(q.prob(id)))).sum();
            assert_share(
                &format!("{name}: acceptance"),
                accepted,
                n,
                overlap.min(1.0),
            );
        }
    }

    #[test]
    fn accept_draft_edge_cases() {
        let mut sampler = Sampler::new(plain(1.0));
        // A greedy target accepts exactly its argmax, whatever q says, without randomness.
        let p = Dist::one_hot(4);
        let q = dist(&[(1, 1.0), (4, 1.0)]);
        let mut fresh = sampler.clone();
        for _ in 0..100 {
            assert_eq!(sampler.accept_draft(&p, &q, 4), Verdict::Accept);
            assert_eq!(sampler.accept_draft(&p, &q, 1), Verdict::Reject(4));
            assert_eq!(sampler.accept_draft(&p, &q, 9), Verdict::Reject(4));
        }
        assert_eq!(sampler.draw(&q), fresh.draw(&q));
        // p = q always accepts.
        let p = dist(&[(0, 1.0), (1, 2.0), (2, 3.0)]);
        for x in 0..3 {
            assert_eq!(sampler.accept_draft(&p, &p.clone(), x), Verdict::Accept);
        }
        // q(x) = 0: accepted if p(x) > 0, rejected (into p's residual) if p(x) = 0 too.
        let q = dist(&[(0, 1.0), (1, 1.0)]);
        assert_eq!(sampler.accept_draft(&p, &q, 2), Verdict::Accept);
        for _ in 0..100 {
            // The residual max(0, p − q) is all on token 2 (p(2) = 0.5 > 0).
            assert_eq!(sampler.accept_draft(&p, &q, 7), Verdict::Reject(2));
        }
        // Where p(x) < q(x) the verdict is random, with rate p(x) / q(x).
        let q = dist(&[(0, 3.0), (1, 1.0)]);
        let n = 40_000;
        let accepted = (0..n)
            .filter(|_| sampler.accept_draft(&p, &q, 0) == Verdict::Accept)
            .count();
        assert_share("p(0) / q(0)", accepted, n, (1.0 / 6.0) / 0.75);
    }
}
