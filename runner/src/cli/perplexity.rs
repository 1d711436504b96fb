//! `runner perplexity DIR --file F [--ctx N] [--json]`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use strata_runner::engine::Engine;
use strata_runner::model::Want;

use crate::{Common, Dir};

/// Arguments of `perplexity`.
#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    dir: Dir,
    /// The text file to score.
    #[arg(long)]
    file: PathBuf,
    /// Print {"tokens", "predicted", "mean_nll", "perplexity"} as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

/// `-log softmax(row)[target]` computed in f64.
pub fn nll(row: &[f32], target: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - row[target as usize] as f64
}

/// Runs `perplexity`: the text is cut into windows of `--ctx` tokens, each
/// scored from an empty cache; every token but each window's first is predicted.
pub fn run(mut a: PerplexityArgs) -> Result<i32> {
    a.common.setup()?;
    a.dir.resolve()?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?;
    let mut engine = Engine::open(&a.dir.dir, &a.common.engine_options())?;
    let ids = super::tokenizer(&engine)?.encode(&text, true)?;
    if ids.len() < 2 {
        bail!(
            "{} has {} tokens; at least 2 are needed",
            a.file.display(),
            ids.len()
        );
    }
    let ctx = engine.model.ctx();
    let mut total = 0f64;
    let mut count = 0usize;
    for window in ids.chunks(ctx) {
        if window.len() < 2 {
            continue;
        }
        engine.model.truncate(0);
        let logits = engine.forward(window, Want::All)?;
        for i in 0..window.len() - 1 {
            total += nll(logits.row(i), window[i + 1]);
            count += 1;
        }
    }
    let mean = total / count as f64;
    let ppl = mean.exp();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"tokens": ids.len(), "predicted": count, "mean_nll": mean, "perplexity": ppl})
        );
    } else {
        println!("tokens: {}", ids.len());
        println!("predicted: {count}");
        println!("mean_nll: {mean:.6}");
        println!("perplexity: {ppl:.6}");
    }
    Ok(0)
}
