use crate::cli::CheckArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::output::{Printer, Table, UserError};
use crate::runtime::preflight::Outcome;

pub async fn run(settings: &Settings, printer: Printer, args: CheckArgs) -> anyhow::Result<()> {
    let clusterfile = crate::cli::cluster::resolve(&args.hosts, args.image.clone(), &printer)?;
    let connect = crate::cli::cluster::connect_options(&args.hosts, &clusterfile)?;
    let mut options = crate::cli::cluster::preflight_options(&args.checks)?;
    if let Some(name) = &clusterfile.cluster.image {
        let store = settings.store()?;
        let reference = parse_ref(name)?;
        let image = super::blocking(move || Ok(store.image(&reference)?)).await?;
        if let Some(image) = image {
            options.image_platforms = Some(image.platforms.iter().map(|p| p.platform.clone()).collect());
            options.rootfs_bytes = image.platforms.iter().map(|p| p.layers_size()).max().unwrap_or(0);
            if image
                .platforms
                .iter()
                .flat_map(|p| p.manifest.layers())
                .any(|l| l.media_type().to_string().ends_with("+zstd"))
            {
                options.extra_commands.push("zstd".into());
            }
        }
    }
    if let crate::clusterfile::Registry::Local(r) = &clusterfile.cluster.registry {
        options.ports_on_registry_hosts.push(r.port);
    }
    printer.status(&format!("Checking {} hosts", clusterfile.cluster.hosts.len()));
    let (report, fleet) = crate::runtime::check(&clusterfile.cluster, &connect, &options).await;
    fleet.close().await;
    if printer.json {
        printer.json(&serde_json::json!({ "results": report.results, "facts": report.facts }))?;
    } else {
        let mut table = Table::new(&["HOST", "CHECK", "RESULT", "DETAIL"]);
        for r in &report.results {
            let outcome = match r.outcome {
                Outcome::Pass => "ok",
                Outcome::Fail => "FAIL",
                Outcome::Skipped => "skipped",
            };
            table.row(vec![r.host.to_string(), r.check.to_owned(), outcome.to_owned(), r.detail.clone()]);
        }
        printer.data(&table.render());
    }
    match report.failed() {
        0 => {
            printer.status("All checks passed");
            Ok(())
        }
        n => Err(UserError::new(format!("{n} preflight checks failed; nothing was changed on any host"))
            .with_hint("fix them, or skip a check with `--skip-checks NAME`")
            .into()),
    }
}
