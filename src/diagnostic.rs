//! Diagnostics for files users write (Kubefile, Clusterfile): every error points at
//! `file:line:col` and shows the line with a caret.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};

use std::ops::Range;

/// One problem found in a user's file, with its location in the source text.
///
/// `Display` gives the one-line form (`Kubefile:3:7: message`); rendering it through
/// miette (as the CLI does) adds the source line, a caret and the help text.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{location}: {message}")]
pub struct SourceError {
    message: String,
    location: Location,
    #[source_code]
    source_code: NamedSource<Arc<str>>,
    #[label("{label}")]
    span: SourceSpan,
    label: String,
    #[help]
    help: Option<String>,
}

/// A `file:line:col` position (1-based line and column, column counted in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl Location {
    /// Computes the line and column of byte offset `offset` in `source`.
    pub fn of(file: &str, source: &str, offset: usize) -> Self {
        let offset = floor_char_boundary(source, offset.min(source.len()));
        let before = &source[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = source[line_start..offset].chars().count() + 1;
        Self { file: file.to_owned(), line, column }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl SourceError {
    pub(crate) fn new(
        file: &str,
        source: &Arc<str>,
        span: impl Into<Range<usize>>,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        let span = span.into();
        let start = floor_char_boundary(source, span.start.min(source.len()));
        let end = span.end.clamp(start, source.len());
        Self {
            message: message.into(),
            location: Location::of(file, source, start),
            source_code: NamedSource::new(file, Arc::clone(source)),
            span: SourceSpan::new(start.into(), end - start),
            label: label.into(),
            help: None,
        }
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Where the problem is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The suggestion shown under the snippet, if any.
    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_characters() {
        let src = "FROM scratch\nCOPY é x\n";
        assert_eq!(Location::of("K", src, 0).to_string(), "K:1:1");
        let x = src.find('x').unwrap();
        assert_eq!(Location::of("K", src, x).to_string(), "K:2:8");
        assert_eq!(Location::of("K", src, src.len()).line, 3);
    }
}
