//! The build context: which files COPY/ADD/APP may read, after `.kilnignore`/`.dockerignore`.
//!
//! Ignore files follow `.dockerignore` rules: patterns are relative to the context root
//! (a leading `/` is dropped), `*` and `?` stay within one path component, `**` spans any
//! number, `!pattern` re-includes, the last matching pattern wins, and a pattern that
//! matches a directory excludes everything under it.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobMatcher};

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context `{0}` is not a directory")]
    NotADirectory(PathBuf),
    #[error("invalid pattern `{pattern}` in `{file}`: {reason}")]
    BadIgnorePattern { file: String, pattern: String, reason: String },
    #[error("failed to read `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io { path: path.to_owned(), source }
}

struct Rule {
    matcher: GlobMatcher,
    exclude: bool,
}

/// A build context directory with its ignore rules.
pub struct Context {
    root: PathBuf,
    rules: Vec<Rule>,
    ignore_file: Option<String>,
}

/// A file or directory selected from the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Absolute path on disk.
    pub path: PathBuf,
    /// Path relative to the context root, `/`-separated.
    pub rel: String,
    pub is_dir: bool,
}

impl Context {
    pub fn open(root: &Path) -> Result<Self, ContextError> {
        let root = fs::canonicalize(root).map_err(io_err(root))?;
        if !root.is_dir() {
            return Err(ContextError::NotADirectory(root));
        }
        let mut ctx = Self { root, rules: Vec::new(), ignore_file: None };
        for name in [".kilnignore", ".dockerignore"] {
            let path = ctx.root.join(name);
            if path.is_file() {
                let text = fs::read_to_string(&path).map_err(io_err(&path))?;
                ctx.rules = parse_ignore(name, &text)?;
                ctx.ignore_file = Some(name.to_owned());
                break;
            }
        }
        Ok(ctx)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ignore file in effect, if any.
    pub fn ignore_file(&self) -> Option<&str> {
        self.ignore_file.as_deref()
    }

    /// Whether `rel` (relative, `/`-separated) is excluded.
    pub fn is_ignored(&self, rel: &str) -> bool {
        if self.rules.is_empty() || rel.is_empty() {
            return false;
        }
        // A path is excluded when it or any parent directory is (Docker's rule).
        let mut excluded = false;
        let mut prefix = String::new();
        for part in rel.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            for rule in &self.rules {
                if rule.matcher.is_match(&prefix) {
                    excluded = rule.exclude;
                }
            }
        }
        excluded
    }

    /// Resolves a COPY/ADD source pattern to the files it names.
    ///
    /// Returns an empty list when nothing matches. Errors only on I/O failures; a path that
    /// escapes the context is reported as [`Resolved::Escapes`].
    pub fn resolve(&self, pattern: &str) -> Result<Resolved, ContextError> {
        let Some(clean) = clean_relative(pattern) else {
            return Ok(Resolved::Escapes);
        };
        if !has_glob(&clean) {
            let path = self.root.join(&clean);
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Resolved::Found(vec![])),
                Err(e) => return Err(io_err(&path)(e)),
            };
            // A symlink given directly is followed, but must land inside the context.
            let real = fs::canonicalize(&path).map_err(io_err(&path))?;
            if !real.starts_with(&self.root) {
                return Ok(Resolved::Escapes);
            }
            if self.is_ignored(&clean) && !clean.is_empty() {
                return Ok(Resolved::Ignored);
            }
            return Ok(Resolved::Found(vec![Source { path: real, rel: clean, is_dir: meta.is_dir() }]));
        }
        let glob = Glob::new(&clean)
            .map(|g| g.compile_matcher())
            .map_err(|e| ContextError::Io { path: PathBuf::from(pattern), source: io::Error::other(e) })?;
        let depth = clean.split('/').count();
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(&self.root).min_depth(1).max_depth(depth).sort_by_file_name() {
            let entry = entry.map_err(|e| io_err(&self.root)(io::Error::other(e)))?;
            let rel = relative(&self.root, entry.path());
            if rel.split('/').count() == depth && glob.is_match(&rel) && !self.is_ignored(&rel) {
                found.push(Source { path: entry.path().to_owned(), rel, is_dir: entry.file_type().is_dir() });
            }
        }
        Ok(Resolved::Found(found))
    }

    /// Every non-ignored entry under a directory source, sorted, relative to that source.
    pub fn walk(&self, source: &Source) -> Result<Vec<(PathBuf, String, fs::Metadata)>, ContextError> {
        let mut out = Vec::new();
        let mut it = walkdir::WalkDir::new(&source.path).min_depth(1).sort_by_file_name().into_iter();
        while let Some(entry) = it.next() {
            let entry = entry.map_err(|e| io_err(&source.path)(io::Error::other(e)))?;
            let within = relative(&source.path, entry.path());
            let ctx_rel = if source.rel.is_empty() { within.clone() } else { format!("{}/{within}", source.rel) };
            if self.is_ignored(&ctx_rel) {
                if entry.file_type().is_dir() {
                    it.skip_current_dir();
                }
                continue;
            }
            let meta = entry.path().symlink_metadata().map_err(io_err(entry.path()))?;
            out.push((entry.path().to_owned(), within, meta));
        }
        Ok(out)
    }
}

/// What a source pattern resolved to.
#[derive(Debug)]
pub enum Resolved {
    Found(Vec<Source>),
    /// The path leaves the build context (`..`, or a symlink pointing out).
    Escapes,
    /// The path exists but the ignore file excludes it.
    Ignored,
}

fn parse_ignore(file: &str, text: &str) -> Result<Vec<Rule>, ContextError> {
    let mut rules = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (exclude, pattern) = match line.strip_prefix('!') {
            Some(p) => (false, p.trim()),
            None => (true, line),
        };
        let Some(clean) = clean_relative(pattern) else { continue };
        if clean.is_empty() {
            continue;
        }
        let glob = globset::GlobBuilder::new(&clean).literal_separator(true).build().map_err(|e| {
            ContextError::BadIgnorePattern { file: file.to_owned(), pattern: pattern.to_owned(), reason: e.to_string() }
        })?;
        rules.push(Rule { matcher: glob.compile_matcher(), exclude });
    }
    Ok(rules)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Lexically cleans a context-relative path; `None` if it climbs out of the root.
pub(crate) fn clean_relative(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

/// Lexically cleans an in-image destination; `..` cannot climb above `/`.
pub(crate) fn clean_dest(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or_default()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect::<Vec<_>>()
        .join("/")
}

/// A content hash of sources for the build cache key: paths, modes, link targets and file
/// bytes. blake3 is used because this never leaves the machine.
pub fn hash_sources(ctx: &Context, sources: &[Source]) -> Result<String, ContextError> {
    use std::os::unix::fs::PermissionsExt;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut add_file = |hasher: &mut blake3::Hasher, path: &Path| -> Result<(), ContextError> {
        let mut f = fs::File::open(path).map_err(io_err(path))?;
        loop {
            let n = f.read(&mut buf).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(())
    };
    for source in sources {
        hasher.update(source.rel.as_bytes());
        hasher.update(b"\0");
        if source.is_dir {
            for (path, rel, meta) in ctx.walk(source)? {
                hasher.update(rel.as_bytes());
                hasher.update(&meta.permissions().mode().to_le_bytes());
                if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).map_err(io_err(&path))?;
                    hasher.update(target.as_os_str().as_encoded_bytes());
                } else if meta.is_file() {
                    hasher.update(&meta.len().to_le_bytes());
                    add_file(&mut hasher, &path)?;
                }
                hasher.update(b"\0");
            }
        } else {
            let meta = fs::metadata(&source.path).map_err(io_err(&source.path))?;
            hasher.update(&meta.permissions().mode().to_le_bytes());
            add_file(&mut hasher, &source.path)?;
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_with(files: &[&str], ignore: &str) -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f).unwrap();
        }
        if !ignore.is_empty() {
            fs::write(dir.path().join(".kilnignore"), ignore).unwrap();
        }
        let ctx = Context::open(dir.path()).unwrap();
        (dir, ctx)
    }

    #[test]
    fn dockerignore_semantics() {
        let (_d, ctx) = ctx_with(&[], "*.log\n/tmp\n**/*.bak\n!keep.log\ndocs/*\n# c\n");
        assert!(ctx.is_ignored("a.log"));
        assert!(!ctx.is_ignored("sub/a.log"), "`*` does not cross `/`");
        assert!(!ctx.is_ignored("keep.log"));
        assert!(ctx.is_ignored("tmp/x/y"), "excluded directory excludes contents");
        assert!(ctx.is_ignored("a/b/c.bak"));
        assert!(ctx.is_ignored("docs/x"));
        assert!(!ctx.is_ignored("docs"));
    }

    #[test]
    fn resolve_files_dirs_and_globs() {
        let (_d, ctx) = ctx_with(&["bin/amd64/kubeadm", "bin/arm64/kubeadm", "a.yaml", "b.yaml", "c.txt"], "c.txt\n");
        let Resolved::Found(f) = ctx.resolve("bin/amd64").unwrap() else { panic!() };
        assert!(f[0].is_dir);
        let Resolved::Found(f) = ctx.resolve("*.yaml").unwrap() else { panic!() };
        assert_eq!(f.iter().map(|s| s.rel.as_str()).collect::<Vec<_>>(), ["a.yaml", "b.yaml"]);
        assert!(matches!(ctx.resolve("c.txt").unwrap(), Resolved::Ignored));
        assert!(matches!(ctx.resolve("../x").unwrap(), Resolved::Escapes));
        assert!(matches!(ctx.resolve("nope").unwrap(), Resolved::Found(v) if v.is_empty()));
        let Resolved::Found(f) = ctx.resolve("/a.yaml").unwrap() else { panic!() };
        assert_eq!(f[0].rel, "a.yaml");
    }

    #[test]
    fn symlink_out_of_context_is_refused() {
        let (d, ctx) = ctx_with(&["x"], "");
        std::os::unix::fs::symlink("/etc", d.path().join("out")).unwrap();
        assert!(matches!(ctx.resolve("out").unwrap(), Resolved::Escapes));
    }

    #[test]
    fn hash_changes_with_content_only() {
        let (d, ctx) = ctx_with(&["dir/a", "dir/b"], "");
        let Resolved::Found(s) = ctx.resolve("dir").unwrap() else { panic!() };
        let h1 = hash_sources(&ctx, &s).unwrap();
        assert_eq!(h1, hash_sources(&ctx, &s).unwrap());
        fs::write(d.path().join("dir/b"), "changed").unwrap();
        assert_ne!(h1, hash_sources(&ctx, &s).unwrap());
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean_relative("./a/../b/").unwrap(), "b");
        assert!(clean_relative("../a").is_none());
        assert_eq!(clean_dest("/../etc/./x"), "etc/x");
    }
}
