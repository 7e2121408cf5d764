use std::sync::Arc;
use std::time::Instant;

use crate::cli::PushArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::output::{Printer, TransferProgress, human_size};
use crate::registry::{PushRequest, Registry, push};

pub async fn run(settings: &Settings, printer: Printer, args: PushArgs) -> anyhow::Result<()> {
    let store = settings.store()?;
    let image = parse_ref(&args.image)?;
    let destination = match &args.destination {
        Some(d) => parse_ref(d)?,
        None => image.clone(),
    };
    super::require_image(&store, &image)?;
    let registry = Registry::new(super::transport(&args.transport))?;
    let started = Instant::now();
    let progress = Arc::new(TransferProgress::new(&printer, "Pushing"));
    let outcome =
        push(&registry, &store, &PushRequest { image, destination, chunk_size: args.chunk_size }, progress.clone())
            .await;
    progress.finish();
    let outcome = outcome?;
    if printer.json {
        return printer.json(&outcome);
    }
    printer.status(&format!(
        "Pushed {} ({} blobs uploaded, {}; {} already there; {} mounted; {:.1}s)",
        outcome.name,
        outcome.blobs_uploaded,
        human_size(outcome.bytes_uploaded),
        outcome.blobs_present,
        outcome.blobs_mounted,
        started.elapsed().as_secs_f64()
    ));
    printer.data(&outcome.digest);
    Ok(())
}
