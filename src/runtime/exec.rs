//! `kiln exec`: one command on many cluster hosts at once (as root), each line of output
//! handed on as it arrives and each host's exit code kept. Sealer's `sealer exec` runs hosts
//! one after another and stops at the first failure; here every host runs and reports.

use std::net::IpAddr;

use futures_util::StreamExt;
use serde::Serialize;

use super::{ConnectOptions, Fleet};
use crate::clusterfile::Host;

/// How one host ran the command.
#[derive(Debug, Serialize)]
pub struct HostExit {
    pub host: IpAddr,
    /// `None` when the command could not run (unreachable host, lost connection, time limit).
    pub exit_code: Option<u32>,
    /// Why it could not run.
    pub error: Option<String>,
}

impl HostExit {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Runs `command` on every host in `hosts` (bounded by `connect.max_hosts`); `on_line` gets
/// `(host, line)` for each line of output as it arrives. Results are in `hosts`' order.
pub async fn exec(
    hosts: &[Host],
    connect: &ConnectOptions,
    command: &str,
    on_line: &(dyn Fn(IpAddr, &str) + Sync),
) -> Vec<HostExit> {
    let fleet = Fleet::connect(hosts, connect).await;
    let mut results: Vec<HostExit> = futures_util::stream::iter(hosts)
        .map(|host| {
            let session = fleet.sessions.get(&host.ip).cloned();
            let unreachable = fleet.failed.get(&host.ip).map(|e| crate::error_chain(e));
            async move {
                let Some(session) = session else {
                    return HostExit { host: host.ip, exit_code: None, error: unreachable };
                };
                match session.exec_live(command, |line| on_line(host.ip, line)).await {
                    Ok(out) => HostExit { host: host.ip, exit_code: Some(out.status), error: None },
                    Err(e) => HostExit { host: host.ip, exit_code: None, error: Some(crate::error_chain(&e)) },
                }
            }
        })
        .buffer_unordered(connect.max_hosts.max(1))
        .collect()
        .await;
    fleet.close().await;
    let order: Vec<IpAddr> = hosts.iter().map(|h| h.ip).collect();
    results.sort_by_key(|r| order.iter().position(|ip| *ip == r.host));
    results
}
