//! One module per `runner` subcommand.

pub mod bench;
pub mod chat;
pub mod generate;
pub mod inspect;
pub mod logits;
pub mod perplexity;
pub mod plan;
pub mod push;
pub mod serve;
pub mod verify;

use anyhow::{bail, Context, Result};
use strata_runner::engine::Engine;
use strata_runner::text::tokenizer::TextTokenizer;

/// The engine's tokenizer, or an error saying the container has none.
pub fn tokenizer(engine: &Engine) -> Result<&TextTokenizer> {
    engine.tokenizer.as_ref().with_context(|| {
        format!(
            "{} has no tokenizer.json: use token ids (`logits --ids`, `bench`)",
            engine.container.dir.display()
        )
    })
}

/// Parses `1,2,3` into token ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids: Vec<u32> = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .with_context(|| format!("{p:?} is not a token id"))
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        bail!("--ids is empty");
    }
    Ok(ids)
}
