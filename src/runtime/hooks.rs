//! Plugin hooks at the runtime's phases (`crate::plugins`): cluster phases run once on master0,
//! host phases on the hosts in the plugin's scope, hooks of one phase in the order of their
//! names. In `kiln run` and `kiln scale-up` every finished hook is journaled, so a resumed
//! operation does not repeat it. A hook that fails stops the operation, naming the plugin, the
//! phase, the host, the exit code and its output.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use futures_util::StreamExt;

use super::run::{Context, RunError, RunReporter, Scope, step_error};
use crate::clusterfile::Host;
use crate::plugins::{Phase, Plugin, PluginSet};
use crate::ssh::{Session, SshError, quote, with_env};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("plugin `{plugin}` ({phase}) failed on {host} with exit code {status}\n{output}")]
    Failed { plugin: String, phase: Phase, host: String, status: u32, output: String },
    #[error("plugin `{plugin}` ({phase}) ran, but its files could not be brought back: {reason}")]
    Collect { plugin: String, phase: Phase, reason: String },
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
/// host's env plus `PluginName`, `PluginPhase`, `KilnOperation` (`run`, `scale-up`,
/// `scale-down`, `delete`), `PluginStateDir` (kept until the host is cleaned; not in the
/// phases after a clean) and `PluginOutDir`, an empty directory whose
/// files, when `collect` names a directory here, are brought back to
/// `collect/<plugin>/<phase>-<host>-<time>/` (a backup to the operator). Each line of output
/// goes to `on_line`.
#[allow(clippy::too_many_arguments)]
pub async fn run_hook(
    session: &Session,
    operation: Operation,
    env: &BTreeMap<String, String>,
    rootfs: Option<&str>,
    plugin: &Plugin,
    phase: Phase,
    collect: Option<&Path>,
    mut on_line: impl FnMut(&str),
) -> Result<(), HookError> {
    let ssh = |e: SshError| HookError::Ssh { plugin: plugin.name.clone(), phase, source: Box::new(e) };
    let dir = match rootfs {
        Some(r) => format!("{r}/{}", plugin.work_dir()),
        None => "/".into(),
    };
    let out_dir =
        session.run("mktemp -d /var/tmp/kiln-plugin.XXXXXX").await.map_err(ssh)?.stdout_text().trim().to_owned();
    let mut env = env.clone();
    env.insert("PluginName".into(), plugin.name.clone());
    env.insert("PluginPhase".into(), phase.name().into());
    env.insert("PluginOutDir".into(), out_dir.clone());
    env.insert("KilnOperation".into(), operation.name().into());
    // A directory that lives as long as the cluster on this host (what a plugin must remember
    // to undo its work when the host is cleaned); gone with the rootfs after a clean.
    // Not made here: a hook that keeps nothing leaves the host as it was (a failed scale-up
    // must not change master0); one that keeps something makes it (`mkdir -p -m 700`).
    if let Some(d) = plugin_state_dir(rootfs, plugin) {
        env.insert("PluginStateDir".into(), d);
    }
    // Sealer's contract: the script runs as written, in one shell (its last command decides).
    let command = with_env(&env, &format!("cd {} && (\n{}\n)", quote(&dir), plugin.data));
    let result = match session.run_live(&command, &mut on_line).await {
        Ok(_) => Ok(()),
        Err(SshError::Command { host, status, output, .. }) => {
            Err(HookError::Failed { plugin: plugin.name.clone(), phase, host, status, output })
        }
        Err(e) => Err(ssh(e)),
    };
    let collected = match (&result, collect) {
        (Ok(()), Some(into)) => collect_outputs(session, &out_dir, into, plugin, phase).await,
        _ => Ok(None),
    };
    let _ = session.run(&format!("rm -rf {}", quote(&out_dir))).await;
    result?;
    if let Some((files, path)) = collected? {
        on_line(&format!("plugin {} saved {files} files to {} on this machine", plugin.name, path.display()));
    }
    Ok(())
}

/// `<cluster dir>/.kiln/plugins/<plugin>` beside the rootfs, while there is one.
fn plugin_state_dir(rootfs: Option<&str>, plugin: &Plugin) -> Option<String> {
    let cluster_dir = Path::new(rootfs?).parent()?;
    Some(cluster_dir.join(".kiln").join("plugins").join(&plugin.name).display().to_string())
}

/// Brings the files a hook left in `out_dir` to the operator (streamed as a tar; only plain
/// files and directories, nothing outside the target, files 0600).
async fn collect_outputs(
    session: &Session,
    out_dir: &str,
    into: &Path,
    plugin: &Plugin,
    phase: Phase,
) -> Result<Option<(usize, PathBuf)>, HookError> {
    let fail = |reason: String| HookError::Collect { plugin: plugin.name.clone(), phase, reason };
    let listing = session.run(&format!("ls -A {}", quote(out_dir))).await.map_err(|e| fail(e.to_string()))?;
    if listing.stdout_text().trim().is_empty() {
        return Ok(None);
    }
    crate::image::store::create_private_dir(into).map_err(|e| fail(e.to_string()))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let dest = into.join(&plugin.name).join(format!("{phase}-{}-{stamp}", session.host()));
    let tar = tempfile::NamedTempFile::new_in(into).map_err(|e| fail(e.to_string()))?;
    session
        .download(&format!("tar -C {} -cf - .", quote(out_dir)), tar.path())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let file = std::fs::File::open(tar.path()).map_err(|e| fail(e.to_string()))?;
    let files = unpack_outputs(file, &dest).map_err(fail)?;
    Ok(Some((files, dest)))
}

/// Unpacks a hook's output tar into `dest`; returns the number of files.
fn unpack_outputs(tar: impl std::io::Read, dest: &Path) -> Result<usize, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut archive = tar::Archive::new(tar);
    let mut files = 0;
    crate::image::store::create_private_dir(dest).map_err(|e| e.to_string())?;
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        if !path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(format!("`{}` would land outside its directory", path.display()));
        }
        let target = dest.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => crate::image::store::create_private_dir(&target).map_err(|e| e.to_string())?,
            tar::EntryType::Regular => {
                if let Some(parent) = target.parent() {
                    crate::image::store::create_private_dir(parent).map_err(|e| e.to_string())?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(|e| format!("{}: {e}", target.display()))?;
                std::io::copy(&mut entry, &mut out).map_err(|e| format!("{}: {e}", target.display()))?;
                files += 1;
            }
            other => return Err(format!("`{}` is a {other:?}, not a plain file", path.display())),
        }
    }
    Ok(files)
}

/// What kiln is doing when a hook runs (`KilnOperation` in its env).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Run,
    ScaleUp,
    ScaleDown,
    Delete,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::ScaleUp => "scale-up",
            Self::ScaleDown => "scale-down",
            Self::Delete => "delete",
        }
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
    let who = cluster_key(&ctx.request.scope);
    for plugin in ctx.request.plugins.hooks(phase) {
        journaled_hook(ctx, reporter, &ctx.master0, &who, plugin, phase).await?;
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
    let mut results: Vec<(IpAddr, Result<(), RunError>)> = futures_util::stream::iter(hosts)
        .map(|host| {
            let plugins = &plugins;
            async move {
                let who = host.ip.to_string();
                for plugin in plugins.iter().filter(|p| p.applies_to(host)) {
                    if let Err(e) = journaled_hook(ctx, reporter, host, &who, plugin, phase).await {
                        return (host.ip, Err(e));
                    }
                }
                (host.ip, Ok(()))
            }
        })
        .buffer_unordered(ctx.request.connect.max_hosts.max(1))
        .collect()
        .await;
    results.sort_by_key(|(ip, _)| *ip);
    results.into_iter().find_map(|(_, r)| r.err()).map_or(Ok(()), Err)
}

/// One hook on `host`, unless the journal has it done for `who`; its result is journaled.
async fn journaled_hook(
    ctx: &Context<'_>,
    reporter: &dyn RunReporter,
    host: &Host,
    who: &str,
    plugin: &Plugin,
    phase: Phase,
) -> Result<(), RunError> {
    let step = step_id(phase, plugin);
    if ctx.done(&step, who) {
        return Ok(());
    }
    reporter.step(&host.ip.to_string(), &format!("plugin {} ({phase})", plugin.name));
    match hook_on(ctx, reporter, host, plugin, phase).await {
        Ok(()) => ctx.record(&step, who, Ok(())),
        Err(e) => {
            ctx.record(&step, who, Err(&e.to_string()))?;
            Err(step_error(phase.name(), host.ip, e))
        }
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
    let collect = ctx.request.state_dir.join("plugins");
    run_hook(
        session,
        ctx.request.scope.operation(),
        &ctx.hook_env(host),
        Some(&ctx.rootfs),
        plugin,
        phase,
        Some(&collect),
        |line| reporter.step(&who, line),
    )
    .await
}

/// After `pre-init-host`: what the plugins promised preflight is so. Each host a plugin gave a
/// hostname has it, and each clock a plugin repaired is within the limit now (measured again).
pub(super) async fn check_promises(ctx: &Context<'_>, reporter: &dyn RunReporter) -> Result<(), RunError> {
    let preflight = &ctx.request.preflight;
    let limit = preflight.max_clock_skew_s;
    for host in ctx.targets() {
        let session = ctx.session_for(host).map_err(|e| step_error("pre-init-host", host.ip, e))?;
        if let Some(planned) = preflight.planned_hostnames.get(&host.ip) {
            let now = session.run("hostname").await.map_err(|e| step_error("pre-init-host", host.ip, e))?;
            let now = now.stdout_text().trim().to_owned();
            if now != planned.name {
                return Err(step_error(
                    "pre-init-host",
                    host.ip,
                    PromiseBroken(format!(
                        "plugin `{}` was to set the hostname to `{}`, but it is `{now}`",
                        planned.plugin, planned.name
                    )),
                ));
            }
        }
        if let Some(plugin) = ctx.clock_repairs().get(&host.ip) {
            let offset =
                super::facts::clock_offset(session).await.map_err(|e| step_error("pre-init-host", host.ip, e))?;
            match offset {
                Some(o) if o.abs() <= limit => {
                    reporter.step(&host.ip.to_string(), &format!("clock-skew: {o:+.1} s after plugin {plugin}: ok"));
                }
                other => {
                    let now = other.map_or_else(|| "unreadable".to_owned(), |o| format!("{o:+.1} s from this machine"));
                    return Err(step_error(
                        "pre-init-host",
                        host.ip,
                        PromiseBroken(format!(
                            "the clock is still {now} after plugin `{plugin}` (limit ±{limit} s); nothing is installed yet"
                        )),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A plugin did not do what it promised preflight (its `kiln.io/` annotations).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PromiseBroken(String);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_unpack_as_private_files_and_nothing_escapes() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(4);
        header.set_mode(0o644);
        tar.append_data(&mut header, "./snap/etcd.db", &b"data"[..]).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let out = dest.path().join("etcd-backup/pre-uninstall-10.0.0.1");
        assert_eq!(unpack_outputs(&tar.into_inner().unwrap()[..], &out).unwrap(), 1);
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(out.join("snap/etcd.db")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);

        let mut evil = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o600);
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        header.set_cksum();
        evil.append(&header, &b"x"[..]).unwrap();
        let err = unpack_outputs(&evil.into_inner().unwrap()[..], &dest.path().join("x")).unwrap_err();
        assert!(err.contains("outside"), "{err}");
        assert!(!dest.path().join("escape").exists());
        let mut link = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        link.append_link(&mut header, "l", "/etc/passwd").unwrap();
        assert!(unpack_outputs(&link.into_inner().unwrap()[..], &dest.path().join("y")).is_err());
    }
}
