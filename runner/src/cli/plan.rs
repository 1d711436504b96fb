//! `runner plan (DIR | --shape NAME) [--draft DIR | --draft-shape NAME] [--max-memory SIZE] [--ctx N] [--prefetch N] [--json]`:
//! the memory plan for a container, or for a named model shape without its files.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use strata_format::manifest::{Architecture, MANIFEST_NAME};
use strata_format::shapes::{Shape, SHAPE_NAMES};
use strata_runner::container::Container;
use strata_runner::engine::DEFAULT_CTX;
use strata_runner::plan::{self, MemoryPlan, PlanRequest, PlanSizes, OVERHEAD};
use strata_runner::units::{human, parse_size};

/// Arguments of `plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// A container directory (or its manifest.json), or a container URL.
    #[arg(required_unless_present = "shape", conflicts_with = "shape")]
    dir: Option<PathBuf>,
    #[command(flatten)]
    remote: crate::RemoteArgs,
    /// Plan for a named model shape instead of a container: tiny, llama2-7b,
    /// llama3.2-1b, llama3-8b, llama3-70b, llama3.1-405b, mixtral-8x7b, mixtral-8x7b-2l (nf4 layers, int8 embeddings and head).
    #[arg(long)]
    shape: Option<String>,
    /// Memory budget to plan for, e.g. 4GiB; 0 keeps nothing resident.
    /// Default: what `generate` would use on this machine.
    #[arg(long, value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Context length (KV cache positions); default min(model maximum, 4096).
    #[arg(long)]
    ctx: Option<usize>,
    /// Layers read ahead of the one being computed.
    #[arg(long, default_value_t = 2)]
    prefetch: usize,
    /// A draft container for speculative decoding: kept resident, it is
    /// counted first in the budget and the target plans with what is left.
    #[arg(long, conflicts_with = "draft_shape")]
    draft: Option<PathBuf>,
    /// A named model shape as the draft (see --shape), e.g. llama3.2-1b.
    #[arg(long)]
    draft_shape: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The plan sizes of a named shape or a container directory (or its manifest.json).
fn sizes_of(
    shape: Option<&str>,
    dir: Option<&PathBuf>,
) -> Result<(String, Architecture, PlanSizes)> {
    match (shape, dir) {
        (Some(name), _) => {
            let Some(shape) = Shape::named(name) else {
                bail!(
                    "unknown shape {name:?}; known shapes: {}",
                    SHAPE_NAMES.join(", ")
                );
            };
            let sizes = PlanSizes::of_layout(&shape.architecture, &shape.stages())?;
            Ok((format!("shape {name}"), shape.architecture, sizes))
        }
        (None, Some(path)) => {
            let dir = if path.file_name().is_some_and(|n| n == MANIFEST_NAME) && path.is_file() {
                path.parent().map(PathBuf::from).unwrap_or_default()
            } else {
                path.clone()
            };
            let c = Container::open(&dir, false)?;
            let sizes = PlanSizes::of_container(&c)?;
            let what = c
                .remote()
                .map_or_else(|| dir.display().to_string(), |r| r.url().to_string());
            Ok((what, c.manifest.architecture, sizes))
        }
        (None, None) => bail!("give a container directory or --shape NAME"),
    }
}

/// Runs `plan`.
pub fn run(mut a: PlanArgs) -> Result<i32> {
    if let Some(d) = &a.dir {
        a.dir = Some(a.remote.resolve(d)?);
    }
    if let Some(d) = &a.draft {
        a.draft = Some(a.remote.resolve(d)?);
    }
    let (what, arch, sizes) = sizes_of(a.shape.as_deref(), a.dir.as_ref())?;
    let draft = match (&a.draft_shape, &a.draft) {
        (None, None) => None,
        (shape, dir) => Some(sizes_of(shape.as_deref(), dir.as_ref())?),
    };
    // As the engine does: at least one unit is read ahead.
    let prefetch = a.prefetch.max(1);
    // As the engine does: the budget is read once, and a default context
    // shrinks to fit it (when not even the smallest fits, the plan says why).
    let budget = plan::resolve_budget(a.max_memory);
    let ctx = match a.ctx {
        Some(ctx) => ctx.max(1),
        None => {
            let max_pos = draft.as_ref().map_or(arch.max_position_embeddings, |d| {
                d.1.max_position_embeddings
                    .min(arch.max_position_embeddings)
            });
            let want = (max_pos as usize).min(DEFAULT_CTX);
            let fit = match &draft {
                None => plan::fit_default_ctx(&sizes, budget, prefetch, want),
                Some(d) => plan::fit_pair_ctx(&sizes, &d.2, budget, prefetch, want),
            };
            match fit {
                Ok((ctx, note)) => {
                    if let Some(note) = note {
                        eprintln!("{note}");
                    }
                    ctx
                }
                Err(_) => want,
            }
        }
    };
    // A draft is resident and counted first: the target plans with the rest.
    let draft_need = draft.as_ref().map(|d| plan::draft_bytes(&d.2, ctx));
    let target_budget = match (budget, draft_need) {
        (Some(b), Some(need)) => Some(b.saturating_sub(need).max(1)),
        (b, _) => b,
    };
    let plan = MemoryPlan::for_sizes(
        &sizes,
        PlanRequest {
            max_memory: Some(target_budget.unwrap_or(0)),
            prefetch,
            ctx,
            keep_compressed: None,
        },
    );
    let n = sizes.layer_bytes.len();
    let layers_total: u64 = sizes.layer_bytes.iter().sum();
    let largest = sizes.layer_bytes.iter().copied().max().unwrap_or(0);
    let stream_min = sizes.streaming_minimum(ctx, prefetch);
    let stream_min_1 = sizes.streaming_minimum(ctx, 1);
    let resident = sizes.all_resident(ctx);
    if a.json {
        let out = serde_json::json!({
            "model": what,
            "num_layers": n,
            "layer_bytes_max": largest,
            "layers_bytes": layers_total,
            "head_weight_bytes": sizes.head_bytes,
            "ctx": ctx,
            "prefetch": prefetch,
            "kv_cache_bytes": sizes.kv_cache(ctx),
            "overhead_bytes": OVERHEAD,
            "unit_bytes": sizes.unit(),
            "streaming_minimum_bytes": stream_min,
            "streaming_minimum_prefetch1_bytes": stream_min_1,
            "smallest_budget_bytes": sizes.smallest_budget(ctx, prefetch),
            "all_resident_bytes": resident,
            "remote": a.dir.as_deref().and_then(strata_runner::remote::lookup).map(|r| serde_json::json!({
                "url": r.url(),
                "cache_dir": r.cache().root(),
                "cache_max_bytes": r.cache().max(),
                "stage_bytes": r.stage_bytes(),
                "streamed": r.streams_any(),
                "transfer_bytes_per_read": strata_runner::remote::PIECE * strata_runner::remote::IN_FLIGHT as u64,
            })),
            "draft": draft.as_ref().map(|(dw, _, ds)| serde_json::json!({
                "model": dw,
                "weights_bytes": ds.total_decoded(),
                "kv_cache_bytes": ds.kv_cache(ctx),
                "resident_bytes": plan::draft_bytes(ds, ctx),
            })),
            "plan": match &plan {
                Ok(p) => serde_json::json!({
                    "budget_bytes": p.budget,
                    "buffers_bytes": p.buffers,
                    "resident_bytes": p.resident_bytes,
                    "streamed_bytes_per_token": p.streamed_bytes,
                    "head_resident": p.head_resident,
                    "resident_layers": p.resident_layers.iter().filter(|r| **r).count(),
                    "expert_cache_bytes": p.expert_cache,
                }),
                Err(e) => serde_json::json!({"error": e.to_string()}),
            },
        });
        println!("{out}");
        return Ok(0);
    }
    println!("model:            {what}: {}", describe(&arch));
    println!(
        "layers:           {n} files, {} each at most, {} together",
        human(largest),
        human(layers_total)
    );
    println!("head weight:      {}", human(sizes.head_bytes));
    println!(
        "KV cache:         {} (--ctx {ctx}, f32 keys and values)",
        human(sizes.kv_cache(ctx))
    );
    println!("runtime:          {} allowance", human(OVERHEAD));
    println!(
        "read buffers:     {} ({prefetch} ahead + 1, {} each{})",
        human(sizes.buffers(prefetch)),
        human(sizes.unit()),
        if sizes.expert_unit > 0 {
            format!(", and one routed expert of {}", human(sizes.expert_unit))
        } else {
            String::new()
        }
    );
    if let Some(r) = a.dir.as_deref().and_then(strata_runner::remote::lookup) {
        println!("remote:           {}", r.describe());
    }
    if prefetch != 1 {
        println!(
            "with --prefetch 1: streams from {}",
            human(stream_min_1.min(resident))
        );
    }
    if let Some((dw, da, ds)) = &draft {
        println!("draft:            {dw}: {}", describe(da));
        println!(
            "draft resident:   {} (weights {}, KV cache {}), counted first in the budget",
            human(plan::draft_bytes(ds, ctx)),
            human(ds.total_decoded()),
            human(ds.kv_cache(ctx))
        );
        if let (Some(b), Some(t)) = (budget, target_budget) {
            println!("target's budget:  {} of {}", human(t), human(b));
        }
    }
    match &plan {
        Ok(p) => println!("{}", p.describe()),
        Err(e) => println!("requested budget: {e}"),
    }
    let extra = draft_need.unwrap_or(0);
    println!(
        "needs {} to stream (--prefetch {prefetch}, --ctx {ctx}{}); {} keeps everything resident",
        human(sizes.smallest_budget(ctx, prefetch).saturating_add(extra)),
        if extra > 0 { ", with the draft" } else { "" },
        human(resident.saturating_add(extra))
    );
    Ok(0)
}

/// One line of architecture.
fn describe(a: &Architecture) -> String {
    format!(
        "{} layers, hidden {}, {} heads ({} KV) of {}, intermediate {}, vocabulary {}",
        a.num_layers,
        a.hidden_size,
        a.num_attention_heads,
        a.num_kv_heads,
        a.head_dim,
        a.intermediate_size,
        a.vocab_size
    )
}
