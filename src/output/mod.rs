//! Everything kiln shows a person: status lines, progress bars, tables, JSON, errors.
//! Capabilities never print; they report through traits implemented here.

mod diagnostics;
mod progress;
mod run_progress;
mod table;

pub use diagnostics::{ExitKind, UserError, UserErrorExt, render_error};
pub use progress::{BuildProgress, ByteProgress, TransferProgress};
pub use run_progress::RunProgress;
pub use table::Table;

use std::io::Write;

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Only data and errors.
    Quiet,
    Default,
    Verbose,
}

/// The one place that writes to stdout and stderr.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub verbosity: Verbosity,
    /// Data goes out as JSON (for scripts); status stays on stderr.
    pub json: bool,
}

impl Printer {
    /// A status line on stderr (`Verb object (detail)`), unless quiet.
    pub fn status(&self, line: &str) {
        if self.verbosity != Verbosity::Quiet {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }

    /// A warning on stderr, always shown.
    pub fn warn(&self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "warning: {line}");
    }

    /// Data on stdout.
    pub fn data(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = out.write_all(b"\n");
        }
    }

    /// A value as pretty JSON on stdout.
    pub fn json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        self.data(&serde_json::to_string_pretty(value)?);
        Ok(())
    }

    pub fn show_progress(&self) -> bool {
        self.verbosity == Verbosity::Default
    }
}

/// `1.5 GiB`-style sizes.
pub fn human_size(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}
