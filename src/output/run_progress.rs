//! What `kiln run` shows: a header per phase, host-prefixed script output, one byte bar per
//! host while the rootfs is sent. Every line also goes to the per-run log.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Printer;
use crate::runtime::distribute::{DistributeOutcome, DistributeReporter};
use crate::runtime::run::RunReporter;

pub struct RunProgress {
    printer: Printer,
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    log: Mutex<Option<std::fs::File>>,
}

impl RunProgress {
    /// `log`: the per-run log file, if one could be created.
    pub fn new(printer: Printer, log: Option<std::fs::File>) -> Self {
        let target = if printer.show_progress() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Self {
            printer,
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
            log: Mutex::new(log),
        }
    }

    fn line(&self, text: &str) {
        if let Ok(mut log) = self.log.lock()
            && let Some(f) = log.as_mut()
        {
            let _ = writeln!(f, "{} {text}", chrono::Utc::now().format("%H:%M:%S"));
        }
        self.multi.suspend(|| self.printer.status(text));
    }
}

impl DistributeReporter for RunProgress {
    fn host_started(&self, host: &str, bytes_to_send: u64) {
        if bytes_to_send == 0 {
            return;
        }
        let bar = self.multi.add(ProgressBar::new(bytes_to_send));
        bar.set_style(
            ProgressStyle::with_template(
                "  {msg:15} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(host.to_owned());
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(host.to_owned(), bar);
        }
    }

    fn sent(&self, host: &str, bytes: u64) {
        if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(host).cloned()) {
            bar.inc(bytes);
        }
    }

    fn host_done(&self, host: &str, outcome: &DistributeOutcome) {
        if let Some(bar) = self.bars.lock().ok().and_then(|mut b| b.remove(host)) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.line(&format!(
            "  {host}: sent {} in {} blobs ({} already there){}",
            super::human_size(outcome.bytes_sent),
            outcome.blobs_sent,
            outcome.blobs_present,
            if outcome.rootfs_extracted { ", rootfs extracted" } else { ", rootfs up to date" }
        ));
    }
}

impl RunReporter for RunProgress {
    fn phase(&self, id: &str, title: &str) {
        self.line(&format!("==> {id}: {title}"));
    }

    fn step(&self, host: &str, message: &str) {
        self.line(&format!("  [{host}] {message}"));
    }
}
