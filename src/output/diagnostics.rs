//! Error rendering and exit codes, in one place.
//!
//! Exit codes: 0 success; 1 the input or the environment given must change (a bad Kubefile,
//! a missing file, an unknown image, a corrupt archive); 2 kiln itself or the machine failed.

use std::fmt::Write as _;

use crate::build::BuildError;
use crate::diagnostic::SourceError;
use crate::image::StoreError;
use crate::image::archive::ArchiveError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    User = 1,
    Internal = 2,
}

/// An error the user can fix by changing what they gave kiln.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UserError {
    pub message: String,
    pub hint: Option<String>,
}

impl UserError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), hint: None }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

fn classify(err: &anyhow::Error) -> ExitKind {
    for cause in err.chain() {
        if cause.is::<UserError>() || cause.is::<SourceError>() || cause.is::<clap::Error>() {
            return ExitKind::User;
        }
        if let Some(b) = cause.downcast_ref::<BuildError>() {
            return match b {
                BuildError::Store(s) | BuildError::Offline(crate::build::OfflineError::Store(s)) => store_kind(s),
                BuildError::Encode(_) => ExitKind::Internal,
                _ => ExitKind::User,
            };
        }
        if let Some(a) = cause.downcast_ref::<ArchiveError>() {
            return match a {
                ArchiveError::Store(s) => store_kind(s),
                ArchiveError::Write { .. } => ExitKind::User,
                _ => ExitKind::User,
            };
        }
        // A failed step is the host's or the image's to fix; the run resumes after.
        if cause.is::<crate::runtime::run::RunError>() || cause.is::<crate::ssh::SshError>() {
            return ExitKind::User;
        }
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return store_kind(s);
        }
        if let Some(r) = cause.downcast_ref::<crate::registry::RegistryError>() {
            return match r {
                crate::registry::RegistryError::Store(s) => store_kind(s),
                // Credentials, names, reachability and the registry's answers are the user's to fix.
                _ => ExitKind::User,
            };
        }
    }
    ExitKind::Internal
}

fn store_kind(s: &StoreError) -> ExitKind {
    match s {
        StoreError::Io { .. } => ExitKind::Internal,
        // Corrupt or mismatched content is bad data, not a kiln bug.
        _ => ExitKind::User,
    }
}

/// Renders `err` for stderr and returns the exit kind.
pub fn render_error(err: &anyhow::Error, color: bool) -> (String, ExitKind) {
    let kind = classify(err);
    let mut out = String::new();
    // Source-located problems get the snippet with a caret.
    let diagnostic: Option<&dyn miette::Diagnostic> = err.chain().find_map(|c| {
        c.downcast_ref::<SourceError>().map(|k| k as &dyn miette::Diagnostic).or_else(|| {
            match c.downcast_ref::<BuildError>() {
                Some(BuildError::Kubefile(k)) => Some(k.as_ref() as &dyn miette::Diagnostic),
                _ => None,
            }
        })
    });
    if let Some(diag) = diagnostic {
        let theme = if color { miette::GraphicalTheme::unicode() } else { miette::GraphicalTheme::unicode_nocolor() };
        let mut rendered = String::new();
        if miette::GraphicalReportHandler::new_themed(theme)
            .with_context_lines(1)
            .render_report(&mut rendered, diag)
            .is_ok()
        {
            let _ = writeln!(out, "error: {diag}");
            // miette repeats the message as its first line (`  × …`); the line above has it.
            let snippet = rendered
                .split_once('\n')
                .map_or("", |(first, rest)| if first.trim_start().starts_with('×') { rest } else { rendered.as_str() });
            out.push_str(snippet);
            return (out, kind);
        }
    }
    let _ = writeln!(out, "error: {err}");
    for cause in err.chain().skip(1) {
        let _ = writeln!(out, "  caused by: {cause}");
    }
    for cause in err.chain() {
        if let Some(u) = cause.downcast_ref::<UserError>()
            && let Some(h) = &u.hint
        {
            let _ = writeln!(out, "hint: {h}");
        }
        if let Some(BuildError::BaseMissing(name)) = cause.downcast_ref::<BuildError>() {
            let _ = writeln!(out, "hint: load it with `kiln load -i FILE` or pull it with `kiln pull {name}`");
        }
    }
    (out, kind)
}

/// Marks an error as the user's to fix (exit code 1).
pub trait UserErrorExt<T> {
    fn user_error(self) -> anyhow::Result<T>;
}

impl<T, E: std::fmt::Display> UserErrorExt<T> for Result<T, E> {
    fn user_error(self) -> anyhow::Result<T> {
        self.map_err(|e| UserError::new(e.to_string()).into())
    }
}
