use crate::cli::CheckArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::output::{Printer, Table, UserError};
use crate::runtime::preflight::Outcome;

pub async fn run(settings: &Settings, printer: Printer, args: CheckArgs) -> anyhow::Result<()> {
    let clusterfile = crate::cli::cluster::resolve(&args.hosts, args.image.clone(), &printer)?;
    let connect = crate::cli::cluster::connect_options(&args.hosts, &clusterfile)?;
    let image = match &clusterfile.cluster.image {
        Some(name) => {
            let store = settings.store()?;
            let reference = parse_ref(name)?;
            super::blocking(move || Ok(store.image(&reference)?)).await?
        }
        None => None,
    };
    // What the plugins promise for `pre-init-host` (hostnames, clock repairs) counts.
    let plugins = super::plugins_of(settings, &printer, &clusterfile).await?;
    let image_env = image.as_ref().map(super::run::image_env).unwrap_or_default();
    let mut options = crate::cli::cluster::preflight_options(&args.checks)?
        .for_cluster(&clusterfile.cluster, image.as_ref())
        .with_kubelet_config(&clusterfile.documents)
        .with_plugins(&plugins, &clusterfile.cluster, &image_env);
    if let Some(image) = image.clone() {
        let store = settings.store()?;
        let need = super::blocking(move || Ok(crate::runtime::distribute::disk_need(&store, &image, true)?)).await?;
        options = options.with_disk_need(need);
    }
    printer.status(&format!("Checking {} hosts", clusterfile.cluster.hosts.len()));
    let (report, fleet) = crate::runtime::check(&clusterfile.cluster, &connect, &options).await;
    fleet.close().await;
    if printer.json {
        printer.json(&serde_json::json!({ "results": report.results, "facts": report.facts }))?;
    } else {
        let mut table = Table::new(&["HOST", "CHECK", "RESULT", "DETAIL"]);
        for r in &report.results {
            table.row(vec![r.host.to_string(), r.check.to_owned(), r.outcome.label().to_owned(), r.detail.clone()]);
        }
        printer.data(&table.render());
    }
    match report.failed() {
        0 if report.results.iter().any(|r| r.outcome == Outcome::Repair) => {
            printer.status("All checks passed, but for those a plugin repairs in pre-init-host");
            Ok(())
        }
        0 => {
            printer.status("All checks passed");
            Ok(())
        }
        n => Err(UserError::new(format!("{n} preflight checks failed; nothing was changed on any host"))
            .with_hint("fix them, or skip a check with `--skip-checks NAME`")
            .into()),
    }
}
