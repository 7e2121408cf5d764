//! The typed Kubefile AST. Every node that a later error may point at carries a [`Span`].

use super::expand::{ExpandError, expand_word};

/// A byte range in the Kubefile source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl std::convert::From<Span> for std::ops::Range<usize> {
    fn from(s: Span) -> Self {
        s.start..s.end
    }
}

/// A value with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// One argument word as written. Shell-form words still hold their quotes and `$VAR`s; JSON-form
/// words are already decoded. [`Word::expand`] turns either into the final string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub raw: String,
    pub form: WordForm,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordForm {
    /// Shell form: quotes and the escape character are processed on expansion.
    Shell { escape: char },
    /// An element of a JSON array: only `$VAR` references are substituted.
    Json,
}

impl Word {
    /// Substitutes `$VAR`, `${VAR}` and `${VAR:-default}`-style references and removes quoting.
    pub fn expand(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
        expand_word(&self.raw, self.form, lookup)
    }

    /// The word's value when it needs no variables, `None` when it references one.
    pub fn literal(&self) -> Option<String> {
        if self.raw.contains('$') {
            return None;
        }
        self.expand(&|_| None).ok()
    }
}

/// `KEY=value`, as in ENV, LABEL and APPENV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Spanned<String>,
    pub value: Word,
}

/// `FROM [--platform=…] image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    pub platform: Option<Word>,
    pub image: Word,
}

impl From {
    pub fn is_scratch(&self) -> bool {
        self.image.raw.eq_ignore_ascii_case("scratch")
    }
}

/// COPY and ADD: sources (globs allowed) and one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub chown: Option<Word>,
    pub chmod: Option<Word>,
    pub sources: Vec<Word>,
    pub dest: Word,
}

/// Where an APP's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    /// `local://path`, relative to the build context.
    Local(Word),
    /// `http://…` or `https://…`, downloaded at build time.
    Remote(Word),
}

impl AppSource {
    pub fn word(&self) -> &Word {
        match self {
            AppSource::Local(w) | AppSource::Remote(w) => w,
        }
    }
}

/// APP, CNI and CSI: a named application and its sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: Spanned<String>,
    pub sources: Vec<AppSource>,
}

/// RUN's two forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCommand {
    /// `RUN cmd args` → `/bin/sh -c "cmd args"`.
    Shell(String),
    /// `RUN ["prog", "arg"]` → executed without a shell.
    Exec(Vec<String>),
}

/// `ARG name[=default]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: Spanned<String>,
    pub default: Option<Word>,
}

/// The instruction set: Sealer's Kubefile (Dockerfile subset plus cluster-image instructions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionKind {
    From(From),
    Copy(Copy),
    Add(Copy),
    Arg(Vec<ArgDecl>),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Maintainer(String),
    Run(RunCommand),
    /// Docker's ENTRYPOINT: what a container of this image runs (container images built by
    /// kiln, such as the Kubernetes control-plane images).
    Entrypoint(RunCommand),
    /// Docker's USER: the user (and group) a container runs as.
    User(String),
    /// Docker's WORKDIR: a container's working directory (absolute).
    Workdir(String),
    App(App),
    /// An APP that is also labelled as the cluster's CNI.
    Cni(App),
    /// An APP that is also labelled as a CSI driver.
    Csi(App),
    AppCmds {
        app: Spanned<String>,
        cmds: Vec<String>,
    },
    AppEnv {
        app: Spanned<String>,
        env: Vec<KeyValue>,
    },
    KubeVersion(String),
    Launch(Vec<Spanned<String>>),
    Cmds(Vec<String>),
    /// Deprecated raw launch command; repeatable.
    Cmd(String),
}

/// One instruction with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub kind: InstructionKind,
    /// The whole instruction, continuations included.
    pub span: Span,
    /// Just the keyword.
    pub keyword_span: Span,
}

/// The keywords kiln accepts, in the order the docs list them.
pub const KEYWORDS: &[&str] = &[
    "FROM",
    "COPY",
    "ADD",
    "ARG",
    "ENV",
    "LABEL",
    "MAINTAINER",
    "RUN",
    "ENTRYPOINT",
    "USER",
    "WORKDIR",
    "APP",
    "APPCMDS",
    "APPENV",
    "CNI",
    "CSI",
    "KUBEVERSION",
    "LAUNCH",
    "CMDS",
    "CMD",
];

impl InstructionKind {
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::From(_) => "FROM",
            Self::Copy(_) => "COPY",
            Self::Add(_) => "ADD",
            Self::Arg(_) => "ARG",
            Self::Env(_) => "ENV",
            Self::Label(_) => "LABEL",
            Self::Maintainer(_) => "MAINTAINER",
            Self::Run(_) => "RUN",
            Self::Entrypoint(_) => "ENTRYPOINT",
            Self::User(_) => "USER",
            Self::Workdir(_) => "WORKDIR",
            Self::App(_) => "APP",
            Self::Cni(_) => "CNI",
            Self::Csi(_) => "CSI",
            Self::AppCmds { .. } => "APPCMDS",
            Self::AppEnv { .. } => "APPENV",
            Self::KubeVersion(_) => "KUBEVERSION",
            Self::Launch(_) => "LAUNCH",
            Self::Cmds(_) => "CMDS",
            Self::Cmd(_) => "CMD",
        }
    }

    /// The application an APP/CNI/CSI instruction registers.
    pub fn app(&self) -> Option<&App> {
        match self {
            Self::App(a) | Self::Cni(a) | Self::Csi(a) => Some(a),
            _ => None,
        }
    }
}
