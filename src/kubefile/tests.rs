//! Parser tests: one or more per instruction and per error class.

use super::*;

fn ok(src: &str) -> Kubefile {
    match Kubefile::parse("Kubefile", src) {
        Ok(k) => k,
        Err(e) => panic!("unexpected error: {e}\n{}", e.help_text().unwrap_or("")),
    }
}

fn err(src: &str) -> KubefileError {
    Kubefile::parse("Kubefile", src).expect_err("expected a parse error")
}

fn kinds(src: &str) -> Vec<InstructionKind> {
    ok(src).instructions().iter().map(|i| i.kind.clone()).collect()
}

fn second(src: &str) -> InstructionKind {
    kinds(src).remove(1)
}

#[test]
fn from_scratch_and_platform() {
    let k = kinds("FROM --platform=linux/arm64 docker.io/sealerio/kubernetes:v1.22\n");
    let InstructionKind::From(f) = &k[0] else { panic!() };
    assert_eq!(f.platform.as_ref().unwrap().raw, "linux/arm64");
    assert_eq!(f.image.raw, "docker.io/sealerio/kubernetes:v1.22");
    assert!(!f.is_scratch());
    assert!(ok("from SCRATCH").from().unwrap().is_scratch());
}

#[test]
fn from_errors() {
    assert!(err("FROM").message().contains("needs an image"));
    assert!(err("FROM a AS b").message().contains("multi-stage"));
    assert!(err("FROM --os=x a").message().contains("unknown flag"));
    assert!(err("FROM scratch\nFROM scratch").message().contains("exactly one FROM"));
    assert!(err("COPY a b\nFROM scratch").message().contains("before FROM"));
    assert!(err("ARG A=1").message().contains("no FROM"));
}

#[test]
fn arg_before_from_is_allowed() {
    let k = kinds("ARG BASE=scratch\nFROM ${BASE}\nARG A B=2");
    let InstructionKind::Arg(args) = &k[2] else { panic!() };
    assert_eq!(args[0].name.value, "A");
    assert!(args[0].default.is_none());
    assert_eq!(args[1].default.as_ref().unwrap().raw, "2");
    assert!(err("FROM scratch\nARG 1x").message().contains("invalid ARG name"));
}

#[test]
fn copy_multi_source_and_arch() {
    let InstructionKind::Copy(c) = second("FROM scratch\nCOPY ${ARCH}/bin a.yaml etc/ dest/") else { panic!() };
    assert_eq!(c.sources.len(), 3);
    assert_eq!(c.dest.raw, "dest/");
    let arch = c.sources[0].expand(&|k| (k == "ARCH").then(|| "arm64".to_owned())).unwrap();
    assert_eq!(arch, "arm64/bin");
    assert!(err("FROM scratch\nCOPY a b c").message().contains("directory destination"));
    assert!(err("FROM scratch\nCOPY a").message().contains("at least one source"));
}

#[test]
fn copy_json_form() {
    let InstructionKind::Copy(c) = second(
        r#"FROM scratch
COPY ["a b", "dir/"]"#,
    ) else {
        panic!()
    };
    assert_eq!(c.sources[0].raw, "a b");
    assert_eq!(c.sources[0].form, WordForm::Json);
}

#[test]
fn add_is_copy_shaped() {
    assert!(matches!(second("FROM scratch\nADD https://x/y.tgz dl/"), InstructionKind::Add(_)));
}

#[test]
fn env_both_forms() {
    let InstructionKind::Env(e) = second("FROM scratch\nENV A=1 B=\"two words\"") else { panic!() };
    assert_eq!(e[1].key.value, "B");
    assert_eq!(e[1].value.literal().unwrap(), "two words");
    let InstructionKind::Env(e) = second("FROM scratch\nENV Legacy value with spaces") else { panic!() };
    assert_eq!(e[0].value.literal().unwrap(), "value with spaces");
    assert!(err("FROM scratch\nENV A=1 B").message().contains("KEY=value"));
    assert!(err("FROM scratch\nENV").message().contains("KEY=value"));
    assert!(err("FROM scratch\nENV =x").message().contains("empty ENV key"));
}

#[test]
fn label_and_maintainer() {
    let InstructionKind::Label(l) = second("FROM scratch\nLABEL \"a.b\"=c d=e") else { panic!() };
    assert_eq!(l[0].key.value, "a.b");
    assert_eq!(second("FROM scratch\nMAINTAINER Jane <j@x>"), InstructionKind::Maintainer("Jane <j@x>".into()));
    assert!(err("FROM scratch\nMAINTAINER").message().contains("needs a name"));
}

#[test]
fn container_settings() {
    assert_eq!(
        second("FROM scratch\nENTRYPOINT [\"/pause\", \"-v\"]"),
        InstructionKind::Entrypoint(RunCommand::Exec(vec!["/pause".into(), "-v".into()]))
    );
    assert_eq!(
        second("FROM scratch\nENTRYPOINT exec etcd"),
        InstructionKind::Entrypoint(RunCommand::Shell("exec etcd".into()))
    );
    assert_eq!(second("FROM scratch\nUSER 65535:65535"), InstructionKind::User("65535:65535".into()));
    assert_eq!(second("FROM scratch\nWORKDIR /var/lib"), InstructionKind::Workdir("/var/lib".into()));
    assert!(err("FROM scratch\nENTRYPOINT").message().contains("ENTRYPOINT needs a command"));
    assert!(err("FROM scratch\nUSER").message().contains("USER needs a user name or id"));
    let e = err("FROM scratch\nWORKDIR var/lib");
    assert!(e.message().contains("WORKDIR must be absolute"), "{}", e.message());
}

#[test]
fn run_shell_and_exec() {
    assert_eq!(
        second("FROM scratch\nRUN echo $HOME > x"),
        InstructionKind::Run(RunCommand::Shell("echo $HOME > x".into()))
    );
    assert_eq!(
        second(
            r#"FROM scratch
RUN ["sh", "-c", "echo"]"#
        ),
        InstructionKind::Run(RunCommand::Exec(vec!["sh".into(), "-c".into(), "echo".into()]))
    );
    // Not valid JSON: Docker runs it as a shell command.
    assert_eq!(
        second("FROM scratch\nRUN [ -f x ] && y"),
        InstructionKind::Run(RunCommand::Shell("[ -f x ] && y".into()))
    );
    assert!(err("FROM scratch\nRUN").message().contains("needs a command"));
}

#[test]
fn app_sources() {
    let InstructionKind::App(a) = second("FROM scratch\nAPP nginx local://nginx.yaml https://h/x.tgz") else {
        panic!()
    };
    assert_eq!(a.name.value, "nginx");
    assert!(matches!(&a.sources[0], AppSource::Local(w) if w.raw == "nginx.yaml"));
    assert!(matches!(&a.sources[1], AppSource::Remote(w) if w.raw == "https://h/x.tgz"));
    let e = err("FROM scratch\nAPP x ftp://h/x");
    assert!(e.message().contains("unsupported APP source"));
    assert!(e.help_text().unwrap().contains("local://"));
    assert!(err("FROM scratch\nAPP x").message().contains("no source"));
    assert!(err("FROM scratch\nAPP ../x local://a").message().contains("invalid application name"));
    assert!(err("FROM scratch\nAPP x local://").message().contains("empty `local://`"));
}

#[test]
fn cni_and_csi_are_apps() {
    assert!(matches!(second("FROM scratch\nCNI calico local://calico.sh"), InstructionKind::Cni(_)));
    assert!(matches!(second("FROM scratch\nCSI openebs local://o.yaml"), InstructionKind::Csi(_)));
}

#[test]
fn appcmds_and_appenv() {
    let k = kinds(
        "FROM scratch\nAPP mysql local://mysql.tgz\nAPPCMDS mysql [\"helm install mysql mysql.tgz\", \"echo ok\"]\nAPPENV mysql A=1 B=2",
    );
    assert!(matches!(&k[2], InstructionKind::AppCmds { app, cmds } if app.value == "mysql" && cmds.len() == 2));
    assert!(matches!(&k[3], InstructionKind::AppEnv { env, .. } if env.len() == 2));
    let e = err("FROM scratch\nAPP a local://x\nAPPCMDS a helm install");
    assert!(e.message().contains("JSON array"));
    assert!(err("FROM scratch\nAPP a local://x\nAPPCMDS a [\"x\"").message().contains("invalid JSON array"));
    assert!(err("FROM scratch\nAPP a local://x\nAPPCMDS a []").message().contains("at least one"));
    assert!(err("FROM scratch\nAPP a local://x\nAPPENV a").message().contains("KEY=value"));
}

#[test]
fn unknown_app_references() {
    let e = err("FROM scratch\nAPPCMDS ghost [\"x\"]");
    assert!(e.message().contains("unknown application `ghost`"));
    assert_eq!(e.location().line, 2);
    assert_eq!(e.location().column, 9);
    assert!(err("FROM scratch\nAPP a local://x\nAPPENV b K=V").message().contains("unknown application `b`"));
    assert!(err("FROM scratch\nAPP a local://x\nLAUNCH [\"a\", \"b\"]").message().contains("`b`"));
    // With a base image the check waits for the build, which knows the inherited apps.
    let k = ok("FROM base:1\nLAUNCH [\"calico\"]");
    assert!(k.check_apps(&["calico".into()]).is_ok());
    assert!(k.check_apps(&[]).is_err());
    assert!(err("FROM scratch\nAPP a local://x\nAPP a local://y").message().contains("defined twice"));
}

#[test]
fn kubeversion() {
    assert_eq!(second("FROM scratch\nKUBEVERSION >=1.22.0"), InstructionKind::KubeVersion(">=1.22.0".into()));
    assert!(err("FROM scratch\nKUBEVERSION").message().contains("version constraint"));
}

#[test]
fn launch_forms() {
    let k = kinds("FROM scratch\nAPP a local://x\nAPP b local://y\nLAUNCH a b");
    assert!(matches!(&k[3], InstructionKind::Launch(n) if n.len() == 2));
    let k = kinds("FROM scratch\nAPP a local://x\nLAUNCH [\"a\"]");
    assert!(matches!(&k[2], InstructionKind::Launch(n) if n[0].value == "a"));
    assert!(err("FROM scratch\nLAUNCH").message().contains("at least one"));
}

#[test]
fn cmds_and_cmd() {
    assert_eq!(second("FROM scratch\nCMDS [\"a b\", \"c\"]"), InstructionKind::Cmds(vec!["a b".into(), "c".into()]));
    // Shell form is one command, not one command per word (Sealer's quirk).
    assert_eq!(
        second("FROM scratch\nCMDS kubectl apply -f x.yaml"),
        InstructionKind::Cmds(vec!["kubectl apply -f x.yaml".into()])
    );
    let k = kinds("FROM scratch\nCMD kubectl apply -f a.yaml\nCMD [\"echo\", \"it's\"]");
    assert_eq!(k[1], InstructionKind::Cmd("kubectl apply -f a.yaml".into()));
    assert_eq!(k[2], InstructionKind::Cmd(r"echo 'it'\''s'".into()));
}

#[test]
fn launch_rules() {
    let e = err("FROM scratch\nAPP a local://x\nCMD echo\nLAUNCH [\"a\"]");
    assert!(e.message().contains("mutually exclusive"), "{e}");
    assert!(e.help_text().unwrap().contains("both decide what runs"));
    assert!(err("FROM scratch\nCMDS [\"a\"]\nCMD b").message().contains("must be the last"));
    assert!(err("FROM scratch\nCMD b\nCMDS [\"a\"]").message().contains("CMD and CMDS"));
    assert!(err("FROM scratch\nAPP a local://x\nLAUNCH a\nCOPY x y").message().contains("must be the last"));
    assert!(err("FROM scratch\nAPP a local://x\nLAUNCH a\nLAUNCH a").message().contains("only one LAUNCH"));
}

#[test]
fn unknown_instruction_lists_valid_ones() {
    let e = err("FROM scratch\nHEALTHCHECK NONE");
    assert_eq!(e.message(), "unknown instruction `HEALTHCHECK`");
    assert_eq!(e.location().to_string(), "Kubefile:2:1");
    let help = e.help_text().unwrap();
    assert!(help.contains("Dockerfile instruction"));
    for k in KEYWORDS {
        assert!(help.contains(k));
    }
    assert!(err("FROM scratch\nFRMO x").help_text().unwrap().contains("LAUNCH"));
    assert!(err("FROM scratch\nCOPY=x y").message().contains("unknown instruction"));
}

#[test]
fn keywords_are_case_insensitive() {
    assert_eq!(kinds("from scratch\ncopy a b\nRun x").len(), 3);
}

#[test]
fn continuation_comment_and_escape_directive() {
    let src = "# escape=`\nFROM scratch\nRUN echo a `\n  # note\n  b\n";
    let k = kinds(src);
    assert_eq!(k[1], InstructionKind::Run(RunCommand::Shell("echo a   b".into())));
    let e = err("# escape=?\nFROM scratch");
    assert!(e.message().contains("invalid escape character"));
}

#[test]
fn error_location_through_continuation() {
    let e = err("FROM scratch\nCOPY a \\\n   b \\\n   c\n");
    assert_eq!(e.location().to_string(), "Kubefile:4:4");
    let e = err("FROM scratch\nAPP x \\\n  ftp://nope\n");
    assert_eq!(e.location().to_string(), "Kubefile:3:3");
}

#[test]
fn rendered_error_shows_line_and_caret() {
    let e = err("FROM scratch\nAPPCMDS x [\"y\"]\n");
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, &e)
        .unwrap();
    assert!(out.contains("Kubefile:2:9"), "{out}");
    assert!(out.contains("APPCMDS x [\"y\"]"), "{out}");
    assert!(out.contains('┬') || out.contains('^'), "{out}");
}

#[test]
fn empty_continuation_warns() {
    let k = ok("FROM scratch\nRUN a \\\n\n b\n");
    assert_eq!(k.warnings().len(), 1);
}

#[test]
fn unterminated_quote() {
    assert!(err("FROM scratch\nCOPY \"a b/").message().contains("unterminated quote"));
}
