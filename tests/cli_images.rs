//! images, inspect, tag, rmi, save, load — and what happens with corrupt or truncated input.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::fs;

use common::Env;

fn demo(env: &Env, tag: &str) {
    env.file("bin/tool", "tool");
    env.file("app.yaml", "kind: ConfigMap\n");
    env.kubefile("FROM scratch\nCOPY bin bin\nAPP cfg local://app.yaml\nLAUNCH [\"cfg\"]\n");
    env.build(tag, &["--platform", "linux/amd64,linux/arm64"]);
}

#[test]
fn images_table_and_json() {
    let env = Env::new();
    demo(&env, "demo:1");
    let table = env.ok(&["images"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in ["NAME", "DIGEST", "PLATFORMS", "SIZE", "CREATED"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(lines.next().unwrap().starts_with("docker.io/library/demo:1"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["images", "--json"])).unwrap();
    assert_eq!(json[0]["name"], "docker.io/library/demo:1");
    assert_eq!(json[0]["platforms"], serde_json::json!(["linux/amd64", "linux/arm64"]));
}

#[test]
fn inspect_platform_filter_and_unknown_image() {
    let env = Env::new();
    demo(&env, "demo:1");
    let arm: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "demo:1", "--platform", "linux/arm64"])).unwrap();
    assert_eq!(arm["platforms"].as_array().unwrap().len(), 1);
    assert_eq!(arm["platforms"][0]["config"]["architecture"], "arm64");
    assert_eq!(arm["platforms"][0]["imageExtension"]["launch"]["app_names"][0], "cfg");
    let err = env.fails(&["inspect", "nope:1"], 1);
    assert!(err.contains("image `docker.io/library/nope:1` is not in the local store"), "{err}");
    assert!(err.contains("hint: `kiln images`"), "{err}");
}

#[test]
fn tag_and_rmi_with_gc() {
    let env = Env::new();
    demo(&env, "demo:1");
    env.ok(&["tag", "demo:1", "registry.local:5000/team/demo:2", "demo:latest"]);
    let list = env.ok(&["images"]);
    assert!(list.contains("registry.local:5000/team/demo:2") && list.contains("docker.io/library/demo:latest"));
    let blobs = || fs::read_dir(env.root().join("oci/blobs/sha256")).unwrap().count();
    let before = blobs();
    // Removing one of three names frees nothing.
    env.ok(&["rmi", "demo:1"]);
    assert_eq!(blobs(), before);
    env.ok(&["rmi", "registry.local:5000/team/demo:2", "demo:latest"]);
    assert_eq!(blobs(), 0, "every blob was only referenced by the removed image");
    // A typo removes nothing.
    demo(&env, "demo:1");
    let snap = env.snapshot();
    assert!(env.fails(&["rmi", "demo:1", "typo:1"], 1).contains("typo"));
    assert_eq!(env.snapshot(), snap);
}

#[test]
fn save_load_round_trip_keeps_digests() {
    let env = Env::new();
    demo(&env, "demo:1");
    let digest = env.inspect("demo:1")["digest"].clone();
    let archive = env.dir.path().join("demo.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "demo:1"]);
    let other = Env::new();
    other.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(other.inspect("demo:1")["digest"], digest);
    assert_eq!(other.inspect("demo:1")["platforms"].as_array().unwrap().len(), 2);
    // A second load is idempotent.
    other.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(other.ok(&["images", "--json"]).matches("\"name\"").count(), 1);
}

#[test]
fn truncated_archive_changes_nothing() {
    let env = Env::new();
    demo(&env, "demo:1");
    let archive = env.dir.path().join("demo.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "demo:1"]);
    let other = Env::new();
    other.ok(&["images"]);
    let snap = other.snapshot();
    let bytes = fs::read(&archive).unwrap();
    for cut in [100usize, bytes.len() / 2, bytes.len() - 1100] {
        let truncated = env.dir.path().join(format!("cut-{cut}.tar"));
        fs::write(&truncated, &bytes[..cut]).unwrap();
        let err = other.fails(&["load", "-i", truncated.to_str().unwrap()], 1);
        assert!(err.contains("not a valid image archive") || err.contains("missing blob"), "{err}");
        assert_eq!(other.snapshot(), snap, "store changed after a failed load (cut at {cut})");
    }
}

#[test]
fn load_rejects_tampered_blob_and_escaping_entries() {
    let env = Env::new();
    demo(&env, "demo:1");
    let archive = env.dir.path().join("demo.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "demo:1"]);
    // Rewrite the archive with one layer's bytes flipped.
    let mut input = tar::Archive::new(fs::File::open(&archive).unwrap());
    let tampered = env.dir.path().join("tampered.tar");
    let mut out = tar::Builder::new(fs::File::create(&tampered).unwrap());
    let mut flipped = false;
    for e in input.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        let mut h = e.header().clone();
        if !flipped && data.len() > 100 && e.path().unwrap().starts_with("blobs") && data[0] == 0x1f {
            let last = data.len() - 1;
            data[last] ^= 0xff;
            flipped = true;
        }
        out.append_data(&mut h, e.path().unwrap(), &data[..]).unwrap();
    }
    out.finish().unwrap();
    assert!(flipped);
    let other = Env::new();
    other.ok(&["images"]);
    let snap = other.snapshot();
    let err = other.fails(&["load", "-i", tampered.to_str().unwrap()], 1);
    assert!(err.contains("digest mismatch"), "{err}");
    assert_eq!(other.snapshot(), snap);

    // An entry that climbs out of the archive root is refused.
    let evil = env.dir.path().join("evil.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&evil).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.as_old_mut().name[..12].copy_from_slice(b"../../escape");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.finish().unwrap();
    }
    let err = other.fails(&["load", "-i", evil.to_str().unwrap()], 1);
    assert!(err.contains("escapes the archive root"), "{err}");
    assert!(!env.dir.path().join("escape").exists());
}

#[test]
fn corrupt_blob_in_store_is_reported() {
    let env = Env::new();
    demo(&env, "demo:1");
    let info = env.inspect("demo:1");
    let layer = info["platforms"][0]["manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    let path = env.root().join("oci/blobs/sha256").join(&layer);
    let mut bytes = fs::read(&path).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let snap = env.snapshot();
    let out = env.dir.path().join("out.tar");
    let err = env.fails(&["save", "-o", out.to_str().unwrap(), "demo:1"], 1);
    assert!(err.contains(&format!("blob sha256:{layer} in the store is corrupt")), "{err}");
    assert!(!out.exists(), "no partial archive may be left");
    assert!(
        fs::read_dir(env.dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".kiln-save"))
    );
    // A build on top of the corrupt layer fails too, and the store is as it was.
    env.kubefile("FROM demo:1\nRUN true\n");
    if common::is_root() {
        let err = env.fails(&["build", "-t", "on-corrupt:1", env.ctx().to_str().unwrap()], 1);
        assert!(err.contains("corrupt") || err.contains("digest mismatch"), "{err}");
    }
    let after = env.snapshot();
    assert_eq!(after.get("index.json"), snap.get("index.json"));
}

#[test]
fn load_names_from_docker_archive_or_tag_flag() {
    // A docker-archive written by hand the way `docker save` lays it out.
    let env = Env::new();
    let layer_tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hello", &b"world"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let diff_id = kiln::image::Digest::of(&layer_tar);
    let config = serde_json::json!({"architecture": "arm64", "os": "linux", "config": {"Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]}});
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", kiln::image::Digest::of(&config_bytes).hex());
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": ["example.com/app:7"], "Layers": ["abc/layer.tar"]}]);
    let path = env.dir.path().join("docker.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
        for (name, data) in [
            ("abc/layer.tar", layer_tar.clone()),
            (config_name.as_str(), config_bytes.clone()),
            ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.finish().unwrap();
    }
    env.ok(&["load", "-i", path.to_str().unwrap()]);
    let info = env.inspect("example.com/app:7");
    assert_eq!(info["platforms"][0]["platform"], "linux/arm64");
    assert_eq!(
        info["platforms"][0]["manifest"]["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(fs::read_to_string(env.rootfs("example.com/app:7", None).path().join("hello")).unwrap(), "world");
    env.ok(&["load", "-i", path.to_str().unwrap(), "--tag", "renamed/app:8"]);
    env.inspect("renamed/app:8");
}

#[test]
fn concurrent_builds_and_rmi_share_one_store_safely() {
    let env = Env::new();
    for i in 0..4 {
        env.file(&format!("c{i}/data"), &format!("payload {i} {}", "x".repeat(100_000 * (i + 1))));
        env.file(&format!("c{i}/Kubefile"), "FROM scratch\nCOPY data data\nCOPY data copy/\n");
    }
    env.file("victim/f", "victim");
    env.file("victim/Kubefile", "FROM scratch\nCOPY f f\n");
    let victim_ctx = env.ctx().join("victim");
    env.ok(&["build", "-q", "-t", "victim:1", victim_ctx.to_str().unwrap()]);
    // Four builds and a GC-ing rmi at once, twice over.
    for round in 0..2 {
        let mut children = Vec::new();
        for i in 0..4 {
            let ctx = env.ctx().join(format!("c{i}"));
            let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("kiln"));
            cmd.env("KILN_ROOT", env.root()).args([
                "build",
                "-q",
                "--no-cache",
                "-t",
                &format!("par{i}:{round}"),
                ctx.to_str().unwrap(),
            ]);
            children.push(cmd.spawn().unwrap());
        }
        let rmi = env.run(&["rmi", if round == 0 { "victim:1" } else { "par0:0" }]);
        assert!(rmi.status.success(), "{}", String::from_utf8_lossy(&rmi.stderr));
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
    }
    // Every surviving image is complete: all its blobs verify.
    let store = kiln::image::Store::open(env.root()).unwrap();
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&env.ok(&["images", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 7, "{names:?}");
    for n in names {
        let image = store.image(&n.parse().unwrap()).unwrap().unwrap();
        for (digest, size, _) in image.blobs() {
            store.verify_blob(&digest, Some(size)).unwrap();
        }
    }
}
