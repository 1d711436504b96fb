//! `runner chat DIR`: interactive multi-turn chat. The KV cache is kept
//! across turns: each turn feeds only the tokens the cache does not hold.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use clap::Args;
use strata_runner::text::chat::{ChatTemplate, Message};

use super::generate::{generate, DraftArgs, SamplingArgs};
use crate::{Common, Dir};

/// Arguments of `chat`.
#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    dir: Dir,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    draft: DraftArgs,
    #[command(flatten)]
    common: Common,
}

/// Runs `chat`.
pub fn run(mut a: ChatArgs) -> Result<i32> {
    a.common.setup()?;
    a.dir.resolve()?;
    a.draft.resolve(&a.dir.remote)?;
    let (mut engine, mut spec) = a.draft.open(&a.dir.dir, &a.common.engine_options())?;
    let template = ChatTemplate::load(&a.dir.dir)?
        .with_context(|| format!("{} has no chat template", a.dir.dir.display()))?;
    let base: Vec<Message> = a
        .system
        .iter()
        .map(|s| Message::new("system", s.as_str()))
        .collect();
    let mut messages = base.clone();
    let mut cached: Vec<u32> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    eprintln!("chat: type a message; /reset starts over, /exit or Ctrl-D quits");
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = base.clone();
                cached.clear();
                engine.model.truncate(0);
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new("user", line.as_str()));
        let text = template.render(&messages, true)?;
        let ids = super::tokenizer(&engine)?.encode(&text, false)?;
        let common = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        // Always feed at least one token so there are logits to sample from.
        let keep = common.min(ids.len() - 1);
        engine.model.truncate(keep);
        cached.truncate(keep);
        if ids.len() > engine.model.ctx() {
            eprintln!(
                "(the conversation exceeds --ctx {}; use /reset)",
                engine.model.ctx()
            );
            messages.pop();
            continue;
        }
        let (reply, stats) = generate(
            &mut engine,
            &ids[keep..],
            &a.sampling,
            &mut cached,
            spec.as_mut(),
        )?;
        println!();
        if !a.common.quiet {
            stats.report();
        }
        let reply_text = super::tokenizer(&engine)?.decode(&reply, true)?;
        messages.push(Message::new("assistant", reply_text));
    }
    Ok(0)
}
