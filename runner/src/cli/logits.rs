//! `runner logits DIR (--prompt TEXT | --ids 1,2,3) [--all-positions]`.

use anyhow::{bail, Result};
use clap::Args;
use strata_runner::engine::Engine;
use strata_runner::model::Want;

use crate::{Common, Dir};

/// Arguments of `logits`.
#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    dir: Dir,
    /// Text to tokenize (as the tokenizer does by default).
    #[arg(long, conflicts_with = "ids")]
    prompt: Option<String>,
    /// Comma-separated token ids.
    #[arg(long)]
    ids: Option<String>,
    /// One row per input position instead of the last only.
    #[arg(long)]
    all_positions: bool,
    #[command(flatten)]
    common: Common,
}

/// Runs `logits`.
pub fn run(mut a: LogitsArgs) -> Result<i32> {
    a.common.setup()?;
    a.dir.resolve()?;
    let mut engine = Engine::open(&a.dir.dir, &a.common.engine_options())?;
    let ids = match (&a.prompt, &a.ids) {
        (Some(p), None) => super::tokenizer(&engine)?.encode(p, true)?,
        (None, Some(s)) => super::parse_ids(s)?,
        _ => bail!("give --prompt TEXT or --ids 1,2,3"),
    };
    let want = if a.all_positions {
        Want::All
    } else {
        Want::Last
    };
    let logits = engine.forward(&ids, want)?;
    let rows: Vec<&[f32]> = (0..logits.rows()).map(|i| logits.row(i)).collect();
    let out = serde_json::json!({ "ids": ids, "logits": rows });
    println!("{out}");
    Ok(0)
}
