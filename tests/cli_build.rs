//! `kiln build`: every instruction's effect on the image, caching, and every error class.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::fs;
use std::io::Write;

use common::{Env, is_root};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

fn ext(info: &serde_json::Value) -> &serde_json::Value {
    &info["platforms"][0]["imageExtension"]
}

#[test]
fn metadata_instructions() {
    let env = Env::new();
    env.file("a.yaml", "kind: ConfigMap\n");
    env.kubefile(
        "FROM scratch\nARG VERSION=0.1\nARG UNSET\nENV Port=8443 VERSION=v${VERSION}${UNSET}\nLABEL tier=\"data plane\" ver=$VERSION\nMAINTAINER Jane <jane@example.com>\nKUBEVERSION >=1.22.0\nCOPY a.yaml a.yaml\nCMDS [\"kubectl apply -f a.yaml\", \"echo done\"]\n",
    );
    env.build("meta:1", &["--build-arg", "VERSION=2.0", "--label", "extra=1", "--annotation", "org.example/note=hi"]);
    let info = env.inspect("meta:1");
    let p = &info["platforms"][0];
    let config = &p["config"];
    let env_list: Vec<&str> = config["config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(env_list, ["Port=8443", "VERSION=v2.0"]);
    assert_eq!(config["config"]["Labels"]["tier"], "data plane");
    // ENV set VERSION after the ARG, so `$VERSION` is the ENV value (Docker's rule).
    assert_eq!(config["config"]["Labels"]["ver"], "v2.0");
    assert_eq!(config["config"]["Labels"]["extra"], "1");
    assert_eq!(config["config"]["Labels"]["app.alpha.sealer.io/supported-kube-version"], ">=1.22.0");
    assert_eq!(config["author"], "Jane <jane@example.com>");
    assert_eq!(p["manifest"]["annotations"]["org.example/note"], "hi");
    let e = ext(&info);
    assert_eq!(e["env"]["Port"], "8443");
    assert_eq!(e["type"], "kube-installer");
    assert_eq!(e["launch"]["cmds"], serde_json::json!(["kubectl apply -f a.yaml", "echo done"]));
    assert_eq!(e["schemaVersion"], "v1alpha1");

    env.build("meta:app", &["--type", "app-installer"]);
    assert_eq!(ext(&env.inspect("meta:app"))["type"], "app-installer");
}

#[test]
fn copy_semantics_and_arch() {
    let env = Env::new();
    env.file("bin/amd64/kubeadm", "amd64-kubeadm");
    env.file("bin/arm64/kubeadm", "arm64-kubeadm");
    env.file("etc/a.conf", "a");
    env.file("etc/b.conf", "b");
    env.file("one.txt", "1");
    env.file("two.txt", "2");
    env.file("script.sh", "#!/bin/sh\n");
    env.kubefile(
        "FROM scratch\nCOPY bin/${ARCH} bin\nCOPY etc etc\nCOPY one.txt two.txt multi/\nCOPY *.txt globbed/\nCOPY one.txt renamed.txt\nCOPY one.txt etc\nCOPY --chmod=0750 script.sh scripts/\n",
    );
    env.build("copy:1", &["--platform", "linux/amd64,linux/arm64"]);
    let info = env.inspect("copy:1");
    assert_eq!(info["mediaType"], "application/vnd.oci.image.index.v1+json");
    for arch in ["amd64", "arm64"] {
        let root = env.rootfs("copy:1", Some(&format!("linux/{arch}")));
        let r = root.path();
        assert_eq!(fs::read_to_string(r.join("bin/kubeadm")).unwrap(), format!("{arch}-kubeadm"));
        assert_eq!(fs::read_to_string(r.join("etc/b.conf")).unwrap(), "b");
        assert_eq!(fs::read_to_string(r.join("multi/two.txt")).unwrap(), "2");
        assert!(r.join("globbed/one.txt").exists() && r.join("globbed/two.txt").exists());
        assert_eq!(fs::read_to_string(r.join("renamed.txt")).unwrap(), "1");
        // `etc` exists in the image, so the file goes inside it (Docker's rule).
        assert_eq!(fs::read_to_string(r.join("etc/one.txt")).unwrap(), "1");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(r.join("scripts/script.sh")).unwrap().permissions().mode() & 0o7777, 0o750);
    }
}

#[test]
fn apps_types_launch_and_labels() {
    let env = Env::new();
    env.file("nginx.yaml", "kind: Deployment\n");
    env.file("svc.yml", "kind: Service\n");
    env.file("install.sh", "echo install\n");
    env.file("lib.sh", "echo lib\n");
    env.file("chart/Chart.yaml", "name: web\n");
    env.file("chart/values.yaml", "image: nginx\n");
    env.file("chart/templates/d.yaml", "kind: Deployment\n");
    env.file("calico/calico.sh", "echo calico\n");
    env.file("csi.yaml", "kind: DaemonSet\n");
    env.file("raw.tmpl", "x\n");
    // a .tgz chart
    let tgz = env.ctx().join("mysql.tgz");
    let mut enc = flate2::write::GzEncoder::new(fs::File::create(&tgz).unwrap(), flate2::Compression::default());
    {
        let mut t = tar::Builder::new(&mut enc);
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "mysql/Chart.yaml", &b"name:"[..]).unwrap();
        t.finish().unwrap();
    }
    enc.finish().unwrap().flush().unwrap();
    env.kubefile(
        "FROM scratch\nAPP nginx local://nginx.yaml local://svc.yml\nAPP setup local://install.sh local://lib.sh\nAPP web local://chart\nAPP mysql local://mysql.tgz\nCNI calico local://calico\nCSI openebs local://csi.yaml\nAPP raw local://raw.tmpl\nAPPCMDS raw [\"cat raw.tmpl\", \"echo ok\"]\nAPPENV nginx NS=prod\nLAUNCH [\"calico\", \"nginx\", \"setup\", \"web\", \"mysql\", \"raw\"]\n",
    );
    // The chart names `nginx`; lite mode caches no container images (and reaches no network).
    env.build("apps:1", &["--build-mode", "lite"]);
    let info = env.inspect("apps:1");
    assert!(info["platforms"][0]["manifest"]["annotations"].get("sealer.image.container.images").is_none());
    let e = ext(&info);
    let app = |n: &str| e["applications"].as_array().unwrap().iter().find(|a| a["name"] == n).unwrap().clone();
    assert_eq!(app("nginx")["type"], "kube");
    assert_eq!(app("nginx")["files"], serde_json::json!(["nginx.yaml", "svc.yml"]));
    assert_eq!(app("nginx")["env"]["NS"], "prod");
    assert_eq!(app("setup")["type"], "shell");
    assert_eq!(app("setup")["files"], serde_json::json!(["install.sh"]));
    assert_eq!(app("web")["type"], "helm");
    assert_eq!(app("mysql")["type"], "helm");
    assert_eq!(app("calico")["type"], "shell");
    assert_eq!(app("raw")["type"], "");
    assert_eq!(app("raw")["cmds"], serde_json::json!(["cat raw.tmpl", "echo ok"]));
    assert_eq!(e["launch"]["app_names"].as_array().unwrap().len(), 6);
    let labels = &info["platforms"][0]["config"]["config"]["Labels"];
    assert_eq!(labels["cluster.alpha.sealer.io/kube-cni-calico"], "true");
    assert_eq!(labels["cluster.alpha.sealer.io/kube-csi-openebs"], "true");
    let cmds: Vec<String> = info["platforms"][0]["appLaunchCommands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(cmds.contains(&"raw: cd application/apps/raw/ && cat raw.tmpl && echo ok".to_owned()), "{cmds:?}");
    assert!(
        cmds.contains(&"mysql: helm upgrade --install mysql application/apps/mysql/mysql.tgz".to_owned()),
        "{cmds:?}"
    );
    let root = env.rootfs("apps:1", None);
    assert!(root.path().join("application/apps/web/templates/d.yaml").exists());
    assert!(root.path().join("application/apps/calico/calico.sh").exists());
}

#[test]
fn unknown_app_type_without_appcmds_fails_at_its_line() {
    let env = Env::new();
    env.file("x.tmpl", "x");
    env.kubefile("FROM scratch\nAPP x local://x.tmpl\n");
    let err = env.fails(&["build", "-t", "x:1", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("cannot tell how to launch application `x`"), "{err}");
    assert!(err.contains("Kubefile:2:5"), "{err}");
    assert!(err.contains("APPCMDS x"), "{err}");
}

#[test]
fn inherits_layers_apps_and_launch_from_base() {
    let env = Env::new();
    env.file("calico.sh", "echo calico");
    env.file("nginx.yaml", "kind: Pod");
    env.file("base.txt", "base");
    env.kubefile("FROM scratch\nCOPY base.txt .\nCNI calico local://calico.sh\nLAUNCH [\"calico\"]\n");
    env.build("base:1", &[]);
    env.file(
        "Kubefile.child",
        "FROM base:1\nAPP nginx local://nginx.yaml\nAPPENV calico MTU=1400\nLAUNCH [\"calico\", \"nginx\"]\n",
    );
    let ctx = env.ctx();
    env.ok(&[
        "build",
        "-q",
        "-t",
        "child:1",
        "-f",
        ctx.join("Kubefile.child").to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    let info = env.inspect("child:1");
    let base = env.inspect("base:1");
    let base_layers = base["platforms"][0]["manifest"]["layers"].as_array().unwrap().clone();
    let child_layers = info["platforms"][0]["manifest"]["layers"].as_array().unwrap();
    assert_eq!(&child_layers[..base_layers.len()], &base_layers[..]);
    let e = ext(&info);
    assert_eq!(e["applications"].as_array().unwrap().len(), 2);
    assert_eq!(e["launch"]["app_names"], serde_json::json!(["calico", "nginx"]));
    assert_eq!(info["platforms"][0]["config"]["config"]["Labels"]["cluster.alpha.sealer.io/kube-cni-calico"], "true");

    // No LAUNCH in the child: the base's launch carries over.
    env.file("Kubefile.env", "FROM base:1\nENV A=1\n");
    env.ok(&["build", "-q", "-t", "child:2", "-f", ctx.join("Kubefile.env").to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(ext(&env.inspect("child:2"))["launch"]["app_names"], serde_json::json!(["calico"]));

    // LAUNCH of an app neither defined nor inherited.
    env.file("Kubefile.bad", "FROM base:1\nLAUNCH [\"ghost\"]\n");
    let err = env
        .fails(&["build", "-t", "bad:1", "-f", ctx.join("Kubefile.bad").to_str().unwrap(), ctx.to_str().unwrap()], 1);
    assert!(err.contains("unknown application `ghost`") && err.contains("known applications: calico"), "{err}");
}

#[test]
fn base_missing_or_without_platform() {
    let env = Env::new();
    env.kubefile("FROM example.com/nope:1\n");
    let err = env.fails(&["build", "-t", "x:1", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("base image `example.com/nope:1` is not in the local store"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    env.kubefile("FROM scratch\n");
    env.build("amd:1", &["--platform", "linux/amd64"]);
    env.kubefile("FROM amd:1\n");
    let err = env.fails(&["build", "-t", "x:2", "--platform", "linux/arm64", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("has no linux/arm64 variant (it has linux/amd64)"), "{err}");
}

#[test]
fn cache_hits_and_partial_rebuild() {
    let env = Env::new();
    env.file("a/one", "1");
    env.file("b/two", "2");
    env.file("c/three", "3");
    env.kubefile("FROM scratch\nCOPY a a\nCOPY b b\nCOPY c c\n");
    let ctx = env.ctx();
    let build = || json(&env.ok(&["build", "-q", "--json", "-t", "cache:1", ctx.to_str().unwrap()]));
    let first = build();
    assert_eq!(first["platforms"][0]["layers_built"], 3);
    let blobs_before = common::snapshot_dir(&env.root().join("oci/blobs"));
    let second = build();
    assert_eq!(
        (second["platforms"][0]["layers_built"].as_u64(), second["platforms"][0]["layers_cached"].as_u64()),
        (Some(0), Some(3))
    );
    let blobs_after = common::snapshot_dir(&env.root().join("oci/blobs"));
    let new_blobs: Vec<_> = blobs_after.keys().filter(|k| !blobs_before.contains_key(*k)).collect();
    // Only the config and manifest (new timestamp) may be new: no layer was written.
    assert!(new_blobs.len() <= 2, "{new_blobs:?}");
    // Changing a file used by the second COPY rebuilds it and what follows, not the first.
    env.file("b/two", "changed");
    let third = build();
    assert_eq!(
        (third["platforms"][0]["layers_built"].as_u64(), third["platforms"][0]["layers_cached"].as_u64()),
        (Some(2), Some(1))
    );
    // --no-cache rebuilds everything.
    let fourth = json(&env.ok(&["build", "-q", "--json", "--no-cache", "-t", "cache:1", ctx.to_str().unwrap()]));
    assert_eq!(fourth["platforms"][0]["layers_built"], 3);
}

#[test]
fn ignore_file_is_honoured() {
    let env = Env::new();
    env.file("data/keep.txt", "k");
    env.file("data/skip.log", "s");
    env.file("data/tmp/x", "t");
    env.file(".kilnignore", "**/*.log\ndata/tmp\n");
    env.kubefile("FROM scratch\nCOPY data data\n");
    env.build("ign:1", &[]);
    let root = env.rootfs("ign:1", None);
    assert!(root.path().join("data/keep.txt").exists());
    assert!(!root.path().join("data/skip.log").exists());
    assert!(!root.path().join("data/tmp").exists());
    env.kubefile("FROM scratch\nCOPY data/skip.log x\n");
    let err = env.fails(&["build", "-t", "ign:2", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("excluded by `.kilnignore`"), "{err}");
}

#[test]
fn add_extracts_archives_and_downloads_urls() {
    let env = Env::new();
    let tgz = env.ctx().join("bundle.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(fs::File::create(&tgz).unwrap(), flate2::Compression::default());
    {
        let mut t = tar::Builder::new(&mut enc);
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "inner/file", &b"hi"[..]).unwrap();
        t.finish().unwrap();
    }
    enc.finish().unwrap();
    // A one-shot HTTP server on loopback for the URL source.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf);
        let body = b"downloaded";
        write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
        s.write_all(body).unwrap();
    });
    env.kubefile(&format!("FROM scratch\nADD bundle.tar.gz opt/\nADD http://127.0.0.1:{port}/files/tool.bin dl/\n"));
    env.build("add:1", &[]);
    server.join().unwrap();
    let root = env.rootfs("add:1", None);
    assert_eq!(fs::read_to_string(root.path().join("opt/inner/file")).unwrap(), "hi");
    assert_eq!(fs::read_to_string(root.path().join("dl/tool.bin")).unwrap(), "downloaded");
}

#[test]
fn zstd_layers() {
    let env = Env::new();
    env.file("f", "zstd content");
    env.kubefile("FROM scratch\nCOPY f f\n");
    // Built with gzip first: the cached gzip layer must not stand in for the zstd one.
    env.build("g:1", &[]);
    env.build("z:1", &["--compression", "zstd"]);
    let info = env.inspect("z:1");
    assert_eq!(
        info["platforms"][0]["manifest"]["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(fs::read_to_string(env.rootfs("z:1", None).path().join("f")).unwrap(), "zstd content");
}

#[test]
fn run_changes_become_a_layer() {
    if !is_root() {
        eprintln!("skipped: RUN needs root for its mount namespace");
        return;
    }
    let env = Env::new();
    env.file("etc/old.conf", "old");
    env.file("etc/keep.conf", "keep");
    env.kubefile("FROM scratch\nENV GREETING=hello\nCOPY etc etc\nRUN echo \"$GREETING from $ARCH in $(pwd)\" && echo \"$GREETING $ARCH\" > etc/new.conf && rm etc/old.conf\nRUN [\"/bin/sh\", \"-c\", \"test -f etc/new.conf && mkdir -p var/lib && touch var/lib/marker\"]\n");
    let out = env.kiln().args(["build", "-t", "run:1", env.ctx().to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("| hello from amd64 in") || stderr.contains("| hello from arm64 in"), "{stderr}");
    let root = env.rootfs("run:1", None);
    let r = root.path();
    assert!(fs::read_to_string(r.join("etc/new.conf")).unwrap().starts_with("hello "));
    assert!(!r.join("etc/old.conf").exists(), "the RUN's rm must be a whiteout");
    assert!(r.join("etc/keep.conf").exists());
    assert!(r.join("var/lib/marker").exists());
    // The host was not touched: RUN's working directory was the image rootfs.
    assert!(!std::path::Path::new("etc/new.conf").exists());
}

#[test]
fn run_cannot_write_to_the_build_host() {
    if !is_root() {
        eprintln!("skipped: RUN needs root for its mount namespace");
        return;
    }
    let env = Env::new();
    let marker = format!("/kiln-run-escape-{}", std::process::id());
    env.kubefile(&format!("FROM scratch\nRUN echo x > /tmp/private && touch {marker}\n"));
    let err = env.fails(&["build", "-t", "escape:1", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!std::path::Path::new(&marker).exists(), "RUN wrote to the host's root filesystem");
    assert!(!std::path::Path::new("/tmp/private").exists(), "RUN's /tmp must be private");
}

#[test]
fn run_failure_names_the_instruction() {
    if !is_root() {
        eprintln!("skipped: RUN needs root for its mount namespace");
        return;
    }
    let env = Env::new();
    env.kubefile("FROM scratch\nRUN echo about to fail && exit 3\n");
    env.ok(&["images"]);
    let before = env.snapshot();
    let err = env.fails(&["build", "-t", "runfail:1", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("Kubefile:2:1") && err.contains("RUN failed") && err.contains("exit status: 3"), "{err}");
    assert!(err.contains("about to fail"), "{err}");
    assert_eq!(env.snapshot().get("index.json"), before.get("index.json"));
    assert!(!env.ok(&["images"]).contains("runfail"));
}

#[test]
fn kubefile_error_shows_location_and_caret_and_changes_nothing() {
    let env = Env::new();
    env.kubefile("FROM scratch\nCOPY a b\n");
    env.file("a", "a");
    env.build("keep:1", &[]);
    let before = env.snapshot();
    env.kubefile("FROM scratch\nHEALTHCHECK NONE\n");
    let err = env.fails(&["build", "-t", "bad:1", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("unknown instruction `HEALTHCHECK`"), "{err}");
    assert!(err.contains("Kubefile:2:1"), "{err}");
    assert!(err.contains("HEALTHCHECK NONE"), "{err}");
    assert!(err.contains("valid instructions: FROM, COPY"), "{err}");
    assert_eq!(env.snapshot(), before);
}

#[test]
fn missing_copy_source_is_located_and_changes_nothing() {
    let env = Env::new();
    env.file("present", "p");
    env.kubefile("FROM scratch\nCOPY present p\n");
    env.build("ok:1", &[]);
    env.kubefile("FROM scratch\nCOPY present p\nCOPY present missing.txt dir/\n");
    let before = env.snapshot();
    let err = env.fails(&["build", "-t", "missing:1", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("COPY source `missing.txt` not found"), "{err}");
    assert!(err.contains("Kubefile:3:14"), "{err}");
    let after = env.snapshot();
    assert_eq!(after.get("index.json"), before.get("index.json"), "no tag may change");
}

#[test]
fn copy_escaping_the_context_is_refused() {
    let env = Env::new();
    env.kubefile("FROM scratch\nCOPY ../../etc/passwd x\n");
    let err = env.fails(&["build", "-t", "esc:1", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("outside the build context"), "{err}");
}

#[test]
fn bad_flags_are_user_errors() {
    let env = Env::new();
    env.kubefile("FROM scratch\n");
    let ctx = env.ctx();
    let c = ctx.to_str().unwrap();
    assert!(env.fails(&["build", "-t", "x:1", "--build-arg", "NOEQUALS", c], 1).contains("expected KEY=VALUE"));
    assert!(env.fails(&["build", "-t", "x:1", "--platform", "linux/", c], 1).contains("invalid platform"));
    assert!(env.fails(&["build", "-t", "UPPER:1", c], 1).contains("must be lowercase"));
    assert!(
        env.fails(&["build", "-t", "x:1", "-f", "/nonexistent/Kubefile", c], 1).contains("failed to read the Kubefile")
    );
    let unused = env.run(&["build", "-t", "x:1", "--build-arg", "NOPE=1", c]);
    assert!(String::from_utf8_lossy(&unused.stderr).contains("not consumed by any ARG: NOPE"));
}

/// Container images built by kiln (the Kubernetes images): ENTRYPOINT, USER and WORKDIR reach the
/// config and a child inherits them; SOURCE_DATE_EPOCH makes the creation time, so two builds of
/// the same inputs have the same digest; `--image-source store` packs an image built into the
/// store into a cluster image's registry with no registry involved; `kiln inspect` lists
/// `kiln.io/component.*` labels as components.
#[test]
fn container_images_reproducible_and_packed_from_the_store() {
    let env = Env::new();
    env.file("pause", "#!/bin/sh\n");
    env.kubefile("FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nWORKDIR /\nENTRYPOINT [\"/pause\"]\n");
    let ctx = env.ctx();
    let build = |tag: &str, epoch: &str| {
        let out = env
            .kiln()
            .env("SOURCE_DATE_EPOCH", epoch)
            .args(["build", "-q", "--no-cache", "--build-mode", "lite", "--platform", "linux/amd64,linux/arm64"])
            .args(["-t", tag])
            .arg(&ctx)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let first = build("127.0.0.1:9/k8s/pause:1", "1761566464");
    let config = &env.inspect("127.0.0.1:9/k8s/pause:1")["platforms"][0]["config"];
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/pause"]));
    assert_eq!(config["config"]["User"], "65535:65535");
    assert_eq!(config["config"]["WorkingDir"], "/");
    assert_eq!(config["created"], "2025-10-27T12:01:04Z");
    // The same file written again (a rebuilt binary: new mtime), layers made again: same digest.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.file("pause", "#!/bin/sh\n");
    assert_eq!(build("127.0.0.1:9/k8s/pause:again", "1761566464"), first, "same inputs, same time: same digest");
    assert_ne!(build("127.0.0.1:9/k8s/pause:later", "1761566465"), first);
    let err = env.kiln().env("SOURCE_DATE_EPOCH", "yesterday").args(["build", "-t", "x:1"]).arg(&ctx).output().unwrap();
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("SOURCE_DATE_EPOCH"));

    // A child keeps the base's ENTRYPOINT and USER unless it sets its own.
    env.file("Kubefile.child", "FROM 127.0.0.1:9/k8s/pause:1\nUSER 0\n");
    env.ok(&[
        "build",
        "-q",
        "--build-mode",
        "lite",
        "-t",
        "child:1",
        "-f",
        ctx.join("Kubefile.child").to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    let child = &env.inspect("child:1")["platforms"][0]["config"]["config"];
    assert_eq!(child["Entrypoint"], serde_json::json!(["/pause"]));
    assert_eq!(child["User"], "0");

    // The store as an image source: a cluster image whose manifest names the image.
    env.file("manifests/pod.yaml", "spec:\n  containers:\n  - image: 127.0.0.1:9/k8s/pause:1\n");
    env.file("Kubefile.cluster", "FROM scratch\nLABEL kiln.io/component.pause=1 other=x\nCOPY manifests manifests\n");
    let kubefile = ctx.join("Kubefile.cluster");
    let args =
        ["build", "-q", "--platform", "linux/amd64,linux/arm64", "-t", "cluster:1", "-f", kubefile.to_str().unwrap()];
    // Without the store as a source the image is looked for on its (closed) registry.
    let err = env.fails(&[&args[..], &["--retries", "0", ctx.to_str().unwrap()]].concat(), 1);
    assert!(err.contains("could not be fetched"), "{err}");
    env.ok(&[&args[..], &["--image-source", "store", ctx.to_str().unwrap()]].concat());
    let info = env.inspect("cluster:1");
    for platform in info["platforms"].as_array().unwrap() {
        let images = platform["containerImages"].as_array().unwrap();
        assert_eq!(images.len(), 1, "{images:?}");
        assert_eq!(images[0]["origin"], "kiln store");
        assert_eq!(platform["components"], serde_json::json!({"pause": "1"}));
    }
}
