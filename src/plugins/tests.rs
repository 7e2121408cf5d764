use super::*;

fn roles() -> BTreeSet<String> {
    ["master", "node", "db"].iter().map(|s| (*s).to_owned()).collect()
}

fn source(text: &str) -> PluginSource {
    PluginSource { file: "plugins/a.yaml".into(), text: text.into(), kind: SourceKind::ImageFile }
}

fn load(text: &str) -> LoadResult<PluginSet> {
    PluginSet::load(&[source(text)], Some(&roles()))
}

const GOOD: &str = "apiVersion: sealer.io/v1\nkind: Plugin\nmetadata:\n  name: zz-iscsi\nspec:\n  type: SHELL\n  action: pre-init-host|post-install\n  scope: master|db\n  data: |\n    touch /tmp/marker\n";

#[test]
fn sealer_documents_load_with_phases_and_scope() {
    let set = load(&format!("{GOOD}---\nkind: Plugin\nmetadata: {{name: aa-first}}\nspec: {{type: SHELL, action: pre-install, data: echo hi}}\n")).unwrap();
    let p = &set.plugins["zz-iscsi"];
    assert_eq!(p.phases, [Phase::PreInitHost, Phase::PostInstall]);
    assert_eq!(p.scope.iter().map(String::as_str).collect::<Vec<_>>(), ["db", "master"]);
    assert_eq!(p.data, "touch /tmp/marker\n");
    assert_eq!(p.origin, Origin::Image { file: "plugins/a.yaml".into() });
    let order: Vec<&str> = set.plugins.keys().map(String::as_str).collect();
    assert_eq!(order, ["aa-first", "zz-iscsi"], "hooks run in name order");
    assert_eq!(set.hooks(Phase::PreInstall).map(|p| p.name.as_str()).collect::<Vec<_>>(), ["aa-first"]);
}

/// Each mistake Sealer accepts silently is an error at its line and column.
#[test]
fn mistakes_are_errors_at_their_place() {
    for (bad, what, line, column) in [
        (GOOD.replace("pre-init-host|post-install", "pre-init-host|PostInstall"), "unknown phase `PostInstall`", 7, 11),
        (GOOD.replace("type: SHELL", "type: GO"), "plugin type `GO` is not known", 6, 9),
        (GOOD.replace("scope: master|db", "scope: master|web"), "scope `web`", 8, 10),
        (GOOD.replace("  scope: master|db\n", ""), "has host phases but no `scope`", 7, 11),
        (GOOD.replace("  data: |\n    touch /tmp/marker\n", "  data: \"  \"\n"), "has no `data`", 6, 3),
        (GOOD.replace("kind: Plugin", "kind: Plugins"), "is not a Plugin", 2, 7),
        (GOOD.replace("  name: zz-iscsi\n", "  labels: {a: b}\n"), "needs `metadata.name`", 4, 3),
        (GOOD.replace("  data: |", "  dat: |"), "not a Plugin document", 9, 3),
    ] {
        let err = load(&bad).unwrap_err();
        let got = err.to_string();
        assert!(got.contains(what), "{what}: {got}");
        assert_eq!((err.location().line, err.location().column), (line, column), "{what}: {got}");
        assert_eq!(err.location().file, "plugins/a.yaml");
    }
}

#[test]
fn clusterfile_documents_keep_the_files_line_numbers() {
    let doc = crate::clusterfile::RawDocument {
        kind: "Plugin".into(),
        text: GOOD.replace("pre-init-host|post-install", "pre-join"),
        line: 20,
        file: "my/Clusterfile".into(),
    };
    let err = PluginSet::load(&[PluginSource::from_clusterfile(&doc)], Some(&roles())).unwrap_err();
    assert_eq!(err.location().to_string(), "my/Clusterfile:26:11");
}

#[test]
fn one_revision_of_a_name_is_loaded_and_the_choice_is_told() {
    let package = |revision: u32| PluginSource {
        file: "plugins/backup/plugin.yaml".into(),
        text: GOOD.replace("  name: zz-iscsi\n", &format!("  name: zz-iscsi\n  revision: {revision}\n")),
        kind: SourceKind::Package { dir: "plugins/backup".into() },
    };
    let set = PluginSet::load(&[source(GOOD), package(2), package(1)], Some(&roles())).unwrap();
    let p = &set.plugins["zz-iscsi"];
    assert_eq!((p.revision, p.work_dir()), (2, "plugins/backup".to_owned()));
    assert_eq!(set.choices.len(), 2, "{:?}", set.choices);
    assert!(set.choices[0].contains("revision 2 from image package plugins/backup/ is used, not revision 0"));
    // At an equal revision the Clusterfile wins over the image.
    let mine = PluginSource {
        kind: SourceKind::Clusterfile { line: 1 },
        file: "Clusterfile".into(),
        text: GOOD.replace("touch", "rm"),
    };
    let set = PluginSet::load(&[source(GOOD), mine], Some(&roles())).unwrap();
    assert!(set.plugins["zz-iscsi"].data.starts_with("rm"));
}

#[test]
fn without_a_cluster_any_role_is_a_scope() {
    let set = PluginSet::load(&[source(&GOOD.replace("master|db", "gpu"))], None).unwrap();
    assert!(set.plugins["zz-iscsi"].scope.contains("gpu"));
}

#[test]
fn kiln_annotations_are_promises_to_preflight_and_mistakes_in_them_are_errors() {
    let with = |annotations: &str| {
        GOOD.replace("  name: zz-iscsi\n", &format!("  name: zz-iscsi\n  annotations:\n{annotations}"))
    };
    let set =
        load(&with("    kiln.io/hostname-from-env: HostName\n    kiln.io/repairs: clock-skew\n    other.io/x: y\n"))
            .unwrap();
    let p = &set.plugins["zz-iscsi"];
    assert_eq!(p.promises.hostname_from_env.as_deref(), Some("HostName"));
    assert_eq!(p.promises.repairs, BTreeSet::from([Repairable::ClockSkew]));
    assert!(load(GOOD).unwrap().plugins["zz-iscsi"].promises.is_empty());
    for (bad, what, line, column) in [
        (with("    kiln.io/repairs: ports\n"), "cannot repair `ports` (repairable: clock-skew)", 6, 22),
        (with("    kiln.io/hostname-from-env: \"Host Name\"\n"), "`Host Name` is not an env variable name", 6, 32),
        (with("    kiln.io/hostnames: a\n"), "unknown annotation `kiln.io/hostnames`", 6, 24),
        (
            with("    kiln.io/repairs: clock-skew\n").replace("pre-init-host|post-install", "post-install"),
            "does not run in `pre-init-host`",
            6,
            22,
        ),
    ] {
        let err = load(&bad).unwrap_err();
        let got = err.to_string();
        assert!(got.contains(what), "{what}: {got}");
        assert_eq!((err.location().line, err.location().column), (line, column), "{what}: {got}");
    }
}
