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
    /// `--keep-compressed`: hold resident layers compressed and decode them on
    /// use (`None`: when that keeps more layers resident).
    pub keep_compressed: Option<bool>,
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
    /// Size of one decode buffer (0 when nothing is decoded on the way).
    pub decode_unit: u64,
    /// Resident layers are held compressed and decoded each time they are used.
    pub keep_compressed: bool,
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
    /// Bytes kept for recently used routed experts of streamed MoE layers
    /// (what the budget leaves after everything else, at most all of them).
    pub expert_cache: u64,
    /// The buffer one routed expert is read into (part of `buffers`).
    pub expert_unit: u64,
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
    /// Size of each layer once its compressed tensors are decoded (= the file size when none are).
    pub layer_decoded: Vec<u64>,
    /// Bytes of the output head's weight (the embedding matrix when tied), as stored.
    pub head_bytes: u64,
    /// Bytes of the output head's weight decoded.
    pub head_decoded: u64,
    /// KV cache bytes per context position (f32 keys and values, all layers).
    pub kv_bytes_per_position: u64,
    /// Per layer: bytes of the routed experts a streamed layer reads on
    /// demand (0 for a dense layer, and for a compressed one, read whole).
    pub expert_bytes: Vec<u64>,
    /// Bytes of one routed expert's range (the buffer an expert read takes
    /// while it is computed with); 0 without such layers.
    pub expert_unit: u64,
}

impl PlanSizes {
    /// The sizes of an opened container.
    pub fn of_container(c: &Container) -> Result<PlanSizes> {
        let (stage, name) = c.head_weight_stage();
        Ok(PlanSizes {
            layer_bytes: c.layers.iter().map(|l| l.len).collect(),
            layer_decoded: c.layers.iter().map(|l| l.view_len()).collect(),
            head_bytes: head_weight_bytes(c)?,
            head_decoded: stage.entry(name)?.encoded_length(),
            kv_bytes_per_position: kv_cache_bytes(&c.manifest.architecture, 1),
            expert_bytes: c
                .layers
                .iter()
                .map(|l| {
                    if c.manifest.architecture.moe.is_none() || l.compressed() {
                        return Ok(0);
                    }
                    let file = std::path::Path::new(&l.name);
                    Ok(l.len - strata_format::layout::experts_start(&l.header, file)?)
                })
                .collect::<Result<Vec<u64>>>()?,
            expert_unit: match &c.manifest.architecture.moe {
                Some(m) => c
                    .layers
                    .iter()
                    .filter(|l| !l.compressed())
                    .map(|l| {
                        let file = std::path::Path::new(&l.name);
                        (0..m.num_experts)
                            .map(|e| {
                                strata_format::layout::expert_range(&l.header, file, l.len, e)
                                    .map(|(a, b)| b - a)
                            })
                            .try_fold(0, |x, y| y.map(|y| x.max(y)))
                    })
                    .try_fold(0, |x, y| y.map(|y: u64| x.max(y)))?,
                None => 0,
            },
        })
    }

    /// The sizes of a container laid out as `stages` for `arch` (see
    /// [`strata_format::shapes::stage_layouts`]), computed without any file.
    pub fn of_layout(arch: &Architecture, stages: &[StageLayout]) -> Result<PlanSizes> {
        let mut layer_bytes = Vec::new();
        let mut expert_bytes = Vec::new();
        for s in stages.iter().filter(|s| s.kind == StageKind::Layer) {
            let size = s.file_size()?;
            layer_bytes.push(size);
            // The experts are the file's tail: its size less that of the rest.
            let rest: Vec<_> = s
                .tensors
                .iter()
                .take_while(|t| !t.name.starts_with("moe.expert."))
                .cloned()
                .collect();
            let before = StageLayout {
                tensors: rest,
                ..s.clone()
            };
            expert_bytes.push(size - before.file_size()?);
        }
        let head_bytes = shapes::head_weight_bytes(arch, stages)
            .ok_or_else(|| RunnerError::Invalid("the layout holds no output head weight".into()))?;
        Ok(PlanSizes {
            layer_decoded: layer_bytes.clone(),
            layer_bytes,
            head_bytes,
            head_decoded: head_bytes,
            kv_bytes_per_position: kv_cache_bytes(arch, 1),
            // Every expert of a layer has the same page-aligned size.
            expert_unit: arch.moe.as_ref().map_or(0, |m| {
                expert_bytes.iter().copied().max().unwrap_or(0) / m.num_experts.max(1)
            }),
            expert_bytes,
        })
    }

    /// KV cache bytes for `ctx` positions.
    pub fn kv_cache(&self, ctx: usize) -> u64 {
        self.kv_bytes_per_position.saturating_mul(ctx as u64)
    }

    /// Size of one streaming unit: the largest layer read (an MoE layer's
    /// part before its experts), or a head chunk of at least 8 MiB (never
    /// more than the head itself when layers are smaller).
    pub fn unit(&self) -> u64 {
        let max_layer = self
            .layer_bytes
            .iter()
            .zip(self.expert_bytes.iter().chain(std::iter::repeat(&0)))
            .map(|(l, e)| l - e)
            .max()
            .unwrap_or(0);
        max_layer.max(MIN_UNIT).min(self.head_bytes.max(max_layer))
    }

    /// Bytes of every layer and the head weight together, as stored.
    pub fn total(&self) -> u64 {
        self.head_bytes + self.layer_bytes.iter().sum::<u64>()
    }

    /// Bytes of every layer and the head weight together, decoded.
    pub fn total_decoded(&self) -> u64 {
        self.head_decoded + self.layer_decoded.iter().sum::<u64>()
    }

    /// Whether some layer or the head holds compressed tensors.
    pub fn compressed(&self) -> bool {
        self.head_decoded != self.head_bytes || self.layer_decoded != self.layer_bytes
    }

    /// Size of a decode buffer: the largest decoded layer, or a head chunk
    /// (at most one read unit); 0 for a container with nothing compressed.
    pub fn decode_unit(&self) -> u64 {
        if !self.compressed() {
            return 0;
        }
        self.layer_decoded
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.unit())
    }

    /// Buffers of the streaming pipeline: `(prefetch + 1)` read units; with
    /// compressed stages, two read units and `(prefetch + 1)` decode buffers;
    /// plus one routed expert being computed with, for MoE layers.
    pub fn buffers(&self, prefetch: usize) -> u64 {
        let n = prefetch as u64 + 1;
        self.expert_unit
            + if self.compressed() {
                2 * self.unit() + n * self.decode_unit()
            } else {
                n * self.unit()
            }
    }

    /// The smallest `--max-memory` with which streaming works: KV cache,
    /// runtime allowance and the pipeline's buffers.
    pub fn streaming_minimum(&self, ctx: usize, prefetch: usize) -> u64 {
        self.kv_cache(ctx) + OVERHEAD + self.buffers(prefetch)
    }

    /// The smallest `--max-memory` that keeps every layer and the head resident (decoded).
    pub fn all_resident(&self, ctx: usize) -> u64 {
        self.kv_cache(ctx) + OVERHEAD + self.total_decoded()
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
            decode_unit: sizes.decode_unit(),
            keep_compressed: false,
            head_resident: false,
            resident_layers: vec![false; n],
            resident_bytes: 0,
            streamed_bytes: 0,
            prefetch: req.prefetch,
            expert_cache: 0,
            expert_unit: sizes.expert_unit,
        };
        let budget = match req.max_memory {
            Some(0) => {
                plan.buffers = sizes.buffers(req.prefetch);
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
        let total = sizes.total_decoded();
        if total <= room && req.keep_compressed != Some(true) {
            plan.head_resident = true;
            plan.resident_layers = vec![true; n];
            plan.resident_bytes = total;
            return Ok(plan);
        }
        let buffers = sizes.buffers(req.prefetch);
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
        let head_decoded = sizes.head_decoded;
        if head_decoded <= left {
            plan.head_resident = true;
            left -= head_decoded;
            plan.resident_bytes += head_decoded;
        } else {
            plan.streamed_bytes += head_bytes;
        }
        // Resident layers cost their decoded size, or their stored size when
        // held compressed; holding them compressed is chosen (unless the user
        // says otherwise) when it keeps more layers resident: every layer is
        // then decoded on use, on the decode thread, and fewer are read.
        let fit = |costs: &[u64], mut left: u64| -> Vec<bool> {
            costs
                .iter()
                .map(|&b| {
                    let ok = b <= left;
                    if ok {
                        left -= b;
                    }
                    ok
                })
                .collect()
        };
        let decoded = fit(&sizes.layer_decoded, left);
        let stored = fit(layer_bytes, left);
        let count = |v: &[bool]| v.iter().filter(|&&r| r).count();
        plan.keep_compressed = sizes.compressed()
            && req
                .keep_compressed
                .unwrap_or(count(&stored) > count(&decoded));
        let (resident, costs) = if plan.keep_compressed {
            (stored, layer_bytes)
        } else {
            (decoded, &sizes.layer_decoded)
        };
        let mut streamed_experts = 0u64;
        for (i, &r) in resident.iter().enumerate() {
            if r {
                plan.resident_bytes += costs[i];
                left -= costs[i];
            } else {
                plan.streamed_bytes += layer_bytes[i];
                streamed_experts += sizes.expert_bytes.get(i).copied().unwrap_or(0);
            }
        }
        plan.resident_layers = resident;
        plan.expert_cache = left.min(streamed_experts);
        Ok(plan)
    }

    /// Whether anything streams (or is decoded on use).
    pub fn streams(&self) -> bool {
        self.keep_compressed || !self.head_resident || self.resident_layers.iter().any(|r| !r)
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
            "memory plan: budget {budget}; KV cache {}; {}; resident {} (head {}, layers {}{}); streamed {} per token",
            human(self.kv_cache),
            if self.decode_unit > 0 {
                format!(
                    "buffers {} (2 reads × {} + {} ahead + 1 decoded × {})",
                    human(self.buffers),
                    human(self.unit),
                    self.prefetch,
                    human(self.decode_unit)
                )
            } else {
                format!(
                    "read buffers {} ({} ahead + 1 × {})",
                    human(self.buffers),
                    self.prefetch,
                    human(self.unit)
                )
            },
            human(self.resident_bytes),
            if self.head_resident { "yes" } else { "no" },
            ranges(&resident),
            if self.keep_compressed {
                ", held compressed"
            } else {
                ""
            },
            human(self.streamed_bytes),
        ) + &if self.expert_unit > 0 && self.streams() {
            format!(
                "; buffers include one routed expert ({})",
                human(self.expert_unit)
            )
        } else {
            String::new()
        } + &if self.expert_cache > 0 {
            format!(
                "; routed experts read as chosen, {} of recently used ones kept",
                human(self.expert_cache)
            )
        } else {
            String::new()
        }
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
            layer_decoded: vec![100 << 20; 10],
            head_bytes: 50 << 20,
            head_decoded: 50 << 20,
            kv_bytes_per_position: 1 << 20,
            expert_bytes: vec![0; 10],
            expert_unit: 0,
        }
    }

    fn req(max_memory: u64) -> PlanRequest {
        PlanRequest {
            max_memory: Some(max_memory),
            prefetch: 2,
            ctx: 16,
            keep_compressed: None,
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
            layer_decoded: vec![1 << 20; 2],
            head_bytes: 1 << 20,
            head_decoded: 1 << 20,
            kv_bytes_per_position: 0,
            expert_bytes: vec![0; 2],
            expert_unit: 0,
        };
        let small = s.smallest_budget(16, 2);
        assert_eq!(small, s.all_resident(16));
        assert!(!MemoryPlan::for_sizes(&s, req(small)).unwrap().streams());
    }

    #[test]
    fn compressed_layers_are_held_compressed_when_more_fit() {
        let s = PlanSizes {
            layer_bytes: vec![70 << 20; 10],
            layer_decoded: vec![100 << 20; 10],
            head_bytes: 35 << 20,
            head_decoded: 50 << 20,
            kv_bytes_per_position: 1 << 20,
            expert_bytes: vec![0; 10],
            expert_unit: 0,
        };
        assert_eq!(s.decode_unit(), 100 << 20);
        assert_eq!(s.buffers(2), 2 * (70 << 20) + 3 * (100 << 20));
        // Room for 4 decoded layers after head and buffers: 5 stored ones fit.
        let budget = (16 << 20) + OVERHEAD + s.buffers(2) + (50 << 20) + (400 << 20);
        let auto = MemoryPlan::for_sizes(&s, req(budget)).unwrap();
        assert!(auto.keep_compressed);
        assert_eq!(auto.resident_layers.iter().filter(|&&r| r).count(), 5);
        assert_eq!(auto.streamed_bytes, 5 * (70 << 20));
        let never = MemoryPlan::for_sizes(
            &s,
            PlanRequest {
                keep_compressed: Some(false),
                ..req(budget)
            },
        )
        .unwrap();
        assert!(!never.keep_compressed);
        assert_eq!(never.resident_layers.iter().filter(|&&r| r).count(), 4);
        // Everything fits decoded: nothing is held compressed.
        let all = MemoryPlan::for_sizes(&s, req(s.all_resident(16))).unwrap();
        assert!(!all.streams() && !all.keep_compressed);
    }

    #[test]
    fn the_expert_cache_gets_what_streaming_leaves() {
        let s = PlanSizes {
            expert_bytes: vec![80 << 20; 10],
            expert_unit: 10 << 20,
            ..sizes()
        };
        // Units are the 20 MiB before the experts, plus one expert's buffer.
        assert_eq!(s.buffers(2), 3 * (20 << 20) + (10 << 20));
        let min = s.streaming_minimum(16, 2);
        // Head resident, one layer resident, 30 MiB left for experts.
        let budget = min + (50 << 20) + (100 << 20) + (30 << 20);
        let p = MemoryPlan::for_sizes(&s, req(budget)).unwrap();
        assert_eq!(p.resident_layers.iter().filter(|&&r| r).count(), 1);
        assert_eq!(p.expert_cache, 30 << 20);
        assert!(
            p.describe().contains("30.00 MiB of recently used"),
            "{}",
            p.describe()
        );
        // Never more than the streamed layers' experts (here 10 MiB, in the last layer).
        let mut expert_bytes = vec![0; 10];
        expert_bytes[9] = 10 << 20;
        let s = PlanSizes {
            expert_bytes,
            ..sizes()
        };
        let budget = s.streaming_minimum(16, 2) + (50 << 20) + (100 << 20) + (30 << 20);
        let p = MemoryPlan::for_sizes(&s, req(budget)).unwrap();
        assert_eq!(p.resident_layers.iter().filter(|&&r| r).count(), 1);
        assert_eq!(p.expert_cache, 10 << 20);
        assert_eq!(MemoryPlan::for_sizes(&s, req(0)).unwrap().expert_cache, 0);
    }

    #[test]
    fn range_formatting() {
        assert_eq!(ranges(&[]), "none");
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
    }
}
