//! The cluster's state kept on master0 as well as on the operator, so a cluster can be scaled,
//! renewed or deleted from another machine (the laptop that ran it may be gone): the effective
//! Clusterfile, the journal, the registry's CA and credentials, and the Kubernetes PKI, as
//! one tar, `<dataRoot>/<cluster>/.kiln/state.tar`, mode 0600 in a root-only directory (the
//! Kubernetes CA keys are on master0 anyway). It is written after every finished run and
//! scaling operation; `kiln delete` removes it with the cluster directory.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::image::store::{FileError, create_private_dir, write_private};
use crate::ssh::{Session, SshError, quote};

/// Where the copy lives, under the cluster directory on master0.
pub const ON_MASTER0: &str = ".kiln/state.tar";
/// What is copied: the Clusterfile (written from memory), the journal, the registry and PKI
/// directories. The run log stays on the operator.
const STATE_DIRS: &[&str] = &["registry", "pki"];

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the cluster state {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] FileError),
    #[error("no cluster state on {host} under {data_root} (it is written by `kiln run` from kiln 0.1 on)")]
    NotFound { host: String, data_root: String },
    #[error("{host} holds the state of several clusters ({}): name one with `--cluster`", names.join(", "))]
    Several { host: String, names: Vec<String> },
    #[error("the cluster state from {host} is not usable: {reason}")]
    Damaged { host: String, reason: String },
    #[error(transparent)]
    Ssh(Box<SshError>),
}

impl From<SshError> for StateError {
    fn from(e: SshError) -> Self {
        Self::Ssh(Box::new(e))
    }
}

/// The state of the cluster in `state_dir`, with `clusterfile_yaml` as its Clusterfile.
pub fn pack(state_dir: &Path, clusterfile_yaml: &str) -> Result<Vec<u8>, StateError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Read { path, source }
    };
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, bytes)
    };
    add("Clusterfile", clusterfile_yaml.as_bytes()).map_err(read_error(state_dir))?;
    let journal = state_dir.join("journal.json");
    if let Ok(bytes) = std::fs::read(&journal) {
        add("journal.json", &bytes).map_err(read_error(&journal))?;
    }
    for dir in STATE_DIRS {
        let root = state_dir.join(dir);
        if !root.is_dir() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
            let entry = entry.map_err(|e| StateError::Read { path: root.clone(), source: e.into() })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry.path().strip_prefix(state_dir).unwrap_or(entry.path());
            let bytes = std::fs::read(entry.path()).map_err(read_error(entry.path()))?;
            add(&rel.to_string_lossy(), &bytes).map_err(read_error(entry.path()))?;
        }
    }
    tar.into_inner().map_err(read_error(state_dir))
}

/// Copies the run's journal to master0 (0600), so the state survives the operator's machine.
/// Best effort: the operator's copy is the one runs continue from.
pub async fn copy_journal_to_master0(session: &Session, cluster_dir: &str, journal_path: &Path) {
    if let Ok(bytes) = std::fs::read(journal_path) {
        let _ = session.upload(&bytes[..], &format!("{cluster_dir}/.kiln/journal.json"), 0o600).await;
    }
}

/// Copies the state in `state_dir`, with `clusterfile` as its Clusterfile, to master0 (0600;
/// the directory is root's). The error says what failed, for a warning: the operation it
/// follows has finished either way.
pub async fn copy_to_master0(
    session: &Session,
    cluster_dir: &str,
    state_dir: &Path,
    clusterfile: &crate::clusterfile::Clusterfile,
) -> Result<(), String> {
    let yaml = clusterfile.to_yaml().map_err(|e| format!("the Clusterfile: {e}"))?;
    let tar = pack(state_dir, &yaml).map_err(|e| crate::error_chain(&e))?;
    session.upload(&tar[..], &format!("{cluster_dir}/{ON_MASTER0}"), 0o600).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Reads the state a run left on `session`'s host under `data_root`: the named cluster's, or
/// the only one there. Returns the cluster's name and the tar.
pub async fn fetch(session: &Session, data_root: &str, name: Option<&str>) -> Result<(String, Vec<u8>), StateError> {
    let host = session.host().to_string();
    let not_found = || StateError::NotFound { host: host.clone(), data_root: data_root.to_owned() };
    let listing = session
        .run(&format!("for f in {}/*/{ON_MASTER0}; do [ -f \"$f\" ] && echo \"$f\"; done; true", quote(data_root)))
        .await?
        .stdout_text();
    let names: Vec<String> = listing
        .lines()
        .filter_map(|l| l.strip_suffix(&format!("/{ON_MASTER0}")))
        .filter_map(|dir| dir.rsplit('/').next())
        .map(str::to_owned)
        .collect();
    let chosen = match (name, names.as_slice()) {
        (Some(n), _) if names.iter().any(|x| x == n) => n.to_owned(),
        (Some(_), _) | (None, []) => return Err(not_found()),
        (None, [only]) => only.clone(),
        (None, _) => return Err(StateError::Several { host, names }),
    };
    let out = session.run(&format!("base64 -w0 {}", quote(&format!("{data_root}/{chosen}/{ON_MASTER0}")))).await?;
    use base64::Engine as _;
    let tar = base64::engine::general_purpose::STANDARD
        .decode(out.stdout_text().trim())
        .map_err(|e| StateError::Damaged { host: host.clone(), reason: e.to_string() })?;
    Ok((chosen, tar))
}

/// Unpacks a state tar into `state_dir` (every file 0600, directories 0700). Only plain files
/// under the known names are taken: nothing can land outside `state_dir`.
pub fn unpack(tar: &[u8], state_dir: &Path, host: &str) -> Result<(), StateError> {
    let damaged = |reason: String| StateError::Damaged { host: host.to_owned(), reason };
    let mut archive = tar::Archive::new(tar);
    let mut files = Vec::new();
    for entry in archive.entries().map_err(|e| damaged(e.to_string()))? {
        let mut entry = entry.map_err(|e| damaged(e.to_string()))?;
        let path = entry.path().map_err(|e| damaged(e.to_string()))?.into_owned();
        let top = path.components().next();
        let allowed = matches!(top, Some(Component::Normal(t)) if t == "Clusterfile" || t == "journal.json"
            || STATE_DIRS.iter().any(|d| t == *d));
        if !allowed || !path.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(damaged(format!("unexpected entry `{}`", path.display())));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(damaged(format!("`{}` is not a plain file", path.display())));
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| damaged(e.to_string()))?;
        files.push((path, bytes));
    }
    if !files.iter().any(|(p, _)| p == Path::new("Clusterfile")) {
        return Err(damaged("it has no Clusterfile".into()));
    }
    for (path, bytes) in files {
        let target = state_dir.join(&path);
        if let Some(parent) = target.parent() {
            create_private_dir(parent)?;
        }
        write_private(&target, &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_foreign_entries_are_refused() {
        let from = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(from.path().join("pki/etcd")).unwrap();
        std::fs::create_dir_all(from.path().join("registry")).unwrap();
        std::fs::write(from.path().join("pki/etcd/ca.key"), "etcd key").unwrap();
        std::fs::write(from.path().join("registry/credentials.json"), "{}").unwrap();
        std::fs::write(from.path().join("journal.json"), "{\"cluster\":\"c\"}").unwrap();
        std::fs::write(from.path().join("run.log"), "not copied").unwrap();
        let tar = pack(from.path(), "kind: Cluster\n").unwrap();
        let to = tempfile::tempdir().unwrap();
        let dir = to.path().join("clusters/c");
        unpack(&tar, &dir, "10.0.0.1").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("Clusterfile")).unwrap(), "kind: Cluster\n");
        assert_eq!(std::fs::read_to_string(dir.join("pki/etcd/ca.key")).unwrap(), "etcd key");
        assert!(dir.join("registry/credentials.json").is_file() && dir.join("journal.json").is_file());
        assert!(!dir.join("run.log").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join("pki/etcd/ca.key")).unwrap().permissions().mode() & 0o777, 0o600);

        let mut evil = tar::Builder::new(Vec::new());
        for name in ["Clusterfile", "../escape"] {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o600);
            // `append_data` refuses `..`, so the name goes into the header as raw bytes.
            header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            evil.append(&header, &b"x"[..]).unwrap();
        }
        let evil = evil.into_inner().unwrap();
        let target = to.path().join("evil/c");
        assert!(matches!(unpack(&evil, &target, "h"), Err(StateError::Damaged { .. })));
        assert!(!to.path().join("evil/escape").exists() && !target.exists(), "nothing written");
        assert!(matches!(unpack(b"not a tar", &target, "h"), Err(StateError::Damaged { .. })));
    }
}
