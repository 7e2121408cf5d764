//! Progress reporting with indicatif; hidden when stderr is not a terminal or when quiet.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Printer, Verbosity};
use crate::build::BuildReporter;
use crate::image::Platform;
use crate::image::archive::Progress;

/// A byte-counting bar for save, load and other long copies.
pub struct ByteProgress {
    bar: ProgressBar,
}

impl ByteProgress {
    pub fn new(printer: &Printer, message: &str) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(0),
            if printer.show_progress() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(message.to_owned());
        Self { bar }
    }
}

impl Progress for ByteProgress {
    fn start(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(0);
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Build steps as `STEP i/n [platform]: INSTRUCTION` lines, RUN output indented, and a
/// spinner while a step works.
pub struct BuildProgress {
    printer: Printer,
    multi_platform: bool,
    spinner: Mutex<Option<ProgressBar>>,
}

impl BuildProgress {
    pub fn new(printer: Printer, multi_platform: bool) -> Self {
        Self { printer, multi_platform, spinner: Mutex::new(None) }
    }

    fn clear(&self) {
        if let Ok(mut s) = self.spinner.lock()
            && let Some(bar) = s.take()
        {
            bar.finish_and_clear();
        }
    }
}

impl BuildReporter for BuildProgress {
    fn step(&self, platform: &Platform, index: usize, total: usize, text: &str) {
        self.clear();
        let prefix = if self.multi_platform { format!("[{platform}] ") } else { String::new() };
        self.printer.status(&format!("{prefix}STEP {index}/{total}: {text}"));
        if self.printer.show_progress() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("  {spinner} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            if let Ok(mut s) = self.spinner.lock() {
                *s = Some(bar);
            }
        }
    }

    fn cached(&self, _platform: &Platform, _index: usize) {
        self.clear();
        self.printer.status("  --> using cache");
    }

    fn output(&self, line: &str) {
        if self.printer.verbosity != Verbosity::Quiet {
            match self.spinner.lock().ok().as_ref().and_then(|s| s.as_ref()).filter(|b| !b.is_hidden()) {
                Some(bar) => bar.println(format!("  | {line}")),
                None => self.printer.status(&format!("  | {line}")),
            }
        }
    }

    fn warning(&self, message: &str) {
        self.printer.warn(message);
    }
}

impl Drop for BuildProgress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Blob transfers: one bar per blob in flight plus an overall byte counter.
pub struct TransferProgress {
    multi: indicatif::MultiProgress,
    overall: ProgressBar,
    bars: Mutex<std::collections::HashMap<crate::image::Digest, ProgressBar>>,
    verbose: bool,
    printer: Printer,
}

impl TransferProgress {
    pub fn new(printer: &Printer, verb: &str) -> Self {
        let target = if printer.show_progress() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        let multi = indicatif::MultiProgress::with_draw_target(target);
        let overall = multi.add(ProgressBar::new_spinner());
        overall.set_style(
            ProgressStyle::with_template("{spinner} {msg} {binary_bytes} ({binary_bytes_per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        overall.set_message(verb.to_owned());
        overall.enable_steady_tick(std::time::Duration::from_millis(200));
        Self {
            multi,
            overall,
            bars: Mutex::new(Default::default()),
            verbose: printer.verbosity == Verbosity::Verbose,
            printer: *printer,
        }
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
        if let Ok(mut bars) = self.bars.lock() {
            for (_, b) in bars.drain() {
                b.finish_and_clear();
            }
        }
    }
}

impl crate::registry::TransferReporter for TransferProgress {
    fn event(&self, digest: &crate::image::Digest, bytes: u64, event: crate::registry::BlobEvent) {
        use crate::registry::BlobEvent;
        let short: String = digest.hex().chars().take(12).collect();
        match event {
            BlobEvent::Start => {
                let bar = self.multi.add(ProgressBar::new(bytes));
                bar.set_style(
                    ProgressStyle::with_template("  {msg} [{bar:25}] {binary_bytes}/{binary_total_bytes}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_message(short);
                if let Ok(mut bars) = self.bars.lock() {
                    bars.insert(digest.clone(), bar);
                }
            }
            BlobEvent::Progress => {
                self.overall.inc(bytes);
                if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(digest).cloned()) {
                    bar.inc(bytes);
                }
            }
            BlobEvent::Done => {
                if let Some(bar) = self.bars.lock().ok().and_then(|mut b| b.remove(digest)) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if self.verbose {
                    self.printer.status(&format!("  {short}: done ({})", super::human_size(bytes)));
                }
            }
            BlobEvent::Present | BlobEvent::Mounted if self.verbose => {
                let what = if event == BlobEvent::Present { "already there" } else { "mounted" };
                self.printer.status(&format!("  {short}: {what}"));
            }
            BlobEvent::Present | BlobEvent::Mounted => {}
        }
    }
}
