//! Choosing how many tokens to draft before each verification pass, from
//! what has been measured so far: how often drafted tokens are accepted, how
//! long the draft takes per token, and how long a target pass takes as a
//! function of the tokens it verifies.

/// Weight of the past in the running estimates (per pass): acceptance and
/// timings follow the text being written, not its whole history.
const DECAY: f64 = 0.9;

/// The draft-length controller. For a chain of `k` drafted tokens each
/// accepted with probability `a` (independently), a pass yields
/// `(1 − a^(k+1)) / (1 − a)` tokens on average (the accepted ones plus the
/// target's own) and costs `k · draft_secs + pass_secs(k)`; the controller
/// picks the `k` (from `min` to `max`) with the most tokens per second.
#[derive(Debug, Clone)]
pub struct DraftLength {
    min: usize,
    max: usize,
    /// Decayed counts of accepted and rejected drafted tokens (a rejected
    /// token ends the chain; those after it are not counted).
    accepted: f64,
    rejected: f64,
    /// Running estimate of the draft's seconds per drafted token.
    draft_secs: Option<f64>,
    /// Running estimate of a target pass's seconds, by tokens drafted (0..=max).
    pass_secs: Vec<Option<f64>>,
}

impl DraftLength {
    /// A controller that drafts from `min` (where the context allows) to
    /// `max` tokens; `min` above `max` is taken as `max`.
    pub fn new(min: usize, max: usize) -> DraftLength {
        DraftLength {
            min: min.min(max),
            max,
            accepted: 0.0,
            rejected: 0.0,
            draft_secs: None,
            pass_secs: vec![None; max + 1],
        }
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Estimated probability that a drafted token is accepted: the decayed
    /// counts, with one prior acceptance and one prior rejection.
    pub fn acceptance(&self) -> f64 {
        (self.accepted + 1.0) / (self.accepted + self.rejected + 2.0)
    }

    /// Records a pass: `drafted` tokens proposed, the first `accepted` of
    /// them taken, `draft_secs` spent drafting and `pass_secs` verifying.
    pub fn record(&mut self, drafted: usize, accepted: usize, draft_secs: f64, pass_secs: f64) {
        self.accepted = self.accepted * DECAY + accepted as f64;
        if accepted < drafted {
            self.rejected = self.rejected * DECAY + 1.0;
        } else {
            self.rejected *= DECAY;
        }
        if drafted > 0 {
            let per = draft_secs / drafted as f64;
            self.draft_secs = Some(
                self.draft_secs
                    .map_or(per, |d| d * DECAY + per * (1.0 - DECAY)),
            );
        }
        if let Some(slot) = self.pass_secs.get_mut(drafted) {
            *slot = Some(slot.map_or(pass_secs, |p| p * DECAY + pass_secs * (1.0 - DECAY)));
        }
    }

    /// Estimated seconds of a target pass verifying `k` drafted tokens: the
    /// measurement for `k`, else a line through the nearest measured lengths
    /// below and above (flat beyond the last measured one, so that longer
    /// drafts get tried), else (nothing measured yet) 1.
    fn pass_secs(&self, k: usize) -> f64 {
        if let Some(Some(t)) = self.pass_secs.get(k) {
            return *t;
        }
        let below = (0..k).rev().find_map(|j| self.pass_secs[j].map(|t| (j, t)));
        let above = (k + 1..=self.max).find_map(|j| self.pass_secs[j].map(|t| (j, t)));
        match (below, above) {
            (Some((j0, t0)), Some((j1, t1))) => t0 + (t1 - t0) * (k - j0) as f64 / (j1 - j0) as f64,
            (Some((_, t)), None) | (None, Some((_, t))) => t,
            (None, None) => 1.0,
        }
    }

    /// How many tokens to draft for the next pass, at most `room` (what the
    /// context and the generation limit leave).
    pub fn next(&self, room: usize) -> usize {
        let cap = self.max.min(room);
        let a = self.acceptance().min(1.0 - 1e-9);
        let draft = self.draft_secs.unwrap_or(0.0);
        let low = self.min.min(cap);
        let mut best = (low, f64::MIN);
        for k in low..=cap {
            let tokens = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
            let secs = k as f64 * draft + self.pass_secs(k);
            let rate = tokens / secs.max(1e-12);
            if rate > best.1 {
                best = (k, rate);
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_by_drafting_up_to_the_cap_and_respects_room() {
        let d = DraftLength::new(0, 8);
        assert_eq!(d.next(100), 8);
        assert_eq!(d.next(3), 3);
        assert_eq!(d.next(0), 0);
        assert_eq!(DraftLength::new(0, 0).next(10), 0);
    }

    #[test]
    fn high_acceptance_and_cheap_passes_draft_long() {
        let mut d = DraftLength::new(0, 8);
        for _ in 0..30 {
            // Disk-bound target: a pass costs 1 s whatever k; drafting is cheap.
            d.record(8, 8, 0.08, 1.0);
        }
        assert!(d.acceptance() > 0.9, "{}", d.acceptance());
        assert_eq!(d.next(100), 8);
    }

    #[test]
    fn low_acceptance_or_costly_drafting_drafts_little() {
        let mut d = DraftLength::new(0, 8);
        for _ in 0..30 {
            d.record(4, 0, 0.4, 1.0);
        }
        assert!(d.acceptance() < 0.2, "{}", d.acceptance());
        assert!(d.next(100) <= 1, "{}", d.next(100));
        // Passes whose cost grows with k (a resident, compute-bound target)
        // and middling acceptance (about 0.6): a short chain.
        let mut d = DraftLength::new(0, 16);
        (d.accepted, d.rejected, d.draft_secs) = (15.0, 10.0, Some(0.002));
        for k in 0..=16 {
            d.pass_secs[k] = Some(0.05 + 0.01 * k as f64);
        }
        let k = d.next(100);
        assert!((1..=3).contains(&k), "{k}");
        // Where a pass verifying one token already costs twice a plain one,
        // drafting does not pay.
        for k in 0..=16 {
            d.pass_secs[k] = Some(0.01 + 0.01 * k as f64);
        }
        assert_eq!(d.next(100), 0);
        // Unless told to draft at least some.
        d.min = 3;
        assert_eq!(d.next(100), 3);
        assert_eq!(d.next(2), 2);
        assert_eq!(DraftLength::new(9, 4).next(100), 4);
    }

    #[test]
    fn unmeasured_lengths_are_interpolated() {
        let mut d = DraftLength::new(0, 8);
        d.record(2, 2, 0.0, 2.0);
        d.record(6, 6, 0.0, 6.0);
        assert_eq!(d.pass_secs(4), 4.0);
        assert_eq!(d.pass_secs(8), 6.0);
        assert_eq!(d.pass_secs(0), 2.0);
    }
}
