//! push, pull, login and logout against a real registry (Debian's docker-registry), with
//! skopeo as the client peer, and faults: a registry killed mid-transfer, a wrong blob, a
//! wrong password.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::fs;
use std::io::Write;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::registry::{Auth, CountingProxy, TestRegistry, TokenIssuer, random_image};
use common::{Env, require_tool};

fn peers() -> bool {
    require_tool("docker-registry") && require_tool("skopeo") && require_tool("htpasswd")
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn multi_arch(env: &Env, tag: &str) {
    env.file("bin/amd64/tool", "amd64 tool");
    env.file("bin/arm64/tool", "arm64 tool");
    env.file("app.yaml", "kind: ConfigMap\n");
    env.kubefile("FROM scratch\nCOPY bin/${ARCH}/tool bin/tool\nAPP cfg local://app.yaml\nLAUNCH [\"cfg\"]\n");
    env.build(tag, &["--platform", "linux/amd64,linux/arm64"]);
}

#[test]
fn push_pull_round_trip_skip_and_mount() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    multi_arch(&env, "demo:1");
    let dest = format!("{}/team/demo:1", reg.addr());
    let first = json(&env.ok(&["push", "--plain-http", "--json", "demo:1", &dest]));
    assert!(first["blobs_uploaded"].as_u64().unwrap() > 0);
    let again = json(&env.ok(&["push", "--plain-http", "--json", "demo:1", &dest]));
    assert_eq!((again["blobs_uploaded"].as_u64(), again["bytes_uploaded"].as_u64()), (Some(0), Some(0)), "{again}");
    // Same registry, other repository: blobs are mounted, not uploaded.
    let other = json(&env.ok(&["push", "--plain-http", "--json", "demo:1", &format!("{}/other/demo:2", reg.addr())]));
    assert_eq!(other["blobs_uploaded"], 0, "{other}");
    assert!(other["blobs_mounted"].as_u64().unwrap() > 0, "{other}");

    let puller = Env::new();
    let pulled = json(&puller.ok(&["pull", "--plain-http", "--json", "--all-platforms", &dest]));
    assert_eq!(pulled["digest"], first["digest"], "the index comes back byte for byte");
    assert_eq!(pulled["platforms"].as_array().unwrap().len(), 2);
    let info = puller.inspect(&dest);
    assert_eq!(info["platforms"][1]["imageExtension"]["launch"]["app_names"][0], "cfg");
    let again = json(&puller.ok(&["pull", "--plain-http", "--json", "--all-platforms", &dest]));
    assert_eq!((again["blobs_downloaded"].as_u64(), again["bytes_downloaded"].as_u64()), (Some(0), Some(0)));
    let arm = Env::new();
    let one = json(&arm.ok(&["pull", "--plain-http", "--json", "--platform", "linux/arm64", &dest]));
    assert_eq!(one["platforms"], serde_json::json!(["linux/arm64"]));
    assert_eq!(fs::read_to_string(arm.rootfs(&dest, None).path().join("bin/tool")).unwrap(), "arm64 tool");
    let err = arm.fails(&["pull", "--plain-http", "--platform", "linux/s390x", &dest], 1);
    assert!(err.contains("linux/s390x") && err.contains("linux/amd64, linux/arm64"), "{err}");
    let err = arm.fails(&["pull", "--plain-http", &format!("{}/team/nope:1", reg.addr())], 1);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn skopeo_pulls_what_kiln_pushes_byte_for_byte() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    multi_arch(&env, "demo:1");
    let dest = format!("{}/team/demo:1", reg.addr());
    env.ok(&["push", "--plain-http", "demo:1", &dest]);
    let out = env.dir.path().join("skopeo-copy");
    let status = Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{dest}"),
            &format!("oci:{}:x", out.display()),
        ])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    // Every blob skopeo fetched is byte-identical to kiln's store.
    let mut compared = 0;
    for e in fs::read_dir(out.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let ours = env.root().join("oci/blobs/sha256").join(e.file_name());
        assert_eq!(fs::read(e.path()).unwrap(), fs::read(&ours).unwrap(), "{:?}", e.file_name());
        compared += 1;
    }
    assert!(compared >= 7, "index, 2 manifests, 2 configs and layers: {compared}");
}

#[test]
fn kiln_pulls_what_skopeo_pushes() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    multi_arch(&env, "demo:1");
    let layout = format!("oci:{}:docker.io/library/demo:1", env.root().join("oci").display());
    for (args, tag) in [(vec!["--all"], "multi:1"), (vec!["--override-arch", "arm64", "--format", "v2s2"], "single:1")]
    {
        let mut cmd = Command::new("skopeo");
        cmd.arg("copy").args(&args).args([
            "--dest-tls-verify=false",
            &layout,
            &format!("docker://{}/skopeo/{tag}", reg.addr()),
        ]);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The single-arch image goes up as Docker v2 schema 2 (`--format v2s2`); kiln reads both.
    let puller = Env::new();
    let multi = json(&puller.ok(&[
        "pull",
        "--plain-http",
        "--json",
        "--all-platforms",
        &format!("{}/skopeo/multi:1", reg.addr()),
    ]));
    assert_eq!(multi["platforms"].as_array().unwrap().len(), 2);
    let single = json(&puller.ok(&["pull", "--plain-http", "--json", &format!("{}/skopeo/single:1", reg.addr())]));
    let info = puller.inspect(single["name"].as_str().unwrap());
    assert_eq!(info["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(info["platforms"][0]["platform"], "linux/arm64");
    assert_eq!(
        fs::read_to_string(puller.rootfs(single["name"].as_str().unwrap(), None).path().join("bin/tool")).unwrap(),
        "arm64 tool"
    );
}

#[test]
fn basic_auth_login_logout_and_secrets() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let password = "s3cret-Pa55";
    let reg = TestRegistry::start(
        &env.dir.path().join("reg"),
        &Auth::Htpasswd { user: "alice".into(), password: password.into() },
    );
    let authfile = env.dir.path().join("auth/config.json");
    let login = |pw: &str| {
        let mut c = env.kiln();
        c.env("KILN_AUTH_FILE", &authfile)
            .args(["login", "--plain-http", &reg.addr(), "-u", "alice", "--password-stdin"])
            .write_stdin(format!("{pw}\n"));
        c.output().unwrap()
    };
    let bad = login("wrong");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&reg.addr()), "{stderr}");
    assert!(!authfile.exists(), "rejected credentials must not be saved");

    let good = login(password);
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    for out in [&good.stdout, &good.stderr] {
        assert!(!String::from_utf8_lossy(out).contains(password));
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&authfile).unwrap().permissions().mode() & 0o777, 0o600);

    multi_arch(&env, "demo:1");
    let dest = format!("{}/private/demo:1", reg.addr());
    let push = env
        .kiln()
        .env("KILN_AUTH_FILE", &authfile)
        .args(["push", "--plain-http", "-v", "demo:1", &dest])
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
    assert!(!String::from_utf8_lossy(&push.stderr).contains(password));
    // Without credentials: refused with a hint.
    let other = Env::new();
    let err = other
        .kiln()
        .env("KILN_AUTH_FILE", env.dir.path().join("none.json"))
        .args(["pull", "--plain-http", &dest])
        .output()
        .unwrap();
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("kiln login"));
    let ok = other.kiln().env("KILN_AUTH_FILE", &authfile).args(["pull", "--plain-http", &dest]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let out = env.kiln().env("KILN_AUTH_FILE", &authfile).args(["logout", &reg.addr()]).output().unwrap();
    assert!(out.status.success());
    assert!(!fs::read_to_string(&authfile).unwrap().contains(&reg.addr()));
    let out = env.kiln().env("KILN_AUTH_FILE", &authfile).args(["logout", &reg.addr()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bearer_token_flow() {
    if !peers() || !require_tool("openssl") {
        return;
    }
    let env = Env::new();
    let issuer = TokenIssuer::start(&env.dir.path().join("issuer"), "bob", "t0ken-pw");
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::Token(issuer));
    let authfile = env.dir.path().join("auth.json");
    let mut login = env.kiln();
    login
        .env("KILN_AUTH_FILE", &authfile)
        .args(["login", "--plain-http", &reg.addr(), "-u", "bob", "--password-stdin"])
        .write_stdin("t0ken-pw\n");
    let out = login.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    multi_arch(&env, "demo:1");
    let dest = format!("{}/tokens/demo:1", reg.addr());
    let push = env
        .kiln()
        .env("KILN_AUTH_FILE", &authfile)
        .args(["push", "--plain-http", "--json", "demo:1", &dest])
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
    let puller = Env::new();
    let pull = puller
        .kiln()
        .env("KILN_AUTH_FILE", &authfile)
        .args(["pull", "--plain-http", "--all-platforms", "--json", &dest])
        .output()
        .unwrap();
    assert!(pull.status.success(), "{}", String::from_utf8_lossy(&pull.stderr));
    let mut bad = env.kiln();
    bad.env("KILN_AUTH_FILE", env.dir.path().join("bad.json"))
        .args(["login", "--plain-http", &reg.addr(), "-u", "bob", "--password-stdin"])
        .write_stdin("nope\n");
    let out = bad.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&reg.addr()));
}

#[test]
fn wrong_blob_from_registry_stores_nothing() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    let blobs = random_image(&env, "example.com/rand:1", &[300_000, 200_000]);
    let dest = format!("{}/team/rand:1", reg.addr());
    env.ok(&["push", "--plain-http", "example.com/rand:1", &dest]);
    // Corrupt one layer in the registry's storage: it now serves bytes that do not match.
    let victim = reg.blob_path(&blobs[0]);
    let mut bytes = fs::read(&victim).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&victim, &bytes).unwrap();
    let puller = Env::new();
    puller.ok(&["images"]);
    let before = puller.snapshot();
    let err = puller.fails(&["pull", "--plain-http", &dest], 1);
    assert!(err.contains("digest mismatch"), "{err}");
    assert_eq!(puller.snapshot(), before, "nothing stored");
    assert!(!puller.root().join("oci/blobs/sha256").join(&blobs[0]).exists());
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn push_interrupted_by_a_registry_crash_resends_only_what_is_missing() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let mut reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    let sizes = [24 << 20, 24 << 20, 24 << 20, 24 << 20];
    let blobs = random_image(&env, "example.com/big:1", &sizes);
    let proxy = CountingProxy::start(reg.port);
    let dest = format!("{}/team/big:1", proxy.addr());
    let mut push = std::process::Command::new(assert_cmd::cargo::cargo_bin("kiln"));
    push.env("KILN_ROOT", env.root()).args([
        "push",
        "--plain-http",
        "--retries",
        "0",
        "--max-concurrent",
        "1",
        "example.com/big:1",
        &dest,
    ]);
    let mut child = push.spawn().unwrap();
    // Kill the registry once the first layer is complete and the second is on its way.
    wait_until("the first layer", Duration::from_secs(60), || !reg.blobs().is_empty());
    wait_until("the second layer to start", Duration::from_secs(60), || {
        proxy.to_registry.load(Ordering::SeqCst) > (sizes[0] as u64) + (4 << 20)
    });
    reg.kill();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the push must fail when the registry dies");
    let stored: Vec<String> = reg.blobs();
    assert!(!stored.is_empty() && stored.len() < blobs.len(), "{stored:?}");
    reg.restart();
    let proxy2 = CountingProxy::start(reg.port);
    let missing: u64 = blobs
        .iter()
        .filter(|b| !stored.contains(b))
        .map(|b| fs::metadata(env.root().join("oci/blobs/sha256").join(b)).unwrap().len())
        .sum();
    let out = json(&env.ok(&[
        "push",
        "--plain-http",
        "--json",
        "example.com/big:1",
        &format!("{}/team/big:1", proxy2.addr()),
    ]));
    let sent = proxy2.to_registry.load(Ordering::SeqCst);
    eprintln!("re-run: {sent} bytes on the wire for {missing} missing bytes; kiln says {}", out["bytes_uploaded"]);
    assert_eq!(out["bytes_uploaded"].as_u64(), Some(missing));
    assert!(
        sent >= missing && sent < missing + (256 << 10),
        "only the missing blobs cross the wire: {sent} vs {missing}"
    );
    let now = reg.blobs();
    assert!(blobs.iter().all(|b| now.contains(b)), "every blob is in the registry now");
}

#[test]
fn pull_interrupted_by_a_registry_crash_resumes_with_range() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let mut reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    let sizes = [32 << 20, 32 << 20, 32 << 20];
    random_image(&env, "example.com/big:2", &sizes);
    env.ok(&["push", "--plain-http", "example.com/big:2", &format!("{}/team/big:2", reg.addr())]);
    let total: u64 = reg.blobs().iter().map(|b| fs::metadata(reg.blob_path(b)).unwrap().len()).sum();

    let puller = Env::new();
    let proxy = CountingProxy::start(reg.port);
    let src = format!("{}/team/big:2", proxy.addr());
    let mut pull = std::process::Command::new(assert_cmd::cargo::cargo_bin("kiln"));
    pull.env("KILN_ROOT", puller.root()).args([
        "pull",
        "--plain-http",
        "--retries",
        "0",
        "--max-concurrent",
        "1",
        &src,
    ]);
    let mut child = pull.spawn().unwrap();
    wait_until("half the image", Duration::from_secs(60), || proxy.from_registry.load(Ordering::SeqCst) > total / 2);
    reg.kill();
    assert!(!child.wait().unwrap().success());
    let first = proxy.from_registry.load(Ordering::SeqCst);
    reg.restart();
    let proxy2 = CountingProxy::start(reg.port);
    let out = json(&puller.ok(&["pull", "--plain-http", "--json", &format!("{}/team/big:2", proxy2.addr())]));
    let second = proxy2.from_registry.load(Ordering::SeqCst);
    eprintln!("first run received {first}, re-run {second}, image {total} bytes");
    // Complete blobs are not fetched again and the partial one resumes where it stopped.
    assert!(first + second < total + (512 << 10), "{first} + {second} vs {total}");
    assert!(second < total - (8 << 20));
    let name = out["name"].as_str().unwrap();
    let image = kiln::image::Store::open(puller.root()).unwrap().image(&name.parse().unwrap()).unwrap().unwrap();
    let store = kiln::image::Store::open(puller.root()).unwrap();
    for (d, s, _) in image.blobs() {
        store.verify_blob(&d, Some(s)).unwrap();
    }
    let _ = std::io::stderr().flush();
}

#[test]
fn chunked_upload_in_pieces() {
    if !peers() {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start(&env.dir.path().join("reg"), &Auth::None);
    random_image(&env, "example.com/chunks:1", &[3 << 20, 100_000]);
    let proxy = CountingProxy::start(reg.port);
    let dest = format!("{}/team/chunks:1", proxy.addr());
    // 1 MiB chunks: the 3 MiB layer goes up as PATCH requests, the small one monolithically.
    let out =
        json(&env.ok(&["push", "--plain-http", "--json", "--chunk-size", "1048576", "example.com/chunks:1", &dest]));
    assert_eq!(out["blobs_uploaded"], 3);
    let patches = proxy.patches.load(Ordering::SeqCst);
    assert!(patches >= 3, "the 3 MiB layer should go up in at least 3 PATCH requests, saw {patches}");
    let puller = Env::new();
    puller.ok(&["pull", "--plain-http", &format!("{}/team/chunks:1", reg.addr())]);
    let store = kiln::image::Store::open(puller.root()).unwrap();
    let image = store.image(&format!("{}/team/chunks:1", reg.addr()).parse().unwrap()).unwrap().unwrap();
    for (d, s, _) in image.blobs() {
        store.verify_blob(&d, Some(s)).unwrap();
    }
}

#[test]
fn tls_with_ca_file_or_skip_verify() {
    if !peers() || !require_tool("openssl") {
        return;
    }
    let env = Env::new();
    let reg = TestRegistry::start_tls(&env.dir.path().join("reg"));
    multi_arch(&env, "demo:1");
    let dest = format!("{}/tls/demo:1", reg.addr());
    // HTTPS is the default; a certificate nobody vouches for is refused.
    let err = env.fails(&["push", "--retries", "0", "demo:1", &dest], 1);
    assert!(err.contains("cannot reach") && (err.contains("certificate") || err.contains("UnknownIssuer")), "{err}");
    let ca = reg.ca.clone().unwrap();
    env.ok(&["push", "--ca-file", ca.to_str().unwrap(), "demo:1", &dest]);
    let puller = Env::new();
    puller.ok(&["pull", "--insecure-skip-tls-verify", "--all-platforms", &dest]);
    assert_eq!(puller.inspect(&dest)["platforms"].as_array().unwrap().len(), 2);
    // Plain HTTP only when asked: asking for it against a TLS registry fails.
    assert_eq!(puller.run(&["pull", "--plain-http", "--retries", "0", &dest]).status.code(), Some(1));
}
