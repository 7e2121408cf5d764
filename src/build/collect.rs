//! The container images a cluster image needs, found by parsing its files, not grepping them.
//!
//! Every YAML document under `manifests/`, `charts/` (rendered) and `application/apps/*/` is
//! parsed and every string field named `image` at any depth is collected — Pods, every
//! workload kind, init and ephemeral containers, CRDs and operator configs alike. Lines of
//! `manifests/imageList` and of `--image-list` files are added, `--ignored-image-list` entries
//! removed. Charts are rendered with `helm template` when `helm` is on PATH; otherwise their
//! `values.yaml` (`image`, `repository`/`tag`/`registry`/`digest`) and literal images in
//! templates are read, and what cannot be resolved is reported as a warning. Names are
//! normalised (`nginx` → `docker.io/library/nginx:latest`); digests are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::image::ImageRef;

/// A YAML value with every map key turned into a string (Kubernetes YAML has int keys too).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    Str(String),
    Other,
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Node>()? {
            out.push(v);
        }
        Ok(Node::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut out = Vec::new();
        while let Some((k, v)) = map.next_entry::<Node, Node>()? {
            let key = match k {
                Node::Str(s) => s,
                _ => String::new(),
            };
            out.push((key, v));
        }
        Ok(Node::Map(out))
    }
}

impl<'de> de::Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// Parses every document of a YAML stream (Kubernetes' YAML 1.1 octal numbers accepted).
pub fn parse_yaml(text: &str) -> Result<Vec<Node>, String> {
    let mut options = serde_saphyr::options::Options::default();
    options.legacy_octal_numbers = true;
    options.duplicate_keys = serde_saphyr::options::DuplicateKeyPolicy::LastWins;
    serde_saphyr::from_multiple_with_options::<Node>(text, options).map_err(|e| e.to_string())
}

/// Every string value of a field named `image`, at any depth.
pub fn images_in(node: &Node, out: &mut Vec<String>) {
    match node {
        Node::Map(entries) => {
            for (k, v) in entries {
                match (k.as_str(), v) {
                    ("image", Node::Str(s)) if !s.trim().is_empty() => out.push(s.trim().to_owned()),
                    _ => images_in(v, out),
                }
            }
        }
        Node::Seq(items) => items.iter().for_each(|i| images_in(i, out)),
        Node::Str(_) | Node::Other => {}
    }
}

/// Images a Helm `values.yaml` names: `image: "x"`, and maps with `repository` plus optional
/// `registry`, `tag` and `digest` (the common chart conventions).
pub fn images_in_values(node: &Node, out: &mut Vec<String>) {
    let Node::Map(entries) = node else {
        if let Node::Seq(items) = node {
            items.iter().for_each(|i| images_in_values(i, out));
        }
        return;
    };
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| if let Node::Str(s) = v { Some(s.trim().to_owned()) } else { None })
    };
    if let Some(repo) = get("repository").filter(|r| !r.is_empty()) {
        let mut name = match get("registry").filter(|r| !r.is_empty()) {
            Some(reg) => format!("{}/{}", reg.trim_end_matches('/'), repo),
            None => repo,
        };
        if let Some(tag) = get("tag").filter(|t| !t.is_empty()) {
            name = format!("{name}:{tag}");
        }
        if let Some(digest) = get("digest").filter(|d| d.starts_with("sha256:")) {
            name = format!("{name}@{digest}");
        }
        out.push(name);
    }
    for (k, v) in entries {
        match (k.as_str(), v) {
            ("image", Node::Str(s)) if !s.trim().is_empty() => out.push(s.trim().to_owned()),
            _ => images_in_values(v, out),
        }
    }
}

/// One container image the cluster image must carry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FoundImage {
    pub image: String,
    /// Files (relative to the rootfs) that reference it.
    pub sources: Vec<String>,
    /// The app it belongs to, for files under `application/apps/<app>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// The result of a discovery.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub images: Vec<FoundImage>,
    /// Things that could not be resolved (templated values, files that are not YAML).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DiscoveryOptions {
    /// `--image-list` files: one image per line.
    pub image_lists: Vec<PathBuf>,
    /// `--ignored-image-list` files.
    pub ignored_lists: Vec<PathBuf>,
    /// `helm` to render charts with, when available.
    pub helm: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("failed to read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{file}` line {line}: `{text}` is not an image reference: {reason}")]
    BadListEntry { file: String, line: usize, text: String, reason: String },
}

struct Collector {
    found: BTreeMap<String, FoundImage>,
    warnings: Vec<String>,
}

impl Collector {
    fn add(&mut self, raw: &str, source: &str, app: Option<&str>) {
        let normalised = match raw.parse::<ImageRef>() {
            Ok(r) => r.to_string(),
            Err(e) => {
                if raw.contains("{{") || raw.contains("${") || raw.contains('$') {
                    self.warnings.push(format!("{source}: image `{raw}` is templated and cannot be resolved at build time; list it with --image-list"));
                } else {
                    self.warnings.push(format!("{source}: {e}"));
                }
                return;
            }
        };
        let entry = self.found.entry(normalised.clone()).or_insert_with(|| FoundImage {
            image: normalised,
            sources: vec![],
            app: app.map(str::to_owned),
        });
        if !entry.sources.iter().any(|s| s == source) {
            entry.sources.push(source.to_owned());
        }
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

fn is_yaml(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    [".yaml", ".yml", ".yaml.tmpl", ".yml.tmpl"].iter().any(|e| name.ends_with(e))
}

fn read(p: &Path) -> Result<String, DiscoveryError> {
    std::fs::read_to_string(p).map_err(|source| DiscoveryError::Read { path: p.to_owned(), source })
}

/// Reads an image list: one reference per line, `#` comments and blank lines skipped.
pub fn read_list(path: &Path) -> Result<Vec<String>, DiscoveryError> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let r: ImageRef = entry.parse().map_err(|e: crate::image::ImageRefError| DiscoveryError::BadListEntry {
            file: path.display().to_string(),
            line: i + 1,
            text: entry.to_owned(),
            reason: e.to_string(),
        })?;
        out.push(r.to_string());
    }
    Ok(out)
}

/// Finds every container image under `rootfs`.
pub fn discover(rootfs: &Path, options: &DiscoveryOptions) -> Result<Discovery, DiscoveryError> {
    let mut c = Collector { found: BTreeMap::new(), warnings: Vec::new() };
    let manifests = rootfs.join("manifests");
    scan_yaml_tree(rootfs, &manifests, None, &mut c)?;
    let list = manifests.join("imageList");
    if list.is_file() {
        for image in read_list(&list)? {
            c.add(&image, "manifests/imageList", None);
        }
    }
    scan_charts(rootfs, &rootfs.join("charts"), None, options, &mut c)?;
    let apps = rootfs.join("application/apps");
    if let Ok(entries) = std::fs::read_dir(&apps) {
        let mut dirs: Vec<_> = entries.flatten().filter(|e| e.path().is_dir()).collect();
        dirs.sort_by_key(|e| e.file_name());
        for d in dirs {
            let app = d.file_name().to_string_lossy().into_owned();
            let path = d.path();
            if has_chart(&path) || walk_files(&path).iter().any(|f| f.extension().is_some_and(|e| e == "tgz")) {
                scan_charts(rootfs, &path, Some(&app), options, &mut c)?;
            } else {
                scan_yaml_tree(rootfs, &path, Some(&app), &mut c)?;
            }
        }
    }
    for list in &options.image_lists {
        for image in read_list(list)? {
            c.add(&image, &list.display().to_string(), None);
        }
    }
    let mut ignored = BTreeSet::new();
    for list in &options.ignored_lists {
        ignored.extend(read_list(list)?);
    }
    let images = c.found.into_values().filter(|f| !ignored.contains(&f.image)).collect();
    Ok(Discovery { images, warnings: c.warnings })
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect();
    out.sort();
    out
}

fn scan_yaml_tree(root: &Path, dir: &Path, app: Option<&str>, c: &mut Collector) -> Result<(), DiscoveryError> {
    if !dir.is_dir() {
        return Ok(());
    }
    for file in walk_files(dir) {
        if !is_yaml(&file) {
            continue;
        }
        scan_yaml_file(root, &file, app, c)?;
    }
    Ok(())
}

fn scan_yaml_file(root: &Path, file: &Path, app: Option<&str>, c: &mut Collector) -> Result<(), DiscoveryError> {
    let text = read(file)?;
    let source = rel(root, file);
    match parse_yaml(&text) {
        Ok(docs) => {
            let mut found = Vec::new();
            docs.iter().for_each(|d| images_in(d, &mut found));
            found.iter().for_each(|i| c.add(i, &source, app));
        }
        // A template that is not YAML yet: take the literal `image:` values it has.
        Err(e) => {
            let literal = literal_images(&text);
            if literal.is_empty() {
                c.warnings.push(format!(
                    "{source}: not parseable as YAML ({}); no images taken from it",
                    e.lines().next().unwrap_or("")
                ));
            }
            literal.iter().for_each(|i| c.add(i, &source, app));
        }
    }
    Ok(())
}

/// `image: value` lines whose value has no template expression.
fn literal_images(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("- ");
            let v = l.strip_prefix("image:")?.trim().trim_matches(['"', '\'']);
            (!v.is_empty() && !v.contains("{{")).then(|| v.to_owned())
        })
        .collect()
}

fn has_chart(dir: &Path) -> bool {
    dir.join("Chart.yaml").is_file() && dir.join("values.yaml").is_file() && dir.join("templates").is_dir()
}

fn scan_charts(
    root: &Path,
    dir: &Path,
    app: Option<&str>,
    options: &DiscoveryOptions,
    c: &mut Collector,
) -> Result<(), DiscoveryError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let mut charts: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .filter(|e| (e.file_type().is_dir() && has_chart(e.path())) || e.path().extension().is_some_and(|x| x == "tgz"))
        .map(|e| e.into_path())
        .collect();
    // A chart's own subcharts are rendered with it.
    charts.dedup_by(|b, a| b.starts_with(&*a));
    for chart in charts {
        let source = rel(root, &chart);
        if let Some(helm) = &options.helm {
            match render(helm, &chart) {
                Ok(text) => {
                    let mut found = Vec::new();
                    if let Ok(docs) = parse_yaml(&text) {
                        docs.iter().for_each(|d| images_in(d, &mut found));
                    }
                    found.iter().for_each(|i| c.add(i, &source, app));
                    continue;
                }
                Err(e) => {
                    c.warnings.push(format!("{source}: `helm template` failed ({e}); reading values.yaml instead"))
                }
            }
        }
        if chart.is_dir() {
            let values = chart.join("values.yaml");
            if let Ok(docs) = parse_yaml(&read(&values)?) {
                let mut found = Vec::new();
                docs.iter().for_each(|d| images_in_values(d, &mut found));
                found.iter().for_each(|i| c.add(i, &rel(root, &values), app));
            }
            for t in walk_files(&chart.join("templates")) {
                let text = read(&t)?;
                for image in literal_images(&text) {
                    c.add(&image, &rel(root, &t), app);
                }
                if text.lines().any(|l| l.trim().starts_with("image:") && l.contains("{{")) && options.helm.is_none() {
                    c.warnings.push(format!(
                        "{}: templated `image:` resolved from values.yaml only (install helm for exact rendering)",
                        rel(root, &t)
                    ));
                }
            }
        } else {
            c.warnings.push(format!(
                "{source}: packaged chart not inspected without helm; list its images with --image-list"
            ));
        }
    }
    Ok(())
}

fn render(helm: &Path, chart: &Path) -> Result<String, String> {
    let out = std::process::Command::new(helm)
        .arg("template")
        .arg("kiln-discovery")
        .arg(chart)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("").to_owned());
    }
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(yaml: &str) -> Vec<String> {
        let mut out = Vec::new();
        parse_yaml(yaml).unwrap().iter().for_each(|d| images_in(d, &mut out));
        out
    }

    #[test]
    fn every_image_field_at_any_depth() {
        let yaml = r#"
apiVersion: apps/v1
kind: Deployment
spec:
  template:
    spec:
      initContainers: [{name: init, image: "busybox:1.36"}]
      containers:
        - name: app
          image: nginx
      ephemeralContainers:
        - {name: debug, image: registry.k8s.io/e2e-test-images/agnhost:2.39}
---
apiVersion: operator.example.com/v1
kind: Database
spec:
  backup:
    sidecar:
      image: quay.io/example/backup@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
  mode: 0644
  80: ignored-int-key
---
"#;
        assert_eq!(
            found(yaml),
            [
                "busybox:1.36",
                "nginx",
                "registry.k8s.io/e2e-test-images/agnhost:2.39",
                "quay.io/example/backup@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ]
        );
    }

    #[test]
    fn values_conventions() {
        let values = r#"
image:
  registry: ghcr.io
  repository: example/api
  tag: "1.2"
sidecar:
  image: docker.io/library/redis:7
db:
  image:
    repository: postgres
    digest: sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
"#;
        let mut out = Vec::new();
        parse_yaml(values).unwrap().iter().for_each(|d| images_in_values(d, &mut out));
        assert!(out.contains(&"ghcr.io/example/api:1.2".to_owned()), "{out:?}");
        assert!(out.contains(&"docker.io/library/redis:7".to_owned()));
        assert!(
            out.contains(
                &"postgres@sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".to_owned()
            )
        );
    }

    #[test]
    fn discovers_across_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let w = |p: &str, s: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w("manifests/cni.yaml", "spec:\n  containers:\n  - image: calico/node:v3.26\n");
        w("manifests/imageList", "# pinned\nregistry.k8s.io/pause:3.9\n\n");
        w("manifests/tmpl.yaml.tmpl", "image: {{ .Registry }}/x:1\nimage: quay.io/literal/y:2\n");
        w("application/apps/web/web.yaml", "spec: {template: {spec: {containers: [{image: nginx:1.25}]}}}\n");
        w("application/apps/db/Chart.yaml", "name: db\n");
        w("application/apps/db/values.yaml", "image:\n  repository: bitnami/postgresql\n  tag: \"16\"\n");
        w(
            "application/apps/db/templates/sts.yaml",
            "spec:\n  image: \"{{ .Values.image.repository }}:{{ .Values.image.tag }}\"\n",
        );
        let ignore = r.join("ignore.txt");
        std::fs::write(&ignore, "calico/node:v3.26\n").unwrap();
        let d = discover(r, &DiscoveryOptions { ignored_lists: vec![ignore], ..Default::default() }).unwrap();
        let names: Vec<&str> = d.images.iter().map(|i| i.image.as_str()).collect();
        assert!(names.contains(&"registry.k8s.io/pause:3.9"), "{names:?}");
        assert!(names.contains(&"docker.io/library/nginx:1.25"));
        assert!(names.contains(&"docker.io/bitnami/postgresql:16"));
        assert!(names.contains(&"quay.io/literal/y:2"));
        assert!(!names.iter().any(|n| n.contains("calico")), "ignored");
        let web = d.images.iter().find(|i| i.image.ends_with("nginx:1.25")).unwrap();
        assert_eq!((web.app.as_deref(), web.sources[0].as_str()), (Some("web"), "application/apps/web/web.yaml"));
        assert!(d.warnings.iter().any(|w| w.contains("templated")), "{:?}", d.warnings);
    }

    #[test]
    fn bad_list_entry_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("list");
        std::fs::write(&list, "nginx\nNOT A REF\n").unwrap();
        let e = read_list(&list).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("NOT A REF"), "{e}");
    }
}
