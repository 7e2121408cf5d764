//! Flags + environment → resolved settings handed to commands.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::GlobalArgs;
use crate::image::{ImageRef, Store};
use crate::output::{Printer, UserErrorExt, Verbosity};

#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    pub verbosity: Verbosity,
}

impl Settings {
    pub fn resolve(global: &GlobalArgs) -> anyhow::Result<Self> {
        let root = match &global.root {
            Some(r) => r.clone(),
            None => default_root(),
        };
        let verbosity = if global.quiet {
            Verbosity::Quiet
        } else if global.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Default
        };
        Ok(Self { root, verbosity })
    }

    pub fn printer(&self, json: bool) -> Printer {
        Printer { verbosity: self.verbosity, json }
    }

    pub fn store(&self) -> anyhow::Result<Store> {
        Store::open(&self.root).map_err(|e| {
            anyhow::Error::new(e).context(format!("cannot open the image store at `{}`", self.root.display()))
        })
    }
}

/// `/var/lib/kiln` for root, `$XDG_DATA_HOME/kiln` (or `~/.local/share/kiln`) otherwise.
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/kiln");
    }
    if let Some(xdg) = std::env::var_os(crate::env::XDG_DATA_HOME).filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("kiln");
    }
    let home = std::env::var_os(crate::env::HOME).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/kiln")
}

/// Parses an image name given on the command line.
pub fn parse_ref(s: &str) -> anyhow::Result<ImageRef> {
    s.parse::<ImageRef>().user_error()
}

/// Parses repeated `KEY=VALUE` flags.
pub fn parse_pairs(flag: &str, values: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for v in values {
        let Some((k, val)) = v.split_once('=') else {
            return Err(crate::output::UserError::new(format!("`{flag} {v}`: expected KEY=VALUE")).into());
        };
        if k.is_empty() {
            return Err(crate::output::UserError::new(format!("`{flag} {v}`: empty key")).into());
        }
        out.insert(k.to_owned(), val.to_owned());
    }
    Ok(out)
}
