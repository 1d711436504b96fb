//! `prep`: converts a Hugging Face checkpoint into a strata container.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use strata_format::compress::Codec;
use strata_format::dtype::{check_block_size, DType, DEFAULT_BLOCK};
use strata_prep::plan::QuantPolicy;
use strata_prep::progress::Reporter;
use strata_prep::Options;

/// Encoding of the decoder layers' linear weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Quant {
    /// 4-bit NormalFloat, block-wise f16 scale searched near the absmax (embeddings and head: int8).
    Nf4,
    /// 8-bit symmetric integers, block-wise f16 scale.
    Int8,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
}

impl Quant {
    fn dtype(self) -> DType {
        match self {
            Quant::Nf4 => DType::Nf4,
            Quant::Int8 => DType::Int8,
            Quant::Bf16 => DType::Bf16,
            Quant::F16 => DType::F16,
            Quant::F32 => DType::F32,
        }
    }
}

const AFTER_HELP: &str = "\
ENCODINGS
  The linear weights of the decoder layers (attention q/k/v/o, MLP gate/up/down) take --quant.
  Norm weights and all biases are always f32. The embedding matrix and an untied output head are
  int8 when --quant is nf4 (4 bits there costs much more accuracy than in the layers; int8 is
  near-lossless), and otherwise take --quant too. A head tied to the embeddings is stored once, as
  `embed.tokens` in embed.strata; head.strata then holds only `final_norm`.

  From a GGUF file, without --quant, every tensor keeps the GGUF's own encoding (F32, F16, BF16,
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K to Q6_K: no second rounding); --quant re-encodes from the
  dequantized values.

SOURCES
  SOURCE is a folder with config.json and model.safetensors (or model.safetensors.index.json and
  its shards), a Hugging Face Hub id `org/name`, or a GGUF file (a folder holding one, or any part
  of a split NAME-00001-of-0000N.gguf: all parts are read). Checkpoint classes: see the README's
  table; weights in F32, F16 or BF16. GGUF architectures: llama (Llama, Mistral, SmolLM2), qwen2,
  qwen3, gemma2, gemma3, phi3; config, tokenizer.json and the chat template come from its
  metadata. Tokenizer files present in a folder SOURCE are copied verbatim.
  Hub downloads go to the standard cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
  ~/.cache/huggingface/hub) and files already there are not downloaded again. HF_ENDPOINT selects
  another endpoint; HF_HUB_OFFLINE=1 uses the cache only; if the Hub cannot be reached, a cached
  snapshot of the revision is used. The token comes from --hf-token, else HF_TOKEN, else
  $HF_HOME/token.

SAFETY
  Every file is written as NAME.tmp, fsynced and renamed; manifest.json is written last, so a
  directory without it is incomplete. Rerunning the same command after a crash or kill resumes:
  complete stage files are validated and kept, and the result is byte-identical to an
  uninterrupted run. A directory holding another model's container or job is refused, and so is a
  second prep writing into the same directory. Free space is checked before anything is written.
  --delete-originals deletes each weight shard (only shards: never config or tokenizer files; in
  a Hub cache, the blob and its snapshot link) once every tensor it holds is in stage files that
  were fsynced, re-read from disk and sha256-verified; the sha256 of the shard is recorded first.
  Without the flag, sources are only read.

OUTPUT
  A progress bar (source bytes, rate, ETA) is drawn on stderr when it is a terminal; a summary
  (bytes in and out, ratio, seconds, MB/s with MB = 10^6 bytes) follows on stderr. --json prints
  the summary as one JSON object on stdout. Exit status: 0 on success, 1 on any error, 2 on bad
  usage.";

/// Convert a Hugging Face checkpoint into a strata container.
#[derive(Debug, Parser)]
#[command(name = "prep", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Checkpoint folder, or Hugging Face Hub repository id (org/name).
    #[arg(value_name = "SOURCE")]
    source: String,
    /// Container directory to write (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Encoding of the decoder layers' linear weights [default: nf4; for a
    /// GGUF source, its own encodings kept as they are].
    #[arg(long, value_enum)]
    quant: Option<Quant>,
    /// Elements per quantization block (a multiple of 32 from 32 to 4096).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BLOCK, value_parser = parse_block)]
    block_size: u32,
    /// Compress tensors with zstd where it saves at least 5% (16-bit weights and
    /// embeddings: about a fifth; nf4/int8 payloads stay as they are): `zstd`,
    /// `zstd:LEVEL` (1-22, default 3), or `zstd-nosplit[:LEVEL]` (without the
    /// byte split of 16-bit values). Worth it when the container will be read
    /// from slow storage (HDD, USB, SD card, network share).
    #[arg(long, value_name = "CODEC", value_parser = parse_compress)]
    compress: Option<Codec>,
    /// Delete each source weight shard once everything it holds is written and verified.
    #[arg(long)]
    delete_originals: bool,
    /// Hub revision: branch, tag or commit (default main).
    #[arg(long, value_name = "REV")]
    revision: Option<String>,
    /// Hub access token (default: $HF_TOKEN, else the cache's token file). Never printed.
    #[arg(long, value_name = "TOKEN", hide_default_value = true)]
    hf_token: Option<String>,
    /// Worker threads for encoding (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// No progress bar, notes or summary on stderr (warnings and errors still show).
    #[arg(long)]
    quiet: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_compress(s: &str) -> Result<Codec, String> {
    let (name, level) = match s.split_once(':') {
        Some((n, l)) => (
            n,
            l.parse::<i32>()
                .ok()
                .filter(|l| (1..=22).contains(l))
                .ok_or_else(|| format!("zstd level {l:?} is not a number from 1 to 22"))?,
        ),
        None => (s, 3),
    };
    let bytesplit = match name {
        "zstd" => true,
        "zstd-nosplit" => false,
        other => {
            return Err(format!(
                "unknown codec {other:?}: use zstd, zstd:LEVEL or zstd-nosplit[:LEVEL]"
            ))
        }
    };
    Ok(Codec { level, bytesplit })
}

fn parse_block(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    check_block_size(n).map_err(|e| e.to_string())?;
    Ok(n)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usize::from(n))
            .build_global()
            .context("setting up the worker threads")?;
    }
    let opts = Options {
        source: cli.source,
        out: cli.out,
        quant: QuantPolicy {
            weights: cli.quant.unwrap_or(Quant::Nf4).dtype(),
            block_size: cli.block_size,
            compress: cli.compress,
            keep_source: cli.quant.is_none(),
        },
        delete_originals: cli.delete_originals,
        revision: cli.revision,
        hf_token: cli.hf_token,
        quiet: cli.quiet,
    };
    let mut rep = Reporter::new(cli.quiet);
    let summary = strata_prep::run(&opts, &mut rep)?;
    rep.note(&summary.human());
    if cli.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prep: error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, skipping a cause whose text the
/// message already contains (typed errors print their source themselves).
fn error_text(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}
