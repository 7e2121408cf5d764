//! `kiln registry serve`: the pull side of the distribution API over a docker-distribution
//! layout directory (the `registry/` of a cluster image): `/v2/`, manifests by tag and digest
//! (GET and HEAD, with Content-Type and Docker-Content-Digest), blobs with Range (206), tag
//! lists and the catalog; htpasswd basic auth; and containerd's mirror requests
//! (`?ns=quay.io`), mapped to the repository prefix the build gave that registry, so one
//! server mirrors several upstream registries without collisions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::image::Digest;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The directory holding `docker/registry/v2`.
    pub root: PathBuf,
    pub listen: SocketAddr,
    /// bcrypt htpasswd file: when set, every request needs basic auth.
    pub htpasswd: Option<PathBuf>,
    /// PEM certificate chain and private key: serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

struct AppState {
    v2: PathBuf,
    users: Option<Vec<(String, String)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("`{}` holds no registry (expected `docker/registry/v2` inside)", .0.display())]
    NotARegistry(PathBuf),
    #[error("failed to read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS certificate or key: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `options.listen` and serves until `shutdown` completes. `ready` gets the bound address.
pub async fn serve(
    options: ServeOptions,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let v2 = options.root.join("docker/registry/v2");
    if !v2.is_dir() {
        return Err(ServeError::NotARegistry(options.root.clone()));
    }
    let users = match &options.htpasswd {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| ServeError::Read { path: path.clone(), source })?;
            Some(
                text.lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(u, h)| (u.to_owned(), h.trim().to_owned()))
                    .collect(),
            )
        }
        None => None,
    };
    let state = Arc::new(AppState { v2, users });
    let app = Router::new()
        .route("/v2/", axum::routing::get(ping).head(ping))
        .route("/v2/{*rest}", axum::routing::get(dispatch).head(dispatch))
        .with_state(state);
    let tls = options.tls.as_ref().map(|(cert, key)| tls_config(cert, key)).transpose()?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: options.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: options.listen, source })?;
    ready(addr);
    let Some(tls) = tls else {
        return axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ServeError::Listen { addr, source });
    };
    // HTTPS: accept TCP, hand each connection to rustls, then to hyper with the same router.
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else { return };
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                use tower::ServiceExt;
                app.clone().oneshot(req.map(Body::new))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &Path, e: &dyn std::fmt::Display| ServeError::Tls(format!("`{}`: {e}", what.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))
}

fn api_headers(mut r: Response) -> Response {
    r.headers_mut().insert("Docker-Distribution-API-Version", HeaderValue::from_static("registry/2.0"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    api_headers((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn json_response(value: serde_json::Value) -> Response {
    api_headers((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response())
}

fn unauthorized() -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required");
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"kiln\""));
    r
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(users) = &state.users else { return true };
    let Some(value) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Some(decoded) =
        base64::engine::general_purpose::STANDARD.decode(value.trim()).ok().and_then(|d| String::from_utf8(d).ok())
    else {
        return false;
    };
    let Some((user, password)) = decoded.split_once(':') else { return false };
    users.iter().any(|(u, hash)| u == user && bcrypt::verify(password, hash).unwrap_or(false))
}

async fn ping(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    api_headers((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response())
}

/// Repository names as the distribution grammar allows them (never `..` or absolute).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        })
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// containerd's `?ns=<upstream>` → the repository the build stored that upstream's image at.
pub fn mirrored_name(name: &str, ns: Option<&str>) -> String {
    match ns {
        None => name.to_owned(),
        Some("docker.io") | Some("index.docker.io") | Some("registry-1.docker.io") if !name.contains('/') => {
            format!("library/{name}")
        }
        Some("docker.io") | Some("index.docker.io") | Some("registry-1.docker.io") => name.to_owned(),
        Some(host) => format!("{}/{name}", host.replace(':', "_")),
    }
}

fn read_link(path: &Path) -> Option<Digest> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn dispatch(
    State(state): State<Arc<AppState>>,
    UrlPath(rest): UrlPath<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    if rest == "_catalog" {
        return catalog(&state);
    }
    let ns = query.get("ns").map(String::as_str);
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let name = mirrored_name(name, ns);
        if !valid_name(&name) {
            return error(StatusCode::BAD_REQUEST, "NAME_INVALID", "invalid repository name");
        }
        return tags(&state, &name);
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let name = mirrored_name(name, ns);
        if !valid_name(&name) {
            return error(StatusCode::BAD_REQUEST, "NAME_INVALID", "invalid repository name");
        }
        return manifest(&state, &name, reference, method == Method::HEAD).await;
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        let name = mirrored_name(name, ns);
        if !valid_name(&name) {
            return error(StatusCode::BAD_REQUEST, "NAME_INVALID", "invalid repository name");
        }
        let Ok(digest) = digest.parse::<Digest>() else {
            return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest");
        };
        return blob(&state, &name, &digest, method == Method::HEAD, &headers).await;
    }
    error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown endpoint (this registry serves pulls only)")
}

fn blob_path(state: &AppState, digest: &Digest) -> PathBuf {
    state.v2.join("blobs/sha256").join(&digest.hex()[..2]).join(digest.hex()).join("data")
}

async fn manifest(state: &AppState, name: &str, reference: &str, head: bool) -> Response {
    let repo = state.v2.join("repositories").join(name).join("_manifests");
    let digest = match reference.parse::<Digest>() {
        Ok(d) if repo.join("revisions/sha256").join(d.hex()).join("link").is_file() => Some(d),
        Ok(_) => None,
        Err(_) if valid_tag(reference) => read_link(&repo.join("tags").join(reference).join("current/link")),
        Err(_) => return error(StatusCode::BAD_REQUEST, "TAG_INVALID", "invalid tag"),
    };
    let Some(digest) = digest else {
        return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &format!("manifest unknown: {name}:{reference}"));
    };
    let Ok(bytes) = tokio::fs::read(blob_path(state, &digest)).await else {
        return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest blob missing");
    };
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let media_type = doc["mediaType"].as_str().map(str::to_owned).unwrap_or_else(|| {
        if doc.get("manifests").is_some() {
            crate::image::media::OCI_INDEX.to_owned()
        } else {
            crate::image::media::OCI_MANIFEST.to_owned()
        }
    });
    let len = bytes.len();
    let body = if head { Body::empty() } else { Body::from(bytes) };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("Docker-Content-Digest", v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    api_headers(r)
}

/// `bytes=a-b` / `bytes=a-` → (start, end inclusive) within `size`.
fn parse_range(value: &str, size: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() { size.checked_sub(1)? } else { b.parse::<u64>().ok()?.min(size.checked_sub(1)?) };
    (start <= end).then_some((start, end))
}

async fn blob(state: &AppState, name: &str, digest: &Digest, head: bool, headers: &HeaderMap) -> Response {
    let repo = state.v2.join("repositories").join(name);
    let linked = repo.join("_layers/sha256").join(digest.hex()).join("link").is_file()
        || repo.join("_manifests/revisions/sha256").join(digest.hex()).join("link").is_file();
    let path = blob_path(state, digest);
    let size = match (linked, tokio::fs::metadata(&path).await) {
        (true, Ok(m)) => m.len(),
        _ => return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &format!("blob unknown: {digest}")),
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range {
        Some(r) => match parse_range(r, size) {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
            None => {
                let mut resp = error(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID", "invalid range");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        },
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let body = if head || len == 0 {
        Body::empty()
    } else {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unreadable");
        };
        if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "seek failed");
        }
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file.take(len), 1 << 20))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("Docker-Content-Digest", v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    api_headers(r)
}

fn tags(state: &AppState, name: &str) -> Response {
    let dir = state.v2.join("repositories").join(name).join("_manifests/tags");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", &format!("repository unknown: {name}"));
    };
    let mut tags: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    tags.sort();
    json_response(serde_json::json!({"name": name, "tags": tags}))
}

fn catalog(state: &AppState) -> Response {
    let root = state.v2.join("repositories");
    let mut repos: Vec<String> = walkdir::WalkDir::new(&root)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_dir() && e.file_name() == "_manifests")
        .filter_map(|e| e.path().parent()?.strip_prefix(&root).ok().map(|p| p.display().to_string()))
        .collect();
    repos.sort();
    json_response(serde_json::json!({"repositories": repos}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_namespaces_map_to_build_prefixes() {
        assert_eq!(mirrored_name("nginx", Some("docker.io")), "library/nginx");
        assert_eq!(mirrored_name("team/app", Some("docker.io")), "team/app");
        assert_eq!(mirrored_name("coreos/etcd", Some("quay.io")), "quay.io/coreos/etcd");
        assert_eq!(mirrored_name("a/b", Some("reg.local:5000")), "reg.local_5000/a/b");
        assert_eq!(mirrored_name("a/b", None), "a/b");
    }

    #[test]
    fn names_ranges_and_tags() {
        assert!(valid_name("quay.io/coreos/etcd") && valid_name("reg.local_5000/a"));
        assert!(!valid_name("../etc") && !valid_name("a//b") && !valid_name("A/b"));
        assert!(valid_tag("v1.2_3") && !valid_tag("../x") && !valid_tag(""));
        assert_eq!(parse_range("bytes=10-", 100), Some((10, 99)));
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=0-500", 100), Some((0, 99)));
        assert_eq!(parse_range("bytes=200-", 100), None);
    }
}
