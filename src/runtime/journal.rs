//! The run journal: which (phase, host) steps finished, saved atomically after every step, so
//! `kiln run` again continues at the first unfinished one. It lives on the operator, beside the
//! effective Clusterfile, and a copy goes to master0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::store::write_atomic;

/// The key for steps that are not about one host (e.g. launching apps).
pub const CLUSTER: &str = "cluster";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum StepState {
    Done { at: String },
    Failed { at: String, error: String },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Journal {
    pub cluster: String,
    /// The cluster image's digest: a different image starts the journal over.
    pub image_digest: String,
    /// phase id → host (or [`CLUSTER`]) → state.
    pub steps: BTreeMap<String, BTreeMap<String, StepState>>,
    /// Set once every phase finished.
    pub completed_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot read the journal `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the journal `{}` is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot save the journal `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Journal {
    /// Loads `path`, or a fresh journal when there is none or it was for another image.
    pub fn load_for(path: &Path, cluster: &str, image_digest: &str) -> Result<Self, JournalError> {
        let fresh = Self { cluster: cluster.to_owned(), image_digest: image_digest.to_owned(), ..Default::default() };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fresh),
            Err(source) => return Err(JournalError::Read { path: path.to_owned(), source }),
        };
        let journal: Self = serde_json::from_slice(&bytes)
            .map_err(|e| JournalError::Damaged { path: path.to_owned(), reason: e.to_string() })?;
        Ok(if journal.image_digest == image_digest { journal } else { fresh })
    }

    /// Loads whatever journal `path` holds (for `kiln status`).
    pub fn load(path: &Path) -> Result<Option<Self>, JournalError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| JournalError::Damaged { path: path.to_owned(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(JournalError::Read { path: path.to_owned(), source }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| JournalError::Damaged { path: path.to_owned(), reason: e.to_string() })?;
        write_atomic(path, &bytes).map_err(|source| JournalError::Write { path: path.to_owned(), source })
    }

    pub fn is_done(&self, phase: &str, who: &str) -> bool {
        matches!(self.steps.get(phase).and_then(|s| s.get(who)), Some(StepState::Done { .. }))
    }

    pub fn mark_done(&mut self, phase: &str, who: &str) {
        self.steps.entry(phase.to_owned()).or_default().insert(who.to_owned(), StepState::Done { at: now() });
    }

    pub fn mark_failed(&mut self, phase: &str, who: &str, error: &str) {
        self.steps
            .entry(phase.to_owned())
            .or_default()
            .insert(who.to_owned(), StepState::Failed { at: now(), error: error.to_owned() });
        self.completed_at = None;
    }

    /// Drops every step of `host` (it left the cluster; if it joins again, it starts afresh).
    pub fn forget_host(&mut self, host: &str) {
        for steps in self.steps.values_mut() {
            steps.remove(host);
        }
        self.steps.retain(|_, steps| !steps.is_empty());
    }

    pub fn mark_completed(&mut self) {
        self.completed_at = Some(now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reload_and_resets_for_another_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let mut j = Journal::load_for(&path, "c", "sha256:a").unwrap();
        j.mark_done("distribute", "10.0.0.1");
        j.mark_failed("distribute", "10.0.0.2", "connection lost");
        j.save(&path).unwrap();
        let again = Journal::load_for(&path, "c", "sha256:a").unwrap();
        assert!(again.is_done("distribute", "10.0.0.1"));
        assert!(!again.is_done("distribute", "10.0.0.2"));
        assert!(!Journal::load_for(&path, "c", "sha256:b").unwrap().is_done("distribute", "10.0.0.1"));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(Journal::load_for(&path, "c", "sha256:a"), Err(JournalError::Damaged { .. })));
    }
}
