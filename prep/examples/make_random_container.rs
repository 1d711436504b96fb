//! Writes a strata container of a real model's shape with random NF4 weights,
//! directly (no source checkpoint), with the same writer and manifest as
//! `prep`, so `runner verify` passes and `runner generate` runs on it.
//!
//! ```text
//! cargo run --release -p strata-prep --example make_random_container -- \
//!     --shape llama3-70b --out ~/.cache/strata-bench/llama3-70b-nf4 \
//!     --tokenizer-from "$(scripts/fetch-smollm2.sh | tail -n 1)"
//! ```
//!
//! Shapes (`strata_format::shapes`): `tiny` (a few MB), `llama2-7b`,
//! `llama3-8b`, `llama3-70b` (about 38.5 GB), `llama3.1-405b` (about
//! 218 GB), `mixtral-8x7b` (about 25 GB) and `mixtral-8x7b-2l` (its first 2
//! layers, about 1.7 GB). Layers are nf4 (block 64), the embeddings and the head int8, as
//! `prep --quant nf4` writes them. The sizes of every file are printed first;
//! `--dry-run` stops there, and so does a container that would not fit the
//! disk (exit status 1). `--tokenizer-from DIR` copies a tokenizer in (its
//! ids must fit the shape's vocabulary; SmolLM2's 49152 fit all shapes) so
//! that `runner generate --prompt` works. The same `--seed` gives the same
//! bytes. The last line printed is the container directory.

use std::path::PathBuf;

use clap::Parser;
use strata_format::shapes::{Shape, SHAPE_NAMES};
use strata_prep::error::human_bytes;
use strata_prep::random::{write_random_container, RandomOptions, Sizes};

/// Write a random-weight container of a named model shape.
#[derive(Debug, Parser)]
struct Args {
    /// The model shape: tiny, llama2-7b, llama3-8b, llama3-70b, llama3.1-405b,
    /// mixtral-8x7b, mixtral-8x7b-2l.
    #[arg(long, value_parser = parse_shape)]
    shape: Shape,
    /// Destination directory (created; must be empty or absent).
    #[arg(long, required_unless_present = "dry_run")]
    out: Option<PathBuf>,
    /// Seed of the weight generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Copy the tokenizer files of this folder into the container.
    #[arg(long, value_name = "DIR")]
    tokenizer_from: Option<PathBuf>,
    /// Only print the size of every file and the total.
    #[arg(long)]
    dry_run: bool,
}

fn parse_shape(s: &str) -> Result<Shape, String> {
    Shape::named(s).ok_or_else(|| format!("known shapes: {}", SHAPE_NAMES.join(", ")))
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("make_random_container: error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> strata_prep::Result<()> {
    let sizes = Sizes::of(&args.shape)?;
    let a = &args.shape.architecture;
    let n = sizes.stages.len();
    let (embed, head) = (sizes.stages[0].1, sizes.stages[n - 1].1);
    println!(
        "{}: {} layers, hidden {}, {} heads ({} KV), intermediate {}, vocabulary {}; nf4 layers, int8 embeddings{}",
        args.shape.name,
        a.num_layers,
        a.hidden_size,
        a.num_attention_heads,
        a.num_kv_heads,
        a.intermediate_size,
        a.vocab_size,
        if a.tie_word_embeddings { " (tied head)" } else { " and head" },
    );
    println!(
        "per layer: {} ({} bytes) × {}",
        human_bytes(sizes.largest_layer()),
        sizes.largest_layer(),
        a.num_layers
    );
    println!("embed: {} ({embed} bytes)", human_bytes(embed));
    println!("head: {} ({head} bytes)", human_bytes(head));
    println!(
        "total: {} ({} bytes)",
        human_bytes(sizes.total()),
        sizes.total()
    );
    let Some(out) = args.out.clone().filter(|_| !args.dry_run) else {
        return Ok(());
    };
    let opts = RandomOptions {
        shape: args.shape.clone(),
        out,
        seed: args.seed,
        tokenizer_from: args.tokenizer_from.clone(),
    };
    let w = write_random_container(&opts, &|done, total, f| {
        eprintln!(
            "[{done}/{total}] {} ({})",
            f.path.display(),
            human_bytes(f.bytes)
        );
    })?;
    eprintln!(
        "wrote {} files, {} in {:.1} s ({:.0} MB/s)",
        w.files,
        human_bytes(w.bytes),
        w.seconds,
        w.bytes as f64 / 1e6 / w.seconds.max(1e-9)
    );
    println!("{}", w.dir.display());
    Ok(())
}
