//! What the user sees while a conversion runs: a progress bar by source bytes
//! (rate and ETA) on stderr when it is a terminal, notes and warnings.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress and messages on stderr.
pub struct Reporter {
    quiet: bool,
    interactive: bool,
    bar: Option<ProgressBar>,
}

impl Reporter {
    /// `quiet` hides the bar and the notes (warnings are still shown); the
    /// bar is only drawn when stderr is a terminal.
    pub fn new(quiet: bool) -> Reporter {
        Reporter {
            quiet,
            interactive: !quiet && std::io::stderr().is_terminal(),
            bar: None,
        }
    }

    /// Whether progress bars are drawn (also used for hf-hub's download bars).
    pub fn interactive(&self) -> bool {
        self.interactive
    }

    /// Starts the conversion bar over `total` source bytes.
    pub fn start(&mut self, total: u64) {
        if !self.interactive {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bar = Some(bar);
    }

    /// Names the stage being converted.
    pub fn stage(&self, label: &str) {
        if let Some(b) = &self.bar {
            b.set_message(label.to_string());
        }
    }

    /// Counts `bytes` of source as converted.
    pub fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// An informational line (hidden by `--quiet`).
    pub fn note(&self, msg: &str) {
        if !self.quiet {
            self.print(&format!("prep: {msg}"));
        }
    }

    /// A warning (always shown).
    pub fn warn(&self, msg: &str) {
        self.print(&format!("prep: warning: {msg}"));
    }
}
