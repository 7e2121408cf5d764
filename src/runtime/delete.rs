//! `kiln delete`: leaves the hosts as they were before `kiln run`. On every host: the
//! Kubernetes reset (`kubeadm reset -f`, the workers' virtual server, kubeadm's directories) where
//! kiln set it up, the image's `scripts/clean.sh` (and `uninstall-<cri>.sh`), the registry's `/etc/hosts` entry and the
//! directories kiln created (mirror config), the OS tuning reverted from its record, and the
//! cluster directory. Unreachable hosts stop the delete unless `--force`, and are reported.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use futures_util::StreamExt;
use serde::Serialize;

use super::run::{RunReporter, script_env};
use super::{ConnectOptions, Fleet, distribute, hooks, kubernetes, tune};
use crate::clusterfile::{Clusterfile, Host};
use crate::plugins::{Phase, PluginSet};
use crate::ssh::{Session, SshError, quote, with_env};

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("cannot reach {}; nothing was deleted (use --force to delete the others and skip these)", hosts.join(", "))]
    Unreachable { hosts: Vec<String>, reasons: Vec<String> },
    #[error("cleaning {host} failed")]
    Clean {
        host: String,
        #[source]
        source: SshError,
    },
    #[error("a plugin hook failed on {host}")]
    Hook {
        host: String,
        #[source]
        source: Box<super::hooks::HookError>,
    },
}

#[derive(Debug, Default, Serialize)]
pub struct DeleteOutcome {
    pub cleaned: Vec<IpAddr>,
    /// Skipped with `--force`: host → why it could not be reached.
    pub not_cleaned: BTreeMap<IpAddr, String>,
}

/// The script that cleans one host, after the image's own clean scripts.
pub fn clean_script(dir: &str, data_root: &str) -> String {
    format!(
        "set -e\nsed -i '/# kiln-registry$/d' /etc/hosts\n\
         if [ -f {created} ]; then tac {created} | while read -r p; do rm -rf \"$p\"; done; fi\n\
         {restore}\nrm -rf {dir}\nrmdir -p --ignore-fail-on-non-empty {root} 2>/dev/null || true\n",
        created = quote(&format!("{dir}/.kiln/created")),
        restore = tune::restore_script(dir),
        dir = quote(dir),
        root = quote(data_root),
    )
}

pub async fn delete(
    clusterfile: &Clusterfile,
    connect: &ConnectOptions,
    force: bool,
    plugins: &PluginSet,
    outputs: Option<&Path>,
    reporter: &dyn RunReporter,
) -> Result<DeleteOutcome, DeleteError> {
    let cluster = &clusterfile.cluster;
    reporter.phase("connect", "reach every host");
    let fleet = Fleet::connect(&cluster.hosts, connect).await;
    let mut outcome = DeleteOutcome::default();
    if !fleet.failed.is_empty() {
        let hosts: Vec<String> = fleet.failed.keys().map(ToString::to_string).collect();
        let reasons: Vec<String> =
            fleet.failed.iter().map(|(ip, e)| format!("{ip}: {}", crate::error_chain(e))).collect();
        if !force {
            fleet.close().await;
            return Err(DeleteError::Unreachable { hosts, reasons });
        }
        for (ip, e) in &fleet.failed {
            outcome.not_cleaned.insert(*ip, crate::error_chain(e));
        }
    }
    let dir = distribute::cluster_dir(&cluster.data_root, &cluster.name);
    let rootfs = distribute::rootfs_dir(&dir);
    let master0 = clusterfile.master0().cloned();
    let master0_session = master0.as_ref().and_then(|m| fleet.sessions.get(&m.ip).cloned());
    let operation = hooks::Operation::Delete;
    let master0_hooks = master0.as_ref().zip(master0_session.as_deref()).map(|(m0, session)| HostHooks {
        session,
        clusterfile,
        host: m0,
        master0: m0,
        rootfs: &rootfs,
        plugins,
        operation,
        outputs,
    });
    if let Some(hooks) = &master0_hooks {
        hooks.run(Phase::PreUninstall, reporter).await?;
    }
    reporter.phase("clean", "run the image's clean scripts and undo kiln's changes");
    let cri = cluster.cri();
    let results: Vec<(IpAddr, Result<(), DeleteError>)> = futures_util::stream::iter(cluster.hosts.iter())
        .filter_map(|h| {
            let session = fleet.sessions.get(&h.ip).cloned();
            async move { session.map(|s| (h, s)) }
        })
        .map(|(host, session)| {
            let (dir, rootfs, cri, master0) = (&dir, &rootfs, &cri, master0.as_ref().unwrap_or(host));
            async move {
                let hooks =
                    HostHooks { session: &session, clusterfile, host, master0, rootfs, plugins, operation, outputs };
                let r = clean_with_hooks(&hooks, dir, cri, reporter).await;
                (host.ip, r)
            }
        })
        .buffer_unordered(connect.max_hosts)
        .collect()
        .await;
    let mut first_error = None;
    for (ip, r) in results {
        match r {
            Ok(()) => outcome.cleaned.push(ip),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // The cluster is gone: `post-uninstall` runs on what was master0, from `/`.
    if first_error.is_none()
        && let Some(hooks) = &master0_hooks
    {
        first_error = hooks.run(Phase::PostUninstall, reporter).await.err();
    }
    fleet.close().await;
    outcome.cleaned.sort();
    first_error.map_or(Ok(outcome), Err)
}

/// [`clean_host`] between the host's `pre-clean-host` and `post-clean-host` hooks.
async fn clean_with_hooks(
    hooks: &HostHooks<'_>,
    dir: &str,
    cri: &str,
    reporter: &dyn RunReporter,
) -> Result<(), DeleteError> {
    hooks.run(Phase::PreCleanHost, reporter).await?;
    clean_host(hooks.session, hooks.clusterfile, hooks.host, hooks.master0, dir, hooks.rootfs, cri, reporter)
        .await
        .map_err(|source| DeleteError::Clean { host: hooks.host.ip.to_string(), source })?;
    hooks.run(Phase::PostCleanHost, reporter).await
}

/// The plugin hooks of one host while it is cleaned (`pre-clean-host`, `post-clean-host`) or,
/// on master0, while the cluster is deleted (`pre-uninstall`, `post-uninstall`). The phases
/// after a clean run from `/`: the rootfs is gone by then.
pub(super) struct HostHooks<'a> {
    pub session: &'a Session,
    pub clusterfile: &'a Clusterfile,
    pub host: &'a Host,
    pub master0: &'a Host,
    pub rootfs: &'a str,
    pub plugins: &'a PluginSet,
    pub operation: hooks::Operation,
    pub outputs: Option<&'a Path>,
}

impl HostHooks<'_> {
    pub async fn run(&self, phase: Phase, reporter: &dyn RunReporter) -> Result<(), DeleteError> {
        let who = self.host.ip.to_string();
        let env = script_env(&self.clusterfile.cluster, self.host, self.master0, self.rootfs, &Default::default());
        let rootfs = (!matches!(phase, Phase::PostCleanHost | Phase::PostUninstall)).then_some(self.rootfs);
        let applies = |p: &&crate::plugins::Plugin| !phase.on_hosts() || p.applies_to(self.host);
        for plugin in self.plugins.hooks(phase).filter(applies) {
            hooks::run_hook(self.session, self.operation, &env, rootfs, plugin, phase, self.outputs, |l| {
                reporter.step(&who, l)
            })
            .await
            .map_err(|e| DeleteError::Hook { host: who.clone(), source: Box::new(e) })?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn clean_host(
    session: &Session,
    clusterfile: &Clusterfile,
    host: &Host,
    master0: &Host,
    dir: &str,
    rootfs: &str,
    cri: &str,
    reporter: &dyn RunReporter,
) -> Result<(), SshError> {
    let env = script_env(&clusterfile.cluster, host, master0, rootfs, &Default::default());
    // Kubernetes first (kubeadm reset needs the binaries the image's clean scripts remove).
    // An unreadable `VIP` could not have been used by a run: the default is what a run made.
    let vip = kubernetes::cluster_vip(&clusterfile.cluster).unwrap_or(kubernetes::DEFAULT_VIP);
    session.run(&kubernetes::reset_script(dir, vip)).await?;
    let image_scripts = format!(
        "if [ -d {r} ]; then cd {r}; [ ! -f scripts/clean.sh ] || bash scripts/clean.sh; \
         [ ! -f scripts/uninstall-{cri}.sh ] || bash scripts/uninstall-{cri}.sh; fi",
        r = quote(rootfs),
        cri = cri,
    );
    let out = session.run(&with_env(&env, &image_scripts)).await?;
    for line in out.stdout_text().lines() {
        reporter.step(&host.ip.to_string(), line);
    }
    session.run(&clean_script(dir, &clusterfile.cluster.data_root.display().to_string())).await?;
    reporter.step(&host.ip.to_string(), "cleaned");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_script_is_valid_shell_and_undoes_kiln_changes() {
        let script = clean_script("/var/lib/kiln/data/my cluster", "/var/lib/kiln/data");
        let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(script.contains("/# kiln-registry$/d"));
        assert!(script.contains("rm -rf '/var/lib/kiln/data/my cluster'"));
        assert!(script.contains("90-kiln-"), "tuning is restored");
    }
}
