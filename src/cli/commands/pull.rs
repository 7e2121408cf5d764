use std::sync::Arc;
use std::time::Instant;

use crate::cli::PullArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::output::{Printer, TransferProgress, UserErrorExt, human_size};
use crate::registry::{PlatformChoice, PullRequest, Registry, pull};

pub async fn run(settings: &Settings, printer: Printer, args: PullArgs) -> anyhow::Result<()> {
    let store = settings.store()?;
    let source = parse_ref(&args.image)?;
    let platforms = match (&args.platform, args.all_platforms) {
        (_, true) => PlatformChoice::All,
        (Some(p), false) => PlatformChoice::One(p.parse().user_error()?),
        (None, false) => PlatformChoice::Host,
    };
    let registry = Registry::new(super::transport(&args.transport))?;
    let started = Instant::now();
    let progress = Arc::new(TransferProgress::new(&printer, "Pulling"));
    let outcome = pull(&registry, &store, &PullRequest::new(source, platforms), progress.clone()).await;
    progress.finish();
    let outcome = outcome?;
    if printer.json {
        return printer.json(&outcome);
    }
    printer.status(&format!(
        "Pulled {} [{}] ({} blobs downloaded, {}; {} already here; {:.1}s)",
        outcome.name,
        outcome.platforms.join(", "),
        outcome.blobs_downloaded,
        human_size(outcome.bytes_downloaded),
        outcome.blobs_present,
        started.elapsed().as_secs_f64()
    ));
    printer.data(&outcome.digest);
    Ok(())
}
