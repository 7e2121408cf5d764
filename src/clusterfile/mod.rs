//! Clusterfile: the Sealer v2 description of a cluster (hosts, SSH, env, registry, apps), parsed
//! into a validated [`Clusterfile`]. Every error points at `file:line:col`.
//!
//! Compatible with Sealer's documents (`Cluster`, `Config`, `Plugin`, `Application` and the
//! kubeadm kinds), stricter where Sealer is silently wrong: unknown kinds and fields, duplicate
//! IPs, hosts that are both master and node, and malformed env, taints or ports are errors.

mod documents;
mod shortcuts;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_saphyr::{Location, Spanned};

pub use crate::diagnostic::SourceError as ClusterfileError;
use crate::secret::Secret;
use documents::*;
pub use shortcuts::{FlagHosts, parse_ip_list};

/// Where Sealer keeps cluster data on hosts.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/kiln/data";
pub const DEFAULT_REGISTRY_DOMAIN: &str = "sea.hub";
pub const DEFAULT_REGISTRY_PORT: u16 = 5000;

/// Kinds kept as written for the modules that own them (plugins, the Kubernetes runtime).
const PASSTHROUGH_KINDS: &[&str] = &[
    "Plugin",
    "InitConfiguration",
    "JoinConfiguration",
    "ClusterConfiguration",
    "KubeletConfiguration",
    "KubeProxyConfiguration",
];

/// A parsed and validated Clusterfile.
#[derive(Debug, Clone)]
pub struct Clusterfile {
    pub cluster: Cluster,
    pub configs: Vec<Config>,
    pub applications: Vec<Application>,
    /// Every document but the Cluster, as written (Plugin and kubeadm documents are parsed by
    /// their own modules; Config and Application are also in the fields above).
    pub documents: Vec<RawDocument>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    /// The cluster image (`spec.image`); `kiln run IMAGE` may supply it instead.
    pub image: Option<String>,
    /// Cluster env; a later duplicate key wins, as in Sealer.
    pub env: BTreeMap<String, String>,
    pub cmds: Vec<String>,
    /// `None`: the image's LAUNCH list; `Some([])`: launch nothing.
    pub app_names: Option<Vec<String>>,
    /// In the order written; the first master is master0.
    pub hosts: Vec<Host>,
    pub container_runtime: Option<String>,
    pub host_aliases: Vec<HostAlias>,
    pub registry: Registry,
    pub data_root: PathBuf,
}

/// The container runtime when the Clusterfile names none (as in Sealer).
const DEFAULT_CONTAINER_RUNTIME: &str = "containerd";

impl Cluster {
    /// The container runtime's name (`spec.containerRuntime.type`): the image's
    /// `scripts/<cri>.sh` installs it, `uninstall-<cri>.sh` removes it.
    pub fn cri(&self) -> &str {
        self.container_runtime.as_deref().unwrap_or(DEFAULT_CONTAINER_RUNTIME)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub ip: IpAddr,
    pub roles: Vec<Role>,
    pub ssh: SshConfig,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl Host {
    pub fn is_master(&self) -> bool {
        self.roles.contains(&Role::Master)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Master,
    Node,
    /// Any other role: node-role label and plugin scope only.
    Custom(String),
}

impl Role {
    fn parse(s: &str) -> Self {
        match s {
            "master" => Self::Master,
            "node" => Self::Node,
            other => Self::Custom(other.to_owned()),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Master => f.write_str("master"),
            Self::Node => f.write_str("node"),
            Self::Custom(s) => f.write_str(s),
        }
    }
}

/// How to reach a host. Secrets never print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    pub user: String,
    pub port: u16,
    pub password: Option<Secret>,
    pub private_key: Option<PathBuf>,
    pub key_passphrase: Option<Secret>,
}

impl Default for SshConfig {
    fn default() -> Self {
        Self { user: "root".into(), port: 22, password: None, private_key: None, key_passphrase: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// `key[=value]:Effect`, or with a trailing `-` a taint to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: Option<TaintEffect>,
    pub remove: bool,
}

impl Taint {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (body, remove) = match s.strip_suffix('-') {
            Some(b) => (b, true),
            None => (s, false),
        };
        let (kv, effect) = match body.rsplit_once(':') {
            Some((kv, e)) => (kv, Some(e)),
            None => (body, None),
        };
        let effect = match effect {
            None if remove => None,
            None => return Err("a taint needs an effect: `key[=value]:NoSchedule|PreferNoSchedule|NoExecute`".into()),
            Some("NoSchedule") => Some(TaintEffect::NoSchedule),
            Some("PreferNoSchedule") => Some(TaintEffect::PreferNoSchedule),
            Some("NoExecute") => Some(TaintEffect::NoExecute),
            Some(other) => {
                return Err(format!("unknown taint effect `{other}` (NoSchedule, PreferNoSchedule or NoExecute)"));
            }
        };
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (kv, None),
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("`{s}` has no valid taint key"));
        }
        Ok(Self { key: key.to_owned(), value, effect, remove })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAlias {
    pub ip: IpAddr,
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registry {
    /// The in-cluster registry kiln runs from the image's `registry/` content.
    Local(LocalRegistry),
    /// A registry the site already has; only login credentials are distributed.
    External { domain: String, port: Option<u16>, username: Option<String>, password: Option<Secret> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRegistry {
    pub domain: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// On every master (Sealer's default) or master0 only.
    pub ha: bool,
    /// Plain HTTP instead of a generated certificate.
    pub insecure: bool,
    pub extra_dns_names: Vec<String>,
    pub extra_ips: Vec<IpAddr>,
}

impl Default for LocalRegistry {
    fn default() -> Self {
        Self {
            domain: DEFAULT_REGISTRY_DOMAIN.into(),
            port: DEFAULT_REGISTRY_PORT,
            username: None,
            password: None,
            ha: true,
            insecure: false,
            extra_dns_names: vec![],
            extra_ips: vec![],
        }
    }
}

/// `kind: Config`: a file written into the rootfs before distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub path: String,
    pub data: String,
    pub app_name: Option<String>,
    pub merge: bool,
    pub process: Option<String>,
}

/// `kind: Application`: overrides of what the image launches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub cmds: Option<Vec<String>>,
    pub launch_apps: Option<Vec<String>>,
    pub configs: Vec<AppConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    pub name: String,
    pub env: BTreeMap<String, String>,
    pub files: Vec<(String, bool, String)>,
    pub launch_cmds: Option<Vec<String>>,
}

/// A document kept as written, with where it starts in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDocument {
    pub kind: String,
    pub text: String,
    /// 1-based line of the document's first line.
    pub line: usize,
    /// The file it came from, for errors.
    pub file: String,
}

impl Clusterfile {
    /// Parses and validates `source`; `file` names it in errors.
    pub fn parse(file: &str, source: &str) -> Result<Self, Box<ClusterfileError>> {
        Parser { file, source: Arc::from(source) }.parse().map_err(Box::new)
    }

    pub fn master0(&self) -> Option<&Host> {
        self.cluster.hosts.iter().find(|h| h.is_master())
    }
}

/// One `---`-separated document: its text and where it starts.
struct Document<'a> {
    text: &'a str,
    offset: usize,
    line: usize,
}

/// Splits on `---` lines at column 0 (YAML's document marker); empty documents are dropped.
fn split_documents(source: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut offset) = (0usize, 1usize, 0usize);
    for (index, line) in source.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push(Document { text: &source[start..offset], offset: start, line: start_line });
            start = offset + line.len();
            start_line = index + 2;
        }
        offset += line.len();
    }
    docs.push(Document { text: &source[start..], offset: start, line: start_line });
    docs.retain(|d| d.text.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    docs
}

/// Byte offset of a 1-based line and character column in `text`.
fn offset_of(text: &str, line: u64, column: u64) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            return offset + l.char_indices().nth(column.saturating_sub(1) as usize).map_or(l.len(), |(b, _)| b);
        }
        offset += l.len();
    }
    text.len()
}

struct Parser<'a> {
    file: &'a str,
    source: Arc<str>,
}

/// Errors are the cold path: boxed once, at [`Clusterfile::parse`].
type ParseResult<T> = std::result::Result<T, ClusterfileError>;

#[allow(clippy::result_large_err)]
impl Parser<'_> {
    fn error_at(&self, offset: usize, message: impl Into<String>, label: &str) -> ClusterfileError {
        let end = self.source[offset..].find(['\n', ',', ']']).map_or(self.source.len(), |e| offset + e.max(1));
        ClusterfileError::new(self.file, &self.source, offset..end, message, label)
    }

    fn at(&self, doc: &Document<'_>, location: &Location) -> usize {
        match location.span().byte_offset() {
            Some(b) => doc.offset + b as usize,
            None => doc.offset + offset_of(doc.text, location.line(), location.column()),
        }
    }

    fn error<T>(
        &self,
        doc: &Document<'_>,
        spanned: &Spanned<T>,
        message: impl Into<String>,
        label: &str,
    ) -> ClusterfileError {
        self.error_at(self.at(doc, &spanned.referenced), message, label)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, doc: &Document<'_>) -> ParseResult<T> {
        serde_saphyr::from_str(doc.text).map_err(|e| {
            let offset = e.location().map_or(doc.offset, |l| self.at(doc, &l));
            let message = yaml_message(&e);
            self.error_at(offset, message, "here")
        })
    }

    fn parse(&self) -> ParseResult<Clusterfile> {
        let source = Arc::clone(&self.source);
        let mut cluster = None;
        let mut configs = Vec::new();
        let mut applications = Vec::new();
        let mut documents = Vec::new();
        for doc in split_documents(&source) {
            let probe: KindProbe = self.decode(&doc)?;
            let Some(kind) = probe.kind else {
                return Err(self.error_at(doc.offset, "document has no `kind`", "this document"));
            };
            match kind.value.as_str() {
                "Cluster" => {
                    if cluster.is_some() {
                        return Err(self.error(
                            &doc,
                            &kind,
                            "a Clusterfile holds one `Cluster` document",
                            "second one",
                        ));
                    }
                    cluster = Some(self.cluster(&doc, self.decode(&doc)?)?);
                }
                "Config" => {
                    configs.push(self.config(&doc, self.decode(&doc)?)?);
                    documents.push(RawDocument {
                        kind: "Config".into(),
                        text: doc.text.to_owned(),
                        line: doc.line,
                        file: self.file.to_owned(),
                    });
                }
                "Application" => {
                    applications.push(self.application(&doc, self.decode(&doc)?)?);
                    documents.push(RawDocument {
                        kind: "Application".into(),
                        text: doc.text.to_owned(),
                        line: doc.line,
                        file: self.file.to_owned(),
                    });
                }
                k if PASSTHROUGH_KINDS.contains(&k) => documents.push(RawDocument {
                    kind: k.to_owned(),
                    text: doc.text.to_owned(),
                    line: doc.line,
                    file: self.file.to_owned(),
                }),
                other => {
                    let mut valid = vec!["Cluster", "Config", "Application"];
                    valid.extend(PASSTHROUGH_KINDS);
                    return Err(self
                        .error(&doc, &kind, format!("unknown kind `{other}`"), "unknown kind")
                        .with_help(format!("valid kinds: {}", valid.join(", "))));
                }
            }
        }
        let Some(cluster) = cluster else {
            return Err(self.error_at(0, "no `kind: Cluster` document", "expected a Cluster document"));
        };
        Ok(Clusterfile { cluster, configs, applications, documents })
    }

    fn env(&self, doc: &Document<'_>, entries: &[Spanned<String>]) -> ParseResult<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for entry in entries {
            let Some((k, v)) = entry.value.split_once('=').filter(|(k, _)| valid_env_key(k)) else {
                return Err(self.error(doc, entry, format!("env entry `{}` is not `KEY=VALUE`", entry.value), "here"));
            };
            env.insert(k.to_owned(), v.to_owned());
        }
        Ok(env)
    }

    fn ssh(&self, doc: &Document<'_>, base: &SshConfig, ssh: &SshDoc) -> ParseResult<SshConfig> {
        if let Some(enc) = ssh.encrypted.as_ref().filter(|e| e.value) {
            return Err(self.error(doc, enc, "encrypted SSH passwords are not supported", "here").with_help(
                "Sealer encrypts them with a key built into its binary, which protects nothing; \
                     use a key (`pk`), an agent, or `kiln run --passwd-file FILE`",
            ));
        }
        let mut out = base.clone();
        if let Some(user) = ssh.user.as_ref().filter(|u| !u.is_empty()) {
            out.user = user.clone();
        }
        if let Some(p) = ssh.passwd.as_ref().filter(|p| !p.expose().is_empty()) {
            out.password = Some(p.clone());
        }
        if let Some(pk) = ssh.pk.as_ref().filter(|p| !p.is_empty()) {
            out.private_key = Some(PathBuf::from(pk));
        }
        if let Some(p) = ssh.pk_passwd.as_ref().filter(|p| !p.expose().is_empty()) {
            out.key_passphrase = Some(p.clone());
        }
        if let Some(port) = &ssh.port {
            out.port = match &port.value {
                PortDoc::Number(n) if *n > 0 => *n,
                PortDoc::Text(t) if t.is_empty() => out.port,
                PortDoc::Text(t) => t.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    self.error(doc, port, format!("SSH port `{t}` is not a number from 1 to 65535"), "here")
                })?,
                PortDoc::Number(_) => return Err(self.error(doc, port, "SSH port 0 is not valid", "here")),
            };
        }
        Ok(out)
    }

    fn cluster(&self, doc: &Document<'_>, d: ClusterDoc) -> ParseResult<Cluster> {
        let spec = &d.spec.value;
        let name = match &d.metadata.name {
            Some(n) if valid_name(&n.value) => n.value.clone(),
            Some(n) => {
                return Err(self.error(
                    doc,
                    n,
                    format!("cluster name `{}` must be lowercase letters, digits and `-`", n.value),
                    "here",
                ));
            }
            None => "my-cluster".into(),
        };
        let ssh = self.ssh(doc, &SshConfig::default(), &spec.ssh)?;
        let mut hosts: Vec<Host> = Vec::new();
        let mut seen: BTreeMap<IpAddr, usize> = BTreeMap::new();
        if spec.hosts.is_empty() {
            return Err(self.error(doc, &d.spec, "`spec.hosts` lists no hosts", "in this spec"));
        }
        for group in &spec.hosts {
            let g = &group.value;
            if g.roles.is_empty() {
                return Err(self
                    .error(doc, group, "host group has no `roles`", "this group")
                    .with_help("add `roles: [master]` or `roles: [node]`"));
            }
            let roles: Vec<Role> = g.roles.iter().map(|r| Role::parse(&r.value)).collect();
            if roles.contains(&Role::Master) && roles.contains(&Role::Node) {
                let at = g.roles.iter().find(|r| r.value == "node").unwrap_or(&g.roles[0]);
                return Err(self
                    .error(doc, at, "a host is either a master or a node, not both", "conflicting role")
                    .with_help("masters run workloads too once their taint is removed; list each IP once"));
            }
            let host_ssh = match &g.ssh {
                Some(s) => self.ssh(doc, &ssh, s)?,
                None => ssh.clone(),
            };
            let env = self.env(doc, &g.env)?;
            let mut taints = Vec::new();
            for t in &g.taints {
                taints.push(Taint::parse(&t.value).map_err(|m| self.error(doc, t, m, "here"))?);
            }
            if g.ips.is_empty() {
                return Err(self.error(doc, group, "host group lists no `ips`", "this group"));
            }
            for ip in &g.ips {
                let parsed = parse_ip_list(&ip.value).map_err(|m| self.error(doc, ip, m, "here"))?;
                for addr in parsed {
                    let offset = self.at(doc, &ip.referenced);
                    if let Some(first) = seen.insert(addr, offset) {
                        let line = crate::diagnostic::Location::of(self.file, &self.source, first).line;
                        return Err(self
                            .error_at(offset, format!("host {addr} is listed twice"), "again here")
                            .with_help(format!(
                                "first listed on line {line}; each host appears once, with all its roles"
                            )));
                    }
                    hosts.push(Host {
                        ip: addr,
                        roles: roles.clone(),
                        ssh: host_ssh.clone(),
                        env: env.clone(),
                        labels: g.labels.clone(),
                        taints: taints.clone(),
                    });
                }
            }
        }
        if !hosts.iter().any(Host::is_master) {
            return Err(self.error(doc, &d.spec, "no host has the `master` role", "in this spec").with_help(
                "the first master (master0) runs the registry and the apps; give one host `roles: [master]`",
            ));
        }
        if hosts.iter().any(|h| h.ip.is_ipv4()) && hosts.iter().any(|h| h.ip.is_ipv6()) {
            return Err(self.error(doc, &d.spec, "hosts mix IPv4 and IPv6 addresses", "in this spec"));
        }
        let data_root = match &spec.data_root {
            Some(p) if p.value.starts_with('/') => PathBuf::from(&p.value),
            Some(p) => return Err(self.error(doc, p, "`dataRoot` must be an absolute path", "here")),
            None => PathBuf::from(DEFAULT_DATA_ROOT),
        };
        let mut host_aliases = Vec::new();
        for alias in &spec.host_aliases {
            let ip = alias.ip.value.parse().map_err(|_| {
                self.error(doc, &alias.ip, format!("`{}` is not an IP address", alias.ip.value), "here")
            })?;
            host_aliases.push(HostAlias { ip, hostnames: alias.hostnames.clone() });
        }
        Ok(Cluster {
            name,
            image: spec.image.as_ref().map(|i| i.value.clone()).filter(|i| !i.is_empty()),
            env: self.env(doc, &spec.env)?,
            cmds: spec.cmd.clone(),
            app_names: spec.app_names.clone().map(|a| a.into_iter().filter(|n| !n.is_empty()).collect()),
            hosts,
            container_runtime: spec.container_runtime.as_ref().map(|c| c.kind.clone()),
            host_aliases,
            registry: self.registry(doc, spec.registry.as_ref())?,
            data_root,
        })
    }

    fn registry(&self, doc: &Document<'_>, registry: Option<&RegistryDoc>) -> ParseResult<Registry> {
        let Some(r) = registry else { return Ok(Registry::Local(LocalRegistry::default())) };
        if let (Some(ext), None) = (&r.external_registry, &r.local_registry) {
            if ext.domain.value.is_empty() {
                return Err(self.error(doc, &ext.domain, "`externalRegistry.domain` is empty", "here"));
            }
            return Ok(Registry::External {
                domain: ext.domain.value.clone(),
                port: ext.port,
                username: ext.username.clone(),
                password: ext.password.clone(),
            });
        }
        let local = r.local_registry.as_ref();
        let defaults = LocalRegistry::default();
        if let Some(l) = local {
            let has_user = l.username.as_deref().is_some_and(|u| !u.is_empty());
            let has_password = l.password.as_ref().is_some_and(|p| !p.expose().is_empty());
            if has_user != has_password {
                return Err(self.error_at(
                    doc.offset,
                    "`registry.localRegistry` needs both `username` and `password`, or neither (kiln then generates them)",
                    "in this document",
                ));
            }
        }
        let mut extra_ips = Vec::new();
        for ip in local.and_then(|l| l.cert.as_ref()).map(|c| c.subject_alt_name.ips.clone()).unwrap_or_default() {
            extra_ips.push(ip.parse().map_err(|_| {
                self.error_at(
                    doc.offset,
                    format!("registry certificate IP `{ip}` is not an IP address"),
                    "in this document",
                )
            })?);
        }
        Ok(Registry::Local(LocalRegistry {
            domain: local.and_then(|l| l.domain.clone()).filter(|d| !d.is_empty()).unwrap_or(defaults.domain),
            port: local.and_then(|l| l.port).filter(|p| *p > 0).unwrap_or(defaults.port),
            username: local.and_then(|l| l.username.clone()).filter(|u| !u.is_empty()),
            password: local.and_then(|l| l.password.clone()).filter(|p| !p.expose().is_empty()),
            ha: local.and_then(|l| l.ha).unwrap_or(defaults.ha),
            insecure: local.and_then(|l| l.insecure).unwrap_or(defaults.insecure),
            extra_dns_names: local
                .and_then(|l| l.cert.as_ref())
                .map(|c| c.subject_alt_name.dns_names.clone())
                .unwrap_or_default(),
            extra_ips,
        }))
    }

    fn config(&self, doc: &Document<'_>, d: ConfigDoc) -> ParseResult<Config> {
        let spec = &d.spec.value;
        let (Some(path), Some(data)) = (spec.path.clone(), spec.data.clone()) else {
            return Err(self.error(doc, &d.spec, "a Config needs `spec.path` and `spec.data`", "in this spec"));
        };
        let merge = match &spec.strategy {
            None => false,
            Some(s) if s.value == "overwrite" => false,
            Some(s) if s.value == "merge" => true,
            Some(s) => {
                return Err(self.error(doc, s, format!("unknown strategy `{}` (overwrite or merge)", s.value), "here"));
            }
        };
        Ok(Config {
            name: d.metadata.name.map(|n| n.value).unwrap_or_default(),
            path,
            data,
            app_name: spec.app_name.clone(),
            merge,
            process: spec.process.clone(),
        })
    }

    fn application(&self, doc: &Document<'_>, d: ApplicationDoc) -> ParseResult<Application> {
        let mut configs = Vec::new();
        for c in d.spec.configs {
            configs.push(AppConfig {
                env: self.env(doc, &c.env)?,
                files: c.files.into_iter().map(|f| (f.path, f.strategy.as_deref() == Some("merge"), f.data)).collect(),
                launch_cmds: c.launch.map(|l| l.cmds),
                name: c.name,
            });
        }
        let _ = d.metadata;
        Ok(Application { cmds: d.spec.cmds, launch_apps: d.spec.launch_apps, configs })
    }
}

/// Sealer's env keys are shell variable names.
fn valid_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Cluster names become path components and label values.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
}

/// serde-saphyr's message without its own location suffix (the diagnostic shows ours).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::{DefaultMessageFormatter, MessageFormatter};
    // Control characters could rewrite the terminal; nothing else needs escaping.
    let text: String =
        DefaultMessageFormatter.format_message(e).chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    text.split(" at line ").next().unwrap_or(&text).to_owned()
}

impl Clusterfile {
    /// The cluster as a Sealer v2 Clusterfile (the effective one a run saves, secrets included:
    /// the caller writes it with mode 0600), followed by the kept documents.
    pub fn to_yaml(&self) -> Result<String, String> {
        use serde_json::json;
        let c = &self.cluster;
        let ssh = |s: &SshConfig| {
            let mut v = json!({"user": s.user, "port": s.port.to_string()});
            if let Some(p) = &s.password {
                v["passwd"] = json!(p.expose());
            }
            if let Some(k) = &s.private_key {
                v["pk"] = json!(k.display().to_string());
            }
            if let Some(p) = &s.key_passphrase {
                v["pkPasswd"] = json!(p.expose());
            }
            v
        };
        let hosts: Vec<serde_json::Value> = c
            .hosts
            .iter()
            .map(|h| {
                let mut v = json!({
                    "ips": [h.ip.to_string()],
                    "roles": h.roles.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "ssh": ssh(&h.ssh),
                });
                if !h.env.is_empty() {
                    v["env"] = json!(h.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>());
                }
                if !h.labels.is_empty() {
                    v["labels"] = json!(h.labels);
                }
                if !h.taints.is_empty() {
                    v["taints"] = json!(h.taints.iter().map(Taint::to_string).collect::<Vec<_>>());
                }
                v
            })
            .collect();
        let mut spec = json!({
            "hosts": hosts,
            "env": c.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "dataRoot": c.data_root.display().to_string(),
        });
        if let Some(i) = &c.image {
            spec["image"] = json!(i);
        }
        if !c.cmds.is_empty() {
            spec["cmd"] = json!(c.cmds);
        }
        if let Some(a) = &c.app_names {
            spec["appNames"] = json!(a);
        }
        if let Some(r) = &c.container_runtime {
            spec["containerRuntime"] = json!({"type": r});
        }
        if !c.host_aliases.is_empty() {
            spec["hostAliases"] = json!(
                c.host_aliases
                    .iter()
                    .map(|a| json!({"ip": a.ip.to_string(), "hostnames": a.hostnames}))
                    .collect::<Vec<_>>()
            );
        }
        spec["registry"] = match &c.registry {
            Registry::Local(r) => {
                let mut l = json!({"domain": r.domain, "port": r.port, "ha": r.ha, "insecure": r.insecure});
                if let Some(u) = &r.username {
                    l["username"] = json!(u);
                }
                if let Some(p) = &r.password {
                    l["password"] = json!(p.expose());
                }
                json!({"localRegistry": l})
            }
            Registry::External { domain, port, username, password } => {
                let mut e = json!({"domain": domain});
                if let Some(p) = port {
                    e["port"] = json!(p);
                }
                if let Some(u) = username {
                    e["username"] = json!(u);
                }
                if let Some(p) = password {
                    e["password"] = json!(p.expose());
                }
                json!({"externalRegistry": e})
            }
        };
        let doc = json!({"apiVersion": "sealer.io/v2", "kind": "Cluster", "metadata": {"name": c.name}, "spec": spec});
        let mut out = serde_saphyr::to_string(&doc).map_err(|e| e.to_string())?;
        for d in &self.documents {
            out.push_str("---\n");
            out.push_str(&d.text);
            if !d.text.ends_with('\n') {
                out.push('\n');
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)?;
        if let Some(v) = &self.value {
            write!(f, "={v}")?;
        }
        if let Some(e) = self.effect {
            write!(f, ":{e:?}")?;
        }
        if self.remove {
            f.write_str("-")?;
        }
        Ok(())
    }
}
