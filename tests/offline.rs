//! Offline: `kiln build` finds every container image the cluster image needs, caches them in a
//! `registry/` layer in the docker-distribution layout, and that layer alone serves them once
//! the source registries are gone.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::fs;
use std::process::Command;
use std::sync::atomic::Ordering;

use common::registry::{Auth, CountingProxy, TestRegistry, make_tls, random_image, random_image_files};
use common::{Env, require_tool};

fn peers() -> bool {
    require_tool("docker-registry") && require_tool("skopeo")
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pushes a small random image to `reg` as `team/<name>:1` and builds `tag`, a cluster image
/// whose manifest references it (so its `registry/` layer holds it).
fn cluster_image_with_one_image(env: &Env, reg: &TestRegistry, name: &str, size: usize, tag: &str) {
    let local = format!("example.com/{name}:1");
    random_image(env, &local, &[size]);
    env.ok(&["push", "-q", "--plain-http", &local, &format!("{}/team/{name}:1", reg.addr())]);
    env.file("manifests/app.yaml", &format!("spec:\n  containers:\n  - image: {}/team/{name}:1\n", reg.addr()));
    env.kubefile("FROM scratch\nCOPY manifests manifests\n");
    env.ok(&["build", "-q", "-t", tag, "--insecure-registry", &reg.addr(), env.ctx().to_str().unwrap()]);
}

/// `skopeo copy` of one platform of `reference` into a fresh directory; panics on failure.
fn skopeo_copy(env: &Env, reference: &str, arch: &str) {
    let dir = env.dir.path().join(format!("copy-{}", blake3::hash(format!("{reference}{arch}").as_bytes()).to_hex()));
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--src-tls-verify=false",
            "--override-arch",
            arch,
            &format!("docker://{reference}"),
            &format!("dir:{}", dir.display()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{reference} ({arch}): {}", String::from_utf8_lossy(&out.stderr));
}

/// The original references of the cached images, with the platforms to pull.
fn originals(a: &str, pinned: &str) -> Vec<(String, &'static str)> {
    vec![
        (format!("{a}/multi/app:1"), "arm64"),
        (format!("{a}/multi/app:1"), "amd64"),
        (format!("{a}/pinned/x@{pinned}"), "amd64"),
        (format!("{a}/crd/operand:1"), "amd64"),
        (format!("{a}/init/setup:1"), "amd64"),
        (format!("{a}/chart/web:2"), "amd64"),
        (format!("{a}/same/path:1"), "amd64"),
    ]
}

/// Writes `<dir>/<upstream>/hosts.toml` sending `upstream` to the given mirror host block.
fn mirror(dir: &std::path::Path, upstream: &str, host_block: &str) {
    let d = dir.join(upstream);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("hosts.toml"), format!("server = \"http://{upstream}\"\n\n{host_block}")).unwrap();
}

/// A private containerd (own root, state and socket), for `ctr images pull`.
struct Containerd {
    dir: std::path::PathBuf,
    _child: KillOnDrop,
}

impl Containerd {
    fn start(dir: &std::path::Path) -> Option<Self> {
        if !require_tool("containerd") || !require_tool("ctr") {
            return None;
        }
        fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/containerd.sock\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let c = Self { dir: dir.to_owned(), _child: KillOnDrop(child) };
        let t0 = std::time::Instant::now();
        while !c.ctr(&["version"]).status.success() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(20), "containerd did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(c)
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr").arg("--address").arg(self.dir.join("containerd.sock")).args(args).output().unwrap()
    }

    fn pull(&self, hosts: &std::path::Path, reference: &str, arch: &str) {
        let out = self.ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--platform",
            &format!("linux/{arch}"),
            reference,
        ]);
        assert!(
            out.status.success(),
            "ctr pull {reference} ({arch}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `skopeo copy` of an OCI archive into a `docker save` tar whose image is called `name`.
fn to_docker_archive(oci_archive: &std::path::Path, name: &str, dest: &std::path::Path) {
    let out = Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", oci_archive.display()))
        .arg(format!("docker-archive:{}:{name}", dest.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `docker-registry` serving an extracted `registry/` directory; returns it and its address.
fn serve_with_docker_registry(config_dir: &std::path::Path, registry_dir: &std::path::Path) -> (KillOnDrop, String) {
    fs::create_dir_all(config_dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = config_dir.join("config.yml");
    fs::write(&config, format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n", registry_dir.display())).unwrap();
    let server = Command::new("docker-registry")
        .args(["serve", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = KillOnDrop(server);
    wait_for_port(port);
    (server, format!("127.0.0.1:{port}"))
}

fn wait_for_port(port: u16) {
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn skopeo_digest(reference: &str, arch: &str) -> Option<String> {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--override-arch", arch, &format!("docker://{reference}")])
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!("skopeo inspect {reference}: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v["Digest"].as_str().unwrap().to_owned())
}

#[test]
fn build_caches_every_image_and_the_layer_serves_them_offline() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let mut reg_a = TestRegistry::start(&env.dir.path().join("reg-a"), &Auth::None);
    let mut reg_b = TestRegistry::start(&env.dir.path().join("reg-b"), &Auth::None);
    let proxy_a = CountingProxy::start(reg_a.port);
    let proxy_b = CountingProxy::start(reg_b.port);
    let (a, b) = (proxy_a.addr(), proxy_b.addr());

    // Source images: a multi-arch one, and small single-arch ones.
    env.file("src/bin/amd64/tool", "amd64 tool");
    env.file("src/bin/arm64/tool", "arm64 tool");
    env.file("src/Kubefile", "FROM scratch\nCOPY bin/${ARCH}/tool bin/tool\n");
    let src = env.ctx().join("src");
    env.ok(&[
        "build",
        "-q",
        "--build-mode",
        "lite",
        "-t",
        "multi:1",
        "--platform",
        "linux/amd64,linux/arm64",
        src.to_str().unwrap(),
    ]);
    env.ok(&["push", "-q", "--plain-http", "multi:1", &format!("{a}/multi/app:1")]);
    for (name, sizes, dest) in [
        ("example.com/pinned:1", vec![1000], format!("{a}/pinned/x:1")),
        ("example.com/crd:1", vec![2000], format!("{a}/crd/operand:1")),
        ("example.com/init:1", vec![3000], format!("{a}/init/setup:1")),
        ("example.com/chart:1", vec![4000], format!("{a}/chart/web:2")),
        ("example.com/samea:1", vec![5000], format!("{a}/same/path:1")),
        ("example.com/sameb:1", vec![6000, 10], format!("{b}/same/path:1")),
    ] {
        random_image(&env, name, &sizes);
        env.ok(&["push", "-q", "--plain-http", name, &dest]);
    }
    let pinned = skopeo_digest(&format!("{a}/pinned/x:1"), "amd64").unwrap();

    // The cluster image references them in every way the issue lists.
    env.file("ctx/manifests/workloads.yaml", &format!(
        "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      initContainers:\n        - name: setup\n          image: {a}/init/setup:1\n      containers:\n        - name: app\n          image: {a}/multi/app:1\n        - name: pinned\n          image: {a}/pinned/x@{pinned}\n---\napiVersion: ops.example.com/v1\nkind: Database\nspec:\n  operand:\n    image: {a}/crd/operand:1\n"
    ));
    env.file("ctx/manifests/imageList", &format!("{a}/same/path:1\n{b}/same/path:1\n"));
    env.file("ctx/chart/Chart.yaml", "apiVersion: v2\nname: web\nversion: 0.1.0\n");
    env.file("ctx/chart/values.yaml", &format!("image:\n  registry: {a}\n  repository: chart/web\n  tag: \"2\"\n"));
    env.file(
        "ctx/chart/templates/deploy.yaml",
        "spec:\n  image: \"{{ .Values.image.registry }}/{{ .Values.image.repository }}:{{ .Values.image.tag }}\"\n",
    );
    env.file("ctx/Kubefile", "FROM scratch\nCOPY manifests manifests\nAPP web local://chart\nLAUNCH [\"web\"]\n");
    let ctx = env.ctx().join("ctx");
    let build = |tag: &str| {
        let out = env
            .kiln()
            .args([
                "build",
                "--json",
                "-t",
                tag,
                "--platform",
                "linux/amd64,linux/arm64",
                "--insecure-registry",
                &a,
                "--insecure-registry",
                &b,
                ctx.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    build("offline:1");

    // inspect lists the container images with their platforms.
    let info = env.inspect("offline:1");
    let listed: serde_json::Value = info["platforms"][0]["containerImages"].clone();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|i| i["image"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    let multi = listed.as_array().unwrap().iter().find(|i| i["image"].as_str().unwrap().contains("multi/app")).unwrap();
    assert_eq!(multi["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));

    // Sources gone: the registry layer alone must serve everything.
    let same_a = skopeo_digest(&format!("{a}/same/path:1"), "amd64").unwrap();
    let same_b = skopeo_digest(&format!("{b}/same/path:1"), "amd64").unwrap();
    assert_ne!(same_a, same_b);
    reg_a.kill();
    reg_b.kill();
    let rootfs = env.rootfs("offline:1", Some("linux/arm64"));
    let (_server, local) = serve_with_docker_registry(&env.dir.path().join("served"), &rootfs.path().join("registry"));
    // Images from registry A/B live under their host as a path prefix (no collisions).
    let (ha, hb) = (a.replace(':', "_"), b.replace(':', "_"));
    let checks = [
        (format!("{local}/{ha}/multi/app:1"), "arm64"),
        (format!("{local}/{ha}/multi/app:1"), "amd64"),
        (format!("{local}/{ha}/pinned/x@{pinned}"), "amd64"),
        (format!("{local}/{ha}/crd/operand:1"), "amd64"),
        (format!("{local}/{ha}/init/setup:1"), "amd64"),
        (format!("{local}/{ha}/chart/web:2"), "amd64"),
    ];
    for (reference, arch) in &checks {
        skopeo_copy(&env, reference, arch);
    }
    // containerd pulls the original references through mirror config alone (hosts.toml with
    // the registry host as a path prefix), as nodes do.
    let ctrd = Containerd::start(&env.dir.path().join("containerd"));
    if let Some(ctrd) = &ctrd {
        let hosts = env.dir.path().join("hosts-docker-registry");
        for upstream in [&a, &b] {
            let prefix = upstream.replace(':', "_");
            mirror(
                &hosts,
                upstream,
                &format!(
                    "[host.\"http://{local}/v2/{prefix}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
                ),
            );
        }
        for (reference, arch) in originals(&a, &pinned) {
            ctrd.pull(&hosts, &reference, arch);
        }
    }
    assert_eq!(skopeo_digest(&format!("{local}/{ha}/same/path:1"), "amd64").unwrap(), same_a);
    assert_eq!(skopeo_digest(&format!("{local}/{hb}/same/path:1"), "amd64").unwrap(), same_b);
    drop(_server);

    // The same from `kiln registry serve --image`, plus containerd-style `?ns=` requests.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let kiln_serve = std::process::Command::new(assert_cmd::cargo::cargo_bin("kiln"))
        .env("KILN_ROOT", env.root())
        .args(["registry", "serve", "--image", "offline:1", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _kiln_serve = KillOnDrop(kiln_serve);
    let served = format!("127.0.0.1:{port}");
    wait_for_port(port);
    for (reference, arch) in &checks {
        skopeo_copy(&env, &reference.replace(&local, &served), arch);
    }
    drop(ctrd);
    // A fresh containerd, so every blob must come from `kiln registry serve`.
    if let Some(ctrd) = Containerd::start(&env.dir.path().join("containerd-2")) {
        // One plain mirror for every upstream: containerd adds `?ns=<upstream>` itself.
        let hosts = env.dir.path().join("hosts-kiln-serve");
        for upstream in [&a, &b] {
            mirror(
                &hosts,
                upstream,
                &format!("[host.\"http://{served}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"),
            );
        }
        for (reference, arch) in originals(&a, &pinned) {
            ctrd.pull(&hosts, &reference, arch);
        }
        ctrd.pull(&hosts, &format!("{b}/same/path:1"), "amd64");
    }
    assert_eq!(skopeo_digest(&format!("{served}/{hb}/same/path:1"), "amd64").unwrap(), same_b);
    let http = reqwest::blocking::Client::new();
    let ns_digest = |upstream: &str| {
        let r = http
            .head(format!("http://{served}/v2/same/path/manifests/1?ns={upstream}"))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "ns={upstream}");
        r.headers()["docker-content-digest"].to_str().unwrap().to_owned()
    };
    assert_eq!(ns_digest(&a), same_a, "?ns= picks registry A's image");
    assert_eq!(ns_digest(&b), same_b, "?ns= picks registry B's image");
    // Blobs answer Range requests with 206.
    let manifest: serde_json::Value = serde_json::from_slice(
        &http.get(format!("http://{served}/v2/same/path/manifests/1?ns={a}")).send().unwrap().bytes().unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    let r = http
        .get(format!("http://{served}/v2/{ha}/same/path/blobs/{layer}"))
        .header("Range", "bytes=100-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().len() as u64, size - 100);
    let r = http.get(format!("http://{served}/v2/_catalog")).send().unwrap();
    assert!(r.text().unwrap().contains(&format!("{ha}/multi/app")));
    let r = http.get(format!("http://{served}/v2/..%2F..%2Fetc/manifests/x")).send().unwrap();
    assert!(r.status().is_client_error());

    // A rebuild after changing one manifest asks the sources for no blob at all.
    reg_a.restart();
    reg_b.restart();
    let proxy_a2 = proxy_a;
    let proxy_b2 = proxy_b;
    proxy_a2.blob_requests.store(0, Ordering::SeqCst);
    proxy_b2.blob_requests.store(0, Ordering::SeqCst);
    let _ = (&proxy_a2.port, &proxy_b2.port);
    env.file("ctx/manifests/extra.yaml", "kind: ConfigMap\ndata: {note: changed}\n");
    build("offline:2");
    let requests = proxy_a2.blob_requests.load(Ordering::SeqCst) + proxy_b2.blob_requests.load(Ordering::SeqCst);
    assert_eq!(requests, 0, "a rebuild must fetch no blob from the sources");
}

#[test]
fn missing_source_image_fails_naming_it_and_the_file() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    env.file("manifests/app.yaml", &format!("spec:\n  containers:\n  - image: {}/does/not-exist:1\n", reg.addr()));
    env.kubefile("FROM scratch\nCOPY manifests manifests\n");
    env.ok(&["images"]);
    let before = env.snapshot();
    let err =
        env.fails(&["build", "-t", "broken:1", "--insecure-registry", &reg.addr(), env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("does/not-exist:1") && err.contains("manifests/app.yaml"), "{err}");
    assert_eq!(env.snapshot().get("index.json"), before.get("index.json"), "nothing tagged");
}

#[test]
fn corrupt_blob_from_the_source_is_a_digest_error() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    let blobs = random_image(&env, "example.com/corrupt:1", &[50_000]);
    env.ok(&["push", "-q", "--plain-http", "example.com/corrupt:1", &format!("{}/bad/blob:1", reg.addr())]);
    let victim = reg.blob_path(&blobs[0]);
    let mut bytes = fs::read(&victim).unwrap();
    bytes[600] ^= 0xff;
    fs::write(&victim, &bytes).unwrap();
    let other = Env::new();
    other.file("manifests/app.yaml", &format!("spec:\n  containers:\n  - image: {}/bad/blob:1\n", reg.addr()));
    other.kubefile("FROM scratch\nCOPY manifests manifests\n");
    let err =
        other.fails(&["build", "-t", "c:1", "--insecure-registry", &reg.addr(), other.ctx().to_str().unwrap()], 1);
    assert!(err.contains("digest mismatch") && err.contains("bad/blob:1"), "{err}");
}

#[test]
fn registry_serve_with_htpasswd() {
    if !peers() || !require_tool("htpasswd") {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    cluster_image_with_one_image(&env, &reg, "auth", 7000, "authd:1");
    let htpasswd = env.dir.path().join("htpasswd");
    assert!(
        Command::new("htpasswd")
            .args(["-Bbc", htpasswd.to_str().unwrap(), "node", "pull-secret"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("kiln"))
        .env("KILN_ROOT", env.root())
        .args([
            "registry",
            "serve",
            "--image",
            "authd:1",
            "--htpasswd",
            htpasswd.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    wait_for_port(port);
    let reference = format!("docker://127.0.0.1:{port}/{}/team/auth:1", reg.addr().replace(':', "_"));
    let anonymous = Command::new("skopeo").args(["inspect", "--tls-verify=false", &reference]).output().unwrap();
    assert!(!anonymous.status.success(), "anonymous pulls must be refused");
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--creds", "node:pull-secret", &reference])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn registry_serve_over_tls() {
    if !peers() || !require_tool("openssl") {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    cluster_image_with_one_image(&env, &reg, "tls", 9000, "tlsd:1");
    let (ca, cert, key) = make_tls(&env.dir.path().join("pki"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("kiln"))
        .env("KILN_ROOT", env.root())
        .args(["registry", "serve", "--image", "tlsd:1", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(child);
    wait_for_port(port);
    let reference = format!("127.0.0.1:{port}/{}/team/tls:1", reg.addr().replace(':', "_"));
    // kiln's own client, trusting the test CA, pulls over HTTPS.
    let puller = Env::new();
    puller.ok(&["pull", "--ca-file", ca.to_str().unwrap(), &reference]);
    // Without the CA the certificate is refused; plain HTTP is not spoken at all.
    assert_eq!(puller.run(&["pull", "--retries", "0", &reference]).status.code(), Some(1));
    assert_eq!(puller.run(&["pull", "--retries", "0", "--plain-http", &reference]).status.code(), Some(1));
}

/// `--image-source`: images come from an OCI layout directory, an OCI archive and a `docker
/// save` tar, with no registry at all; the user's layout is left untouched.
#[test]
fn image_sources_pack_local_archives_and_layouts_without_a_registry() {
    if !peers() {
        return;
    }
    let env = Env::new();
    // Names on a closed loopback port: a source miss would fail fast and stay on this machine.
    let (one, two, three) = ("127.0.0.1:9/team/one:1", "127.0.0.1:9/team/two:2", "127.0.0.1:9/team/three:3");
    random_image(&env, one, &[3000]);
    random_image(&env, two, &[4000, 5000]);
    random_image(&env, three, &[6000]);
    let layout = random_image_files(&env, one).0;
    let archive = random_image_files(&env, two).1;
    let docker_tar = env.dir.path().join("three-docker.tar");
    to_docker_archive(&random_image_files(&env, three).1, three, &docker_tar);
    let layout_before = common::snapshot_dir(&layout);

    let build = Env::new();
    build.file(
        "manifests/app.yaml",
        &format!("spec:\n  containers:\n  - image: {one}\n  - image: {two}\n  initContainers:\n  - image: {three}\n"),
    );
    build.kubefile("FROM scratch\nCOPY manifests manifests\n");
    let ctx = build.ctx();
    let mut args = vec!["build", "-q", "-t", "sourced:1"];
    for source in [&layout, &archive, &docker_tar] {
        args.extend(["--image-source", source.to_str().unwrap()]);
    }
    args.push(ctx.to_str().unwrap());
    build.ok(&args);
    assert_eq!(common::snapshot_dir(&layout), layout_before, "a layout source must not be modified");

    let inspect: serde_json::Value = serde_json::from_str(&build.ok(&["inspect", "sourced:1"])).unwrap();
    let images = inspect["platforms"][0]["containerImages"].as_array().unwrap().clone();
    let origin = |name: &str| {
        images.iter().find(|i| i["image"] == name).map(|i| i["origin"].as_str().unwrap().to_owned()).unwrap()
    };
    assert!(origin(one).contains(layout.to_str().unwrap()), "{images:?}");
    assert!(origin(two).contains(archive.to_str().unwrap()), "{images:?}");
    assert!(origin(three).contains(docker_tar.to_str().unwrap()), "{images:?}");
    assert!(images.iter().all(|i| i["referencedBy"][0].as_str().unwrap().ends_with("manifests/app.yaml")));

    // An image built FROM it keeps its registry content as registry content (sent to registry
    // hosts only) and its list of container images.
    build.file("extra/readme.txt", "more\n");
    build.kubefile("FROM sourced:1\nCOPY extra extra\n");
    build.ok(&["build", "-q", "--build-mode", "lite", "-t", "child:1", build.ctx().to_str().unwrap()]);
    let child: serde_json::Value = serde_json::from_str(&build.ok(&["inspect", "child:1"])).unwrap();
    let text = child.to_string();
    assert_eq!(text.matches("\"io.kiln.layer.content\":\"registry\"").count(), 1, "{text}");
    assert_eq!(child["platforms"][0]["containerImages"].as_array().map(Vec::len), Some(3), "{text}");
    // A full build FROM it finds the same images in the base's manifests: the base's registry
    // holds them, so nothing is fetched (their registry, 127.0.0.1:9, is not there) and no
    // second registry layer is made.
    build.ok(&["build", "-q", "-t", "child-full:1", build.ctx().to_str().unwrap()]);
    let full: serde_json::Value = serde_json::from_str(&build.ok(&["inspect", "child-full:1"])).unwrap();
    let text = full.to_string();
    assert_eq!(text.matches("\"io.kiln.layer.content\":\"registry\"").count(), 1, "{text}");
    assert_eq!(full["platforms"][0]["containerImages"], inspect["platforms"][0]["containerImages"], "{text}");

    // The layer serves them: docker-registry on the extracted `registry/` answers skopeo.
    let rootfs = build.rootfs("sourced:1", None);
    let (_server, local) =
        serve_with_docker_registry(&build.dir.path().join("served"), &rootfs.path().join("registry"));
    for name in [one, two, three] {
        let path = name.split_once('/').unwrap().1;
        let reference = format!("{local}/127.0.0.1_9/{path}");
        assert!(skopeo_digest(&reference, "amd64").is_some(), "{reference} not served");
    }

    // A source that is not an image archive is a clear error, and nothing is tagged.
    build.file("not-an-archive.txt", "hello");
    let bad = build.ctx().join("not-an-archive.txt");
    let err = build.fails(&["build", "-t", "bad:1", "--image-source", bad.to_str().unwrap(), ctx.to_str().unwrap()], 1);
    assert!(err.contains("not-an-archive.txt"), "{err}");
    assert!(!build.ok(&["images"]).contains("bad"));
}

/// A multi-arch image from an archive keeps just the build's platforms, and a platform the
/// source lacks is named in the error.
#[test]
fn image_source_index_is_reduced_to_the_build_platforms() {
    let env = Env::new();
    env.file("src/bin/amd64/tool", "amd64 tool");
    env.file("src/bin/arm64/tool", "arm64 tool");
    env.file("src/Kubefile", "FROM scratch\nCOPY bin/${ARCH}/tool bin/tool\n");
    let src = env.ctx().join("src");
    let name = "127.0.0.1:9/multi/tool:1";
    let platforms = "linux/amd64,linux/arm64";
    env.ok(&["build", "-q", "--build-mode", "lite", "-t", name, "--platform", platforms, src.to_str().unwrap()]);
    let archive = env.dir.path().join("multi.tar");
    env.ok(&["save", "-q", "-o", archive.to_str().unwrap(), name]);

    env.file("ctx/manifests/app.yaml", &format!("spec:\n  containers:\n  - image: {name}\n"));
    env.file("ctx/Kubefile", "FROM scratch\nCOPY manifests manifests\n");
    let ctx = env.ctx().join("ctx");
    let build = |tag: &str, platforms: &str| {
        env.run(&[
            "build",
            "-q",
            "-t",
            tag,
            "--platform",
            platforms,
            "--image-source",
            archive.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ])
    };
    assert!(build("one:1", "linux/arm64").status.success());
    let cached = &env.inspect("one:1")["platforms"][0]["containerImages"][0];
    assert_eq!(cached["platforms"], serde_json::json!(["linux/arm64"]));
    assert!(build("both:1", platforms).status.success());
    let cached = &env.inspect("both:1")["platforms"][1]["containerImages"][0];
    assert_eq!(cached["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));
    let out = build("riscv:1", "linux/riscv64");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("linux/riscv64") && err.contains("linux/amd64, linux/arm64"), "{err}");
}

/// Without the `containerd` feature, `--image-source containerd` says how to get it.
#[cfg(not(feature = "containerd"))]
#[test]
fn containerd_source_needs_the_feature() {
    let env = Env::new();
    env.file("manifests/app.yaml", "spec:\n  containers:\n  - image: 127.0.0.1:9/x/y:1\n");
    env.kubefile("FROM scratch\nCOPY manifests manifests\n");
    let err = env.fails(&["build", "-t", "c:1", "--image-source", "containerd", env.ctx().to_str().unwrap()], 1);
    assert!(err.contains("containerd` cargo feature"), "{err}");
}

/// With the `containerd` feature, images imported into the build host's containerd are packed
/// straight from its content store.
#[cfg(feature = "containerd")]
#[test]
fn containerd_content_store_is_an_image_source() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let Some(ctrd) = Containerd::start(&env.dir.path().join("containerd")) else { return };
    let name = "127.0.0.1:9/local/built:7";
    random_image(&env, name, &[7000, 8000]);
    let docker_tar = env.dir.path().join("built-docker.tar");
    to_docker_archive(&random_image_files(&env, name).1, name, &docker_tar);
    let out = ctrd.ctr(&["-n", "builds", "images", "import", "--no-unpack", docker_tar.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    env.file("manifests/app.yaml", &format!("spec:\n  containers:\n  - image: {name}\n"));
    env.kubefile("FROM scratch\nCOPY manifests manifests\n");
    let socket = ctrd.dir.join("containerd.sock");
    let out = env
        .kiln()
        .env("CONTAINERD_ADDRESS", &socket)
        .args(["build", "-q", "-t", "from-ctrd:1", "--image-source", "containerd:builds", env.ctx().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inspect: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "from-ctrd:1"])).unwrap();
    let image = &inspect["platforms"][0]["containerImages"][0];
    assert_eq!(image["image"], name);
    assert_eq!(image["origin"], "containerd:builds");
    // An image the namespace lacks falls through to the registry (closed port: a clear failure).
    env.file("manifests/app.yaml", "spec:\n  containers:\n  - image: 127.0.0.1:9/local/absent:1\n");
    let out = env
        .kiln()
        .env("CONTAINERD_ADDRESS", &socket)
        .args(["build", "-t", "absent:1", "--image-source", "containerd:builds", env.ctx().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("local/absent:1"));
}
