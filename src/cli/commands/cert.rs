//! `kiln cert`: check-expiration, renew, and `--alt-names` (Sealer's `sealer cert`).

use crate::cli::settings::Settings;
use crate::cli::{CertArgs, CertCommand, HostArgs};
use crate::kubernetes::pki::PkiError;
use crate::kubernetes::pki::Validity;
use crate::output::UserError;
use crate::output::{Printer, RunProgress, Table};
use crate::runtime::certs::{self, CertError, CertRequest, CertificateStatus, Reissued};

/// Fewer days left than this are flagged.
const RENEW_SOON_DAYS: i64 = 30;

pub async fn run(settings: &Settings, printer: Printer, args: CertArgs) -> anyhow::Result<()> {
    match args.command {
        Some(CertCommand::CheckExpiration(check)) => {
            let rows =
                certs::check_expiration(&request(settings, &check.hosts, &printer)?).await.map_err(user_facing)?;
            show_expiration(&printer, &rows)
        }
        Some(CertCommand::Renew(renew)) => {
            let request = request(settings, &renew.hosts, &printer)?;
            let reporter = reporter(printer, &request);
            let validity = Validity { leaf_days: renew.cert_validity, ..Validity::default() };
            let done = certs::renew(&request, validity, &reporter).await.map_err(user_facing)?;
            show_reissued(&printer, &done, "Renewed")
        }
        None => {
            let request = request(settings, &args.hosts, &printer)?;
            let reporter = reporter(printer, &request);
            let done = certs::add_alt_names(&request, &args.alt_names, &reporter).await.map_err(user_facing)?;
            show_reissued(
                &printer,
                &done,
                &format!("Added {} to the apiserver certificates:", args.alt_names.join(", ")),
            )
        }
    }
}

/// What the user fixes (exit code 1) apart from what failed on the way (exit code 2).
fn user_facing(e: CertError) -> anyhow::Error {
    match e {
        CertError::NoPki { .. }
        | CertError::NoSettings { .. }
        | CertError::NoMaster
        | CertError::Pki(PkiError::AltName(_)) => UserError::new(e.to_string()).into(),
        CertError::NotRestarted { .. } => {
            anyhow::Error::new(e).context("the certificates were reissued, but not all took effect")
        }
        e => anyhow::Error::new(e),
    }
}

/// The cluster (`-f`, or the only one run from this machine), how to reach it, and its state
/// on this machine.
fn request(settings: &Settings, hosts: &HostArgs, printer: &Printer) -> anyhow::Result<CertRequest> {
    let clusters_dir = settings.root.join("clusters");
    let clusterfile = crate::cli::cluster::chosen_cluster(&clusters_dir, None, hosts, printer)?;
    let connect = crate::cli::cluster::connect_options(hosts, &clusterfile)?;
    let state_dir = settings.root.join("clusters").join(&clusterfile.cluster.name);
    Ok(CertRequest { clusterfile, connect, state_dir })
}

/// Progress on the terminal and in the cluster's run log.
fn reporter(printer: Printer, request: &CertRequest) -> RunProgress {
    let log = std::fs::create_dir_all(&request.state_dir).ok().and_then(|()| super::run::run_log(&request.state_dir));
    RunProgress::new(printer, log)
}

fn residual(days: i64) -> String {
    match days {
        d if d < 0 => "EXPIRED".to_owned(),
        d if d < RENEW_SOON_DAYS => format!("{d}d (renew soon: kiln cert renew)"),
        d if d < 730 => format!("{d}d"),
        d => format!("{}y", d / 365),
    }
}

fn show_expiration(printer: &Printer, rows: &[CertificateStatus]) -> anyhow::Result<()> {
    if printer.json {
        return printer.json(&rows);
    }
    let mut table = Table::new(&["HOST", "CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "ISSUED BY"]);
    for r in rows {
        let issuer = if r.summary.is_ca { "(CA)".to_owned() } else { r.summary.issuer.clone() };
        table.row(vec![
            r.host.to_string(),
            r.file.clone(),
            r.summary.not_after.format("%Y-%m-%d %H:%M UTC").to_string(),
            residual(r.residual_days),
            issuer,
        ]);
    }
    printer.data(&table.render());
    let soon = rows.iter().filter(|r| r.residual_days < RENEW_SOON_DAYS).count();
    if soon > 0 {
        printer.warn(&format!(
            "{soon} certificates expire within {RENEW_SOON_DAYS} days: `kiln cert renew` reissues them"
        ));
    }
    Ok(())
}

fn show_reissued(printer: &Printer, done: &[Reissued], verb: &str) -> anyhow::Result<()> {
    if printer.json {
        return printer.json(&done);
    }
    let mut table = Table::new(&["HOST", "FILES", "RESTARTED", "APISERVER CERTIFICATE UNTIL"]);
    for r in done {
        table.row(vec![
            r.host.to_string(),
            r.files.len().to_string(),
            r.restarted.join(", "),
            r.apiserver_not_after.format("%Y-%m-%d").to_string(),
        ]);
    }
    printer.data(&table.render());
    printer.status(&format!("{verb} {} masters", done.len()));
    Ok(())
}
