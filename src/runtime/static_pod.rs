//! Restarting a control-plane static pod so it reads files changed on disk (certificates).
//!
//! The kubelet restarts a static pod when its manifest changes, so kiln changes one annotation.
//! A kube-apiserver reloads its serving certificate from disk by itself, so the new certificate
//! is served by the old container until the kubelet replaces it: a caller that moves on to the
//! next master once the new certificate is served could have two apiservers down at once. So
//! [`restart`] returns the container it replaces, and [`wait_replaced`] waits for a new one.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::kubernetes::kubeadm_config::CRI_SOCKET;
use crate::ssh::{Session, SshError, quote};

/// The annotation whose change makes the kubelet restart a static pod with the new files.
pub const RESTART_ANNOTATION: &str = "kiln.io/certificates-reissued-at";

#[derive(Debug, thiserror::Error)]
pub enum StaticPodError {
    #[error("{host}: {path} is not usable: {reason}")]
    Manifest { host: IpAddr, path: String, reason: String },
    #[error(
        "the kubelet on {host} did not replace the {pod} container {old} within {seconds} s; \
         look at `journalctl -u kubelet` and `crictl ps -a` there"
    )]
    NotReplaced { host: IpAddr, pod: String, old: String, seconds: u64 },
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// A static pod the kubelet was asked to restart.
#[derive(Debug)]
pub struct Restart {
    pub pod: String,
    /// Its running container before (none when crictl is missing or nothing ran).
    pub replaced: Option<String>,
}

/// Changes an annotation of the pod's manifest; `None` when the node has no such manifest.
pub async fn restart(session: &Session, host: IpAddr, pod: &str) -> Result<Option<Restart>, StaticPodError> {
    let path = format!("/etc/kubernetes/manifests/{pod}.yaml");
    let out = session.run(&format!("if [ -f {p} ]; then cat {p}; else echo '# absent'; fi", p = quote(&path))).await?;
    let text = out.stdout_text();
    if text.trim() == "# absent" {
        return Ok(None);
    }
    let manifest = restart_annotated(&text, &chrono::Utc::now().to_rfc3339())
        .map_err(|reason| StaticPodError::Manifest { host, path: path.clone(), reason })?;
    let replaced = running_container(session, pod).await?;
    session.upload(manifest.as_bytes(), &path, 0o600).await?;
    Ok(Some(Restart { pod: pod.to_owned(), replaced }))
}

/// Waits until the pod runs a container other than the one [`restart`] replaced.
pub async fn wait_replaced(
    session: &Session,
    host: IpAddr,
    restart: &Restart,
    timeout: Duration,
) -> Result<(), StaticPodError> {
    let Some(old) = &restart.replaced else { return Ok(()) };
    let started = Instant::now();
    while started.elapsed() < timeout {
        match running_container(session, &restart.pod).await? {
            Some(id) if id != *old => return Ok(()),
            _ => tokio::time::sleep(Duration::from_secs(2)).await,
        }
    }
    Err(StaticPodError::NotReplaced {
        host,
        pod: restart.pod.clone(),
        old: old.chars().take(13).collect(),
        seconds: timeout.as_secs(),
    })
}

/// The id of the pod's running container (its container has the pod's name, as kubeadm's
/// manifests name it); `None` without crictl or when none runs.
pub(super) async fn running_container(session: &Session, pod: &str) -> Result<Option<String>, SshError> {
    let out = session
        .run(&format!(
            "if command -v crictl >/dev/null 2>&1; then \
             crictl --runtime-endpoint {CRI_SOCKET} ps -q --state running --name {} 2>/dev/null || true; fi",
            quote(&format!("^{pod}$"))
        ))
        .await?;
    Ok(out.stdout_text().lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_owned))
}

/// The manifest with [`RESTART_ANNOTATION`] set to `stamp`.
fn restart_annotated(manifest: &str, stamp: &str) -> Result<String, String> {
    let mut pod: serde_json::Value = serde_saphyr::from_str(manifest).map_err(|e| format!("not YAML: {e}"))?;
    let metadata = pod
        .get_mut("metadata")
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| "no metadata: not a pod manifest".to_owned())?;
    let annotations = metadata.entry("annotations").or_insert_with(|| serde_json::json!({}));
    if annotations.is_null() {
        *annotations = serde_json::json!({});
    }
    annotations
        .as_object_mut()
        .ok_or_else(|| "metadata.annotations is not a map".to_owned())?
        .insert(RESTART_ANNOTATION.to_owned(), serde_json::Value::String(stamp.to_owned()));
    serde_saphyr::to_string(&pod).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_annotation_changes_only_the_annotations() {
        let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: kube-apiserver\n  namespace: kube-system\n\
                        spec:\n  containers:\n  - name: kube-apiserver\n    command: [kube-apiserver, --secure-port=6443]\n";
        let once = restart_annotated(manifest, "2026-12-01T00:00:00Z").unwrap();
        let pod: serde_json::Value = serde_saphyr::from_str(&once).unwrap();
        assert_eq!(pod["metadata"]["annotations"][RESTART_ANNOTATION], "2026-12-01T00:00:00Z");
        assert_eq!(pod["spec"]["containers"][0]["command"][1], "--secure-port=6443");
        let twice = restart_annotated(&once, "2026-12-02T00:00:00Z").unwrap();
        assert_ne!(once, twice, "a second restart changes the manifest again");
        assert!(restart_annotated("just text", "x").is_err());
        assert!(restart_annotated("metadata:\n  annotations: [a]\n", "x").is_err());
    }
}
