//! The memory plan: given a budget, which stages stay resident and which
//! stream, accounting for the KV cache, prefetch buffers and working memory.

use strata_format::manifest::Architecture;
use strata_format::shapes::{self, StageLayout};
use strata_format::StageKind;

use crate::container::Container;
use crate::error::{Result, RunnerError};
use crate::units::human;

/// Fixed allowance for the program itself, the tokenizer and activations.
pub const OVERHEAD: u64 = 96 << 20;
/// Smallest head streaming unit.
const MIN_UNIT: u64 = 8 << 20;

/// What the user asked for.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest {
    /// `--max-memory`: `Some(0)` keeps nothing resident; `None` = available memory minus a margin.
    pub max_memory: Option<u64>,
    /// Stages read ahead.
    pub prefetch: usize,
    /// Context length (KV cache positions).
    pub ctx: usize,
}

/// The plan printed at start-up and followed by the streamer.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    /// The budget the plan fits in (`None`: no limit, keep nothing resident).
    pub budget: Option<u64>,
    /// KV cache for the whole context.
    pub kv_cache: u64,
    /// Prefetch buffers (`(prefetch + 1) × unit`), zero when nothing streams.
    pub buffers: u64,
    /// Size of one streaming unit (the largest streamed read).
    pub unit: u64,
    /// Whether the head's weight is resident.
    pub head_resident: bool,
    /// Per layer: resident or streamed.
    pub resident_layers: Vec<bool>,
    /// Bytes held resident.
    pub resident_bytes: u64,
    /// Bytes read from the container per forward pass.
    pub streamed_bytes: u64,
    /// Stages read ahead.
    pub prefetch: usize,
}

/// Bytes of the KV cache for `ctx` positions (f32 keys and values).
pub fn kv_cache_bytes(a: &Architecture, ctx: usize) -> u64 {
    ctx as u64 * a.num_kv_heads * a.head_dim * 2 * 4 * a.num_layers
}

/// Bytes of the head's weight tensor.
pub fn head_weight_bytes(c: &Container) -> Result<u64> {
    let (stage, name) = c.head_weight_stage();
    Ok(stage.entry(name)?.length)
}

/// The sizes a plan is made from: what the files hold, not the files themselves,
/// so that a model can be planned for before it exists (`runner plan --shape`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSizes {
    /// Size of each layer file, in order.
    pub layer_bytes: Vec<u64>,
    /// Bytes of the output head's weight (the embedding matrix when tied).
    pub head_bytes: u64,
    /// KV cache bytes per context position (f32 keys and values, all layers).
    pub kv_bytes_per_position: u64,
}

impl PlanSizes {
    /// The sizes of an opened container.
    pub fn of_container(c: &Container) -> Result<PlanSizes> {
        Ok(PlanSizes {
            layer_bytes: c.layers.iter().map(|l| l.len).collect(),
            head_bytes: head_weight_bytes(c)?,
            kv_bytes_per_position: kv_cache_bytes(&c.manifest.architecture, 1),
        })
    }

    /// The sizes of a container laid out as `stages` for `arch` (see
    /// [`strata_format::shapes::stage_layouts`]), computed without any file.
    pub fn of_layout(arch: &Architecture, stages: &[StageLayout]) -> Result<PlanSizes> {
        let mut layer_bytes = Vec::new();
        for s in stages.iter().filter(|s| s.kind == StageKind::Layer) {
            layer_bytes.push(s.file_size()?);
        }
        let head_bytes = shapes::head_weight_bytes(arch, stages)
            .ok_or_else(|| RunnerError::Invalid("the layout holds no output head weight".into()))?;
        Ok(PlanSizes {
            layer_bytes,
            head_bytes,
            kv_bytes_per_position: kv_cache_bytes(arch, 1),
        })
    }

    /// KV cache bytes for `ctx` positions.
    pub fn kv_cache(&self, ctx: usize) -> u64 {
        self.kv_bytes_per_position.saturating_mul(ctx as u64)
    }

    /// Size of one streaming unit: the largest layer, or a head chunk of at
    /// least 8 MiB (never more than the head itself when layers are smaller).
    pub fn unit(&self) -> u64 {
        let max_layer = self.layer_bytes.iter().copied().max().unwrap_or(0);
        max_layer.max(MIN_UNIT).min(self.head_bytes.max(max_layer))
    }

    /// Bytes of every layer and the head weight together.
    pub fn total(&self) -> u64 {
        self.head_bytes + self.layer_bytes.iter().sum::<u64>()
    }

    /// The smallest `--max-memory` with which streaming works: KV cache,
    /// runtime allowance and `(prefetch + 1)` units of read buffers.
    pub fn streaming_minimum(&self, ctx: usize, prefetch: usize) -> u64 {
        self.kv_cache(ctx) + OVERHEAD + (prefetch as u64 + 1) * self.unit()
    }

    /// The smallest `--max-memory` that keeps every layer and the head resident.
    pub fn all_resident(&self, ctx: usize) -> u64 {
        self.kv_cache(ctx) + OVERHEAD + self.total()
    }

    /// The smallest budget a plan accepts: streaming, or all resident when
    /// that is smaller (a model smaller than its read buffers).
    pub fn smallest_budget(&self, ctx: usize, prefetch: usize) -> u64 {
        self.streaming_minimum(ctx, prefetch)
            .min(self.all_resident(ctx))
    }
}

impl MemoryPlan {
    /// Plans for container `c`.
    pub fn new(c: &Container, req: PlanRequest) -> Result<MemoryPlan> {
        MemoryPlan::for_sizes(&PlanSizes::of_container(c)?, req)
    }

    /// Plans for a model of the given sizes.
    pub fn for_sizes(sizes: &PlanSizes, req: PlanRequest) -> Result<MemoryPlan> {
        let kv_cache = sizes.kv_cache(req.ctx);
        let head_bytes = sizes.head_bytes;
        let layer_bytes = &sizes.layer_bytes;
        let unit = sizes.unit();
        let n = layer_bytes.len();
        let mut plan = MemoryPlan {
            budget: None,
            kv_cache,
            buffers: 0,
            unit,
            head_resident: false,
            resident_layers: vec![false; n],
            resident_bytes: 0,
            streamed_bytes: 0,
            prefetch: req.prefetch,
        };
        let budget = match req.max_memory {
            Some(0) => {
                plan.buffers = (req.prefetch as u64 + 1) * unit;
                plan.streamed_bytes = sizes.total();
                return Ok(plan);
            }
            Some(b) => b,
            None => {
                let avail = crate::units::available_memory().unwrap_or(4 << 30);
                avail.saturating_sub((avail / 10).max(512 << 20))
            }
        };
        plan.budget = Some(budget);
        let fixed = kv_cache + OVERHEAD;
        let Some(room) = budget.checked_sub(fixed) else {
            return Err(RunnerError::Memory {
                budget: human(budget),
                reason: format!(
                    "the KV cache for --ctx {} needs {} and the runtime {}; lower --ctx or raise --max-memory",
                    req.ctx,
                    human(kv_cache),
                    human(OVERHEAD)
                ),
            });
        };
        let total = sizes.total();
        if total <= room {
            plan.head_resident = true;
            plan.resident_layers = vec![true; n];
            plan.resident_bytes = total;
            return Ok(plan);
        }
        let buffers = (req.prefetch as u64 + 1) * unit;
        let Some(mut left) = room.checked_sub(buffers) else {
            return Err(RunnerError::Memory {
                budget: human(budget),
                reason: format!(
                    "streaming needs {} of read buffers ({} read ahead + 1, {} each) on top of {} for the KV cache and {} for the runtime; lower --prefetch or --ctx, or raise --max-memory",
                    human(buffers),
                    req.prefetch,
                    human(unit),
                    human(kv_cache),
                    human(OVERHEAD)
                ),
            });
        };
        plan.buffers = buffers;
        if head_bytes <= left {
            plan.head_resident = true;
            left -= head_bytes;
            plan.resident_bytes += head_bytes;
        } else {
            plan.streamed_bytes += head_bytes;
        }
        for (i, &b) in layer_bytes.iter().enumerate() {
            if b <= left {
                plan.resident_layers[i] = true;
                left -= b;
                plan.resident_bytes += b;
            } else {
                plan.streamed_bytes += b;
            }
        }
        Ok(plan)
    }

    /// Whether anything streams.
    pub fn streams(&self) -> bool {
        !self.head_resident || self.resident_layers.iter().any(|r| !r)
    }

    /// One-paragraph description, as printed at info level.
    pub fn describe(&self) -> String {
        let resident: Vec<usize> = (0..self.resident_layers.len())
            .filter(|&i| self.resident_layers[i])
            .collect();
        let budget = self
            .budget
            .map_or("0 (keep nothing resident)".to_string(), human);
        format!(
            "memory plan: budget {budget}; KV cache {}; read buffers {} ({} ahead + 1 × {}); resident {} (head {}, layers {}); streamed {} per token",
            human(self.kv_cache),
            human(self.buffers),
            self.prefetch,
            human(self.unit),
            human(self.resident_bytes),
            if self.head_resident { "yes" } else { "no" },
            ranges(&resident),
            human(self.streamed_bytes),
        )
    }
}

/// Formats indices as compact ranges: `0-3,7,9-10`, or `none`.
fn ranges(v: &[usize]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    let mut out = Vec::new();
    let mut start = v[0];
    let mut prev = v[0];
    for &x in &v[1..] {
        if x != prev + 1 {
            out.push(if start == prev {
                format!("{start}")
            } else {
                format!("{start}-{prev}")
            });
            start = x;
        }
        prev = x;
    }
    out.push(if start == prev {
        format!("{start}")
    } else {
        format!("{start}-{prev}")
    });
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> PlanSizes {
        PlanSizes {
            layer_bytes: vec![100 << 20; 10],
            head_bytes: 50 << 20,
            kv_bytes_per_position: 1 << 20,
        }
    }

    fn req(max_memory: u64) -> PlanRequest {
        PlanRequest {
            max_memory: Some(max_memory),
            prefetch: 2,
            ctx: 16,
        }
    }

    #[test]
    fn the_minimum_budgets_are_exact() {
        let s = sizes();
        let min = s.streaming_minimum(16, 2);
        assert_eq!(min, (16 << 20) + OVERHEAD + 3 * (100 << 20));
        let p = MemoryPlan::for_sizes(&s, req(min)).unwrap();
        assert!(p.streams());
        assert_eq!(p.streamed_bytes, s.total());
        assert!(MemoryPlan::for_sizes(&s, req(min - 1)).is_err());
        let all = s.all_resident(16);
        let p = MemoryPlan::for_sizes(&s, req(all)).unwrap();
        assert!(!p.streams());
        assert!(MemoryPlan::for_sizes(&s, req(all - 1)).unwrap().streams());
        assert_eq!(s.smallest_budget(16, 2), min);
    }

    #[test]
    fn a_model_smaller_than_its_buffers_runs_resident() {
        let s = PlanSizes {
            layer_bytes: vec![1 << 20; 2],
            head_bytes: 1 << 20,
            kv_bytes_per_position: 0,
        };
        let small = s.smallest_budget(16, 2);
        assert_eq!(small, s.all_resident(16));
        assert!(!MemoryPlan::for_sizes(&s, req(small)).unwrap().streams());
    }

    #[test]
    fn range_formatting() {
        assert_eq!(ranges(&[]), "none");
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
    }
}
