//! The Kubefile: Sealer's build language for cluster images.
//!
//! [`Kubefile::parse`] turns text into a typed list of [`Instruction`]s with byte spans and checks
//! the rules that need no build context (one FROM first, LAUNCH/CMDS/CMD exclusivity, APP
//! references when the base is `scratch`). Rules that depend on the base image's apps are
//! checked by the build with [`Kubefile::check_apps`], which reports through the same
//! [`KubefileError`] so the user always gets `file:line:col` and a caret.
//!
//! ```
//! let kf = kiln::kubefile::Kubefile::parse("Kubefile", "FROM scratch\nCOPY bin bin\n").unwrap();
//! assert_eq!(kf.instructions().len(), 2);
//! ```

// A located error carries its source snippet; it is built once, on the cold path.
#![allow(clippy::result_large_err)]

mod expand;
mod instruction;
mod lines;
mod parser;

use std::collections::BTreeSet;
use std::sync::Arc;

pub use crate::diagnostic::{Location, SourceError as KubefileError};
pub use expand::ExpandError;
pub use instruction::{
    App, AppSource, ArgDecl, Copy, From, Instruction, InstructionKind, KEYWORDS, KeyValue, RunCommand, Span, Spanned,
    Word, WordForm,
};
pub(crate) use parser::shell_quote;

/// A parsed, checked Kubefile.
#[derive(Debug)]
pub struct Kubefile {
    file: String,
    source: Arc<str>,
    instructions: Vec<Instruction>,
    warnings: Vec<KubefileError>,
}

impl Kubefile {
    /// Parses `source`; `file` names it in messages.
    pub fn parse(file: &str, source: &str) -> Result<Self, KubefileError> {
        let source: Arc<str> = Arc::from(source);
        let split = lines::split(&source);
        let err = |span: Span, msg: String, label: &str| KubefileError::new(file, &source, span, msg, label);
        if let Some((span, value)) = &split.bad_escape {
            return Err(err(*span, format!("invalid escape character `{value}`"), "expected `\\` or `` ` ``"));
        }
        let mut instructions = Vec::with_capacity(split.lines.len());
        for line in &split.lines {
            let (kind, (kw_start, kw_end)) = parser::LineParser::new(line, split.escape).parse().map_err(|e| {
                let span = line.source_span(e.start, e.end);
                let error = KubefileError::new(file, &source, span, e.message, e.label);
                match e.help {
                    Some(h) => error.with_help(h),
                    None => error,
                }
            })?;
            instructions.push(Instruction {
                kind,
                span: line.span(),
                keyword_span: line.source_span(kw_start, kw_end),
            });
        }
        let warnings = split.warnings.into_iter().map(|(span, msg)| err(span, msg, "empty line")).collect();
        let kubefile = Self { file: file.to_owned(), source, instructions, warnings };
        kubefile.check_structure()?;
        if kubefile.from().is_some_and(|f| f.is_scratch()) {
            kubefile.check_apps(&[])?;
        }
        Ok(kubefile)
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn instructions(&self) -> &[Instruction] {
        &self.instructions
    }

    /// Non-fatal findings (empty continuation lines).
    pub fn warnings(&self) -> &[KubefileError] {
        &self.warnings
    }

    /// The FROM instruction (always present after a successful parse).
    pub fn from(&self) -> Option<&From> {
        self.instructions.iter().find_map(|i| match &i.kind {
            InstructionKind::From(f) => Some(f),
            _ => None,
        })
    }

    /// An error pointing at `span`, for problems found later (during the build).
    pub fn error_at(&self, span: Span, message: impl Into<String>, label: impl Into<String>) -> KubefileError {
        KubefileError::new(&self.file, &self.source, span, message, label)
    }

    fn check_structure(&self) -> Result<(), KubefileError> {
        let mut from_seen: Option<&Instruction> = None;
        let mut launch: Option<&Instruction> = None;
        let mut cmds: Option<&Instruction> = None;
        let mut cmd: Option<&Instruction> = None;
        let last = self.instructions.len().saturating_sub(1);
        for (index, ins) in self.instructions.iter().enumerate() {
            match &ins.kind {
                InstructionKind::Arg(_) => {}
                InstructionKind::From(_) if from_seen.is_some() => {
                    return Err(self
                        .error_at(ins.keyword_span, "a Kubefile has exactly one FROM", "second FROM")
                        .with_help("multi-stage builds are not supported; build each stage as its own image"));
                }
                InstructionKind::From(_) => from_seen = Some(ins),
                _ if from_seen.is_none() => {
                    return Err(self
                        .error_at(ins.keyword_span, format!("{} before FROM", ins.kind.keyword()), "expected FROM first")
                        .with_help("start the Kubefile with `FROM scratch` or `FROM <base image>`; only ARG may come before it"));
                }
                _ => {}
            }
            let slot = match &ins.kind {
                InstructionKind::Launch(_) => Some(&mut launch),
                InstructionKind::Cmds(_) => Some(&mut cmds),
                InstructionKind::Cmd(_) => {
                    cmd.get_or_insert(ins);
                    None
                }
                _ => None,
            };
            if let Some(slot) = slot {
                let again = self.instructions[index + 1..].iter().find(|i| i.kind.keyword() == ins.kind.keyword());
                if let Some(second) = again.filter(|_| slot.is_none()) {
                    let first_loc = Location::of(&self.file, &self.source, ins.span.start);
                    return Err(self
                        .error_at(
                            second.keyword_span,
                            format!("only one {} is allowed", ins.kind.keyword()),
                            "second one",
                        )
                        .with_help(format!("the first is at {first_loc}; list everything in one instruction")));
                }
                if let Some(prev) = slot {
                    let prev_loc = Location::of(&self.file, &self.source, prev.span.start);
                    return Err(self
                        .error_at(ins.keyword_span, format!("only one {} is allowed", ins.kind.keyword()), "second one")
                        .with_help(format!("the first is at {prev_loc}; list everything in one instruction")));
                }
                *slot = Some(ins);
                if index != last {
                    return Err(self
                        .error_at(
                            ins.keyword_span,
                            format!("{} must be the last instruction", ins.kind.keyword()),
                            "not last",
                        )
                        .with_help(
                            "it decides what runs when the cluster image is launched, so nothing may follow it",
                        ));
                }
            }
        }
        if from_seen.is_none() {
            let at = self.instructions.first().map_or(Span::default(), |i| i.keyword_span);
            return Err(self
                .error_at(at, "the Kubefile has no FROM", "expected FROM")
                .with_help("start it with `FROM scratch` or `FROM <base image>`"));
        }
        // LAUNCH names apps; CMD and CMDS give raw commands. Both say what runs at launch, so
        // with both the result would depend on an order nobody wrote down.
        let launch_conflict = match (launch, cmd.or(cmds)) {
            (Some(l), Some(c)) => Some((l, c)),
            _ => None,
        };
        if let Some((l, c)) = launch_conflict {
            let later = if l.span.start > c.span.start { l } else { c };
            let other = if std::ptr::eq(later, l) { c } else { l };
            let other_loc = Location::of(&self.file, &self.source, other.span.start);
            return Err(self
                .error_at(later.keyword_span, format!("LAUNCH and {} are mutually exclusive", c.kind.keyword()), "conflicts")
                .with_help(format!(
                    "both decide what runs when the image is launched ({} at {other_loc}); use LAUNCH with APP names, or CMDS with commands, not both",
                    other.kind.keyword()
                )));
        }
        if let (Some(a), Some(b)) = (cmds, cmd) {
            let later = if a.span.start > b.span.start { a } else { b };
            return Err(self
                .error_at(later.keyword_span, "CMD and CMDS are mutually exclusive", "conflicts")
                .with_help("CMD is Sealer's deprecated form; put every command in one CMDS array"));
        }
        Ok(())
    }

    /// Checks that APPCMDS, APPENV and LAUNCH name apps defined in this Kubefile or inherited
    /// from the base image (`inherited`), and that no app is defined twice here.
    pub fn check_apps(&self, inherited: &[String]) -> Result<(), KubefileError> {
        let mut known: BTreeSet<&str> = inherited.iter().map(String::as_str).collect();
        let mut defined_here: Vec<(&str, Span)> = Vec::new();
        let unknown = |name: &Spanned<String>, known: &BTreeSet<&str>, what: &str| {
            let list = if known.is_empty() {
                "no applications are defined yet".to_owned()
            } else {
                format!("known applications: {}", known.iter().copied().collect::<Vec<_>>().join(", "))
            };
            self.error_at(name.span, format!("{what} names unknown application `{}`", name.value), "not defined")
                .with_help(format!("define it first with `APP {} local://…`; {list}", name.value))
        };
        for ins in &self.instructions {
            match &ins.kind {
                InstructionKind::App(app) | InstructionKind::Cni(app) | InstructionKind::Csi(app) => {
                    if let Some((_, prev)) = defined_here.iter().find(|(n, _)| *n == app.name.value) {
                        let loc = Location::of(&self.file, &self.source, prev.start);
                        return Err(self
                            .error_at(
                                app.name.span,
                                format!("application `{}` is defined twice", app.name.value),
                                "redefined",
                            )
                            .with_help(format!("the first definition is at {loc}")));
                    }
                    defined_here.push((&app.name.value, app.name.span));
                    known.insert(&app.name.value);
                }
                InstructionKind::AppCmds { app, .. } if !known.contains(app.value.as_str()) => {
                    return Err(unknown(app, &known, "APPCMDS"));
                }
                InstructionKind::AppEnv { app, .. } if !known.contains(app.value.as_str()) => {
                    return Err(unknown(app, &known, "APPENV"));
                }
                InstructionKind::Launch(names) => {
                    if let Some(name) = names.iter().find(|n| !known.contains(n.value.as_str())) {
                        return Err(unknown(name, &known, "LAUNCH"));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
