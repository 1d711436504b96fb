//! `runner push DIR URL`: publish a container to object storage.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use strata_runner::units::human;

/// Arguments of `push`.
#[derive(Args)]
pub struct PushArgs {
    /// The local container directory (written by `prep`).
    dir: PathBuf,
    /// Where to publish it: s3://BUCKET/PREFIX (AWS_* environment; AWS_ENDPOINT_URL
    /// and AWS_ALLOW_HTTP=true for S3-compatible servers).
    url: String,
    /// Only warnings and errors on stderr.
    #[arg(short, long)]
    quiet: bool,
}

/// Runs `push`: verifies the container, removes the remote manifest, uploads
/// every listed file, then the manifest, so that readers never see a manifest
/// whose files are not all in place.
pub fn run(a: PushArgs) -> Result<i32> {
    crate::init_logging(if a.quiet {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Info
    });
    if !strata_runner::remote::is_url(&a.url) {
        anyhow::bail!(
            "{}: not a container URL (s3://BUCKET/PREFIX); to copy to a local directory use cp -r",
            a.url
        );
    }
    let started = std::time::Instant::now();
    let (files, bytes) = strata_runner::remote::push(&a.dir, &a.url)?;
    println!(
        "pushed {} to {}: {files} files, {} in {:.1} s",
        a.dir.display(),
        a.url.trim_end_matches('/'),
        human(bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}
