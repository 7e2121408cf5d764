use crate::cli::ImagesArgs;
use crate::cli::settings::Settings;
use crate::output::{Printer, Table, human_size};

#[derive(serde::Serialize)]
struct Row {
    name: String,
    digest: String,
    media_type: String,
    platforms: Vec<String>,
    size: u64,
    created: Option<String>,
}

pub async fn run(settings: &Settings, printer: Printer, args: ImagesArgs) -> anyhow::Result<()> {
    let store = settings.store()?;
    let rows = super::blocking(move || {
        let mut rows = Vec::new();
        for entry in store.list()? {
            let image = store.image_at(entry)?;
            rows.push(Row {
                name: image.name().to_owned(),
                digest: image.entry.digest.to_string(),
                media_type: image.entry.media_type.clone(),
                platforms: image.platforms.iter().map(|p| p.platform.to_string()).collect(),
                size: image.platforms.iter().map(|p| p.layers_size()).sum(),
                created: image.platforms.first().and_then(|p| p.config.created().clone()),
            });
        }
        Ok(rows)
    })
    .await?;
    if printer.json {
        return printer.json(&rows);
    }
    let mut table = Table::new(&["NAME", "DIGEST", "PLATFORMS", "SIZE", "CREATED"]);
    for r in rows {
        let digest = if args.no_trunc { r.digest } else { r.digest.chars().take(19).collect() };
        let created = r
            .created
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(&c).ok())
            .map(|c| c.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default();
        table.row(vec![r.name, digest, r.platforms.join(","), human_size(r.size), created]);
    }
    printer.data(&table.render());
    Ok(())
}
