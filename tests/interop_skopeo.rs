//! Interop with a real peer: skopeo reads what kiln writes, and kiln loads what skopeo writes.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::process::Command;

use common::{Env, require_tool};

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().expect("run skopeo");
    assert!(out.status.success(), "skopeo {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn multi_arch(env: &Env) {
    env.file("bin/amd64/tool", "amd64");
    env.file("bin/arm64/tool", "arm64");
    env.file("app.yaml", "kind: ConfigMap\n");
    env.kubefile("FROM scratch\nCOPY bin/${ARCH}/tool bin/tool\nAPP cfg local://app.yaml\nLAUNCH [\"cfg\"]\n");
    env.build("interop:1", &["--platform", "linux/amd64,linux/arm64"]);
}

#[test]
fn skopeo_reads_the_store_layout_and_saved_archives() {
    if !require_tool("skopeo") {
        return;
    }
    let env = Env::new();
    multi_arch(&env);
    let layout = format!("oci:{}:docker.io/library/interop:1", env.root().join("oci").display());
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", "--raw", &layout])).unwrap();
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
    let dir = env.dir.path().join("copied");
    skopeo(&["copy", "--all", &layout, &format!("dir:{}", dir.display())]);
    assert!(dir.join("manifest.json").exists());

    let archive = env.dir.path().join("interop.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "interop:1"]);
    for arch in ["amd64", "arm64"] {
        let info: serde_json::Value = serde_json::from_str(&skopeo(&[
            "inspect",
            "--override-arch",
            arch,
            &format!("oci-archive:{}", archive.display()),
        ]))
        .unwrap();
        assert_eq!(info["Architecture"], arch);
        assert_eq!(info["Os"], "linux");
    }
    // skopeo copies the whole index out of kiln's archive, blobs verified on the way.
    let copied = env.dir.path().join("from-archive");
    skopeo(&["copy", "--all", &format!("oci-archive:{}", archive.display()), &format!("oci:{}:x", copied.display())]);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(copied.join("index.json")).unwrap()).unwrap();
    let digest = env.inspect("interop:1")["digest"].clone();
    assert_eq!(index["manifests"][0]["digest"], digest, "skopeo kept kiln's index byte for byte");
}

#[test]
fn kiln_loads_what_skopeo_writes() {
    if !require_tool("skopeo") {
        return;
    }
    let env = Env::new();
    multi_arch(&env);
    let layout = format!("oci:{}:docker.io/library/interop:1", env.root().join("oci").display());
    let digest = env.inspect("interop:1")["digest"].clone();

    let oci_archive = env.dir.path().join("skopeo-oci.tar");
    skopeo(&["copy", "--all", &layout, &format!("oci-archive:{}:example.com/team/multi:2", oci_archive.display())]);
    let docker_archive = env.dir.path().join("skopeo-docker.tar");
    skopeo(&[
        "copy",
        "--override-arch",
        "arm64",
        &layout,
        &format!("docker-archive:{}:example.com/team/single:3", docker_archive.display()),
    ]);

    let other = Env::new();
    other.ok(&["load", "-i", oci_archive.to_str().unwrap()]);
    let multi = other.inspect("example.com/team/multi:2");
    assert_eq!(multi["digest"], digest);
    assert_eq!(multi["platforms"].as_array().unwrap().len(), 2);
    assert_eq!(multi["platforms"][1]["imageExtension"]["launch"]["app_names"][0], "cfg");

    other.ok(&["load", "-i", docker_archive.to_str().unwrap()]);
    let single = other.inspect("example.com/team/single:3");
    assert_eq!(single["platforms"][0]["platform"], "linux/arm64");
    let root = other.rootfs("example.com/team/single:3", None);
    assert_eq!(std::fs::read_to_string(root.path().join("bin/tool")).unwrap(), "arm64");
}
