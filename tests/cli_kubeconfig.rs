//! `kiln kubeconfig`: an admin kubeconfig from the PKI a `kubernetes` run left on this machine.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::Env;
use kiln::kubernetes::pki::{ClusterPki, Validity};

const CLUSTERFILE: &str = "apiVersion: sealer.io/v2\nkind: Cluster\nmetadata:\n  name: prod\nspec:\n  hosts:\n  - ips: [10.0.0.7, 10.0.0.8]\n    roles: [master]\n";

#[test]
fn refuses_a_cluster_without_pki() {
    let env = Env::new();
    let cf = env.file("Clusterfile", CLUSTERFILE);
    let out = env.root().join("kubeconfig");
    let stderr = env.fails(&["kubeconfig", "-f", cf.to_str().unwrap(), "-o", out.to_str().unwrap()], 1);
    assert!(stderr.contains("cluster `prod` has no PKI on this machine"), "{stderr}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn writes_a_private_admin_kubeconfig_signed_by_the_cluster_ca() {
    let env = Env::new();
    let pki_dir = env.root().join("clusters/prod/pki");
    let pki = ClusterPki::load_or_create(&pki_dir, Validity::default()).unwrap();
    let cf = env.file("Clusterfile", CLUSTERFILE);
    let out = env.root().join("admin.conf");
    env.ok(&["kubeconfig", "-f", cf.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("server: https://10.0.0.7:6443"), "master0's address: {text}");
    // The client certificate verifies against the cluster CA (real openssl).
    let field = |name: &str| -> Vec<u8> {
        let line = text.lines().find(|l| l.trim_start().starts_with(name)).unwrap();
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(line.split_once(": ").unwrap().1.trim()).unwrap()
    };
    assert_eq!(field("certificate-authority-data:"), pki.ca_pem().as_bytes());
    let cert = env.root().join("admin.crt");
    std::fs::write(&cert, field("client-certificate-data:")).unwrap();
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(pki_dir.join("ca.crt"))
        .arg(&cert)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));

    let printed = env.ok(&["kubeconfig", "-f", cf.to_str().unwrap(), "-o", "-", "--server", "lb.example:443"]);
    assert!(printed.contains("server: https://lb.example:443"), "{printed}");
}

#[test]
fn cert_commands_refuse_a_cluster_without_pki_or_settings_and_bad_names() {
    let env = Env::new();
    let cf = env.file("Clusterfile", CLUSTERFILE);
    let cf = cf.to_str().unwrap();
    // Without -f, the only cluster run from this machine; there is none yet.
    let stderr = env.fails(&["cert", "check-expiration"], 1);
    assert!(stderr.contains("no cluster was run from this machine"), "{stderr}");
    let stderr = env.fails(&["cert", "renew", "-f", cf], 1);
    assert!(stderr.contains("cluster `prod` has no PKI on this machine"), "{stderr}");
    let stderr = env.fails(&["cert", "--alt-names", "a.example", "-f", cf], 1);
    assert!(stderr.contains("has no PKI"), "{stderr}");
    // A PKI, but no run saved its certificate settings: nothing to reissue from.
    let pki_dir = env.root().join("clusters/prod/pki");
    ClusterPki::load_or_create(&pki_dir, Validity::default()).unwrap();
    let stderr = env.fails(&["cert", "renew", "-f", cf], 1);
    assert!(stderr.contains("certificate settings") && stderr.contains("kiln run"), "{stderr}");
    kiln::kubernetes::pki::PkiSettings {
        dns_domain: "cluster.local".into(),
        service_cidrs: vec!["10.96.0.0/22".into()],
        cert_sans: vec![],
    }
    .save(&pki_dir)
    .unwrap();
    let stderr = env.fails(&["cert", "--alt-names", "ok.example,not a name!", "-f", cf], 1);
    assert!(stderr.contains("`not a name!` is neither a DNS name nor an IP address"), "{stderr}");
    assert!(!pki_dir.join("alt-names").exists(), "a refused name is not kept");
    let stderr = env.fails(&["cert", "-f", cf], 1);
    assert!(stderr.contains("--alt-names"), "{stderr}");
}
