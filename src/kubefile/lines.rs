//! Physical lines → logical instruction lines.
//!
//! Follows the Dockerfile rules Sealer's fork of the moby parser uses: a leading BOM is dropped,
//! `# escape=` directives are honoured only before anything else, comment lines (first non-blank
//! character `#`) vanish even inside a continuation, and a line ending in the escape character
//! (plus optional blanks) continues on the next one. The joined text keeps a map back to the
//! original byte offsets so that every later error can point into the file as written.

use super::Span;

/// One instruction's text after continuations are joined, with a map back to the source.
#[derive(Debug, Clone)]
pub(crate) struct LogicalLine {
    pub text: String,
    /// `(offset in text, offset in source)` at the start of each joined piece, ascending.
    pieces: Vec<(usize, usize)>,
    /// Source offset just past the last character of the instruction.
    source_end: usize,
}

impl LogicalLine {
    /// Maps a byte offset in [`Self::text`] to a byte offset in the source file.
    pub fn source_offset(&self, text_offset: usize) -> usize {
        if text_offset >= self.text.len() {
            return self.source_end;
        }
        let idx = self.pieces.partition_point(|&(t, _)| t <= text_offset) - 1;
        let (t, s) = self.pieces[idx];
        s + (text_offset - t)
    }

    /// Maps a span over [`Self::text`] to a span over the source.
    pub fn source_span(&self, start: usize, end: usize) -> Span {
        let s = self.source_offset(start);
        let e = if end <= start { s } else { self.source_offset(end - 1) + 1 };
        Span { start: s, end: e.max(s) }
    }

    /// The whole instruction's span in the source.
    pub fn span(&self) -> Span {
        Span { start: self.pieces.first().map_or(0, |p| p.1), end: self.source_end }
    }
}

/// Output of [`split`]: the logical lines, the escape character and any warnings.
#[derive(Debug)]
pub(crate) struct Lines {
    pub lines: Vec<LogicalLine>,
    pub escape: char,
    /// Directive problems are reported by the parser with this span.
    pub bad_escape: Option<(Span, String)>,
    pub warnings: Vec<(Span, String)>,
}

pub(crate) fn split(source: &str) -> Lines {
    let mut offset = 0;
    let body = source.strip_prefix('\u{feff}').inspect(|_| offset = 3).unwrap_or(source);

    let mut escape = '\\';
    let mut bad_escape = None;
    let mut in_directives = true;
    let mut warnings = Vec::new();
    let mut lines = Vec::new();
    let mut current: Option<LogicalLine> = None;

    for raw in body.split_inclusive('\n') {
        let line_start = offset;
        offset += raw.len();
        let content = raw.trim_end_matches(['\n', '\r']);

        if in_directives {
            if let Some(value) = directive(content, "escape") {
                let trimmed = value.trim();
                match trimmed {
                    "\\" => escape = '\\',
                    "`" => escape = '`',
                    _ => {
                        let at = line_start + content.find(trimmed).unwrap_or(0);
                        bad_escape = Some((Span { start: at, end: at + trimmed.len().max(1) }, trimmed.to_owned()));
                    }
                }
                continue;
            }
            if directive(content, "syntax").is_some() {
                continue;
            }
            in_directives = false;
        }

        let stripped = content.trim_start();
        let lead = content.len() - stripped.len();

        if stripped.starts_with('#') {
            continue; // comments vanish, also inside a continuation
        }
        if let Some(line) = current.as_mut() {
            if stripped.trim_end().is_empty() {
                warnings.push((
                    Span { start: line_start, end: line_start + content.len() },
                    "empty continuation line (a future version may treat it as the end of the instruction)".to_owned(),
                ));
                continue;
            }
            // Continuation lines keep their leading blanks, as in Docker.
            let (piece, continues) = trim_continuation(content, escape);
            line.pieces.push((line.text.len(), line_start));
            line.text.push_str(piece);
            line.source_end = line_start + piece.len();
            if !continues {
                lines.extend(current.take());
            }
            continue;
        }
        if stripped.trim_end().is_empty() {
            continue;
        }
        let (piece, continues) = trim_continuation(stripped, escape);
        let line = LogicalLine {
            text: piece.to_owned(),
            pieces: vec![(0, line_start + lead)],
            source_end: line_start + lead + piece.len(),
        };
        if continues {
            current = Some(line);
        } else {
            lines.push(line);
        }
    }
    // A file that ends inside a continuation still yields its instruction.
    lines.extend(current);
    for line in &mut lines {
        let trimmed = line.text.trim_end().len();
        line.text.truncate(trimmed);
    }
    Lines { lines, escape, bad_escape, warnings }
}

/// `# key=value` with any blanks, as a parser directive.
fn directive<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let (k, v) = rest.split_once('=')?;
    k.trim().eq_ignore_ascii_case(key).then_some(v)
}

/// Strips a trailing escape character (plus blanks); says whether the line continues.
/// As in Docker, any escape character at the end of a line continues it.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(rest) => (rest, true),
        None => (line.trim_end_matches('\r'), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(src: &str) -> Vec<String> {
        split(src).lines.into_iter().map(|l| l.text).collect()
    }

    #[test]
    fn joins_continuations_and_drops_comments() {
        let src = "FROM scratch\n# comment\nRUN echo a \\\n  # inner comment\n  b\nCOPY x y\n";
        assert_eq!(texts(src), ["FROM scratch", "RUN echo a   b", "COPY x y"]);
    }

    #[test]
    fn escape_directive_switches_to_backtick() {
        let src = "# escape=`\nRUN dir c:\\ `\n  foo\n";
        let lines = split(src);
        assert_eq!(lines.escape, '`');
        assert_eq!(lines.lines[0].text, "RUN dir c:\\   foo");
    }

    #[test]
    fn directive_after_instruction_is_a_comment() {
        let lines = split("FROM scratch\n# escape=`\n");
        assert_eq!(lines.escape, '\\');
    }

    #[test]
    fn bad_escape_is_reported() {
        assert!(split("# escape=x\nFROM scratch\n").bad_escape.is_some());
    }

    #[test]
    fn offsets_map_back_through_continuations() {
        let src = "RUN a \\\n  bcd\n";
        let line = &split(src).lines[0];
        let b = line.text.find('b').unwrap();
        assert_eq!(&src[line.source_offset(b)..line.source_offset(b) + 3], "bcd");
    }

    #[test]
    fn bom_and_crlf() {
        assert_eq!(texts("\u{feff}FROM scratch\r\nCOPY a b\r\n"), ["FROM scratch", "COPY a b"]);
    }

    #[test]
    fn empty_continuation_line_warns() {
        let lines = split("RUN a \\\n\n  b\n");
        assert_eq!(lines.lines[0].text, "RUN a   b");
        assert_eq!(lines.warnings.len(), 1);
    }
}
