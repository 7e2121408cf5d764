//! Plugin hooks at the runtime's phases (`crate::plugins`): cluster phases run once on master0,
//! host phases on the hosts in the plugin's scope, hooks of one phase in the order of their
//! names. In `kiln run` and `kiln scale-up` every finished hook is journaled, so a resumed
//! operation does not repeat it. A hook that fails stops the operation, naming the plugin, the
//! phase, the host, the exit code and its output.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures_util::StreamExt;

use super::run::{Context, RunError, RunReporter, Scope, step_error};
use crate::clusterfile::Host;
use crate::plugins::{Phase, Plugin, PluginSet};
use crate::ssh::{Session, SshError, quote, with_env};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("plugin `{plugin}` ({phase}) failed on {host} with exit code {status}\n{output}")]
    Failed { plugin: String, phase: Phase, host: String, status: u32, output: String },
    #[error("plugin `{plugin}` ({phase}) could not run")]
    Ssh {
        plugin: String,
        phase: Phase,
        #[source]
        source: Box<SshError>,
    },
}

/// Runs one hook on `session`'s host: `cd` into the plugin's directory in `rootfs` (or `/`
/// when the rootfs is gone, for the phases after a clean) and the plugin's script, with the
/// host's env plus `PluginName` and `PluginPhase`. Each line of output goes to `on_line`.
pub async fn run_hook(
    session: &Session,
    env: &BTreeMap<String, String>,
    rootfs: Option<&str>,
    plugin: &Plugin,
    phase: Phase,
    on_line: impl FnMut(&str),
) -> Result<(), HookError> {
    let dir = match rootfs {
        Some(r) => format!("{r}/{}", plugin.work_dir()),
        None => "/".into(),
    };
    let mut env = env.clone();
    env.insert("PluginName".into(), plugin.name.clone());
    env.insert("PluginPhase".into(), phase.name().into());
    // Sealer's contract: the script runs as written, in one shell (its last command decides).
    let command = with_env(&env, &format!("cd {} && (\n{}\n)", quote(&dir), plugin.data));
    match session.run_live(&command, on_line).await {
        Ok(_) => Ok(()),
        Err(SshError::Command { host, status, output, .. }) => {
            Err(HookError::Failed { plugin: plugin.name.clone(), phase, host, status, output })
        }
        Err(e) => Err(HookError::Ssh { plugin: plugin.name.clone(), phase, source: Box::new(e) }),
    }
}

/// The journal key of a cluster hook: once per run of the cluster, once per scale-up.
fn cluster_key(scope: &Scope) -> String {
    match scope {
        Scope::Cluster => super::journal::CLUSTER.to_owned(),
        Scope::Join(ips) => {
            let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
            format!("join {}", ips.join(","))
        }
    }
}

fn step_id(phase: Phase, plugin: &Plugin) -> String {
    format!("hook {phase} {}", plugin.name)
}

/// A cluster phase's hooks on master0.
pub(super) async fn cluster_hooks(ctx: &Context<'_>, reporter: &dyn RunReporter, phase: Phase) -> Result<(), RunError> {
    let plugins = &ctx.request.plugins;
    let who = cluster_key(&ctx.request.scope);
    let host = &ctx.master0;
    for plugin in plugins.hooks(phase) {
        let step = step_id(phase, plugin);
        if ctx.done(&step, &who) {
            continue;
        }
        reporter.step(&host.ip.to_string(), &format!("plugin {} ({phase})", plugin.name));
        match hook_on(ctx, reporter, host, plugin, phase).await {
            Ok(()) => ctx.record(&step, &who, Ok(()))?,
            Err(e) => {
                ctx.record(&step, &who, Err(&e.to_string()))?;
                return Err(step_error(phase.name(), host.ip, e));
            }
        }
    }
    Ok(())
}

/// A host phase's hooks on each of `hosts` in its plugins' scopes: hosts in parallel, each
/// host's hooks in name order.
pub(super) async fn host_hooks(
    ctx: &Context<'_>,
    reporter: &dyn RunReporter,
    phase: Phase,
    hosts: &[Host],
) -> Result<(), RunError> {
    let plugins: Vec<&Plugin> = ctx.request.plugins.hooks(phase).collect();
    if plugins.is_empty() {
        return Ok(());
    }
    let results: Vec<(IpAddr, Result<(), HookError>)> = futures_util::stream::iter(hosts)
        .map(|host| {
            let plugins = &plugins;
            async move {
                for plugin in plugins.iter().filter(|p| p.applies_to(host)) {
                    let step = step_id(phase, plugin);
                    let who = host.ip.to_string();
                    if ctx.done(&step, &who) {
                        continue;
                    }
                    reporter.step(&who, &format!("plugin {} ({phase})", plugin.name));
                    let result = hook_on(ctx, reporter, host, plugin, phase).await;
                    let recorded = match &result {
                        Ok(()) => ctx.record(&step, &who, Ok(())),
                        Err(e) => ctx.record(&step, &who, Err(&e.to_string())),
                    };
                    if let Err(e) = result {
                        return (host.ip, Err(e));
                    }
                    if recorded.is_err() {
                        break;
                    }
                }
                (host.ip, Ok(()))
            }
        })
        .buffer_unordered(ctx.request.connect.max_hosts.max(1))
        .collect()
        .await;
    let mut results = results;
    results.sort_by_key(|(ip, _)| *ip);
    match results.into_iter().find_map(|(ip, r)| r.err().map(|e| (ip, e))) {
        Some((ip, e)) => Err(step_error(phase.name(), ip, e)),
        None => Ok(()),
    }
}

async fn hook_on(
    ctx: &Context<'_>,
    reporter: &dyn RunReporter,
    host: &Host,
    plugin: &Plugin,
    phase: Phase,
) -> Result<(), HookError> {
    let session = ctx.session_for(host).map_err(|e| HookError::Ssh {
        plugin: plugin.name.clone(),
        phase,
        source: Box::new(e),
    })?;
    let who = host.ip.to_string();
    run_hook(session, &ctx.env_for(host), Some(&ctx.rootfs), plugin, phase, |line| reporter.step(&who, line)).await
}

/// What `--dry-run` shows of the hooks on `host`: `phase: plugin, plugin` per phase that has any.
pub fn planned(plugins: &PluginSet, host: &Host, is_master0: bool, phases: &[Phase]) -> Vec<String> {
    phases
        .iter()
        .filter_map(|phase| {
            let names: Vec<&str> = plugins
                .hooks(*phase)
                .filter(|p| if phase.on_hosts() { p.applies_to(host) } else { is_master0 })
                .map(|p| p.name.as_str())
                .collect();
            (!names.is_empty()).then(|| format!("{phase}: {}", names.join(", ")))
        })
        .collect()
}
