//! Test support: a temp store, a temp build context, and the real `kiln` binary.
#![allow(clippy::unwrap_used, clippy::print_stderr)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

pub mod registry;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir") }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn ctx(&self) -> PathBuf {
        let p = self.dir.path().join("ctx");
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// Writes a file into the build context.
    pub fn file(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.ctx().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        p
    }

    pub fn kubefile(&self, text: &str) -> PathBuf {
        self.file("Kubefile", text)
    }

    pub fn kiln(&self) -> Command {
        let mut c = Command::cargo_bin("kiln").unwrap();
        c.env("KILN_ROOT", self.root()).env("NO_COLOR", "1").env_remove("KILN_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.kiln().args(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "kiln {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts exit code `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "kiln {args:?}: expected exit {code}, stderr:\n{stderr}");
        stderr
    }

    pub fn build(&self, tag: &str, extra: &[&str]) -> String {
        let ctx = self.ctx();
        let mut args = vec!["build", "-q", "-t", tag, ctx.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.ok(&args).trim().to_owned()
    }

    pub fn inspect(&self, image: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", image])).unwrap()
    }

    /// Every file of the store's OCI layout with its content, to prove a command left it alone.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        snapshot_dir(&self.root().join("oci"))
    }

    /// Unpacks every layer of one platform in order into a directory (whiteouts applied).
    pub fn rootfs(&self, image: &str, platform: Option<&str>) -> tempfile::TempDir {
        let info = self.inspect(image);
        let plat = info["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| platform.is_none_or(|w| p["platform"] == w))
            .expect("platform");
        let out = tempfile::tempdir().unwrap();
        let store = kiln::image::Store::open(self.root()).unwrap();
        for l in plat["manifest"]["layers"].as_array().unwrap() {
            let digest: kiln::image::Digest = l["digest"].as_str().unwrap().parse().unwrap();
            let reader = kiln::image::layer::open_layer(&store, &digest, l["mediaType"].as_str().unwrap()).unwrap();
            kiln::image::layer::apply_layer(reader, out.path()).unwrap();
        }
        out
    }
}

/// File name → blake3 of its content: compact, so a failed comparison prints readably.
pub fn snapshot_dir(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let hash = blake3::hash(&fs::read(e.path()).unwrap()).to_hex().to_string();
            out.insert(e.path().strip_prefix(dir).unwrap().display().to_string(), hash);
        }
    }
    out
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Peers (skopeo, …) are installed by `make test`; outside it a missing one skips the test
/// with a reason, inside it (`KILN_REQUIRE_PEERS=1`) it fails.
pub fn require_tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(std::env::var_os("KILN_REQUIRE_PEERS").is_none(), "`{name}` is required (KILN_REQUIRE_PEERS is set)");
        eprintln!("skipped: `{name}` is not installed (run `make test` to install peers)");
    }
    found
}
