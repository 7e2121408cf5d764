use crate::cli::DeleteArgs;
use crate::cli::settings::Settings;
use crate::clusterfile::Clusterfile;
use crate::output::{Printer, RunProgress};

pub async fn run(settings: &Settings, printer: Printer, args: DeleteArgs) -> anyhow::Result<()> {
    let clusters_dir = settings.root.join("clusters");
    let saved = |name: &str| crate::cli::cluster::saved_clusterfile(&clusters_dir, name);
    let targets: Vec<Clusterfile> = if args.all {
        crate::cli::cluster::saved_clusters(&clusters_dir).iter().map(|n| saved(n)).collect::<anyhow::Result<_>>()?
    } else if let Some(name) = &args.cluster {
        vec![saved(name)?]
    } else {
        vec![crate::cli::cluster::resolve(&args.hosts, None, &printer)?]
    };
    if targets.is_empty() {
        printer.status("No clusters to delete");
        return Ok(());
    }
    let mut outcomes = Vec::new();
    for clusterfile in &targets {
        let name = &clusterfile.cluster.name;
        let connect = crate::cli::cluster::connect_options(&args.hosts, clusterfile)?;
        let reporter = RunProgress::new(printer, None);
        let plugins = super::plugins_of(settings, &printer, clusterfile).await?;
        let outputs = clusters_dir.join(name).join("plugins");
        let outcome =
            crate::runtime::delete::delete(clusterfile, &connect, args.force, &plugins, Some(&outputs), &reporter)
                .await
                .map_err(|e| anyhow::Error::new(e).context(format!("deleting cluster `{name}`")))?;
        for (ip, why) in &outcome.not_cleaned {
            printer.warn(&format!("{ip} was not cleaned (unreachable: {why}); clean it when it is back"));
        }
        // The state goes once every host is clean; a forced delete keeps it for the skipped ones.
        let state = clusters_dir.join(name);
        if outcome.not_cleaned.is_empty() {
            for file in ["journal.json", "Clusterfile"] {
                let _ = std::fs::remove_file(state.join(file));
            }
            if args.prune {
                let _ = std::fs::remove_file(state.join("run.log"));
            }
            let _ = std::fs::remove_dir(&state);
            if outputs.is_dir() {
                printer.status(&format!("Files the plugins saved are kept in {}", outputs.display()));
            }
        }
        printer.status(&format!("Deleted cluster `{name}` from {} hosts", outcome.cleaned.len()));
        outcomes.push(serde_json::json!({"cluster": name, "outcome": outcome}));
    }
    if printer.json {
        printer.json(&outcomes)?;
    }
    Ok(())
}
