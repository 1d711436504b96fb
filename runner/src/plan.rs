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
/// Part of the default margin that does not scale with memory: the runtime's
/// own fixed cost outside [`OVERHEAD`] (binary and libraries, thread stacks,
/// allocator slack, the few pages of embedding rows and checksummed reads that
/// go through the page cache).
pub const RUNTIME_RESERVE: u64 = 32 << 20;
/// The default context is shrunk to fit a budget in steps of this many positions
/// (down to one step; a model whose maximum is smaller keeps its maximum).
pub const CTX_STEP: usize = 256;

/// The margin the default budget leaves out of `available` bytes (the
/// process's cgroup limit, v1 or v2, or `MemAvailable`, whichever is smaller):
/// [`RUNTIME_RESERVE`] plus an eighth, for the page cache that buffered reads
/// and mmap leave charged to the cgroup (O_DIRECT reads, the default, leave
/// none) and allocator fragmentation; never more than 512 MiB unless that is
/// under a tenth (large machines keep a tenth).
pub fn default_margin(available: u64) -> u64 {
    let scaled = RUNTIME_RESERVE.saturating_add(available / 8).min(512 << 20);
    scaled.max(available / 10)
}

/// The budget used when `--max-memory` is not given: `available` less
/// [`default_margin`] (640 MiB -> 528 MiB, 1 GiB -> 864 MiB, 4 GiB and more ->
/// less 512 MiB or a tenth). At least 1 byte, so that it never reads as
/// `--max-memory 0`.
pub fn default_budget(available: u64) -> u64 {
    available.saturating_sub(default_margin(available)).max(1)
}

/// The budget a plan fits in: `--max-memory` as given (`None` for 0: no
/// limit, keep nothing resident), or [`default_budget`] of the available
/// memory (4 GiB when it cannot be read).
pub fn resolve_budget(max_memory: Option<u64>) -> Option<u64> {
    match max_memory {
        Some(0) => None,
        Some(b) => Some(b),
        None => {
            let available = crate::units::available_memory().unwrap_or(4 << 30);
            let budget = default_budget(available);
            log::debug!(
                "memory: default budget {} = available {} less a margin of {}",
                human(budget),
                human(available),
                human(default_margin(available))
            );
            Some(budget)
        }
    }
}

/// The context length to use when the user did not give `--ctx`: `want` (the
/// default), or, when the KV cache for `want` positions does not fit in
/// `budget` beside the runtime and the read buffers (or beside the whole
/// model, when that is smaller), the largest multiple of [`CTX_STEP`] that
/// does; then the second value says so, for the log. Refuses, naming the
/// numbers, when even [`CTX_STEP`] positions (or `want`, if smaller) do not fit.
pub fn fit_default_ctx(
    sizes: &PlanSizes,
    budget: Option<u64>,
    prefetch: usize,
    want: usize,
) -> Result<(usize, Option<String>)> {
    let want = want.max(1);
    let Some(budget) = budget else {
        return Ok((want, None));
    };
    if sizes.smallest_budget(want, prefetch) <= budget {
        return Ok((want, None));
    }
    let floor = want.min(CTX_STEP);
    let per = sizes.kv_bytes_per_position.max(1);
    // Positions that fit beside each way of running: streaming, or all resident.
    let fits = [
        OVERHEAD.saturating_add(sizes.buffers(prefetch)),
        OVERHEAD.saturating_add(sizes.total_decoded()),
    ]
    .iter()
    .filter_map(|&base| budget.checked_sub(base))
    .map(|room| usize::try_from(room / per).unwrap_or(usize::MAX))
    .max()
    .unwrap_or(0);
    let ctx = if fits >= CTX_STEP {
        (fits.min(want) / CTX_STEP) * CTX_STEP
    } else {
        fits.min(want)
    };
    if ctx < floor {
        let need = sizes.smallest_budget(floor, prefetch);
        return Err(RunnerError::Memory {
            budget: human(budget),
            reason: format!(
                "even a context of {floor} positions needs {} (KV cache {}, runtime {}, read buffers {} with --prefetch {prefetch}); the default of {want} positions needs {}; raise --max-memory (or free memory), or lower --prefetch",
                human(need),
                human(sizes.kv_cache(floor)),
                human(OVERHEAD),
                human(sizes.buffers(prefetch)),
                human(sizes.smallest_budget(want, prefetch)),
            ),
        });
    }
    let note = format!(
        "memory: the default context of {want} positions needs a {} KV cache, more than the budget of {} leaves; using --ctx {ctx} ({}). Give --ctx or --max-memory to choose",
        human(sizes.kv_cache(want)),
        human(budget),
        human(sizes.kv_cache(ctx)),
    );
    Ok((ctx, Some(note)))
}

/// What a draft model kept wholly resident for speculative decoding costs:
/// its weights decoded and its KV cache for `ctx` positions (the runtime
/// allowance is the target's, shared).
pub fn draft_bytes(draft: &PlanSizes, ctx: usize) -> u64 {
    draft.total_decoded().saturating_add(draft.kv_cache(ctx))
}

/// [`fit_default_ctx`] for a target and a resident draft sharing `budget`:
/// `want` positions when the draft ([`draft_bytes`]) and the target's
/// smallest plan fit together, else the largest multiple of [`CTX_STEP`]
/// that does (the second value says so); refuses with the numbers when even
/// [`CTX_STEP`] positions (or `want`, if smaller) do not fit.
pub fn fit_pair_ctx(
    target: &PlanSizes,
    draft: &PlanSizes,
    budget: Option<u64>,
    prefetch: usize,
    want: usize,
) -> Result<(usize, Option<String>)> {
    let want = want.max(1);
    let Some(budget) = budget else {
        return Ok((want, None));
    };
    let need =
        |ctx: usize| draft_bytes(draft, ctx).saturating_add(target.smallest_budget(ctx, prefetch));
    if need(want) <= budget {
        return Ok((want, None));
    }
    let floor = want.min(CTX_STEP);
    let mut ctx = (want / CTX_STEP) * CTX_STEP;
    while ctx > floor && need(ctx) > budget {
        ctx -= CTX_STEP;
    }
    let ctx = ctx.max(floor);
    if need(ctx) > budget {
        return Err(RunnerError::Memory {
            budget: human(budget),
            reason: format!(
                "even a context of {ctx} positions needs {}: the draft {} resident (weights {}, KV cache {}) and the target {} (KV cache {}, runtime {}, read buffers {} with --prefetch {prefetch}); raise --max-memory, or use a smaller draft",
                human(need(ctx)),
                human(draft_bytes(draft, ctx)),
                human(draft.total_decoded()),
                human(draft.kv_cache(ctx)),
                human(target.smallest_budget(ctx, prefetch)),
                human(target.kv_cache(ctx)),
                human(OVERHEAD),
                human(target.buffers(prefetch)),
            ),
        });
    }
    let note = format!(
        "memory: the default context of {want} positions needs {} for the draft and the target, more than the budget of {}; using --ctx {ctx}. Give --ctx or --max-memory to choose",
        human(need(want)),
        human(budget),
    );
    Ok((ctx, Some(note)))
}

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

/// Bytes of the KV cache for `ctx` positions (f32 keys and values), or an
/// error naming the manifest's numbers when they overflow 64 bits.
pub fn kv_cache_bytes(a: &Architecture, ctx: usize) -> Result<u64> {
    [a.num_kv_heads, a.head_dim, 2 * 4, a.num_layers]
        .into_iter()
        .try_fold(ctx as u64, u64::checked_mul)
        .ok_or_else(|| {
            RunnerError::Invalid(format!(
                "manifest.json: a KV cache of {ctx} positions × {} KV heads × head_dim {} × {} layers overflows 64 bits",
                a.num_kv_heads, a.head_dim, a.num_layers
            ))
        })
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
            kv_bytes_per_position: kv_cache_bytes(&c.manifest.architecture, 1)?,
            expert_bytes: c
                .layers
                .iter()
                .map(|l| {
                    if c.manifest.architecture.moe.is_none() || l.compressed() {
                        return Ok(0);
                    }
                    let file = std::path::Path::new(&l.name);
                    let start = strata_format::layout::experts_start(&l.header, file)?;
                    l.len.checked_sub(start).ok_or_else(|| RunnerError::Tensor {
                        file: l.name.clone(),
                        tensor: strata_format::names::moe_expert(0, "gate"),
                        reason: format!("starts at {start}, past the file's {} bytes", l.len),
                    })
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
            expert_bytes.push(size.saturating_sub(before.file_size()?));
        }
        let head_bytes = shapes::head_weight_bytes(arch, stages)
            .ok_or_else(|| RunnerError::Invalid("the layout holds no output head weight".into()))?;
        Ok(PlanSizes {
            layer_decoded: layer_bytes.clone(),
            layer_bytes,
            head_bytes,
            head_decoded: head_bytes,
            kv_bytes_per_position: kv_cache_bytes(arch, 1)?,
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

    // Sums and products of sizes saturate: a saturated size exceeds every
    // budget, so a plan for it fails with the sizes named, never wraps.

    /// Size of one streaming unit: the largest layer read (an MoE layer's
    /// part before its experts), or a head chunk of at least 8 MiB (never
    /// more than the head itself when layers are smaller).
    pub fn unit(&self) -> u64 {
        let max_layer = self
            .layer_bytes
            .iter()
            .zip(self.expert_bytes.iter().chain(std::iter::repeat(&0)))
            .map(|(l, e)| l.saturating_sub(*e))
            .max()
            .unwrap_or(0);
        max_layer.max(MIN_UNIT).min(self.head_bytes.max(max_layer))
    }

    /// Bytes of every layer and the head weight together, as stored.
    pub fn total(&self) -> u64 {
        saturating_sum(std::iter::once(&self.head_bytes).chain(&self.layer_bytes))
    }

    /// Bytes of every layer and the head weight together, decoded.
    pub fn total_decoded(&self) -> u64 {
        saturating_sum(std::iter::once(&self.head_decoded).chain(&self.layer_decoded))
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
        let n = (prefetch as u64).saturating_add(1);
        self.expert_unit.saturating_add(if self.compressed() {
            self.unit()
                .saturating_mul(2)
                .saturating_add(n.saturating_mul(self.decode_unit()))
        } else {
            n.saturating_mul(self.unit())
        })
    }

    /// The smallest `--max-memory` with which streaming works: KV cache,
    /// runtime allowance and the pipeline's buffers.
    pub fn streaming_minimum(&self, ctx: usize, prefetch: usize) -> u64 {
        self.kv_cache(ctx)
            .saturating_add(OVERHEAD)
            .saturating_add(self.buffers(prefetch))
    }

    /// The smallest `--max-memory` that keeps every layer and the head resident (decoded).
    pub fn all_resident(&self, ctx: usize) -> u64 {
        self.kv_cache(ctx)
            .saturating_add(OVERHEAD)
            .saturating_add(self.total_decoded())
    }

    /// The smallest budget a plan accepts: streaming, or all resident when
    /// that is smaller (a model smaller than its read buffers).
    pub fn smallest_budget(&self, ctx: usize, prefetch: usize) -> u64 {
        self.streaming_minimum(ctx, prefetch)
            .min(self.all_resident(ctx))
    }
}

/// The sum of `sizes`, saturating at `u64::MAX`.
fn saturating_sum<'a>(sizes: impl IntoIterator<Item = &'a u64>) -> u64 {
    sizes.into_iter().fold(0, |a, &b| a.saturating_add(b))
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
        let Some(budget) = resolve_budget(req.max_memory) else {
            plan.buffers = sizes.buffers(req.prefetch);
            plan.streamed_bytes = sizes.total();
            return Ok(plan);
        };
        plan.budget = Some(budget);
        let fixed = kv_cache.saturating_add(OVERHEAD);
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
            plan.streamed_bytes = plan.streamed_bytes.saturating_add(head_bytes);
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
                plan.streamed_bytes = plan.streamed_bytes.saturating_add(layer_bytes[i]);
                streamed_experts = streamed_experts
                    .saturating_add(sizes.expert_bytes.get(i).copied().unwrap_or(0));
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
    fn sizes_from_headers_never_overflow() {
        let mut a = strata_format::shapes::Shape::named("tiny")
            .expect("the tiny shape")
            .architecture;
        assert!(kv_cache_bytes(&a, 1).is_ok());
        (a.num_kv_heads, a.head_dim, a.num_layers) = (1 << 20, 1 << 24, 1 << 20);
        let err = kv_cache_bytes(&a, 1).unwrap_err().to_string();
        assert!(
            err.contains("KV cache of 1 positions") && err.contains("overflows 64 bits"),
            "{err}"
        );
        // Sizes no file can have, with a context and read-ahead no one asks
        // for: every minimum saturates and every plan but the keep-nothing
        // one is a named error (the real sizes fit an unlimited budget).
        let huge = PlanSizes {
            layer_bytes: vec![u64::MAX / 2; 4],
            layer_decoded: vec![u64::MAX; 4],
            head_bytes: u64::MAX,
            head_decoded: u64::MAX,
            kv_bytes_per_position: u64::MAX / 3,
            expert_bytes: vec![u64::MAX; 4],
            expert_unit: u64::MAX,
        };
        for (s, fits) in [(sizes(), true), (huge, false)] {
            for (ctx, prefetch) in [(usize::MAX, usize::MAX), (1, usize::MAX), (usize::MAX, 1)] {
                assert_eq!(s.streaming_minimum(ctx, prefetch), u64::MAX);
                assert_eq!(s.all_resident(ctx).max(s.total()), s.all_resident(ctx));
                for max_memory in [Some(0), Some(1 << 30), Some(u64::MAX)] {
                    let r = PlanRequest {
                        max_memory,
                        prefetch,
                        ctx,
                        keep_compressed: None,
                    };
                    if let Ok(p) = MemoryPlan::for_sizes(&s, r) {
                        assert!(fits || max_memory == Some(0), "{}", p.describe());
                    }
                }
            }
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
        let e = MemoryPlan::for_sizes(&s, req(min - 1)).unwrap_err();
        assert!(
            matches!(&e, RunnerError::Memory { budget, reason }
                if budget == &human(min - 1) && reason.contains("of read buffers")),
            "{e}"
        );
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
    fn the_default_budget_scales_its_margin() {
        const MIB: u64 = 1 << 20;
        // Small cgroups: 32 MiB + an eighth.
        assert_eq!(default_budget(640 * MIB), 528 * MIB);
        assert_eq!(default_budget(1024 * MIB), 864 * MIB);
        assert_eq!(default_budget(2048 * MIB), 1760 * MIB);
        // From about 3.75 GiB on the margin is 512 MiB, as it always was...
        assert_eq!(default_budget(4096 * MIB), 3584 * MIB);
        assert_eq!(default_margin(4096 * MIB), 512 * MIB);
        // ... and a tenth from 5 GiB on.
        assert_eq!(default_margin(64 << 30), (64 << 30) / 10);
        // Never 0 (that would mean `--max-memory 0`), never an overflow.
        assert_eq!(default_budget(0), 1);
        assert_eq!(default_budget(16 * MIB), 1);
        assert!(default_budget(u64::MAX) < u64::MAX);
        // The margin grows with the memory, the budget too.
        let mut last = (0, 0);
        for m in (1..=8192).map(|m| m * MIB) {
            let now = (default_margin(m), default_budget(m));
            assert!(now.0 >= last.0 && now.1 >= last.1, "at {m}");
            last = now;
        }
    }

    /// A model like Qwen2.5-1.5B in nf4: 56 KiB of KV cache per position.
    fn kv_sizes() -> PlanSizes {
        PlanSizes {
            kv_bytes_per_position: 56 << 10,
            ..sizes()
        }
    }

    #[test]
    fn the_default_context_shrinks_to_fit_the_budget() {
        let s = kv_sizes();
        let want = 4096;
        // It fits: unchanged, nothing said.
        let need = s.smallest_budget(want, 2);
        assert_eq!(
            fit_default_ctx(&s, Some(need), 2, want).unwrap(),
            (want, None)
        );
        assert_eq!(fit_default_ctx(&s, None, 2, want).unwrap(), (want, None));
        // 100 MiB for the KV cache beside the runtime and the buffers: 1828
        // positions fit, rounded down to 1792.
        let budget = OVERHEAD + s.buffers(2) + (100 << 20);
        let (ctx, note) = fit_default_ctx(&s, Some(budget), 2, want).unwrap();
        assert_eq!(ctx, 1792);
        let note = note.unwrap();
        assert!(note.contains("using --ctx 1792"), "{note}");
        assert!(note.contains("default context of 4096"), "{note}");
        assert!(note.contains("224.00 MiB KV cache"), "{note}");
        // The plan for the chosen context is accepted, and streams.
        let plan = MemoryPlan::for_sizes(&s, PlanRequest { ctx, ..req(budget) }).unwrap();
        assert!(plan.streams());
        assert_eq!(plan.kv_cache, s.kv_cache(1792));
        // With --prefetch 1 the buffers are smaller: more context fits.
        let (ctx1, _) = fit_default_ctx(&s, Some(budget), 1, want).unwrap();
        assert_eq!(ctx1, 3584);
    }

    #[test]
    fn a_budget_too_small_for_the_smallest_context_is_refused_with_numbers() {
        let s = kv_sizes();
        // One position short of 256.
        let budget = OVERHEAD + s.buffers(2) + s.kv_cache(255);
        let err = fit_default_ctx(&s, Some(budget), 2, 4096)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&human(budget)), "{err}");
        assert!(
            err.contains("context of 256 positions needs 410.00 MiB"),
            "{err}"
        );
        assert!(err.contains("KV cache 14.00 MiB"), "{err}");
        assert!(err.contains("read buffers 300.00 MiB"), "{err}");
        assert!(err.contains("--max-memory"), "{err}");
        // 256 positions exactly: accepted.
        let budget = OVERHEAD + s.buffers(2) + s.kv_cache(256);
        assert_eq!(fit_default_ctx(&s, Some(budget), 2, 4096).unwrap().0, 256);
        // A model whose maximum is under one step keeps it or is refused.
        let small = OVERHEAD + s.buffers(2) + s.kv_cache(100);
        assert_eq!(
            fit_default_ctx(&s, Some(small), 2, 100).unwrap(),
            (100, None)
        );
        let err = fit_default_ctx(&s, Some(small - 1), 2, 100)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("even a context of 100 positions needs"),
            "{err}"
        );
        // Nothing fits beside the runtime: refused, not an underflow.
        let err = fit_default_ctx(&s, Some(1), 2, 4096)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("even a context of 256 positions needs"),
            "{err}"
        );
    }

    #[test]
    fn range_formatting() {
        assert_eq!(ranges(&[]), "none");
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
    }
}
