//! `kiln exec [-r ROLE] [--hosts IPS] -- COMMAND`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::cli::ExecArgs;
use crate::cli::settings::Settings;
use crate::clusterfile::{Host, parse_ip_list};
use crate::output::{Printer, Table, UserError};

pub async fn run(settings: &Settings, printer: Printer, args: ExecArgs) -> anyhow::Result<()> {
    let clusters_dir = settings.root.join("clusters");
    let clusterfile =
        crate::cli::cluster::chosen_cluster(&clusters_dir, args.cluster.as_deref(), &args.hosts, &printer)?;
    let connect = crate::cli::cluster::connect_options(&args.hosts, &clusterfile)?;
    let hosts = selected_hosts(&clusterfile.cluster.hosts, &args.roles, args.only.as_deref())?;
    let command = args.command.join(" ");
    let collected: Mutex<BTreeMap<IpAddr, Vec<String>>> = Mutex::new(BTreeMap::new());
    let width = hosts.iter().map(|h| h.ip.to_string().len()).max().unwrap_or(0);
    let on_line = |ip: IpAddr, line: &str| {
        if printer.json {
            if let Ok(mut lines) = collected.lock() {
                lines.entry(ip).or_default().push(line.to_owned());
            }
        } else {
            printer.data(&format!("{:width$} | {line}", ip.to_string()));
        }
    };
    let results = crate::runtime::exec::exec(&hosts, &connect, &command, &on_line).await;
    let failed = results.iter().filter(|r| !r.succeeded()).count();
    if printer.json {
        let mut lines = collected.into_inner().unwrap_or_default();
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "host": r.host, "exit_code": r.exit_code, "error": r.error,
                    "output": lines.remove(&r.host).unwrap_or_default(),
                })
            })
            .collect();
        printer.json(&rows)?;
    } else {
        let mut table = Table::new(&["HOST", "EXIT", "ERROR"]);
        for r in &results {
            let exit = r.exit_code.map_or_else(|| "-".to_owned(), |c| c.to_string());
            table.row(vec![r.host.to_string(), exit, r.error.clone().unwrap_or_default()]);
        }
        printer.status(&table.render());
    }
    match failed {
        0 => Ok(()),
        n => Err(UserError::new(format!("the command failed on {n} of {} hosts", results.len())).into()),
    }
}

/// The cluster's hosts with one of `roles` (all when empty) and, with `--hosts`, among those.
fn selected_hosts(all: &[Host], roles: &[String], only: Option<&str>) -> anyhow::Result<Vec<Host>> {
    let only = only.map(parse_ip_list).transpose().map_err(UserError::new)?;
    if let Some(stranger) = only.iter().flatten().find(|ip| !all.iter().any(|h| h.ip == **ip)) {
        return Err(UserError::new(format!("{stranger} is not a host of this cluster")).into());
    }
    let hosts: Vec<Host> = all
        .iter()
        .filter(|h| roles.is_empty() || h.roles.iter().any(|r| roles.contains(&r.to_string())))
        .filter(|h| only.as_ref().is_none_or(|ips| ips.contains(&h.ip)))
        .cloned()
        .collect();
    if hosts.is_empty() {
        return Err(UserError::new("no host of the cluster matches the given roles and hosts").into());
    }
    Ok(hosts)
}
