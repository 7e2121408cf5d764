//! kiln: pack a Kubernetes-based system into one OCI cluster image and deliver it to hosts
//! with no internet. See `docs/ARCHITECTURE.md` for the map of modules.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod build;
pub mod cli;
pub mod clusterfile;
pub mod diagnostic;
pub mod env;
pub mod image;
pub mod kubefile;
pub mod kubernetes;
pub mod output;
pub mod plugins;
pub mod registry;
pub mod runtime;
pub mod secret;
pub mod ssh;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

/// Entry point: parse, set up logging and the runtime, run, render errors, pick the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let color = std::env::var_os(env::NO_COLOR).is_none() && std::io::stderr().is_terminal();
            let (text, kind) = output::render_error(&err, color);
            let _ = std::io::stderr().write_all(text.as_bytes());
            ExitCode::from(kind as u8)
        }
    }
}

/// `error: cause: cause` on one line (causes that repeat their wrapper's text are skipped), for
/// messages that must fit in one line or one diagnostic label.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn init_tracing(verbose: bool) {
    let default = if verbose { "kiln=debug" } else { "kiln=warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env(env::KILN_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
