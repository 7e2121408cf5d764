//! Variable substitution and quote removal for shell-form words, with Dockerfile semantics:
//! `'…'` is literal, `"…"` expands `$VAR`, the escape character protects the next character,
//! and `${VAR:-x}`, `${VAR-x}`, `${VAR:+x}`, `${VAR+x}`, `${VAR:?msg}`, `${VAR?msg}` work as in sh.

use super::instruction::WordForm;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    #[error("unterminated quote in `{0}`")]
    UnterminatedQuote(String),
    #[error("missing `}}` in `{0}`")]
    UnterminatedBrace(String),
    #[error("bad substitution `${{{0}}}`")]
    BadSubstitution(String),
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

pub(crate) fn expand_word(
    raw: &str,
    form: WordForm,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let escape = match form {
        WordForm::Shell { escape } => Some(escape),
        WordForm::Json => None,
    };
    let chars: Vec<char> = raw.chars().collect();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match (c, escape) {
            (c, Some(esc)) if c == esc => {
                // A trailing escape character stays as it is.
                if let Some(&next) = chars.get(i + 1) {
                    out.push(next);
                    i += 2;
                } else {
                    out.push(c);
                    i += 1;
                }
            }
            ('\'', Some(_)) => {
                let end = find(&chars, i + 1, '\'').ok_or_else(|| ExpandError::UnterminatedQuote(raw.to_owned()))?;
                out.extend(&chars[i + 1..end]);
                i = end + 1;
            }
            ('"', Some(esc)) => {
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(ExpandError::UnterminatedQuote(raw.to_owned()));
                    };
                    match c {
                        '"' => {
                            i += 1;
                            break;
                        }
                        c if c == esc && matches!(chars.get(i + 1), Some('"' | '$')) => {
                            out.push(chars[i + 1]);
                            i += 2;
                        }
                        c if c == esc && chars.get(i + 1) == Some(&esc) => {
                            out.push(esc);
                            i += 2;
                        }
                        '$' => i = substitute(&chars, i, raw, lookup, &mut out)?,
                        c => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
            }
            ('$', _) => i = substitute(&chars, i, raw, lookup, &mut out)?,
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn find(chars: &[char], from: usize, needle: char) -> Option<usize> {
    chars[from..].iter().position(|&c| c == needle).map(|p| p + from)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands the reference starting at `chars[at] == '$'`; returns the index after it.
fn substitute(
    chars: &[char],
    at: usize,
    raw: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<usize, ExpandError> {
    let next = at + 1;
    match chars.get(next) {
        Some('{') => {
            let close = find_close(chars, next + 1).ok_or_else(|| ExpandError::UnterminatedBrace(raw.to_owned()))?;
            let body: String = chars[next + 1..close].iter().collect();
            out.push_str(&braced(&body, lookup)?);
            Ok(close + 1)
        }
        Some(&c) if is_name_char(c) && !c.is_ascii_digit() => {
            let end = chars[next..].iter().position(|&c| !is_name_char(c)).map_or(chars.len(), |p| p + next);
            let name: String = chars[next..end].iter().collect();
            out.push_str(&lookup(&name).unwrap_or_default());
            Ok(end)
        }
        _ => {
            out.push('$');
            Ok(next)
        }
    }
}

/// Finds the `}` that closes a `${`, allowing nested `${…}` in the default word.
fn find_close(chars: &[char], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = from;
    while i < chars.len() {
        match chars[i] {
            '$' if chars.get(i + 1) == Some(&'{') => {
                depth += 1;
                i += 1;
            }
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(body: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let name_end = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ExpandError::BadSubstitution(body.to_owned()));
    }
    let rest = &body[name_end..];
    let value = lookup(name);
    if rest.is_empty() {
        return Ok(value.unwrap_or_default());
    }
    let (colon, op, word) = match rest.strip_prefix(':') {
        Some(r) => (true, r.chars().next(), r.get(1..).unwrap_or("")),
        None => (false, rest.chars().next(), rest.get(1..).unwrap_or("")),
    };
    // With `:` an empty value counts as unset.
    let set = value.as_deref().is_some_and(|v| !colon || !v.is_empty());
    let word_text = word;
    let word = || expand_word(word_text, WordForm::Json, lookup);
    match op {
        Some('-') => Ok(if set { value.unwrap_or_default() } else { word()? }),
        Some('+') => Ok(if set { word()? } else { String::new() }),
        Some('?') if set => Ok(value.unwrap_or_default()),
        Some('?') => Err(ExpandError::Required {
            name: name.to_owned(),
            message: if word_text.is_empty() { "parameter not set".to_owned() } else { word()? },
        }),
        _ => Err(ExpandError::BadSubstitution(body.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(raw: &str) -> Result<String, ExpandError> {
        let vars = |k: &str| match k {
            "ARCH" => Some("arm64".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        expand_word(raw, WordForm::Shell { escape: '\\' }, &vars)
    }

    #[test]
    fn plain_and_braced_variables() {
        assert_eq!(sh("bin/$ARCH/kubeadm").unwrap(), "bin/arm64/kubeadm");
        assert_eq!(sh("${ARCH}-x").unwrap(), "arm64-x");
        assert_eq!(sh("$NOPE.x").unwrap(), ".x");
        assert_eq!(sh("cost$").unwrap(), "cost$");
    }

    #[test]
    fn defaults_and_alternatives() {
        assert_eq!(sh("${NOPE:-amd64}").unwrap(), "amd64");
        assert_eq!(sh("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(sh("${EMPTY-d}").unwrap(), "");
        assert_eq!(sh("${ARCH:+set}").unwrap(), "set");
        assert_eq!(sh("${NOPE:+set}").unwrap(), "");
        assert_eq!(sh("${NOPE:-${ARCH}}").unwrap(), "arm64");
        assert!(matches!(sh("${NOPE:?give it}"), Err(ExpandError::Required { .. })));
    }

    #[test]
    fn quoting() {
        assert_eq!(sh("'$ARCH'").unwrap(), "$ARCH");
        assert_eq!(sh("\"a $ARCH\"").unwrap(), "a arm64");
        assert_eq!(sh("\\$ARCH").unwrap(), "$ARCH");
        assert_eq!(sh("\"q\\\"q\"").unwrap(), "q\"q");
        assert!(sh("'open").is_err());
        assert!(sh("${open").is_err());
        assert!(sh("${1x}").is_err());
    }

    #[test]
    fn json_words_keep_quotes() {
        let out = expand_word("'$ARCH'", WordForm::Json, &|_| Some("x".into())).unwrap();
        assert_eq!(out, "'x'");
    }
}
