use crate::cli::SaveArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::image::archive;
use crate::output::{ByteProgress, Printer, human_size};

pub async fn run(settings: &Settings, printer: Printer, args: SaveArgs) -> anyhow::Result<()> {
    let store = settings.store()?;
    let names = args.images.iter().map(|i| parse_ref(i)).collect::<anyhow::Result<Vec<_>>>()?;
    let images = names.iter().map(|n| super::require_image(&store, n)).collect::<anyhow::Result<Vec<_>>>()?;
    let output = args.output.clone();
    super::blocking(move || {
        let progress = ByteProgress::new(&printer, "Saving");
        Ok(archive::save(&store, &images, &output, &progress)?)
    })
    .await?;
    let size = std::fs::metadata(&args.output).map(|m| m.len()).unwrap_or(0);
    printer.status(&format!("Saved {} to {} ({})", args.images.join(", "), args.output.display(), human_size(size)));
    Ok(())
}
