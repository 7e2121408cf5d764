//! Registry credentials: read from Docker's `config.json` and containers' `auth.json`, written
//! by `kiln login` (atomically, mode 0600). Passwords live in [`Secret`], which never prints.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: Secret,
}

impl Credential {
    /// The `Authorization: Basic …` value.
    pub fn basic_header(&self) -> String {
        format!("Basic {}", STANDARD.encode(format!("{}:{}", self.username, self.password.expose())))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("failed to read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not valid JSON: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("failed to write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where credentials are looked up, in order, and where `login` writes.
#[derive(Debug, Clone)]
pub struct AuthFiles {
    /// Files read, first match wins.
    pub read: Vec<PathBuf>,
    /// The file `login` and `logout` change.
    pub write: PathBuf,
}

impl AuthFiles {
    /// `explicit` (`--authfile`/`KILN_AUTH_FILE`) alone if given; otherwise
    /// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json` and Docker's config.
    pub fn discover(explicit: Option<PathBuf>) -> Self {
        if let Some(p) = explicit {
            return Self { read: vec![p.clone()], write: p };
        }
        let docker = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os(crate::env::HOME).map(|h| PathBuf::from(h).join(".docker")))
            .unwrap_or_else(|| PathBuf::from(".docker"))
            .join("config.json");
        let mut read = Vec::new();
        if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
            read.push(PathBuf::from(p));
        }
        if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR") {
            read.push(PathBuf::from(p).join("containers/auth.json"));
        }
        read.push(docker.clone());
        Self { read, write: docker }
    }

    /// Credentials for `registry`, if any file has them.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, AuthFileError> {
        for path in &self.read {
            let Some(doc) = read_json(path)? else { continue };
            for key in keys_for(registry) {
                if let Some(entry) = doc.get("auths").and_then(|a| a.get(&key))
                    && let Some(cred) = decode_entry(entry)
                {
                    return Ok(Some(cred));
                }
            }
        }
        Ok(None)
    }

    /// Saves credentials for `registry` (other entries are kept).
    pub fn store(&self, registry: &str, cred: &Credential) -> Result<(), AuthFileError> {
        let mut doc = read_json(&self.write)?.unwrap_or_else(|| serde_json::json!({}));
        let auths = doc.as_object_mut().map(|o| o.entry("auths").or_insert_with(|| serde_json::json!({})));
        let Some(serde_json::Value::Object(auths)) = auths else {
            return Err(AuthFileError::Parse { path: self.write.clone(), reason: "`auths` is not an object".into() });
        };
        for key in keys_for(registry) {
            auths.remove(&key);
        }
        let encoded = STANDARD.encode(format!("{}:{}", cred.username, cred.password.expose()));
        auths.insert(canonical_key(registry), serde_json::json!({ "auth": encoded }));
        write_private(&self.write, &doc)
    }

    /// Removes credentials for `registry`; says whether there were any.
    pub fn remove(&self, registry: &str) -> Result<bool, AuthFileError> {
        let Some(mut doc) = read_json(&self.write)? else { return Ok(false) };
        let mut removed = false;
        if let Some(auths) = doc.get_mut("auths").and_then(|a| a.as_object_mut()) {
            for key in keys_for(registry) {
                removed |= auths.remove(&key).is_some();
            }
        }
        if removed {
            write_private(&self.write, &doc)?;
        }
        Ok(removed)
    }
}

/// Docker Hub is stored under its legacy URL key; other registries under their host.
fn canonical_key(registry: &str) -> String {
    if registry == "docker.io" { "https://index.docker.io/v1/".to_owned() } else { registry.to_owned() }
}

fn keys_for(registry: &str) -> Vec<String> {
    let mut keys =
        vec![canonical_key(registry), registry.to_owned(), format!("https://{registry}"), format!("http://{registry}")];
    if registry == "docker.io" {
        keys.extend(["index.docker.io".to_owned(), "registry-1.docker.io".to_owned()]);
    }
    keys.dedup();
    keys
}

fn decode_entry(entry: &serde_json::Value) -> Option<Credential> {
    if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()).filter(|a| !a.is_empty()) {
        let decoded = String::from_utf8(STANDARD.decode(auth).ok()?).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        return Some(Credential { username: user.to_owned(), password: Secret::new(pass) });
    }
    let user = entry.get("username")?.as_str()?;
    let pass = entry.get("password")?.as_str()?;
    Some(Credential { username: user.to_owned(), password: Secret::new(pass) })
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, AuthFileError> {
    match fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AuthFileError::Parse { path: path.to_owned(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AuthFileError::Read { path: path.to_owned(), source }),
    }
}

/// Temp file created 0600 beside the target, fsync, rename.
fn write_private(path: &Path, doc: &serde_json::Value) -> Result<(), AuthFileError> {
    let err = |source| AuthFileError::Write { path: path.to_owned(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".{}.kiln-tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("auth")));
    let mut f = fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(&serde_json::to_vec_pretty(doc).unwrap_or_default()).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let c = Credential { username: "u".into(), password: Secret::new("hunter2") };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(Secret::new("x").to_string(), "****");
    }

    #[test]
    fn store_lookup_remove_round_trip_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, r#"{"auths":{"other.io":{"auth":"YTpi"}},"credsStore":"x"}"#).unwrap();
        let files = AuthFiles { read: vec![path.clone()], write: path.clone() };
        let cred = Credential { username: "me".into(), password: Secret::new("p:w") };
        files.store("reg.example:5000", &cred).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(files.lookup("reg.example:5000").unwrap().unwrap(), cred);
        assert_eq!(files.lookup("other.io").unwrap().unwrap().username, "a");
        let doc: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["credsStore"], "x", "unrelated settings are kept");
        assert!(files.remove("reg.example:5000").unwrap());
        assert!(files.lookup("reg.example:5000").unwrap().is_none());
        assert!(!files.remove("reg.example:5000").unwrap());
    }

    #[test]
    fn docker_hub_keys_and_username_password_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        fs::write(&path, r#"{"auths":{"https://index.docker.io/v1/":{"username":"d","password":"p"}}}"#).unwrap();
        let files = AuthFiles { read: vec![path.clone()], write: path };
        assert_eq!(files.lookup("docker.io").unwrap().unwrap().username, "d");
    }
}
