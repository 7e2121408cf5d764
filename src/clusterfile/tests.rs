use super::*;

const SEALER_EXAMPLE: &str = r#"apiVersion: sealer.io/v2
kind: Cluster
metadata:
  name: my-cluster
spec:
  image: docker.io/sealerio/kubernetes:v1-22-15-sealerio-2
  env:
    - PodCIDR=100.64.0.0/10
    - key1=value1
    - key1=value2
  ssh:
    passwd: "Seal@123"
    pk: /root/.ssh/id_rsa
    port: "22"
    user: root
  hosts:
    - ips: [ 192.168.0.2, 192.168.0.3, 192.168.0.4 ]
      roles: [ master ]
    - ips: [ 192.168.0.5 ]
      roles: [ node, db ]
      ssh:
        user: deploy
        port: "2222"
      env: [ "Role=db" ]
      labels: { disk: ssd }
      taints: [ "dedicated=db:NoSchedule", "old:NoExecute-" ]
  registry:
    localRegistry:
      domain: hub.example
      port: 5001
      ha: false
---
apiVersion: sealer.io/v1
kind: Config
metadata:
  name: calico-config
spec:
  path: etc/tigera-operator.yaml
  data: |
    mtu: 1440
---
kind: Plugin
metadata: {name: hostname}
spec:
  type: SHELL
  action: pre-init-host
  data: hostnamectl set-hostname x
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
networking:
  podSubnet: 100.64.0.0/10
"#;

fn parse(text: &str) -> Result<Clusterfile, Box<ClusterfileError>> {
    Clusterfile::parse("Clusterfile", text)
}

fn error(text: &str) -> String {
    let e = parse(text).unwrap_err();
    format!("{e} | {}", e.help_text().unwrap_or(""))
}

#[test]
fn reads_sealer_v2() {
    let cf = parse(SEALER_EXAMPLE).unwrap();
    let c = &cf.cluster;
    assert_eq!(c.name, "my-cluster");
    assert_eq!(c.image.as_deref(), Some("docker.io/sealerio/kubernetes:v1-22-15-sealerio-2"));
    assert_eq!(c.env["key1"], "value2", "a later duplicate wins, as in Sealer");
    assert_eq!(c.hosts.len(), 4);
    assert_eq!(cf.master0().unwrap().ip.to_string(), "192.168.0.2");
    let db = &c.hosts[3];
    assert_eq!(db.roles, vec![Role::Node, Role::Custom("db".into())]);
    assert_eq!(db.ssh.user, "deploy");
    assert_eq!(db.ssh.port, 2222);
    assert_eq!(db.ssh.password.as_ref().unwrap().expose(), "Seal@123", "host ssh is merged over cluster ssh");
    assert_eq!(db.taints[0], Taint::parse("dedicated=db:NoSchedule").unwrap());
    assert!(db.taints[1].remove);
    assert_eq!(db.labels["disk"], "ssd");
    assert_eq!(db.env["Role"], "db");
    let Registry::Local(reg) = &c.registry else { panic!() };
    assert_eq!((reg.domain.as_str(), reg.port, reg.ha), ("hub.example", 5001, false));
    assert_eq!(cf.configs[0].path, "etc/tigera-operator.yaml");
    assert_eq!(
        cf.documents.iter().map(|d| d.kind.as_str()).collect::<Vec<_>>(),
        ["Config", "Plugin", "ClusterConfiguration"]
    );
    assert_eq!(cf.documents[1].line, 42);
    assert_eq!(c.data_root, PathBuf::from(DEFAULT_DATA_ROOT));
}

#[test]
fn secrets_never_print() {
    let cf = parse(SEALER_EXAMPLE).unwrap();
    let debug = format!("{cf:?}");
    assert!(!debug.contains("Seal@123"), "{debug}");
}

#[test]
fn duplicate_ip_points_at_the_second_listing() {
    let text = "kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1, 10.0.0.2]\n    roles: [master]\n  - ips: [10.0.0.3, 10.0.0.1-10.0.0.2]\n    roles: [node]\n";
    let e = error(text);
    assert!(e.starts_with("Clusterfile:6:21: host 10.0.0.1 is listed twice"), "{e}");
    assert!(e.contains("first listed on line 4"), "{e}");
}

#[test]
fn master_and_node_on_one_host_is_a_conflict() {
    let e = error("kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master, node]\n");
    assert!(e.starts_with("Clusterfile:5:21: a host is either a master or a node"), "{e}");
}

#[test]
fn bad_values_have_line_and_column() {
    let cases = [
        ("kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.300]\n    roles: [master]\n", "4:11", "not an IP address"),
        (
            "kind: Cluster\nspec:\n  env: [FOO]\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n",
            "3:9",
            "not `KEY=VALUE`",
        ),
        (
            "kind: Cluster\nspec:\n  ssh: {port: \"ssh\"}\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n",
            "3:15",
            "SSH port `ssh`",
        ),
        (
            "kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n    taints: [\"a=b:Sometimes\"]\n",
            "6:14",
            "unknown taint effect",
        ),
        ("kind: Cluster\nspec:\n  hots: []\n", "3:3", "hots"),
        (
            "kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [node]\n",
            "3:3",
            "no host has the `master` role",
        ),
        (
            "kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n---\nkind: Clutser\n",
            "7:7",
            "unknown kind `Clutser`",
        ),
        ("kind: Cluster\nspec:\n  ssh: {encrypted: true}\n  hosts: []\n", "3:20", "encrypted SSH passwords"),
        ("kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1\n", "4:10", "unclosed bracket '['"),
    ];
    for (text, at, message) in cases {
        let e = error(text);
        assert!(e.starts_with(&format!("Clusterfile:{at}")), "{text:?}: {e}");
        assert!(e.contains(message), "{text:?}: {e}");
    }
}

#[test]
fn taints_follow_kubectl_forms() {
    for (s, key, value, effect, remove) in [
        ("k=v:NoSchedule", "k", Some("v"), Some(TaintEffect::NoSchedule), false),
        ("k:PreferNoSchedule", "k", None, Some(TaintEffect::PreferNoSchedule), false),
        ("k=:NoExecute", "k", Some(""), Some(TaintEffect::NoExecute), false),
        ("k-", "k", None, None, true),
        ("k:NoSchedule-", "k", None, Some(TaintEffect::NoSchedule), true),
    ] {
        let t = Taint::parse(s).unwrap();
        assert_eq!((t.key.as_str(), t.value.as_deref(), t.effect, t.remove), (key, value, effect, remove), "{s}");
    }
    assert!(Taint::parse("k=v").is_err());
    assert!(Taint::parse(":NoSchedule").is_err());
}

#[test]
fn ip_lists_and_ranges() {
    let ips = parse_ip_list("10.0.0.1-10.0.0.3, 10.0.1.9,10.0.2.5-6,fd00::1").unwrap();
    let s: Vec<String> = ips.iter().map(ToString::to_string).collect();
    assert_eq!(s, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.1.9", "10.0.2.5", "10.0.2.6", "fd00::1"]);
    assert!(parse_ip_list("10.0.0.5-10.0.0.1").unwrap_err().contains("ends before"));
    assert!(parse_ip_list("10.0.0.x").is_err());
}

#[test]
fn flag_hosts_append_and_reject_duplicates() {
    let mut cf = parse("kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n").unwrap();
    let flags = FlagHosts { nodes: parse_ip_list("10.0.0.2-3").unwrap(), ..Default::default() };
    flags.apply(&mut cf.cluster).unwrap();
    assert_eq!(cf.cluster.hosts.len(), 3);
    let again = FlagHosts { masters: parse_ip_list("10.0.0.2").unwrap(), ..Default::default() };
    assert!(again.apply(&mut cf.cluster).unwrap_err().contains("10.0.0.2 is listed twice"));
}

#[test]
fn effective_clusterfile_round_trips() {
    let cf = parse(SEALER_EXAMPLE).unwrap();
    let yaml = cf.to_yaml().unwrap();
    let again = parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(again.cluster, cf.cluster);
    assert_eq!(again.documents.len(), cf.documents.len());
}

#[test]
fn registry_credentials_come_in_pairs() {
    let base =
        "kind: Cluster\nspec:\n  hosts:\n  - ips: [10.0.0.1]\n    roles: [master]\n  registry:\n    localRegistry:\n";
    let e = error(&format!("{base}      username: admin\n"));
    assert!(e.starts_with("Clusterfile:1:1: `registry.localRegistry` needs both `username` and `password`"), "{e}");
    let cf = parse(&format!("{base}      username: admin\n      password: pw\n")).unwrap();
    let Registry::Local(local) = &cf.cluster.registry else { panic!("local registry") };
    assert_eq!((local.username.as_deref(), local.password.as_ref().map(Secret::expose)), (Some("admin"), Some("pw")));
}
