//! The documents of a Clusterfile as written (Sealer v2 field names), before validation.
//! Unknown fields are errors (with line:col), unlike Sealer, which drops typos silently.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::secret::Secret;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct KindProbe {
    pub kind: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Metadata {
    pub name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClusterDoc {
    #[allow(dead_code)]
    pub api_version: Option<String>,
    #[allow(dead_code)]
    pub kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Spanned<ClusterSpecDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ClusterSpecDoc {
    pub image: Option<Spanned<String>>,
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Parsed and unused, as in Sealer.
    #[serde(default, rename = "cmd_args")]
    #[allow(dead_code)]
    pub cmd_args: Vec<String>,
    pub app_names: Option<Vec<String>>,
    #[serde(default)]
    pub ssh: SshDoc,
    #[serde(default)]
    pub hosts: Vec<Spanned<HostDoc>>,
    pub container_runtime: Option<ContainerRuntimeDoc>,
    #[serde(default)]
    pub host_aliases: Vec<HostAliasDoc>,
    pub registry: Option<RegistryDoc>,
    pub data_root: Option<Spanned<String>>,
}

/// Sealer writes `port: "22"`; plain numbers are accepted too.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum PortDoc {
    Number(u16),
    Text(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SshDoc {
    pub user: Option<String>,
    pub passwd: Option<Secret>,
    pub pk: Option<String>,
    pub pk_passwd: Option<Secret>,
    pub port: Option<Spanned<PortDoc>>,
    pub encrypted: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct HostDoc {
    pub ips: Vec<Spanned<String>>,
    #[serde(default)]
    pub roles: Vec<Spanned<String>>,
    pub ssh: Option<SshDoc>,
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ContainerRuntimeDoc {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostAliasDoc {
    pub ip: Spanned<String>,
    #[serde(default)]
    pub hostnames: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RegistryDoc {
    pub local_registry: Option<LocalRegistryDoc>,
    pub external_registry: Option<ExternalRegistryDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LocalRegistryDoc {
    pub domain: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub ha: Option<bool>,
    pub insecure: Option<bool>,
    pub cert: Option<RegistryCertDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RegistryCertDoc {
    #[serde(default)]
    pub subject_alt_name: SubjectAltNameDoc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SubjectAltNameDoc {
    #[serde(default)]
    pub dns_names: Vec<String>,
    #[serde(default)]
    pub ips: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ExternalRegistryDoc {
    pub domain: Spanned<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ConfigDoc {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Spanned<ConfigSpecDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ConfigSpecDoc {
    pub path: Option<String>,
    pub data: Option<String>,
    pub app_name: Option<String>,
    pub strategy: Option<Spanned<String>>,
    pub process: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ApplicationDoc {
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ApplicationSpecDoc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ApplicationSpecDoc {
    pub cmds: Option<Vec<String>>,
    pub launch_apps: Option<Vec<String>>,
    #[serde(default)]
    pub configs: Vec<AppConfigDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AppConfigDoc {
    pub name: String,
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    #[serde(default)]
    pub files: Vec<AppFileDoc>,
    pub launch: Option<AppLaunchDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AppFileDoc {
    pub path: String,
    pub strategy: Option<String>,
    pub data: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppLaunchDoc {
    #[serde(default)]
    pub cmds: Vec<String>,
}
