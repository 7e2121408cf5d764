use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context as _;

use crate::cli::settings::{Settings, parse_ref};
use crate::cli::{RunArgs, RunOptions};
use crate::clusterfile::Clusterfile;
use crate::output::{Printer, RunProgress, Table, UserError};
use crate::runtime::preflight::Outcome;
use crate::runtime::run::{RunError, RunOutcome, RunRequest, Scope};

pub async fn run(settings: &Settings, printer: Printer, args: RunArgs) -> anyhow::Result<()> {
    let mut clusterfile = crate::cli::cluster::resolve(&args.hosts, args.image.clone(), &printer)?;
    for pair in &args.env {
        let (k, v) = pair.split_once('=').ok_or_else(|| UserError::new(format!("-e `{pair}` is not K=V")))?;
        clusterfile.cluster.env.insert(k.to_owned(), v.to_owned());
    }
    if !args.cmds.is_empty() {
        clusterfile.cluster.cmds = args.cmds.clone();
    }
    if let Some(apps) = &args.apps {
        clusterfile.cluster.app_names = Some(apps.iter().filter(|a| !a.is_empty()).cloned().collect());
    }
    // The effective Clusterfile is saved before anything runs, so a failed run can be resumed
    // or deleted.
    if !args.options.dry_run {
        save_clusterfile(settings, &clusterfile)?;
    }
    let started = std::time::Instant::now();
    let Some(outcome) = execute(settings, printer, &clusterfile, &args.hosts, &args.options, Scope::Cluster).await?
    else {
        return Ok(());
    };
    if printer.json {
        return printer.json(&outcome);
    }
    printer.status(&format!(
        "Cluster `{}` is up ({} hosts) in {:.1}s; state in {}",
        clusterfile.cluster.name,
        clusterfile.cluster.hosts.len(),
        started.elapsed().as_secs_f64(),
        state_dir(settings, &clusterfile).display()
    ));
    Ok(())
}

/// The cluster's run log (appended, 0600: scripts may print what only root should read).
pub(crate) fn run_log(state_dir: &std::path::Path) -> Option<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(state_dir.join("run.log")).ok()
}

pub(crate) fn state_dir(settings: &Settings, clusterfile: &Clusterfile) -> std::path::PathBuf {
    settings.root.join("clusters").join(&clusterfile.cluster.name)
}

/// Saves the cluster's effective Clusterfile. It holds credentials: mode 0600.
pub(crate) fn save_clusterfile(settings: &Settings, clusterfile: &Clusterfile) -> anyhow::Result<()> {
    let dir = state_dir(settings, clusterfile);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("Clusterfile");
    let yaml = clusterfile.to_yaml().map_err(anyhow::Error::msg)?;
    crate::image::store::write_atomic(&path, yaml.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs `clusterfile` over `scope`; `None` after a dry run (its plan is printed). Output of
/// scripts goes to the terminal and the cluster's run log.
pub(crate) async fn execute(
    settings: &Settings,
    printer: Printer,
    clusterfile: &Clusterfile,
    hosts: &crate::cli::HostArgs,
    options: &RunOptions,
    scope: Scope,
) -> anyhow::Result<Option<RunOutcome>> {
    let Some(image_name) = clusterfile.cluster.image.clone() else {
        return Err(UserError::new("no cluster image: `kiln run IMAGE …`, or `spec.image` in the Clusterfile").into());
    };
    let connect = crate::cli::cluster::connect_options(hosts, clusterfile)?;
    let store = settings.store()?;
    let reference = parse_ref(&image_name)?;
    let image = {
        let store = store.clone();
        super::blocking(move || super::require_image(&store, &reference)).await?
    };
    // Plugins are checked before anything runs: a mistake in one changes nothing anywhere.
    let plugins = {
        let (store, image, clusterfile) = (store.clone(), image.clone(), clusterfile.clone());
        super::blocking(move || plugins_or_error(crate::plugins::for_cluster(Some((&store, &image)), &clusterfile)))
            .await?
    };
    let preflight = crate::cli::cluster::preflight_options(&options.checks)?
        .for_cluster(&clusterfile.cluster, Some(&image))
        .with_kubelet_config(&clusterfile.documents)
        .with_plugins(&plugins, &clusterfile.cluster, &image_env(&image));
    for choice in &plugins.choices {
        printer.status(choice);
    }
    let state_dir = state_dir(settings, clusterfile);
    std::fs::create_dir_all(&state_dir)?;
    let reporter = RunProgress::new(printer, run_log(&state_dir));
    let request = RunRequest {
        store: &store,
        clusterfile,
        image,
        connect,
        preflight,
        layer_transfer: options.layer_transfer.into(),
        keep_layers: !options.no_layer_cache,
        state_dir: state_dir.clone(),
        ready_timeout: std::time::Duration::from_secs(options.wait_ready),
        cert_validity: crate::kubernetes::pki::Validity {
            leaf_days: options.cert_validity,
            ..crate::kubernetes::pki::Validity::default()
        },
        dry_run: options.dry_run,
        scope,
        plugins,
    };
    match crate::runtime::run::run(&request, &reporter).await {
        Ok(outcome) if options.dry_run => {
            if printer.json {
                printer.json(&outcome.plan)?;
                return Ok(None);
            }
            let mut table = Table::new(&["HOST", "ROLES", "PLATFORM", "REGISTRY", "TO SEND", "PHASES", "PLUGINS"]);
            for p in &outcome.plan {
                table.row(vec![
                    p.host.to_string(),
                    p.roles.join(","),
                    p.platform.clone(),
                    if p.registry_host { "yes".into() } else { String::new() },
                    format!("{} ({} blobs)", crate::output::human_size(p.bytes_to_send), p.blobs_to_send),
                    p.phases.join(", "),
                    p.hooks.join("; "),
                ]);
            }
            printer.data(&table.render());
            printer.status("Dry run: nothing was changed");
            Ok(None)
        }
        Ok(outcome) => Ok(Some(outcome)),
        Err(RunError::Preflight { failed, results }) => {
            if printer.json {
                printer.json(&serde_json::json!({ "preflight": results }))?;
            }
            let mut table = Table::new(&["HOST", "CHECK", "RESULT", "DETAIL"]);
            for r in results.iter().filter(|r| matches!(r.outcome, Outcome::Fail | Outcome::Repair)) {
                table.row(vec![r.host.to_string(), r.check.to_owned(), r.outcome.label().into(), r.detail.clone()]);
            }
            if !printer.json {
                printer.data(&table.render());
            }
            Err(UserError::new(format!("preflight failed: {failed} checks; nothing was changed on any host"))
                .with_hint("fix them, or skip a check with `--skip-checks NAME`")
                .into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "the run stopped; run the same command again to continue (state: {})",
            state_dir.display()
        ))),
    }
}

/// The env the image gives its scripts (its first platform's: they share it).
pub(crate) fn image_env(image: &crate::image::Image) -> std::collections::BTreeMap<String, String> {
    image.platforms.first().and_then(|p| p.extension().ok().flatten()).map(|e| e.env).unwrap_or_default()
}

/// A plugin that does not load is the user's to fix, shown at its `file:line:col`.
pub(crate) fn plugins_or_error(
    loaded: Result<crate::plugins::PluginSet, crate::plugins::PluginLoadError>,
) -> anyhow::Result<crate::plugins::PluginSet> {
    loaded.map_err(|e| match e {
        crate::plugins::PluginLoadError::Source(source) => anyhow::Error::new(*source),
        other => anyhow::Error::new(other),
    })
}
