//! Sealer's `sealer.image.extension` manifest annotation, read and written compatibly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: &str = "v1alpha1";

/// What a cluster image installs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    /// Installs a cluster (Kubernetes or another runtime) and its apps.
    #[default]
    #[serde(rename = "kube-installer")]
    KubeInstaller,
    /// Installs apps onto an existing cluster.
    #[serde(rename = "app-installer")]
    AppInstaller,
}

impl std::str::FromStr for ImageType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kube-installer" => Ok(Self::KubeInstaller),
            "app-installer" => Ok(Self::AppInstaller),
            _ => Err(format!("unknown image type `{s}` (expected kube-installer or app-installer)")),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildClient {
    #[serde(default)]
    pub sealer_version: String,
    #[serde(default)]
    pub buildah_version: String,
    /// kiln's own version; Sealer ignores unknown fields.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kiln_version: String,
}

/// The kind of an application, detected from its files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppType {
    #[serde(rename = "helm")]
    Helm,
    #[serde(rename = "shell")]
    Shell,
    #[serde(rename = "kube")]
    Kube,
    /// Unknown: APPCMDS must say how to launch it.
    #[default]
    #[serde(rename = "")]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    pub name: String,
    #[serde(rename = "type", default)]
    pub app_type: AppType,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default = "default_app_version")]
    pub version: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmds: Vec<String>,
}

fn default_app_version() -> String {
    "v1".to_owned()
}

impl Application {
    /// The directory the app's files live in, relative to the rootfs.
    pub fn dir(&self) -> String {
        format!("application/apps/{}/", self.name)
    }

    /// The shell command that launches the app from the rootfs directory.
    ///
    /// APPCMDS run in the app directory joined with `&&` (Sealer joined them with spaces).
    pub fn launch_command(&self) -> Option<String> {
        let dir = self.dir();
        if !self.cmds.is_empty() {
            return Some(format!("cd {dir} && {}", self.cmds.join(" && ")));
        }
        let quote = crate::kubefile::shell_quote;
        match self.app_type {
            AppType::Kube => Some(
                self.files
                    .iter()
                    .map(|f| format!("kubectl apply -f {}", quote(&format!("{dir}{}", f.trim_start_matches('/')))))
                    .collect::<Vec<_>>()
                    .join(" && "),
            ),
            AppType::Helm => {
                let chart = match self.files.first() {
                    Some(f) if f.ends_with(".tgz") || f.ends_with(".tar.gz") => format!("{dir}{f}"),
                    _ => dir.clone(),
                };
                Some(format!("helm upgrade --install {} {}", quote(&self.name), quote(&chart)))
            }
            AppType::Shell => Some(
                self.files
                    .iter()
                    .map(|f| format!("bash {}", quote(&format!("{dir}{}", f.trim_start_matches('/')))))
                    .collect::<Vec<_>>()
                    .join(" && "),
            ),
            AppType::Unknown => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmds: Vec<String>,
    #[serde(rename = "app_names", default, skip_serializing_if = "Vec::is_empty")]
    pub app_names: Vec<String>,
}

/// The JSON in the `sealer.image.extension` manifest annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageExtension {
    #[serde(default)]
    pub build_client: BuildClient,
    #[serde(default)]
    pub schema_version: String,
    #[serde(rename = "type", default)]
    pub image_type: ImageType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<Application>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub launch: Launch,
}

impl ImageExtension {
    pub fn new(image_type: ImageType) -> Self {
        Self {
            build_client: BuildClient { kiln_version: env!("CARGO_PKG_VERSION").to_owned(), ..Default::default() },
            schema_version: SCHEMA_VERSION.to_owned(),
            image_type,
            ..Default::default()
        }
    }

    pub fn app(&self, name: &str) -> Option<&Application> {
        self.applications.iter().find(|a| a.name == name)
    }

    pub fn app_mut(&mut self, name: &str) -> Option<&mut Application> {
        self.applications.iter_mut().find(|a| a.name == name)
    }

    /// Adds or replaces an application.
    pub fn upsert_app(&mut self, app: Application) {
        match self.app_mut(&app.name) {
            Some(existing) => *existing = app,
            None => self.applications.push(app),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sealer_json() {
        let json = r#"{"buildClient":{"sealerVersion":"v0.11.0","buildahVersion":"1.27.1"},
            "schemaVersion":"v1alpha1","type":"kube-installer",
            "applications":[{"name":"calico","type":"shell","files":["calico.sh"],"version":"v1"}],
            "launch":{"app_names":["calico"]}}"#;
        let ext: ImageExtension = serde_json::from_str(json).unwrap();
        assert_eq!(ext.applications[0].app_type, AppType::Shell);
        assert_eq!(ext.launch.app_names, ["calico"]);
        assert_eq!(ext.app("calico").unwrap().launch_command().unwrap(), "bash application/apps/calico/calico.sh");
    }

    #[test]
    fn writes_sealer_field_names() {
        let mut ext = ImageExtension::new(ImageType::AppInstaller);
        ext.launch.app_names.push("a".into());
        let v = serde_json::to_value(&ext).unwrap();
        assert_eq!(v["type"], "app-installer");
        assert_eq!(v["schemaVersion"], "v1alpha1");
        assert_eq!(v["launch"]["app_names"][0], "a");
        assert!(v["buildClient"].get("sealerVersion").is_some());
    }

    #[test]
    fn launch_commands() {
        let app = |t, files: &[&str], cmds: &[&str]| Application {
            name: "x".into(),
            app_type: t,
            files: files.iter().map(|s| s.to_string()).collect(),
            cmds: cmds.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            app(AppType::Kube, &["a.yaml", "/b.yaml"], &[]).launch_command().unwrap(),
            "kubectl apply -f application/apps/x/a.yaml && kubectl apply -f application/apps/x/b.yaml"
        );
        assert_eq!(
            app(AppType::Helm, &["x"], &[]).launch_command().unwrap(),
            "helm upgrade --install x application/apps/x/"
        );
        assert_eq!(
            app(AppType::Helm, &["c.tgz"], &[]).launch_command().unwrap(),
            "helm upgrade --install x application/apps/x/c.tgz"
        );
        assert_eq!(
            app(AppType::Unknown, &[], &["a", "b"]).launch_command().unwrap(),
            "cd application/apps/x/ && a && b"
        );
        assert!(app(AppType::Unknown, &[], &[]).launch_command().is_none());
    }
}
