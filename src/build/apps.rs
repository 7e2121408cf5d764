//! APP support: type detection (relative to the build context, not the process CWD) and
//! downloads of `http(s)://` sources.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::image::AppType;

/// A file as it will appear in the app directory.
#[derive(Debug, Clone)]
pub struct AppFile {
    /// Path relative to `application/apps/<name>/`.
    pub rel: String,
    /// Which source (0-based) it came from.
    pub source_index: usize,
    pub is_dir: bool,
}

/// Detects the app type and the files its launch command uses, following Sealer's rules
/// with its quirks fixed: `.tgz` charts are helm apps, and detection looks at the context.
pub fn detect(app_name: &str, files: &[AppFile]) -> (AppType, Vec<String>) {
    let regular: Vec<&AppFile> = files.iter().filter(|f| !f.is_dir).collect();
    // A chart directory: Chart.yaml + values.yaml + templates/ side by side at any level.
    let is_chart_dir = |prefix: &str| {
        let has = |name: &str| files.iter().any(|f| f.rel == format!("{prefix}{name}"));
        has("Chart.yaml")
            && has("values.yaml")
            && files.iter().any(|f| f.rel.starts_with(&format!("{prefix}templates/")))
    };
    if is_chart_dir("") {
        return (AppType::Helm, vec![app_name.to_owned()]);
    }
    if let Some(dir) = files.iter().filter(|f| f.is_dir).find(|d| is_chart_dir(&format!("{}/", d.rel))) {
        return (AppType::Helm, vec![dir.rel.clone()]);
    }
    if let [only] = regular.as_slice()
        && (only.rel.ends_with(".tgz") || only.rel.ends_with(".tar.gz"))
    {
        return (AppType::Helm, vec![only.rel.clone()]);
    }
    if regular.is_empty() {
        return (AppType::Unknown, vec![]);
    }
    let all = |exts: &[&str]| regular.iter().all(|f| exts.iter().any(|e| f.rel.ends_with(e)));
    if all(&[".sh"]) {
        // Sealer runs the scripts of the first source; later ones are helpers it sources.
        let first = regular.iter().map(|f| f.source_index).min().unwrap_or(0);
        return (AppType::Shell, regular.iter().filter(|f| f.source_index == first).map(|f| f.rel.clone()).collect());
    }
    if all(&[".yaml", ".yml"]) {
        return (AppType::Kube, regular.iter().map(|f| f.rel.clone()).collect());
    }
    (AppType::Unknown, vec![])
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("failed to download `{url}`: {reason}")]
    Http { url: String, reason: String },
    #[error("failed to write `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Downloads `url` into `dir`, named after the last path segment. Streams to disk.
pub fn download(url: &str, dir: &Path) -> Result<PathBuf, DownloadError> {
    let http = |reason: String| DownloadError::Http { url: url.to_owned(), reason };
    let name = url
        .split(['?', '#'])
        .next()
        .and_then(|u| u.rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("download");
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| http(e.to_string()))?;
    let mut response = client.get(url).send().map_err(|e| http(e.to_string()))?;
    if !response.status().is_success() {
        return Err(http(format!("HTTP {}", response.status())));
    }
    fs::create_dir_all(dir).map_err(|source| DownloadError::Io { path: dir.to_owned(), source })?;
    let path = dir.join(name);
    let mut file = fs::File::create(&path).map_err(|source| DownloadError::Io { path: path.clone(), source })?;
    response.copy_to(&mut file).map_err(|e| http(e.to_string()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(rel: &str, src: usize) -> AppFile {
        AppFile { rel: rel.into(), source_index: src, is_dir: false }
    }

    #[test]
    fn detection() {
        assert_eq!(
            detect("a", &[f("x.yaml", 0), f("y.yml", 1)]),
            (AppType::Kube, vec!["x.yaml".into(), "y.yml".into()])
        );
        assert_eq!(detect("a", &[f("run.sh", 0), f("lib.sh", 1)]), (AppType::Shell, vec!["run.sh".into()]));
        assert_eq!(detect("a", &[f("mysql.tgz", 0)]).0, AppType::Helm);
        let chart = [
            f("Chart.yaml", 0),
            f("values.yaml", 0),
            AppFile { rel: "templates".into(), source_index: 0, is_dir: true },
            f("templates/d.yaml", 0),
        ];
        assert_eq!(detect("web", &chart), (AppType::Helm, vec!["web".into()]));
        assert_eq!(detect("a", &[f("x.yaml.tmpl", 0)]).0, AppType::Unknown);
        assert_eq!(detect("a", &[f("x.yaml", 0), f("y.sh", 0)]).0, AppType::Unknown);
    }
}
