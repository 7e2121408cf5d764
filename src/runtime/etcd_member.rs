//! A leaving master's member of the cluster's stacked etcd, removed through master0's etcd.
//!
//! `kubeadm reset` on a leaving master removes its own member, but only when the host can be
//! reached and its etcd answers. A master taken out with `--force` (powered off, cut off) would
//! stay a voting member that never answers: one more lost member and etcd loses its quorum.
//! So after any master leaves, kiln asks master0's etcd (the etcdctl in its etcd pod, through the
//! API) for the member whose peer URL is that host's, and removes it when it is still there.

use std::net::{IpAddr, SocketAddr};

use super::kubernetes::ADMIN_CONF;
use crate::ssh::{Session, SshError, quote};

#[derive(Debug, thiserror::Error)]
pub enum EtcdMemberError {
    #[error("etcdctl in {pod} failed")]
    Etcdctl {
        pod: String,
        #[source]
        source: Box<SshError>,
    },
    #[error("master0 ({0}) has no Node in the API, so no etcd pod to ask")]
    NoNode(IpAddr),
    #[error("etcdctl member list printed what kiln cannot read: {0}")]
    MemberList(#[from] serde_json::Error),
}

/// `etcdctl member list -w json`, the fields kiln reads.
#[derive(Debug, serde::Deserialize)]
struct MemberList {
    #[serde(default)]
    members: Vec<Member>,
}

#[derive(Debug, serde::Deserialize)]
struct Member {
    #[serde(rename = "ID")]
    id: u64,
    #[serde(rename = "peerURLs", default)]
    peer_urls: Vec<String>,
}

/// The id of the member whose peer URL is `host`'s kubeadm-made one (`https://<ip>:2380`).
fn member_of(list_json: &str, host: IpAddr) -> Result<Option<u64>, serde_json::Error> {
    let list: MemberList = serde_json::from_str(list_json)?;
    let peer_url = format!("https://{}", SocketAddr::new(host, 2380));
    Ok(list.members.into_iter().find(|m| m.peer_urls.contains(&peer_url)).map(|m| m.id))
}

/// What happened to a leaving master's member.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// It was still a member: removed now (the hex id, as etcdctl prints it).
    Removed(String),
    /// No member had its peer URL (kubeadm reset had removed it).
    AlreadyGone,
}

/// Removes `leaving`'s etcd member, asking the etcd pod of `master0_node` over `master0`.
pub async fn remove(master0: &Session, master0_node: &str, leaving: IpAddr) -> Result<Removal, EtcdMemberError> {
    let pod = format!("etcd-{master0_node}");
    let etcdctl = |args: &str| {
        format!(
            "kubectl --kubeconfig {ADMIN_CONF} -n kube-system exec {} -- etcdctl --endpoints https://127.0.0.1:2379 \
             --cacert /etc/kubernetes/pki/etcd/ca.crt --cert /etc/kubernetes/pki/etcd/healthcheck-client.crt \
             --key /etc/kubernetes/pki/etcd/healthcheck-client.key {args}",
            quote(&pod)
        )
    };
    let failed = |source| EtcdMemberError::Etcdctl { pod: pod.clone(), source: Box::new(source) };
    let list = master0.run(&etcdctl("member list -w json")).await.map_err(failed)?;
    let Some(id) = member_of(&list.stdout_text(), leaving)? else {
        return Ok(Removal::AlreadyGone);
    };
    let hex = format!("{id:x}");
    master0.run(&etcdctl(&format!("member remove {hex}"))).await.map_err(failed)?;
    Ok(Removal::Removed(hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As etcd 3.7's etcdctl prints it: ids are unsigned 64-bit (past f64's exact range).
    const LIST: &str = r#"{"header":{"cluster_id":17237436991929493444,"member_id":9372538179322589801,"raft_term":2},
      "members":[
        {"ID":9372538179322589801,"name":"kiln-h1","peerURLs":["https://10.213.0.11:2380"],"clientURLs":["https://10.213.0.11:2379"]},
        {"ID":18249187646912138824,"name":"kiln-h5","peerURLs":["https://10.213.0.15:2380"],"clientURLs":["https://10.213.0.15:2379"]},
        {"ID":12345,"name":"v6","peerURLs":["https://[fd00::5]:2380"]},
        {"ID":777,"peerURLs":["https://10.213.0.16:2380"],"isLearner":true}
      ]}"#;

    #[test]
    fn finds_the_member_by_its_peer_url() {
        let id = member_of(LIST, "10.213.0.15".parse().unwrap()).unwrap();
        assert_eq!(id, Some(18249187646912138824));
        assert_eq!(format!("{:x}", id.unwrap()), "fd422379fda50e48");
        assert_eq!(member_of(LIST, "fd00::5".parse().unwrap()).unwrap(), Some(12345));
        // A learner that never started has no name yet, and is still a member to remove.
        assert_eq!(member_of(LIST, "10.213.0.16".parse().unwrap()).unwrap(), Some(777));
    }

    #[test]
    fn a_host_with_no_member_is_already_gone() {
        assert_eq!(member_of(LIST, "10.213.0.12".parse().unwrap()).unwrap(), None);
        assert_eq!(member_of(r#"{"header":{}}"#, "10.213.0.12".parse().unwrap()).unwrap(), None);
        assert!(member_of("Error: context deadline exceeded", "10.213.0.12".parse().unwrap()).is_err());
    }
}
