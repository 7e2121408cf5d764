use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context as _;

use crate::cli::RunArgs;
use crate::cli::settings::{Settings, parse_ref};
use crate::output::{Printer, RunProgress, Table, UserError};
use crate::runtime::preflight::Outcome;
use crate::runtime::run::{RunError, RunRequest};

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
    let Some(image_name) = clusterfile.cluster.image.clone() else {
        return Err(UserError::new("no cluster image: `kiln run IMAGE …`, or `spec.image` in the Clusterfile").into());
    };
    let connect = crate::cli::cluster::connect_options(&args.hosts, &clusterfile)?;
    let store = settings.store()?;
    let reference = parse_ref(&image_name)?;
    let image = {
        let store = store.clone();
        super::blocking(move || super::require_image(&store, &reference)).await?
    };
    let preflight =
        crate::cli::cluster::preflight_options(&args.checks)?.for_cluster(&clusterfile.cluster, Some(&image));
    let state_dir = settings.root.join("clusters").join(&clusterfile.cluster.name);
    std::fs::create_dir_all(&state_dir)?;
    // The effective Clusterfile is saved before anything runs, so a failed run can be resumed
    // or deleted. It holds credentials: mode 0600.
    if !args.dry_run {
        let path = state_dir.join("Clusterfile");
        let yaml = clusterfile.to_yaml().map_err(anyhow::Error::msg)?;
        crate::image::store::write_atomic(&path, yaml.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(state_dir.join("run.log")).ok();
    let reporter = RunProgress::new(printer, log);
    let request = RunRequest {
        store: &store,
        clusterfile: &clusterfile,
        image,
        connect,
        preflight,
        layer_transfer: args.layer_transfer.into(),
        state_dir: state_dir.clone(),
        ready_timeout: std::time::Duration::from_secs(args.wait_ready),
        cert_validity: crate::kubernetes::pki::Validity {
            leaf_days: args.cert_validity,
            ..crate::kubernetes::pki::Validity::default()
        },
        dry_run: args.dry_run,
    };
    let started = std::time::Instant::now();
    match crate::runtime::run::run(&request, &reporter).await {
        Ok(outcome) if args.dry_run => {
            if printer.json {
                return printer.json(&outcome.plan);
            }
            let mut table = Table::new(&["HOST", "ROLES", "PLATFORM", "REGISTRY", "TO SEND", "PHASES"]);
            for p in &outcome.plan {
                table.row(vec![
                    p.host.to_string(),
                    p.roles.join(","),
                    p.platform.clone(),
                    if p.registry_host { "yes".into() } else { String::new() },
                    format!("{} ({} blobs)", crate::output::human_size(p.bytes_to_send), p.blobs_to_send),
                    p.phases.join(", "),
                ]);
            }
            printer.data(&table.render());
            printer.status("Dry run: nothing was changed");
            Ok(())
        }
        Ok(outcome) => {
            if printer.json {
                return printer.json(&outcome);
            }
            printer.status(&format!(
                "Cluster `{}` is up ({} hosts) in {:.1}s; state in {}",
                clusterfile.cluster.name,
                clusterfile.cluster.hosts.len(),
                started.elapsed().as_secs_f64(),
                state_dir.display()
            ));
            Ok(())
        }
        Err(RunError::Preflight { failed, results }) => {
            if printer.json {
                printer.json(&serde_json::json!({ "preflight": results }))?;
            }
            let mut table = Table::new(&["HOST", "CHECK", "RESULT", "DETAIL"]);
            for r in results.iter().filter(|r| r.outcome == Outcome::Fail) {
                table.row(vec![r.host.to_string(), r.check.to_owned(), "FAIL".into(), r.detail.clone()]);
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
