//! `kiln scale-up` (alias `join`), `kiln scale-down` and `kiln apply`: clusters grow and
//! shrink after delivery. The saved Clusterfile changes only once an operation finished; a
//! failed one is resumed by running the same command again (the journal knows its steps).

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::run::{execute, save_clusterfile, state_dir};
use crate::cli::settings::Settings;
use crate::cli::{ApplyArgs, HostArgs, RunOptions, ScaleDownArgs, ScaleUpArgs};
use crate::clusterfile::{Clusterfile, parse_ip_list};
use crate::output::{Printer, RunProgress, Table, UserError};
use crate::runtime::run::{RunOutcome, Scope};
use crate::runtime::scale::{LeaveOutcome, LeaveRequest};

pub async fn scale_up(settings: &Settings, printer: Printer, args: ScaleUpArgs) -> anyhow::Result<()> {
    if args.hosts.clusterfile.is_some() {
        return Err(UserError::new("scale-up takes the joining hosts as `-m IPS` and `-n IPS`")
            .with_hint("to make a cluster match a Clusterfile, use `kiln apply -f FILE`")
            .into());
    }
    let clusters_dir = settings.root.join("clusters");
    let current = crate::cli::cluster::cluster_from_state(&clusters_dir, &args.state, &args.hosts, &printer).await?;
    let flags = crate::cli::cluster::flag_hosts(&args.hosts, &printer)?;
    if flags.is_empty() {
        return Err(UserError::new("name the joining hosts with `-m IPS` (masters) and/or `-n IPS` (nodes)").into());
    }
    let mut joined = current.clone();
    flags
        .apply(&mut joined.cluster)
        .map_err(|e| UserError::new(format!("{e} in cluster `{}`", current.cluster.name)))?;
    let new: BTreeSet<IpAddr> = flags.masters.iter().chain(&flags.nodes).copied().collect();
    join(settings, printer, &current, &joined, &args.hosts, &args.options, new).await
}

/// Runs the joining hosts of `joined` (the cluster `current` plus them); saves `joined` once
/// they are in.
async fn join(
    settings: &Settings,
    printer: Printer,
    current: &Clusterfile,
    joined: &Clusterfile,
    hosts: &HostArgs,
    options: &RunOptions,
    new: BTreeSet<IpAddr>,
) -> anyhow::Result<()> {
    let count = new.len();
    let Some(outcome) = execute(settings, printer, joined, hosts, options, Scope::Join(new)).await? else {
        return Ok(());
    };
    save_clusterfile(settings, joined)?;
    if printer.json {
        return printer.json(&outcome);
    }
    printer.data(&bytes_table(current, joined, &outcome).render());
    printer.status(&format!(
        "{count} hosts joined cluster `{}` ({} hosts now)",
        joined.cluster.name,
        joined.cluster.hosts.len()
    ));
    Ok(())
}

/// Rootfs bytes sent to every host: the joining hosts' and, to show they got nothing, the
/// existing ones'.
fn bytes_table(current: &Clusterfile, joined: &Clusterfile, outcome: &RunOutcome) -> Table {
    let mut table = Table::new(&["HOST", "ROLES", "", "ROOTFS BYTES SENT"]);
    for host in &joined.cluster.hosts {
        let existing = current.cluster.hosts.iter().any(|h| h.ip == host.ip);
        let sent = outcome.distributed.get(&host.ip).map_or(0, |d| d.bytes_sent);
        table.row(vec![
            host.ip.to_string(),
            host.roles.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            if existing { "existing".into() } else { "joined".into() },
            sent.to_string(),
        ]);
    }
    table
}

pub async fn scale_down(settings: &Settings, printer: Printer, args: ScaleDownArgs) -> anyhow::Result<()> {
    let clusters_dir = settings.root.join("clusters");
    let current = crate::cli::cluster::cluster_from_state(&clusters_dir, &args.state, &args.hosts, &printer).await?;
    let parse = |list: &Option<String>| -> anyhow::Result<Vec<IpAddr>> {
        Ok(list.as_deref().map(parse_ip_list).transpose().map_err(UserError::new)?.unwrap_or_default())
    };
    let leaving: BTreeSet<IpAddr> = parse(&args.hosts.masters)?.into_iter().chain(parse(&args.hosts.nodes)?).collect();
    if leaving.is_empty() {
        return Err(UserError::new("name the leaving hosts with `-m IPS` and/or `-n IPS`").into());
    }
    let outcome = leave(settings, printer, &current, &args.hosts, leaving, args.force).await?;
    if printer.json {
        printer.json(&outcome)?;
    }
    Ok(())
}

/// Takes `leaving` out of `current`, saves what remains and reports.
async fn leave(
    settings: &Settings,
    printer: Printer,
    current: &Clusterfile,
    hosts: &HostArgs,
    leaving: BTreeSet<IpAddr>,
    force: bool,
) -> anyhow::Result<LeaveOutcome> {
    let remaining = crate::runtime::scale::remaining(current, &leaving).map_err(|e| UserError::new(e.to_string()))?;
    let request = LeaveRequest {
        clusterfile: current,
        leaving,
        connect: crate::cli::cluster::connect_options(hosts, current)?,
        state_dir: state_dir(settings, current),
        force,
        plugins: super::plugins_of(settings, &printer, current).await?,
    };
    let reporter = RunProgress::new(printer, super::run::run_log(&request.state_dir));
    let outcome = crate::runtime::scale::leave(&request, &reporter).await.map_err(|e| {
        anyhow::Error::new(e)
            .context("scale-down stopped; the hosts that left are recorded: run the same command again")
    })?;
    save_clusterfile(settings, &remaining)?;
    for (ip, why) in &outcome.not_cleaned {
        printer.warn(&format!("{ip} was taken out of the cluster but not cleaned ({why}); clean it when it is back"));
    }
    for (ip, why) in &outcome.not_updated {
        printer.warn(&format!("{ip} was not updated ({why}); `kiln apply -f` the saved Clusterfile when it is back"));
    }
    if let Some(m0) = outcome.new_master0 {
        printer.status(&format!("master0 is now {m0}"));
    }
    printer.status(&format!(
        "{} hosts left cluster `{}` ({} hosts now)",
        outcome.removed.len() + outcome.not_cleaned.len(),
        current.cluster.name,
        remaining.cluster.hosts.len()
    ));
    Ok(outcome)
}

/// What `kiln apply` would change.
#[derive(Debug, Default, serde::Serialize)]
pub struct HostDiff {
    pub join: Vec<IpAddr>,
    pub leave: Vec<IpAddr>,
}

/// Hosts to add and remove to make `current` into `desired`; a host whose roles changed is
/// refused (it must leave and join again).
pub fn host_diff(current: &Clusterfile, desired: &Clusterfile) -> Result<HostDiff, UserError> {
    let mut diff = HostDiff::default();
    for host in &desired.cluster.hosts {
        match current.cluster.hosts.iter().find(|h| h.ip == host.ip) {
            None => diff.join.push(host.ip),
            Some(was) if was.roles != host.roles => {
                return Err(UserError::new(format!(
                    "{} changes roles; kiln does not change a host's roles in place",
                    host.ip
                ))
                .with_hint("remove it (`kiln scale-down`), then add it again with its new roles"));
            }
            Some(_) => {}
        }
    }
    diff.leave = current
        .cluster
        .hosts
        .iter()
        .filter(|h| !desired.cluster.hosts.iter().any(|d| d.ip == h.ip))
        .map(|h| h.ip)
        .collect();
    Ok(diff)
}

pub async fn apply(settings: &Settings, printer: Printer, args: ApplyArgs) -> anyhow::Result<()> {
    let Some(path) = &args.hosts.clusterfile else {
        return Err(UserError::new("`kiln apply` needs the Clusterfile: `-f FILE`").into());
    };
    let mut desired = crate::cli::cluster::read_clusterfile(path)?;
    if args.image.is_some() {
        desired.cluster.image = args.image.clone();
    }
    let clusters_dir = settings.root.join("clusters");
    // A cluster never run (or whose run never finished saving) is simply run.
    let Ok(current) = crate::cli::cluster::saved_clusterfile(&clusters_dir, &desired.cluster.name) else {
        printer.status(&format!("Cluster `{}` was not run from this machine: running it", desired.cluster.name));
        if !args.options.dry_run {
            save_clusterfile(settings, &desired)?;
        }
        return execute(settings, printer, &desired, &args.hosts, &args.options, Scope::Cluster).await.map(|_| ());
    };
    let diff = host_diff(&current, &desired)?;
    if args.options.dry_run || diff.join.is_empty() && diff.leave.is_empty() {
        if printer.json {
            return printer.json(&diff);
        }
        let mut table = Table::new(&["HOST", "CHANGE"]);
        for ip in &diff.join {
            let host = desired.cluster.hosts.iter().find(|h| h.ip == *ip);
            let roles = host.map(|h| h.roles.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
            table.row(vec![ip.to_string(), format!("join as {}", roles.unwrap_or_default())]);
        }
        for ip in &diff.leave {
            table.row(vec![ip.to_string(), "leave".into()]);
        }
        if diff.join.is_empty() && diff.leave.is_empty() {
            printer.status(&format!("Cluster `{}` already has exactly these hosts", desired.cluster.name));
        } else {
            printer.data(&table.render());
            printer.status("Dry run: nothing was changed");
        }
        return Ok(());
    }
    // Joins first, so a replaced master0 or member has its successor before it leaves.
    let mut joined = current.clone();
    joined.cluster.hosts.extend(desired.cluster.hosts.iter().filter(|h| diff.join.contains(&h.ip)).cloned());
    if !diff.join.is_empty() {
        join(settings, printer, &current, &joined, &args.hosts, &args.options, diff.join.iter().copied().collect())
            .await?;
    }
    if !diff.leave.is_empty() {
        leave(settings, printer, &joined, &args.hosts, diff.leave.iter().copied().collect(), args.force).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cf(hosts: &str) -> Clusterfile {
        Clusterfile::parse("Clusterfile", &format!("kind: Cluster\nmetadata: {{name: c}}\nspec:\n  hosts:\n{hosts}"))
            .unwrap()
    }

    #[test]
    fn host_diff_finds_joins_and_leaves_and_refuses_role_changes() {
        let current =
            cf("  - ips: [10.0.0.1, 10.0.0.2]\n    roles: [master]\n  - ips: [10.0.0.3]\n    roles: [node]\n");
        let desired =
            cf("  - ips: [10.0.0.1, 10.0.0.2]\n    roles: [master]\n  - ips: [10.0.0.4-10.0.0.5]\n    roles: [node]\n");
        let diff = host_diff(&current, &desired).unwrap();
        let ips = |v: &[IpAddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(ips(&diff.join), ["10.0.0.4", "10.0.0.5"]);
        assert_eq!(ips(&diff.leave), ["10.0.0.3"]);
        let same = host_diff(&current, &current).unwrap();
        assert!(same.join.is_empty() && same.leave.is_empty());
        let promoted = cf("  - ips: [10.0.0.1, 10.0.0.2, 10.0.0.3]\n    roles: [master]\n");
        assert!(host_diff(&current, &promoted).unwrap_err().to_string().contains("10.0.0.3 changes roles"));
    }
}
