use crate::cli::RmiArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::output::{Printer, UserError, human_size};

pub async fn run(settings: &Settings, printer: Printer, args: RmiArgs) -> anyhow::Result<()> {
    let store = settings.store()?;
    let names = args.images.iter().map(|i| parse_ref(i)).collect::<anyhow::Result<Vec<_>>>()?;
    // Check every name first so that a typo removes nothing.
    for n in &names {
        if store.resolve(n)?.is_none() {
            return Err(UserError::new(format!("image `{n}` is not in the local store")).into());
        }
    }
    for n in &names {
        store.untag(n)?;
        printer.status(&format!("Untagged {n}"));
    }
    if !args.no_prune {
        let report = super::blocking(move || Ok(store.gc()?)).await?;
        printer.status(&format!("Deleted {} blobs ({})", report.blobs_removed, human_size(report.bytes_freed)));
    }
    Ok(())
}
