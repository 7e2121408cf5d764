//! Logical line → [`Instruction`], with nom 8 over `nom_locate` spans.
//!
//! Errors are produced as [`LineError`] (offsets into the logical line) and mapped to source
//! offsets by the caller, so every message lands on the character the user wrote.

use nom::bytes::complete::{tag, take_while1};
use nom::character::complete::{char, multispace0, space0, space1};
use nom::combinator::{opt, recognize};
use nom::multi::separated_list0;
use nom::sequence::{delimited, pair, preceded};
use nom::{IResult, Parser};
use nom_locate::LocatedSpan;

use super::instruction::{
    App, AppSource, ArgDecl, Copy, From, InstructionKind, KEYWORDS, KeyValue, RunCommand, Spanned, Word, WordForm,
};
use super::lines::LogicalLine;

type In<'a> = LocatedSpan<&'a str>;
type Res<'a, T> = IResult<In<'a>, T>;

/// An error at a byte range of a logical line.
#[derive(Debug)]
pub(crate) struct LineError {
    pub start: usize,
    pub end: usize,
    pub message: String,
    pub label: String,
    pub help: Option<String>,
}

impl LineError {
    fn at(input: In<'_>, len: usize, message: impl Into<String>, label: impl Into<String>) -> Self {
        let start = input.location_offset();
        Self { start, end: start + len, message: message.into(), label: label.into(), help: None }
    }
    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

type LineResult<T> = Result<T, LineError>;

/// A parsed argument piece: text with its offsets in the logical line.
#[derive(Debug, Clone)]
struct Piece {
    text: String,
    start: usize,
    end: usize,
}

/// Context needed while parsing one logical line.
pub(crate) struct LineParser<'l> {
    line: &'l LogicalLine,
    escape: char,
}

impl<'l> LineParser<'l> {
    pub fn new(line: &'l LogicalLine, escape: char) -> Self {
        Self { line, escape }
    }

    fn word(&self, piece: &Piece, form: WordForm) -> Word {
        Word { raw: piece.text.clone(), form, span: self.line.source_span(piece.start, piece.end) }
    }

    fn spanned(&self, piece: &Piece) -> Spanned<String> {
        Spanned { value: piece.text.clone(), span: self.line.source_span(piece.start, piece.end) }
    }

    /// Parses the line; returns the instruction and the keyword's span in the line text.
    pub fn parse(&self) -> LineResult<(InstructionKind, (usize, usize))> {
        let input = In::new(self.line.text.as_str());
        let (rest, keyword) = keyword(input).map_err(|_| {
            LineError::at(input, 1, "expected an instruction", "not an instruction keyword")
                .help(format!("valid instructions: {}", KEYWORDS.join(", ")))
        })?;
        let kw_range = (keyword.location_offset(), keyword.location_offset() + keyword.len());
        let name = keyword.fragment().to_ascii_uppercase();
        if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
            return Err(unknown_instruction(keyword, rest));
        }
        let (args, _) = space0::<_, nom::error::Error<In>>(rest).map_err(|_| unreachable_err(rest))?;
        let kind = match name.as_str() {
            "FROM" => self.from(args)?,
            "COPY" => InstructionKind::Copy(self.copy(args, "COPY")?),
            "ADD" => InstructionKind::Add(self.copy(args, "ADD")?),
            "ARG" => InstructionKind::Arg(self.arg(args)?),
            "ENV" => InstructionKind::Env(self.key_values(args, "ENV")?),
            "LABEL" => InstructionKind::Label(self.key_values(args, "LABEL")?),
            "MAINTAINER" => InstructionKind::Maintainer(raw_rest(args, "MAINTAINER", "a name")?),
            "RUN" => InstructionKind::Run(self.command(args, "RUN")?),
            "ENTRYPOINT" => InstructionKind::Entrypoint(self.command(args, "ENTRYPOINT")?),
            "USER" => InstructionKind::User(raw_rest(args, "USER", "a user name or id")?),
            "WORKDIR" => self.workdir(args)?,
            "APP" => InstructionKind::App(self.app(args, "APP")?),
            "CNI" => InstructionKind::Cni(self.app(args, "CNI")?),
            "CSI" => InstructionKind::Csi(self.app(args, "CSI")?),
            "APPCMDS" => self.app_cmds(args)?,
            "APPENV" => self.app_env(args)?,
            "KUBEVERSION" => InstructionKind::KubeVersion(raw_rest(args, "KUBEVERSION", "a version constraint")?),
            "LAUNCH" => self.launch(args)?,
            "CMDS" => InstructionKind::Cmds(self.cmds(args)?),
            "CMD" => InstructionKind::Cmd(self.cmd(args)?),
            _ => return Err(unknown_instruction(keyword, rest)),
        };
        Ok((kind, kw_range))
    }

    fn from(&self, args: In<'_>) -> LineResult<InstructionKind> {
        let (args, flags) = flags(args)?;
        let mut platform = None;
        for (name, value) in flags {
            match (name.text.as_str(), value) {
                ("platform", Some(v)) => platform = Some(self.word(&v, self.shell())),
                ("platform", None) => {
                    return Err(piece_error(&name, "`--platform` needs a value", "missing `=os/arch`")
                        .help("write `--platform=linux/amd64`"));
                }
                _ => return Err(unknown_flag(&name, "FROM", &["--platform"])),
            }
        }
        let words = self.shell_words(args)?;
        match words.as_slice() {
            [] => Err(LineError::at(args, 1, "FROM needs an image", "expected an image name or `scratch`")),
            [image] => Ok(InstructionKind::From(From { platform, image: self.word(image, self.shell()) })),
            [_, as_kw, ..] if as_kw.text.eq_ignore_ascii_case("as") => {
                Err(piece_error(as_kw, "multi-stage builds are not supported", "`AS` names a build stage")
                    .help("a Kubefile has one FROM; build the other stage as its own image"))
            }
            [_, extra, ..] => Err(piece_error(extra, "FROM takes one image", "unexpected argument")),
        }
    }

    fn copy(&self, args: In<'_>, keyword: &str) -> LineResult<Copy> {
        let (args, flags) = flags(args)?;
        let (mut chown, mut chmod) = (None, None);
        for (name, value) in flags {
            let slot = match name.text.as_str() {
                "chown" => &mut chown,
                "chmod" => &mut chmod,
                "from" => {
                    return Err(piece_error(&name, "`--from` is not supported", "there are no build stages")
                        .help("a Kubefile has one FROM; copy from the build context"));
                }
                _ => return Err(unknown_flag(&name, keyword, &["--chown", "--chmod"])),
            };
            let value = value
                .ok_or_else(|| piece_error(&name, format!("`--{}` needs a value", name.text), "missing `=value`"))?;
            *slot = Some(self.word(&value, self.shell()));
        }
        let (pieces, form) = self.json_or_words(args)?;
        if pieces.len() < 2 {
            return Err(LineError::at(
                args,
                args.len().max(1),
                format!("{keyword} needs at least one source and a destination"),
                "expected `<src>... <dest>`",
            ));
        }
        let (dest, sources) = pieces.split_last().ok_or_else(|| unreachable_err(args))?;
        if sources.len() > 1 && !dest.text.ends_with('/') && !dest.text.contains('$') {
            return Err(piece_error(
                dest,
                format!("{keyword} with several sources needs a directory destination"),
                "add a trailing `/`",
            ));
        }
        Ok(Copy {
            chown,
            chmod,
            sources: sources.iter().map(|p| self.word(p, form)).collect(),
            dest: self.word(dest, form),
        })
    }

    fn arg(&self, args: In<'_>) -> LineResult<Vec<ArgDecl>> {
        let words = self.shell_words(args)?;
        if words.is_empty() {
            return Err(LineError::at(args, 1, "ARG needs a name", "expected `NAME` or `NAME=default`"));
        }
        words
            .iter()
            .map(|w| {
                let (name, default) = match w.text.split_once('=') {
                    Some((n, d)) => {
                        let start = w.start + n.len() + 1;
                        (n, Some(Piece { text: d.to_owned(), start, end: w.end }))
                    }
                    None => (w.text.as_str(), None),
                };
                let name_piece = Piece { text: name.to_owned(), start: w.start, end: w.start + name.len() };
                check_name(&name_piece, "ARG")?;
                Ok(ArgDecl { name: self.spanned(&name_piece), default: default.map(|d| self.word(&d, self.shell())) })
            })
            .collect()
    }

    /// `K=V K2="v 2"`, or the legacy `K value with spaces` form.
    fn key_values(&self, args: In<'_>, keyword: &str) -> LineResult<Vec<KeyValue>> {
        let words = self.shell_words(args)?;
        let Some(first) = words.first() else {
            return Err(LineError::at(args, 1, format!("{keyword} needs KEY=value"), "expected `KEY=value`"));
        };
        if !first.text.contains('=') {
            // Legacy form: the first word is the key, the rest of the line the value.
            let key = first.clone();
            check_name_loose(&key, keyword)?;
            let Some(value_start) = words.get(1).map(|w| w.start) else {
                return Err(piece_error(
                    first,
                    format!("{keyword} {} has no value", first.text),
                    "expected `KEY=value`",
                ));
            };
            let text = self.line.text[value_start..].to_owned();
            let value = Piece { end: value_start + text.len(), text, start: value_start };
            return Ok(vec![KeyValue { key: self.spanned(&key), value: self.word(&value, self.shell()) }]);
        }
        words.iter().map(|w| self.key_value(w, keyword)).collect()
    }

    fn key_value(&self, w: &Piece, keyword: &str) -> LineResult<KeyValue> {
        let Some((k, v)) = w.text.split_once('=') else {
            return Err(piece_error(w, format!("{keyword} expects KEY=value pairs"), "missing `=`")
                .help("mixing `KEY=value` and `KEY value` forms is not allowed"));
        };
        let key = Piece { text: unquote_key(k), start: w.start, end: w.start + k.len() };
        check_name_loose(&key, keyword)?;
        let value = Piece { text: v.to_owned(), start: w.start + k.len() + 1, end: w.end };
        Ok(KeyValue { key: self.spanned(&key), value: self.word(&value, self.shell()) })
    }

    /// RUN's and ENTRYPOINT's argument: a JSON array (exec form) or a shell command.
    fn command(&self, args: In<'_>, keyword: &str) -> LineResult<RunCommand> {
        if args.is_empty() {
            return Err(LineError::at(
                args,
                1,
                format!("{keyword} needs a command"),
                "expected a shell command or a JSON array",
            ));
        }
        if args.starts_with('[')
            && let Ok(items) = json_array_all(args)
        {
            return Ok(RunCommand::Exec(items.into_iter().map(|p| p.text).collect()));
        }
        Ok(RunCommand::Shell(args.fragment().to_string()))
    }

    fn workdir(&self, args: In<'_>) -> LineResult<InstructionKind> {
        let dir = raw_rest(args, "WORKDIR", "a directory")?;
        if !dir.starts_with('/') {
            return Err(LineError::at(args, 1, "WORKDIR must be absolute", "a relative directory")
                .help(format!("write `WORKDIR /{dir}`")));
        }
        Ok(InstructionKind::Workdir(dir))
    }

    fn app(&self, args: In<'_>, keyword: &str) -> LineResult<App> {
        let (rest, name) = self.app_name(args, keyword)?;
        let (pieces, form) = self.json_or_words(rest)?;
        if pieces.is_empty() {
            return Err(LineError::at(rest, 1, format!("{keyword} {} has no source", name.text), "expected a source")
                .help("sources are `local://<path in the build context>` or `http(s)://…` URLs"));
        }
        let sources = pieces
            .iter()
            .map(|p| {
                if let Some(path) = p.text.strip_prefix("local://") {
                    if path.is_empty() {
                        return Err(piece_error(p, "empty `local://` path", "expected a path after `local://`"));
                    }
                    let local = Piece { text: path.to_owned(), start: p.start + 8, end: p.end };
                    Ok(AppSource::Local(self.word(&local, form)))
                } else if p.text.starts_with("http://") || p.text.starts_with("https://") {
                    Ok(AppSource::Remote(self.word(p, form)))
                } else {
                    Err(piece_error(p, format!("unsupported {keyword} source `{}`", p.text), "unknown scheme")
                        .help("sources are `local://<path in the build context>` or `http(s)://…` URLs"))
                }
            })
            .collect::<LineResult<_>>()?;
        Ok(App { name: self.spanned(&name), sources })
    }

    fn app_name<'a>(&self, args: In<'a>, keyword: &str) -> LineResult<(In<'a>, Piece)> {
        let (rest, name) = shell_word(self.escape)(args)
            .map_err(|_| LineError::at(args, 1, format!("{keyword} needs an application name"), "expected a name"))?;
        let piece = to_piece(name);
        check_app_name(&piece)?;
        let (rest, _) = space0::<_, nom::error::Error<In>>(rest).map_err(|_| unreachable_err(rest))?;
        Ok((rest, piece))
    }

    fn app_cmds(&self, args: In<'_>) -> LineResult<InstructionKind> {
        let (rest, name) = self.app_name(args, "APPCMDS")?;
        if !rest.starts_with('[') {
            return Err(LineError::at(
                rest,
                rest.len().max(1),
                "APPCMDS needs a JSON array of commands",
                "expected `[`",
            )
            .help(format!(r#"write `APPCMDS {} ["cmd1", "cmd2"]`; the commands run joined with `&&`"#, name.text)));
        }
        let cmds = json_array_all(rest)?;
        if cmds.is_empty() {
            return Err(LineError::at(rest, rest.len(), "APPCMDS needs at least one command", "empty list"));
        }
        Ok(InstructionKind::AppCmds { app: self.spanned(&name), cmds: cmds.into_iter().map(|p| p.text).collect() })
    }

    fn app_env(&self, args: In<'_>) -> LineResult<InstructionKind> {
        let (rest, name) = self.app_name(args, "APPENV")?;
        let words = self.shell_words(rest)?;
        if words.is_empty() {
            return Err(LineError::at(rest, 1, "APPENV needs KEY=value pairs", "expected `KEY=value`"));
        }
        let env = words.iter().map(|w| self.key_value(w, "APPENV")).collect::<LineResult<_>>()?;
        Ok(InstructionKind::AppEnv { app: self.spanned(&name), env })
    }

    fn launch(&self, args: In<'_>) -> LineResult<InstructionKind> {
        let (pieces, _) = self.json_or_words(args)?;
        if pieces.is_empty() {
            return Err(LineError::at(args, 1, "LAUNCH needs at least one application name", "expected names")
                .help(r#"write `LAUNCH ["app1", "app2"]`"#));
        }
        for p in &pieces {
            check_app_name(p)?;
        }
        Ok(InstructionKind::Launch(pieces.iter().map(|p| self.spanned(p)).collect()))
    }

    /// `CMDS ["a", "b"]`; the shell form is one command (Sealer split it into words: not copied).
    fn cmds(&self, args: In<'_>) -> LineResult<Vec<String>> {
        if args.is_empty() {
            return Err(LineError::at(args, 1, "CMDS needs at least one command", "expected a JSON array"));
        }
        if args.starts_with('[') {
            let cmds = json_array_all(args)?;
            if cmds.is_empty() {
                return Err(LineError::at(args, args.len(), "CMDS needs at least one command", "empty list"));
            }
            return Ok(cmds.into_iter().map(|p| p.text).collect());
        }
        Ok(vec![args.fragment().to_string()])
    }

    /// `CMD cmd` (raw shell) or `CMD ["prog", "arg"]` (joined with shell quoting).
    fn cmd(&self, args: In<'_>) -> LineResult<String> {
        if args.is_empty() {
            return Err(LineError::at(args, 1, "CMD needs a command", "expected a command"));
        }
        if args.starts_with('[')
            && let Ok(items) = json_array_all(args)
        {
            return Ok(items.iter().map(|p| shell_quote(&p.text)).collect::<Vec<_>>().join(" "));
        }
        Ok(args.fragment().to_string())
    }

    fn shell(&self) -> WordForm {
        WordForm::Shell { escape: self.escape }
    }

    fn shell_words(&self, args: In<'_>) -> LineResult<Vec<Piece>> {
        let mut parser = separated_list0(space1, shell_word(self.escape));
        let (rest, words) = parser.parse(args).map_err(|_| unreachable_err(args))?;
        let (rest, _) = space0::<_, nom::error::Error<In>>(rest).map_err(|_| unreachable_err(rest))?;
        if !rest.is_empty() {
            return Err(LineError::at(rest, rest.len(), "unterminated quote", "this quote is never closed"));
        }
        Ok(words.into_iter().map(to_piece).collect())
    }

    /// A JSON string array when the arguments start with `[`, else shell words.
    fn json_or_words(&self, args: In<'_>) -> LineResult<(Vec<Piece>, WordForm)> {
        if args.starts_with('[') {
            Ok((json_array_all(args)?, WordForm::Json))
        } else {
            Ok((self.shell_words(args)?, self.shell()))
        }
    }
}

fn keyword(input: In<'_>) -> Res<'_, In<'_>> {
    take_while1(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-').parse(input)
}

fn unknown_instruction(keyword: In<'_>, rest: In<'_>) -> LineError {
    let word_len = keyword.len() + rest.fragment().find([' ', '\t']).unwrap_or(rest.len());
    let given = &keyword.fragment()[..keyword.len()];
    let upper = given.to_ascii_uppercase();
    let mut err =
        LineError::at(keyword, word_len, format!("unknown instruction `{given}`"), "not a Kubefile instruction");
    let docker_only = ["EXPOSE", "VOLUME", "SHELL", "ONBUILD", "HEALTHCHECK", "STOPSIGNAL"];
    let hint = if docker_only.contains(&upper.as_str()) {
        format!(
            "`{upper}` is a Dockerfile instruction with no meaning in a cluster image; valid instructions: {}",
            KEYWORDS.join(", ")
        )
    } else {
        format!("valid instructions: {}", KEYWORDS.join(", "))
    };
    err = err.help(hint);
    err
}

fn unreachable_err(at: In<'_>) -> LineError {
    LineError::at(at, 1, "could not parse arguments", "here")
}

fn piece_error(p: &Piece, message: impl Into<String>, label: impl Into<String>) -> LineError {
    LineError { start: p.start, end: p.end.max(p.start + 1), message: message.into(), label: label.into(), help: None }
}

fn unknown_flag(name: &Piece, keyword: &str, valid: &[&str]) -> LineError {
    piece_error(name, format!("unknown flag `--{}` for {keyword}", name.text), "unknown flag").help(
        if valid.is_empty() {
            format!("{keyword} takes no flags")
        } else {
            format!("{keyword} accepts {}", valid.join(", "))
        },
    )
}

fn to_piece(span: In<'_>) -> Piece {
    Piece { text: span.fragment().to_string(), start: span.location_offset(), end: span.location_offset() + span.len() }
}

fn raw_rest(args: In<'_>, keyword: &str, what: &str) -> LineResult<String> {
    if args.is_empty() {
        return Err(LineError::at(args, 1, format!("{keyword} needs {what}"), format!("expected {what}")));
    }
    Ok(args.fragment().to_string())
}

/// Leading `--name[=value]` words.
/// A `--name[=value]` flag.
type Flag = (Piece, Option<Piece>);

fn flags(mut args: In<'_>) -> LineResult<(In<'_>, Vec<Flag>)> {
    let mut out = Vec::new();
    loop {
        let parsed: Res<'_, (In<'_>, Option<In<'_>>)> = preceded(
            tag("--"),
            pair(
                take_while1(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                opt(preceded(char('='), take_while1(|c: char| c != ' ' && c != '\t'))),
            ),
        )
        .parse(args);
        match parsed {
            Ok((rest, (name, value))) if rest.is_empty() || rest.starts_with([' ', '\t']) => {
                out.push((to_piece(name), value.map(to_piece)));
                let (rest, _) = space0::<_, nom::error::Error<In>>(rest).map_err(|_| unreachable_err(rest))?;
                args = rest;
            }
            Ok(_) | Err(_) if args.starts_with("--") => {
                return Err(LineError::at(args, 2, "malformed flag", "expected `--name=value`"));
            }
            _ => return Ok((args, out)),
        }
    }
}

/// One shell-form word: quotes and escapes are kept for later expansion.
fn shell_word(escape: char) -> impl FnMut(In<'_>) -> Res<'_, In<'_>> {
    move |input: In<'_>| {
        let s = *input.fragment();
        let mut chars = s.char_indices().peekable();
        let mut end = 0;
        while let Some(&(i, c)) = chars.peek() {
            match c {
                ' ' | '\t' => break,
                c if c == escape => {
                    chars.next();
                    end = chars.next().map_or(i + c.len_utf8(), |(j, n)| j + n.len_utf8());
                    continue;
                }
                '\'' | '"' => {
                    chars.next();
                    let mut closed = false;
                    while let Some((j, n)) = chars.next() {
                        if c == '"' && n == escape {
                            chars.next();
                            continue;
                        }
                        if n == c {
                            end = j + 1;
                            closed = true;
                            break;
                        }
                    }
                    if !closed {
                        return Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::Char)));
                    }
                    continue;
                }
                _ => {
                    chars.next();
                    end = i + c.len_utf8();
                }
            }
        }
        if end == 0 {
            return Err(nom::Err::Error(nom::error::Error::new(input, nom::error::ErrorKind::TakeWhile1)));
        }
        let (rest, word) = nom::bytes::complete::take::<_, _, nom::error::Error<In>>(s[..end].chars().count())(input)?;
        Ok((rest, word))
    }
}

/// A complete JSON string array (nothing but blanks after it).
fn json_array_all(args: In<'_>) -> LineResult<Vec<Piece>> {
    let mut array = delimited(
        pair(char('['), multispace0),
        separated_list0(delimited(multispace0, char(','), multispace0), json_string),
        pair(multispace0, char(']')),
    );
    match array.parse(args) {
        Ok((rest, items)) => {
            let trailing = rest.fragment().trim();
            if trailing.is_empty() {
                Ok(items)
            } else {
                let (rest, _) = space0::<_, nom::error::Error<In>>(rest).map_err(|_| unreachable_err(rest))?;
                Err(LineError::at(rest, rest.len(), "unexpected text after the JSON array", "remove this"))
            }
        }
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => {
            let at = e.input;
            let found = at.fragment().chars().next().map_or("end of line".to_owned(), |c| format!("`{c}`"));
            Err(LineError::at(
                at,
                1,
                format!("invalid JSON array: unexpected {found}"),
                "expected a JSON string, `,` or `]`",
            )
            .help(r#"write a JSON array of double-quoted strings, like ["a", "b"]"#))
        }
        Err(nom::Err::Incomplete(_)) => Err(unreachable_err(args)),
    }
}

/// A JSON string literal with its escapes decoded.
fn json_string(input: In<'_>) -> Res<'_, Piece> {
    let (after_quote, _) = char('"').parse(input)?;
    let body = *after_quote.fragment();
    let mut out = String::new();
    let mut chars = body.char_indices();
    let fail = |at| nom::Err::Failure(nom::error::Error::new(at, nom::error::ErrorKind::Escaped));
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let (rest, whole) =
                    recognize(nom::bytes::complete::take::<_, _, nom::error::Error<In>>(body[..=i].chars().count()))
                        .parse(after_quote)?;
                let start = input.location_offset();
                return Ok((rest, Piece { text: out, start, end: whole.location_offset() + whole.len() }));
            }
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('/') => out.push('/'),
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                    let code = u32::from_str_radix(&hex, 16).map_err(|_| fail(input))?;
                    let decoded = if (0xD800..0xDC00).contains(&code) {
                        // A surrogate pair: `\uD83D\uDE00`.
                        let tail: String = chars.by_ref().take(6).map(|(_, c)| c).collect();
                        let low = tail
                            .strip_prefix("\\u")
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                            .filter(|l| (0xDC00..0xE000).contains(l))
                            .ok_or_else(|| fail(input))?;
                        char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
                    } else {
                        char::from_u32(code)
                    };
                    out.push(decoded.ok_or_else(|| fail(input))?);
                }
                _ => return Err(fail(input)),
            },
            c if (c as u32) < 0x20 => return Err(fail(input)),
            c => out.push(c),
        }
    }
    Err(nom::Err::Failure(nom::error::Error::new(input, nom::error::ErrorKind::Char)))
}

fn check_name(p: &Piece, keyword: &str) -> LineResult<()> {
    let ok = p.text.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && p.text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(piece_error(
            p,
            format!("invalid {keyword} name `{}`", p.text),
            "letters, digits and `_`, not starting with a digit",
        ))
    }
}

/// ENV and LABEL keys: anything but blanks, `=` and an empty key.
fn check_name_loose(p: &Piece, keyword: &str) -> LineResult<()> {
    if p.text.is_empty() {
        return Err(piece_error(p, format!("empty {keyword} key"), "expected a key before `=`"));
    }
    Ok(())
}

/// App names become directory names under `application/apps/`.
fn check_app_name(p: &Piece) -> LineResult<()> {
    let ok = !p.text.is_empty()
        && p.text != "."
        && p.text != ".."
        && p.text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(piece_error(p, format!("invalid application name `{}`", p.text), "letters, digits, `-`, `_` and `.` only"))
    }
}

fn unquote_key(k: &str) -> String {
    let k = k.trim();
    for q in ['"', '\''] {
        if let Some(inner) = k.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    k.to_owned()
}

/// Quotes a word for `/bin/sh` when it needs it.
pub(crate) fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubefile::lines;

    fn parse(text: &str) -> LineResult<InstructionKind> {
        let split = lines::split(text);
        LineParser::new(&split.lines[0], split.escape).parse().map(|(k, _)| k)
    }

    #[test]
    fn json_strings_decode_escapes() {
        let InstructionKind::Cmds(c) = parse(r#"CMDS ["a\"b", "\u00e9\n", "\ud83d\ude00"]"#).unwrap() else { panic!() };
        assert_eq!(c, ["a\"b", "é\n", "😀"]);
    }

    #[test]
    fn flag_parsing() {
        let InstructionKind::Copy(c) = parse("COPY --chmod=0755 --chown=1:1 a b/").unwrap() else { panic!() };
        assert_eq!(c.chmod.unwrap().raw, "0755");
        assert_eq!(c.chown.unwrap().raw, "1:1");
        assert!(parse("COPY --from=x a b").is_err());
        assert!(parse("COPY --nope a b").is_err());
    }

    #[test]
    fn quoted_words_keep_quotes_until_expansion() {
        let InstructionKind::Copy(c) = parse(r#"COPY "a b" 'c d' e/"#).unwrap() else { panic!() };
        assert_eq!(c.sources[0].raw, "\"a b\"");
        assert_eq!(c.sources[0].literal().unwrap(), "a b");
        assert_eq!(c.sources[1].literal().unwrap(), "c d");
    }

    #[test]
    fn shell_quote_round_trip() {
        assert_eq!(shell_quote("plain"), "plain");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
