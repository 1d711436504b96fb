//! `runner verify DIR [--json]`.

use anyhow::Result;
use clap::Args;
use strata_format::verify::verify_container;
use strata_format::Manifest;

use crate::{Dir, EXIT_DAMAGED};

/// Arguments of `verify`.
#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    dir: Dir,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `verify`: exit 0 when intact, 1 naming each damaged file.
pub fn run(mut a: VerifyArgs) -> Result<i32> {
    a.dir.resolve()?;
    let dir = &a.dir.dir;
    let m = Manifest::load(dir)?;
    let report = match strata_runner::remote::lookup(dir) {
        Some(r) => r.verify(&m),
        None => verify_container(dir, &m),
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for p in &report.problems {
            let name = match strata_runner::remote::lookup(dir) {
                Some(r) => format!("{}/{}", r.url(), p.file),
                None => dir.join(&p.file).display().to_string(),
            };
            eprintln!("{name}: {}", p.problem);
        }
        if report.ok() {
            println!(
                "ok: {} files, {} bytes verified",
                report.files_checked, report.bytes_checked
            );
        } else {
            println!(
                "damaged: {} of {} files",
                report.problems.len(),
                report.files_checked
            );
        }
    }
    Ok(if report.ok() { 0 } else { EXIT_DAMAGED })
}
