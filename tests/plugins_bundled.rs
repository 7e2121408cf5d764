//! The plugin packages bundled in `plugins/`: each loads as kiln loads an image's, and their
//! scripts behave as documented (disk-check against the real fio).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use kiln::plugins::{Phase, PluginSet, image::read_dir};

fn bundled() -> PluginSet {
    let sources = read_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins")).unwrap();
    PluginSet::load(&sources, None).unwrap()
}

#[test]
fn every_bundled_package_loads_with_a_revision() {
    let set = bundled();
    let names: Vec<&str> = set.plugins.keys().map(String::as_str).collect();
    assert_eq!(names, ["disk-check", "etcd-backup", "hostname", "time-sync"]);
    for p in set.plugins.values() {
        assert!(p.revision >= 1, "{}", p.name);
        assert!(p.work_dir().starts_with("plugins/"), "{}", p.name);
    }
    let backup = &set.plugins["etcd-backup"];
    for phase in [Phase::PreScaleup, Phase::PreCleanHost, Phase::PreUninstall, Phase::Upgrade] {
        assert!(backup.phases.contains(&phase), "{phase}");
    }
    assert_eq!(set.plugins["disk-check"].phases, [Phase::PreInitHost]);
    // The two preflight knows of: what they set and repair, in pre-init-host; undone at clean.
    let hostname = &set.plugins["hostname"];
    assert_eq!(hostname.promises.hostname_from_env.as_deref(), Some("HostName"));
    let time_sync = &set.plugins["time-sync"];
    assert_eq!(time_sync.promises.repairs, std::collections::BTreeSet::from([kiln::plugins::Repairable::ClockSkew]));
    for p in [hostname, time_sync] {
        assert_eq!(p.phases, [Phase::PreInitHost, Phase::PreCleanHost], "{}", p.name);
    }
}

fn script(package: &str, name: &str, env: &[(&str, &str)]) -> std::process::Output {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins").join(package);
    let mut cmd = Command::new("/bin/bash");
    cmd.arg(name).current_dir(&dir).env("HostIP", "127.0.0.1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn disk_check_measures_fdatasync_with_fio_and_stops_a_slow_disk() {
    if !common::require_tool("fio") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_str().unwrap();
    let ok = script(
        "disk-check",
        "disk-check.sh",
        &[("DiskCheckDir", dir), ("DiskCheckSize", "1m"), ("DiskCheckMaxFsyncMs", "1000")],
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success() && out.contains("fdatasync p99") && out.contains("(limit 1000 ms)"), "{out}");
    let slow = script(
        "disk-check",
        "disk-check.sh",
        &[("DiskCheckDir", dir), ("DiskCheckSize", "1m"), ("DiskCheckMaxFsyncMs", "0.0001")],
    );
    let err = String::from_utf8_lossy(&slow.stderr);
    assert!(!slow.status.success() && err.contains("over 0.0001 ms: etcd will be unstable here"), "{err}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "its test file is removed");
    // A PATH without fio (nothing else runs before the check).
    let without = script("disk-check", "disk-check.sh", &[("PATH", "/nonexistent")]);
    assert!(String::from_utf8_lossy(&without.stdout).contains("fio is not installed on 127.0.0.1: not measured"));
    assert!(without.status.success());
}

#[test]
fn etcd_backup_saves_once_per_delete_and_refuses_to_pretend() {
    let skipped = script("etcd-backup", "backup.sh", &[("PluginPhase", "pre-clean-host"), ("KilnOperation", "delete")]);
    assert!(skipped.status.success(), "a deleted cluster's masters are saved once, by pre-uninstall");
    let out = tempfile::tempdir().unwrap();
    let without = script(
        "etcd-backup",
        "backup.sh",
        &[
            ("PluginPhase", "pre-uninstall"),
            ("KilnOperation", "delete"),
            ("PluginOutDir", out.path().to_str().unwrap()),
            ("PATH", "/usr/bin:/bin"),
        ],
    );
    let err = String::from_utf8_lossy(&without.stderr);
    assert!(!without.status.success() && err.contains("no etcdctl on 127.0.0.1, nothing was saved"), "{err}");
}
