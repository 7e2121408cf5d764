//! Plugins: Sealer-compatible `kind: Plugin` documents (`type: SHELL`) from the cluster image's
//! `plugins/` and from the Clusterfile, and plugin packages (a directory under `plugins/` with
//! a `plugin.yaml` and its scripts, versioned by `metadata.revision`).
//!
//! Unlike Sealer, which accepts an unknown `action` and then never runs it, and matches no host
//! when `scope` is empty, every phase, type and scope is checked when the plugins are loaded:
//! a mistake is an error at `file:line:col` and nothing runs. Only one plugin of a name is
//! loaded (the highest revision; at equal revisions the Clusterfile's, then a package's), and
//! the choice is reported. Hooks of one phase run in the order of their names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::clusterfile::{Clusterfile, Host};
use crate::diagnostic::SourceError;

pub mod image;

/// Why a cluster's plugins could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    #[error(transparent)]
    Source(#[from] Box<SourceError>),
    #[error(transparent)]
    Image(#[from] image::ImagePluginError),
}

/// The plugins of a cluster: the image's (when it is known here) and the Clusterfile's.
pub fn for_cluster(
    store: Option<(&crate::image::Store, &crate::image::Image)>,
    clusterfile: &Clusterfile,
) -> Result<PluginSet, PluginLoadError> {
    load(store, Some(clusterfile), Some(&scope_roles(clusterfile)))
}

/// The roles a plugin's scope may name in this cluster: `master`, `node` and its hosts' own.
pub fn scope_roles(clusterfile: &Clusterfile) -> BTreeSet<String> {
    let mut roles: BTreeSet<String> = ["master", "node"].iter().map(|s| (*s).to_owned()).collect();
    roles.extend(clusterfile.cluster.hosts.iter().flat_map(|h| h.roles.iter().map(ToString::to_string)));
    roles
}

/// The plugins of an image and/or a Clusterfile (`kiln plugin list`), scopes checked against
/// `roles` when given.
pub fn load(
    store: Option<(&crate::image::Store, &crate::image::Image)>,
    clusterfile: Option<&Clusterfile>,
    roles: Option<&BTreeSet<String>>,
) -> Result<PluginSet, PluginLoadError> {
    let mut sources = match store {
        Some((store, image)) => image::sources(store, image)?,
        None => Vec::new(),
    };
    if let Some(cf) = clusterfile {
        sources.extend(cf.documents.iter().filter(|d| d.kind == "Plugin").map(PluginSource::from_clusterfile));
    }
    Ok(PluginSet::load(&sources, roles)?)
}

/// When a hook runs. Cluster phases run on master0; host phases on the hosts in `scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    PreInstall,
    PostInstall,
    PreUninstall,
    PostUninstall,
    PreScaleup,
    PostScaleup,
    Upgrade,
    Rollback,
    PreInitHost,
    PostInitHost,
    PreCleanHost,
    PostCleanHost,
    UpgradeHost,
}

impl Phase {
    pub const ALL: [Phase; 13] = [
        Self::PreInstall,
        Self::PostInstall,
        Self::PreUninstall,
        Self::PostUninstall,
        Self::PreScaleup,
        Self::PostScaleup,
        Self::Upgrade,
        Self::Rollback,
        Self::PreInitHost,
        Self::PostInitHost,
        Self::PreCleanHost,
        Self::PostCleanHost,
        Self::UpgradeHost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::PreInstall => "pre-install",
            Self::PostInstall => "post-install",
            Self::PreUninstall => "pre-uninstall",
            Self::PostUninstall => "post-uninstall",
            Self::PreScaleup => "pre-scaleup",
            Self::PostScaleup => "post-scaleup",
            Self::Upgrade => "upgrade",
            Self::Rollback => "rollback",
            Self::PreInitHost => "pre-init-host",
            Self::PostInitHost => "post-init-host",
            Self::PreCleanHost => "pre-clean-host",
            Self::PostCleanHost => "post-clean-host",
            Self::UpgradeHost => "upgrade-host",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Runs on the hosts of the plugin's scope (else once, on master0).
    pub fn on_hosts(self) -> bool {
        matches!(
            self,
            Self::PreInitHost | Self::PostInitHost | Self::PreCleanHost | Self::PostCleanHost | Self::UpgradeHost
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a plugin was defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Origin {
    /// A Plugin document of the Clusterfile.
    Clusterfile { file: String, line: usize },
    /// `plugins/<file>` in the cluster image.
    Image { file: String },
    /// `plugins/<dir>/plugin.yaml` in the cluster image: its scripts are in `dir`.
    Package { dir: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Clusterfile { file, line } => write!(f, "{file}:{line}"),
            Self::Image { file } => write!(f, "image {file}"),
            Self::Package { dir } => write!(f, "image package {dir}/"),
        }
    }
}

/// One loaded plugin.
#[derive(Debug, Clone, Serialize)]
pub struct Plugin {
    pub name: String,
    pub revision: u32,
    pub phases: Vec<Phase>,
    /// Roles whose hosts run its host phases (`master`, `node` or a custom role).
    pub scope: BTreeSet<String>,
    /// The shell script, run with `sh -c` in the rootfs (a package's in its directory).
    pub data: String,
    pub origin: Origin,
    /// What preflight may count on this plugin to do in `pre-init-host` (its `kiln.io/`
    /// annotations).
    #[serde(skip_serializing_if = "PreflightPromise::is_empty")]
    pub promises: PreflightPromise,
}

/// What a plugin promises to do in `pre-init-host`, so that preflight checks the cluster as it
/// will be then rather than as it is now:
/// - `kiln.io/hostname-from-env: HostName`: sets each host's hostname to that env value (where
///   set), so hostname uniqueness is checked on those names and they become the node names;
/// - `kiln.io/repairs: clock-skew`: brings a clock that fails the check within the limit, so
///   that failure does not stop the run; kiln measures again after the hook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PreflightPromise {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname_from_env: Option<String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub repairs: BTreeSet<Repairable>,
}

impl PreflightPromise {
    pub fn is_empty(&self) -> bool {
        self.hostname_from_env.is_none() && self.repairs.is_empty()
    }
}

/// A preflight check a plugin may repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Repairable {
    ClockSkew,
}

impl Repairable {
    pub const ALL: [Repairable; 1] = [Self::ClockSkew];

    /// The check's name in preflight (`--skip-checks`).
    pub fn check(self) -> &'static str {
        match self {
            Self::ClockSkew => "clock-skew",
        }
    }
}

/// The annotations kiln reads (any other `kiln.io/` key is a mistake).
const HOSTNAME_FROM_ENV: &str = "kiln.io/hostname-from-env";
const REPAIRS: &str = "kiln.io/repairs";

impl Plugin {
    /// Whether `host` runs this plugin's host phases.
    pub fn applies_to(&self, host: &Host) -> bool {
        host.roles.iter().any(|r| self.scope.contains(&r.to_string()))
    }

    /// The directory the script runs in, relative to the rootfs.
    pub fn work_dir(&self) -> String {
        match &self.origin {
            Origin::Package { dir } => dir.clone(),
            _ => ".".into(),
        }
    }
}

/// A file to load plugins from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginSource {
    /// The name used in errors (`Clusterfile`, `plugins/a.yaml`).
    pub file: String,
    /// The text, padded with empty lines so line numbers are the file's (for documents cut
    /// out of a Clusterfile).
    pub text: String,
    pub kind: SourceKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceKind {
    Clusterfile {
        line: usize,
    },
    ImageFile,
    /// `plugins/<dir>/plugin.yaml`.
    Package {
        dir: String,
    },
}

impl PluginSource {
    /// A Plugin document of a Clusterfile (as [`crate::clusterfile::RawDocument`] keeps it).
    pub fn from_clusterfile(doc: &crate::clusterfile::RawDocument) -> Self {
        Self {
            file: doc.file.clone(),
            text: format!("{}{}", "\n".repeat(doc.line.saturating_sub(1)), doc.text),
            kind: SourceKind::Clusterfile { line: doc.line },
        }
    }
}

/// Every plugin of a cluster, one per name.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PluginSet {
    /// By name (the order hooks of a phase run in).
    pub plugins: BTreeMap<String, Plugin>,
    /// What was chosen where two sources define the same name.
    pub choices: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginDoc {
    #[serde(rename = "apiVersion")]
    #[allow(dead_code)]
    api_version: Option<String>,
    kind: Spanned<String>,
    metadata: Option<Spanned<Metadata>>,
    spec: Option<Spanned<Spec>>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: Option<Spanned<String>>,
    /// kiln: a package's revision (only the highest of a name is loaded).
    revision: Option<Spanned<u32>>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    action: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    data: Option<Spanned<String>>,
}

type LoadResult<T> = Result<T, Box<SourceError>>;

impl PluginSet {
    /// Loads every source; `roles` are the roles a scope may name (the cluster's, plus
    /// `master` and `node`; `None` when no cluster is known, e.g. listing an image's plugins).
    pub fn load(sources: &[PluginSource], roles: Option<&BTreeSet<String>>) -> LoadResult<Self> {
        let mut set = Self::default();
        for source in sources {
            for plugin in parse_source(source, roles)? {
                set.add(plugin);
            }
        }
        Ok(set)
    }

    fn add(&mut self, plugin: Plugin) {
        let rank = |p: &Plugin| {
            let place = match p.origin {
                Origin::Image { .. } => 0,
                Origin::Package { .. } => 1,
                Origin::Clusterfile { .. } => 2,
            };
            (p.revision, place)
        };
        match self.plugins.get(&plugin.name) {
            None => {
                self.plugins.insert(plugin.name.clone(), plugin);
            }
            Some(old) => {
                let (keep, drop) = if rank(&plugin) >= rank(old) { (&plugin, old) } else { (old, &plugin) };
                self.choices.push(format!(
                    "plugin `{}`: revision {} from {} is used, not revision {} from {}",
                    keep.name, keep.revision, keep.origin, drop.revision, drop.origin
                ));
                if rank(&plugin) >= rank(old) {
                    self.plugins.insert(plugin.name.clone(), plugin);
                }
            }
        }
    }

    /// The hooks of `phase`, in the order they run.
    pub fn hooks(&self, phase: Phase) -> impl Iterator<Item = &Plugin> {
        self.plugins.values().filter(move |p| p.phases.contains(&phase))
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }
}

fn parse_source(source: &PluginSource, roles: Option<&BTreeSet<String>>) -> LoadResult<Vec<Plugin>> {
    let text: Arc<str> = Arc::from(source.text.as_str());
    let error = |offset: usize, message: String, label: &str| -> Box<SourceError> {
        let end = text[offset.min(text.len())..].find('\n').map_or(text.len(), |e| offset + e.max(1));
        Box::new(SourceError::new(&source.file, &text, offset..end, message, label))
    };
    let at = |location: &serde_saphyr::Location| -> usize {
        match location.span().byte_offset() {
            Some(b) => b as usize,
            None => offset_of(&text, location.line() as usize, location.column() as usize),
        }
    };
    let docs: Vec<PluginDoc> = serde_saphyr::from_multiple(&text).map_err(|e| {
        let offset = e.location().map_or(0, |l| at(&l));
        error(offset, format!("not a Plugin document: {}", first_line(&e.to_string())), "here")
    })?;
    let mut plugins = Vec::new();
    for doc in docs {
        let here = |s: &Spanned<String>| at(&s.referenced);
        if doc.kind.value != "Plugin" {
            return Err(error(here(&doc.kind), format!("`kind: {}` is not a Plugin", doc.kind.value), "kind"));
        }
        let kind_at = here(&doc.kind);
        let Some(metadata) = doc.metadata else {
            return Err(error(kind_at, "a Plugin needs `metadata.name`".into(), "this plugin"));
        };
        let Some(name) = metadata.value.name else {
            return Err(error(at(&metadata.referenced), "a Plugin needs `metadata.name`".into(), "metadata"));
        };
        let Some(spec) = doc.spec else {
            return Err(error(here(&name), format!("plugin `{}` has no `spec`", name.value), "this plugin"));
        };
        let spec_at = at(&spec.referenced);
        let spec = spec.value;
        match &spec.kind {
            Some(t) if t.value == "SHELL" => {}
            Some(t) => {
                return Err(error(
                    here(t),
                    format!("plugin type `{}` is not known (kiln runs `SHELL`)", t.value),
                    "type",
                ));
            }
            None => return Err(error(spec_at, format!("plugin `{}` needs `type: SHELL`", name.value), "spec")),
        }
        let Some(action) = spec.action else {
            return Err(error(spec_at, format!("plugin `{}` needs an `action` (its phases)", name.value), "spec"));
        };
        let mut phases = Vec::new();
        for word in action.value.split('|').map(str::trim) {
            match Phase::parse(word) {
                Some(p) if !phases.contains(&p) => phases.push(p),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
                    return Err(Box::new(
                        SourceError::new(
                            &source.file,
                            &text,
                            here(&action)..here(&action) + action.value.len().max(1),
                            format!("unknown phase `{word}` in plugin `{}`", name.value),
                            "action",
                        )
                        .with_help(format!("phases: {}; combine them with `|`", known.join(", "))),
                    ));
                }
            }
        }
        let mut scope = BTreeSet::new();
        if let Some(s) = &spec.scope {
            for role in s.value.split('|').map(str::trim) {
                if role.is_empty() || roles.is_some_and(|r| !r.contains(role)) {
                    return Err(Box::new(
                        SourceError::new(
                            &source.file,
                            &text,
                            here(s)..here(s) + s.value.len().max(1),
                            format!("scope `{role}` of plugin `{}` is no role of this cluster", name.value),
                            "scope",
                        )
                        .with_help(format!(
                            "roles: {}",
                            roles.into_iter().flatten().map(String::as_str).collect::<Vec<_>>().join(", ")
                        )),
                    ));
                }
                scope.insert(role.to_owned());
            }
        }
        if phases.iter().any(|p| p.on_hosts()) && scope.is_empty() {
            return Err(error(
                here(&action),
                format!(
                    "plugin `{}` has host phases but no `scope`: it would run nowhere (Sealer runs it silently on no host)",
                    name.value
                ),
                "host phases",
            ));
        }
        let Some(data) = spec.data.filter(|d| !d.value.trim().is_empty()) else {
            return Err(error(spec_at, format!("plugin `{}` has no `data` (the script to run)", name.value), "spec"));
        };
        let promises = promises(&metadata.value.annotations, &name.value, &phases, &error, &at)?;
        let origin = match &source.kind {
            SourceKind::Clusterfile { .. } => {
                Origin::Clusterfile { file: source.file.clone(), line: line_of(&text, kind_at) }
            }
            SourceKind::ImageFile => Origin::Image { file: source.file.clone() },
            SourceKind::Package { dir } => Origin::Package { dir: dir.clone() },
        };
        plugins.push(Plugin {
            name: name.value,
            revision: metadata.value.revision.map_or(0, |r| r.value),
            phases,
            scope,
            data: data.value,
            origin,
            promises,
        });
    }
    Ok(plugins)
}

/// The `kiln.io/` annotations of plugin `name`, checked.
fn promises(
    annotations: &BTreeMap<String, Spanned<String>>,
    name: &str,
    phases: &[Phase],
    error: &dyn Fn(usize, String, &str) -> Box<SourceError>,
    at: &dyn Fn(&serde_saphyr::Location) -> usize,
) -> LoadResult<PreflightPromise> {
    let mut promise = PreflightPromise::default();
    for (key, value) in annotations.iter().filter(|(k, _)| k.starts_with("kiln.io/")) {
        let place = at(&value.referenced);
        match key.as_str() {
            HOSTNAME_FROM_ENV => {
                let var = value.value.trim();
                let valid = var.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(error(place, format!("`{var}` is not an env variable name"), key));
                }
                promise.hostname_from_env = Some(var.to_owned());
            }
            REPAIRS => {
                for word in value.value.split(['|', ',']).map(str::trim) {
                    let Some(check) = Repairable::ALL.into_iter().find(|r| r.check() == word) else {
                        let known: Vec<&str> = Repairable::ALL.iter().map(|r| r.check()).collect();
                        return Err(error(
                            place,
                            format!("plugin `{name}` cannot repair `{word}` (repairable: {})", known.join(", ")),
                            key,
                        ));
                    };
                    promise.repairs.insert(check);
                }
            }
            _ => {
                return Err(error(
                    place,
                    format!("unknown annotation `{key}` (kiln reads `{HOSTNAME_FROM_ENV}` and `{REPAIRS}`)"),
                    key,
                ));
            }
        }
    }
    if !promise.is_empty() && !phases.contains(&Phase::PreInitHost) {
        let key = if promise.hostname_from_env.is_some() { HOSTNAME_FROM_ENV } else { REPAIRS };
        let place = annotations.get(key).map_or(0, |v| at(&v.referenced));
        return Err(error(
            place,
            format!("plugin `{name}` has `{key}` but does not run in `pre-init-host`, where kiln counts on it"),
            key,
        ));
    }
    Ok(promise)
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Byte offset of a 1-based line and column.
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return offset + l.char_indices().nth(column.saturating_sub(1)).map_or(l.len(), |(b, _)| b);
        }
        offset += l.len();
    }
    text.len()
}

#[cfg(test)]
mod tests;
