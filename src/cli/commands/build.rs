use std::time::Instant;

use crate::build::{self, BuildRequest};
use crate::cli::BuildArgs;
use crate::cli::settings::{Settings, parse_pairs, parse_ref};
use crate::image::media::Compression;
use crate::image::{ImageType, Platform};
use crate::output::{BuildProgress, Printer, UserErrorExt};

/// `SOURCE_DATE_EPOCH` (reproducible builds), when set.
fn source_date_epoch() -> anyhow::Result<Option<chrono::DateTime<chrono::Utc>>> {
    let Ok(value) = std::env::var(crate::env::SOURCE_DATE_EPOCH) else {
        return Ok(None);
    };
    value
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .map(Some)
        .ok_or_else(|| anyhow::anyhow!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970"))
        .user_error()
}

pub async fn run(settings: &Settings, printer: Printer, args: BuildArgs) -> anyhow::Result<()> {
    let platforms = match &args.platform {
        Some(p) => Platform::parse_list(p).user_error()?,
        None => vec![Platform::host()],
    };
    let request = BuildRequest {
        kubefile: args.kubefile.clone().unwrap_or_else(|| args.context.join("Kubefile")),
        context: args.context.clone(),
        tags: args.tags.iter().map(|t| parse_ref(t)).collect::<anyhow::Result<_>>()?,
        build_args: parse_pairs("--build-arg", &args.build_args)?,
        labels: parse_pairs("--label", &args.labels)?,
        annotations: parse_pairs("--annotation", &args.annotations)?,
        no_cache: args.no_cache,
        image_type: args.image_type.parse::<ImageType>().user_error()?,
        compression: if args.compression == "zstd" { Compression::Zstd } else { Compression::Gzip },
        platforms,
        offline: (args.build_mode == "all").then(|| crate::build::OfflineOptions {
            image_lists: args.image_lists.clone(),
            ignored_lists: args.ignored_image_lists.clone(),
            max_pulls: args.max_pull_procs.max(1),
            transport: super::transport(&args.transport),
            sources: args.image_sources.clone(),
        }),
        source_date_epoch: source_date_epoch()?,
    };
    let store = settings.store()?;
    let started = Instant::now();
    let multi = request.platforms.len() > 1;
    let outcome = super::blocking(move || {
        let reporter = BuildProgress::new(printer, multi);
        Ok(build::build(&store, &request, &reporter)?)
    })
    .await?;
    if printer.json {
        return printer.json(&outcome);
    }
    let built: usize = outcome.platforms.iter().map(|p| p.layers_built).sum();
    let cached: usize = outcome.platforms.iter().map(|p| p.layers_cached).sum();
    printer.status(&format!(
        "Built {} ({} layers built, {} cached, {:.1}s)",
        outcome.tags.join(", "),
        built,
        cached,
        started.elapsed().as_secs_f64()
    ));
    printer.data(&outcome.digest.to_string());
    Ok(())
}
