//! Turning `--clusterfile`/`-m`/`-n`/SSH flags into a validated Clusterfile and connection
//! settings, shared by every command that reaches hosts.

use std::time::Duration;

use anyhow::Context;

use crate::cli::{HostArgs, PreflightArgs};
use crate::clusterfile::{Clusterfile, FlagHosts, SshConfig, parse_ip_list};
use crate::output::{Printer, UserError};
use crate::runtime::ConnectOptions;
use crate::secret::Secret;
use crate::ssh::{self, HostKeyPolicy};

/// Reads and validates a Clusterfile (errors at `file:line:col`).
pub fn read_clusterfile(path: &std::path::Path) -> anyhow::Result<Clusterfile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    Clusterfile::parse(&path.display().to_string(), &text).map_err(|e| anyhow::Error::new(*e))
}

fn password(args: &HostArgs, printer: &Printer) -> anyhow::Result<Option<Secret>> {
    if let Some(path) = &args.passwd_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        return Ok(Some(Secret::new(text.trim_end_matches(['\n', '\r']))));
    }
    if let Some(p) = &args.password {
        if std::env::var_os("KILN_SSH_PASSWORD").is_none() {
            printer.warn("a password given with -p is visible to other local users; prefer --passwd-file");
        }
        return Ok(Some(Secret::new(p.clone())));
    }
    Ok(None)
}

/// The hosts `-m`/`-n` name, with the SSH settings the flags give them.
pub fn flag_hosts(args: &HostArgs, printer: &Printer) -> anyhow::Result<FlagHosts> {
    Ok(FlagHosts {
        masters: args.masters.as_deref().map(parse_ip_list).transpose().map_err(UserError::new)?.unwrap_or_default(),
        nodes: args.nodes.as_deref().map(parse_ip_list).transpose().map_err(UserError::new)?.unwrap_or_default(),
        ssh: SshConfig {
            user: args.user.clone(),
            port: args.port,
            password: password(args, printer)?,
            private_key: args.private_key.clone(),
            key_passphrase: None,
        },
    })
}

/// The cluster: the Clusterfile (if any) with the flag hosts appended.
pub fn resolve(args: &HostArgs, image: Option<String>, printer: &Printer) -> anyhow::Result<Clusterfile> {
    let flags = flag_hosts(args, printer)?;
    let password = flags.ssh.password.clone();
    let mut clusterfile = match &args.clusterfile {
        Some(path) => {
            let mut cf = read_clusterfile(path)?;
            if !flags.is_empty() {
                flags.apply(&mut cf.cluster).map_err(UserError::new)?;
            }
            cf
        }
        None if flags.is_empty() => {
            return Err(UserError::new("no hosts: give a Clusterfile with `-f FILE`, or `-m IPS [-n IPS]`").into());
        }
        None => flags.into_clusterfile(None).map_err(UserError::new)?,
    };
    // `--passwd-file` also fills hosts whose Clusterfile entry has no password (for sudo too).
    if let Some(p) = password {
        for h in &mut clusterfile.cluster.hosts {
            h.ssh.password.get_or_insert_with(|| p.clone());
        }
    }
    if image.is_some() {
        clusterfile.cluster.image = image;
    }
    Ok(clusterfile)
}

pub fn connect_options(args: &HostArgs, clusterfile: &Clusterfile) -> anyhow::Result<ConnectOptions> {
    let known_hosts = args.known_hosts.clone().unwrap_or_else(crate::runtime::default_known_hosts);
    let host_keys = if args.accept_new_host_keys {
        HostKeyPolicy::AcceptNew { known_hosts }
    } else {
        HostKeyPolicy::Strict { known_hosts }
    };
    let bastion = match &args.bastion {
        None => None,
        Some(spec) => {
            let (user, rest) = match spec.split_once('@') {
                Some((u, r)) => (Some(u.to_owned()), r),
                None => (None, spec.as_str()),
            };
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| UserError::new(format!("bad port in --bastion `{spec}`")))?),
                None => (rest, 22),
            };
            let ip =
                host.parse().map_err(|_| UserError::new(format!("--bastion needs an IP address, not `{host}`")))?;
            let template = clusterfile.master0().map(|h| h.ssh.clone()).unwrap_or_default();
            Some(ssh::Target {
                host: ip,
                port,
                user: user.unwrap_or(template.user),
                auth: ssh::Auth {
                    password: template.password,
                    private_key: template.private_key,
                    key_passphrase: template.key_passphrase,
                    use_agent: true,
                },
                jump: None,
            })
        }
    };
    Ok(ConnectOptions {
        host_keys,
        connect_timeout: Duration::from_secs(args.connect_timeout.max(1)),
        command_timeout: Some(Duration::from_secs(600)),
        max_hosts: args.max_hosts.max(1),
        bastion,
    })
}

/// Preflight options from flags; an unknown check name is an error, not silently ignored.
pub fn preflight_options(args: &PreflightArgs) -> anyhow::Result<crate::runtime::preflight::PreflightOptions> {
    use crate::runtime::preflight::{CHECKS, PreflightOptions};
    if let Some(unknown) = args.skip_checks.iter().find(|c| !CHECKS.contains(&c.as_str())) {
        return Err(UserError::new(format!(
            "unknown check `{unknown}` in --skip-checks (checks: {})",
            CHECKS.join(", ")
        ))
        .into());
    }
    Ok(PreflightOptions {
        skip: args.skip_checks.iter().cloned().collect(),
        max_clock_skew_s: args.max_clock_skew,
        ..Default::default()
    })
}

/// Names of the clusters run from this machine (`<root>/clusters/*`), sorted.
pub fn saved_clusters(clusters_dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(clusters_dir)
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The Clusterfile `kiln run` saved for cluster `name`.
pub fn saved_clusterfile(clusters_dir: &std::path::Path, name: &str) -> anyhow::Result<Clusterfile> {
    let path = clusters_dir.join(name).join("Clusterfile");
    let text = std::fs::read_to_string(&path)
        .map_err(|_| UserError::new(format!("no cluster `{name}` was run from this machine")))?;
    Clusterfile::parse(&path.display().to_string(), &text).map_err(|e| anyhow::Error::new(*e))
}

/// The cluster a command acts on: `--cluster NAME`, else the hosts given by flags or a
/// Clusterfile, else the only cluster run from this machine.
pub fn chosen_cluster(
    clusters_dir: &std::path::Path,
    cluster: Option<&str>,
    hosts: &HostArgs,
    printer: &Printer,
) -> anyhow::Result<Clusterfile> {
    if let Some(name) = cluster {
        return saved_clusterfile(clusters_dir, name);
    }
    if hosts.clusterfile.is_some() || hosts.masters.is_some() || hosts.nodes.is_some() {
        return resolve(hosts, None, printer);
    }
    chosen_saved_cluster(clusters_dir, None)
}

/// A cluster run from this machine: `name`, else the only one.
pub fn chosen_saved_cluster(clusters_dir: &std::path::Path, name: Option<&str>) -> anyhow::Result<Clusterfile> {
    if let Some(name) = name {
        return saved_clusterfile(clusters_dir, name);
    }
    match saved_clusters(clusters_dir).as_slice() {
        [only] => saved_clusterfile(clusters_dir, only),
        [] => Err(UserError::new("no cluster was run from this machine: give `-f Clusterfile` or `-m IPS`").into()),
        many => Err(UserError::new(format!(
            "{} clusters were run from this machine ({}): name one with `--cluster`",
            many.len(),
            many.join(", ")
        ))
        .into()),
    }
}

/// The cluster a scaling command acts on: with `--from-master0`, the state a run left on that
/// host is taken first (replacing this machine's copy); then the saved cluster as
/// [`chosen_saved_cluster`] finds it.
pub async fn cluster_from_state(
    clusters_dir: &std::path::Path,
    source: &crate::cli::StateSourceArgs,
    hosts: &HostArgs,
    printer: &Printer,
) -> anyhow::Result<Clusterfile> {
    let Some(ip) = source.from_master0 else {
        return chosen_saved_cluster(clusters_dir, source.cluster.as_deref());
    };
    let mut flags = flag_hosts(hosts, printer)?;
    flags.masters = vec![ip];
    flags.nodes.clear();
    let reach = flags.into_clusterfile(None).map_err(UserError::new)?;
    let connect = connect_options(hosts, &reach)?;
    let fleet = crate::runtime::Fleet::connect(&reach.cluster.hosts, &connect).await;
    let fetched = match fleet.sessions.get(&ip) {
        Some(session) => crate::runtime::state::fetch(session, &source.data_root, source.cluster.as_deref()).await,
        None => {
            let why = fleet.failed.get(&ip).map(|e| crate::error_chain(e)).unwrap_or_default();
            fleet.close().await;
            return Err(UserError::new(format!("cannot reach master0 {ip}: {why}")).into());
        }
    };
    fleet.close().await;
    let (name, tar) = fetched.map_err(|e| UserError::new(crate::error_chain(&e)))?;
    crate::runtime::state::unpack(&tar, &clusters_dir.join(&name), &ip.to_string())?;
    printer.status(&format!("Took the state of cluster `{name}` from master0 {ip}"));
    saved_clusterfile(clusters_dir, &name)
}
