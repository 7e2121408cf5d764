use crate::cli::LoadArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::image::archive;
use crate::output::{ByteProgress, Printer};

pub async fn run(settings: &Settings, printer: Printer, args: LoadArgs) -> anyhow::Result<()> {
    let store = settings.store()?;
    let tag = args.tag.as_deref().map(parse_ref).transpose()?;
    let input = args.input.clone();
    let loaded = super::blocking(move || {
        let progress = ByteProgress::new(&printer, "Loading");
        Ok(archive::load(&store, &input, tag.as_ref(), &progress)?)
    })
    .await?;
    if args.json {
        return printer.json(&loaded);
    }
    for l in &loaded {
        printer.status(&format!("Loaded {} ({})", l.name, l.digest));
    }
    Ok(())
}
