use crate::cli::TagArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::output::Printer;

pub async fn run(settings: &Settings, printer: Printer, args: TagArgs) -> anyhow::Result<()> {
    let store = settings.store()?;
    let source = parse_ref(&args.source)?;
    let targets = args.targets.iter().map(|t| parse_ref(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let image = super::require_image(&store, &source)?;
    for t in &targets {
        store.tag(t, &image.entry.digest, &image.entry.media_type, image.entry.size)?;
        printer.status(&format!("Tagged {t}"));
    }
    Ok(())
}
