//! `runner`: streams a strata container and generates, chats, scores text,
//! dumps logits, benchmarks itself, verifies and describes containers.

mod cli;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use strata_runner::engine::EngineOptions;
use strata_runner::io::IoChoice;
use strata_runner::units::parse_size;

/// Run a strata container: a language model streamed layer by layer.
#[derive(Parser)]
#[command(name = "runner", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--keep-compressed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KeepCompressed {
    /// Whichever keeps more layers resident.
    Auto,
    /// Hold resident layers compressed.
    Yes,
    /// Hold resident layers decoded.
    No,
}

/// Options shared by the commands that run the model.
#[derive(Args, Clone)]
pub struct Common {
    /// Memory budget, e.g. 512MiB, 4GiB; 0 keeps nothing resident (stream every layer).
    /// Default: available memory minus a margin.
    #[arg(long, value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// I/O path for reading layers. With mmap, the container's files must
    /// stay unchanged while the runner runs (see mmap below).
    #[arg(long, value_enum, default_value_t = IoChoice::Auto)]
    io: IoChoice,
    /// Layers read ahead of the one being computed.
    #[arg(long, default_value_t = 2)]
    prefetch: usize,
    /// Skip the sha256 check of each file on its first read.
    #[arg(long)]
    no_verify: bool,
    /// For containers made with `prep --compress`: hold resident layers
    /// compressed and decode them on use (yes), decoded (no), or whichever
    /// keeps more layers resident (auto).
    #[arg(long, value_enum, default_value_t = KeepCompressed::Auto)]
    keep_compressed: KeepCompressed,
    /// Context length (KV cache positions); default min(model maximum, 4096).
    #[arg(long)]
    ctx: Option<usize>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short, long)]
    quiet: bool,
}

impl Common {
    fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            max_memory: self.max_memory,
            io: self.io,
            prefetch: self.prefetch.max(1),
            verify: !self.no_verify,
            ctx: self.ctx,
            keep_compressed: match self.keep_compressed {
                KeepCompressed::Auto => None,
                KeepCompressed::Yes => Some(true),
                KeepCompressed::No => Some(false),
            },
            sequences: 1,
        }
    }

    fn setup(&self) -> Result<()> {
        let level = match (self.quiet, self.verbose) {
            (true, _) => log::LevelFilter::Warn,
            (false, 0) => log::LevelFilter::Info,
            (false, 1) => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        };
        init_logging(level);
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {threads} compute threads: {e}"))?;
        log::debug!("compute threads: {threads}");
        Ok(())
    }
}

fn init_logging(level: log::LevelFilter) {
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp(None)
        .format_target(false)
        .try_init();
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt; the text goes to stdout, statistics to stderr.
    Generate(cli::generate::GenerateArgs),
    /// Interactive multi-turn chat with the model's chat template (/reset, /exit, Ctrl-D).
    Chat(cli::chat::ChatArgs),
    /// Print logits as JSON: {"ids": [...], "logits": [[...], ...]}.
    Logits(cli::logits::LogitsArgs),
    /// Score a text file: mean negative log-likelihood and perplexity.
    Perplexity(cli::perplexity::PerplexityArgs),
    /// Measure prefill and decode speed, bytes read and I/O wait (one JSON line).
    Bench(cli::bench::BenchArgs),
    /// Check every file of a container against its manifest.
    Verify(cli::verify::VerifyArgs),
    /// Describe a container: architecture, quantization, sizes, source.
    Inspect(cli::inspect::InspectArgs),
    /// Print the memory plan for a container or a named model shape (no files needed).
    Plan(cli::plan::PlanArgs),
    /// Serve the model over HTTP: OpenAI and Ollama APIs, and a chat page at /.
    Serve(cli::serve::ServeArgs),
    /// Publish a container to object storage (s3://BUCKET/PREFIX), manifest last.
    Push(cli::push::PushArgs),
}

/// Exit status for a failed verification.
const EXIT_DAMAGED: i32 = 1;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => cli::generate::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Perplexity(a) => cli::perplexity::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Verify(a) => cli::verify::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Plan(a) => cli::plan::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Push(a) => cli::push::run(a),
    };
    strata_runner::remote::report_traffic();
    match result {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("runner: error: {}", error_text(&e));
            std::process::exit(2);
        }
    }
}

/// The container argument: a directory, or a URL read through the cache.
#[derive(Args, Clone)]
pub struct Dir {
    /// The container: a directory written by `prep`, or a URL of one published
    /// with `runner push`: s3://BUCKET/PREFIX (AWS_* environment;
    /// AWS_ENDPOINT_URL for S3-compatible servers) or https://HOST/PATH/.
    dir: PathBuf,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Where a remote container's files are cached.
#[derive(Args, Clone, Default)]
pub struct RemoteArgs {
    /// Cache directory for containers given by URL [default: ~/.cache/strata].
    #[arg(long, env = "STRATA_CACHE", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Most bytes of stage files the cache keeps (least recently used evicted),
    /// e.g. 20GiB; 0 keeps none: layers stream from the remote into memory.
    /// Default: no bound.
    #[arg(long, env = "STRATA_CACHE_MAX", value_parser = parse_size, value_name = "SIZE")]
    cache_max: Option<u64>,
}

impl RemoteArgs {
    /// The options for attaching a container URL.
    pub fn options(&self) -> strata_runner::remote::RemoteOptions {
        strata_runner::remote::RemoteOptions {
            cache_dir: self
                .cache_dir
                .clone()
                .unwrap_or_else(strata_runner::remote::cache::default_dir),
            cache_max: self.cache_max,
        }
    }

    /// `path` itself, or, for a container URL, the local directory it is
    /// attached to (see `strata_runner::remote`).
    pub fn resolve(&self, path: &std::path::Path) -> Result<PathBuf> {
        match path.to_str() {
            Some(s) if strata_runner::remote::is_url(s) => {
                init_logging(log::LevelFilter::Info);
                Ok(strata_runner::remote::resolve(s, &self.options())?)
            }
            _ => Ok(path.to_path_buf()),
        }
    }
}

impl Dir {
    /// Attaches a container URL (see [`RemoteArgs::resolve`]); afterwards the
    /// argument is the local directory.
    pub fn resolve(&mut self) -> Result<()> {
        self.dir = self.remote.resolve(&self.dir)?;
        Ok(())
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
