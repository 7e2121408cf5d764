//! The distribution API transport: TLS options, the auth challenge flow (anonymous, basic,
//! bearer tokens per repository scope, cached, refreshed on 401), and retries with backoff on
//! connection errors and 5xx — never on other 4xx.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

use super::auth::{AuthFiles, Credential};
use crate::error_chain;

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Use `http://` for every registry.
    pub plain_http: bool,
    /// Registries reached over plain HTTP (host or host:port).
    pub insecure_registries: Vec<String>,
    pub insecure_skip_tls_verify: bool,
    /// Extra CA certificates (PEM) trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Attempts after the first on connection errors and 5xx.
    pub retries: u32,
    /// Blobs transferred at once.
    pub max_concurrent: usize,
    pub auth_files: AuthFiles,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            plain_http: false,
            insecure_registries: Vec::new(),
            insecure_skip_tls_verify: false,
            ca_file: None,
            retries: 3,
            max_concurrent: 4,
            auth_files: AuthFiles::discover(None),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: authentication required or credentials rejected (run `kiln login {registry}`)")]
    Unauthorized { registry: String },
    #[error("{registry}: access to `{repository}` denied")]
    Denied { registry: String, repository: String },
    #[error("{what} not found in {registry}")]
    NotFound { registry: String, what: String },
    #[error("{method} {url}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Http { method: String, url: String, status: u16, body: String },
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Tls(String),
    #[error("{0}")]
    Protocol(String),
    #[error(transparent)]
    Store(#[from] crate::image::StoreError),
    #[error(transparent)]
    AuthFile(#[from] super::auth::AuthFileError),
}

/// How a registry wants to be authenticated, learned from its first challenge.
#[derive(Debug, Clone)]
enum Scheme {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// A connection to registries, shared by concurrent transfers.
pub struct Registry {
    http: reqwest::Client,
    opts: TransportOptions,
    schemes: Mutex<HashMap<String, Scheme>>,
    tokens: Mutex<HashMap<(String, String), String>>,
    credentials: Mutex<HashMap<String, Option<Credential>>>,
}

/// Builds one request attempt; called again for each retry (bodies are recreated).
pub type RequestFactory<'a> = dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Send + Sync + 'a;

impl Registry {
    pub fn new(opts: TransportOptions) -> Result<Self, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(16)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")));
        if opts.insecure_skip_tls_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &opts.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| RegistryError::Tls(format!("cannot read `{}`: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| RegistryError::Tls(format!("`{}`: {e}", ca.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| RegistryError::Tls(e.to_string()))?;
        Ok(Self {
            http,
            opts,
            schemes: Default::default(),
            tokens: Default::default(),
            credentials: Default::default(),
        })
    }

    pub fn options(&self) -> &TransportOptions {
        &self.opts
    }

    /// `https://host` (or `http://` when configured insecure); Docker Hub's API host for docker.io.
    pub fn base_url(&self, registry: &str) -> String {
        let host = if registry == "docker.io" { "registry-1.docker.io" } else { registry };
        let plain = self.opts.plain_http || self.opts.insecure_registries.iter().any(|r| r == registry);
        format!("{}://{host}", if plain { "http" } else { "https" })
    }

    fn credential(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        let mut cache = self.credentials.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(registry) {
            return Ok(c.clone());
        }
        let c = self.opts.auth_files.lookup(registry)?;
        cache.insert(registry.to_owned(), c.clone());
        Ok(c)
    }

    /// Uses these credentials instead of the auth files (for `login`).
    pub fn set_credential(&self, registry: &str, cred: Credential) {
        self.credentials.lock().unwrap_or_else(|e| e.into_inner()).insert(registry.to_owned(), Some(cred));
    }

    async fn authorization(&self, registry: &str, scope: &str) -> Result<Option<String>, RegistryError> {
        let scheme = self.schemes.lock().unwrap_or_else(|e| e.into_inner()).get(registry).cloned();
        match scheme {
            Some(Scheme::Basic) => Ok(self.credential(registry)?.map(|c| c.basic_header())),
            Some(Scheme::Bearer { realm, service }) => {
                let key = (registry.to_owned(), scope.to_owned());
                let cached = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
                let token = match cached {
                    Some(t) => t,
                    // The realm is known: get a token for this scope before the first request.
                    None => {
                        let t = self.fetch_token(registry, &realm, service.as_deref(), scope).await?;
                        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(key, t.clone());
                        t
                    }
                };
                Ok(Some(format!("Bearer {token}")))
            }
            None => Ok(None),
        }
    }

    /// Sends a request to `url` with auth for `scope` (`repository:NAME:pull[,push]`, or empty
    /// for the `/v2/` ping), retrying where that is safe. Returns any response that is not a
    /// 401 or 5xx; the caller interprets the status.
    pub async fn send(
        &self,
        registry: &str,
        scope: &str,
        method: Method,
        url: &str,
        build: &RequestFactory<'_>,
    ) -> Result<Response, RegistryError> {
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            let mut req = build(self.http.request(method.clone(), url));
            if let Some(auth) = self.authorization(registry, scope).await? {
                req = req.header(AUTHORIZATION, auth);
            }
            let result = req.send().await;
            let retryable = match &result {
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED && !reauthenticated => {
                    reauthenticated = true;
                    let challenge =
                        r.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    self.answer_challenge(registry, scope, &challenge).await?;
                    continue;
                }
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                    return Err(RegistryError::Unauthorized { registry: registry.to_owned() });
                }
                Ok(r) if r.status().is_server_error() => true,
                Ok(_) => false,
                Err(e) => e.is_connect() || e.is_timeout() || e.is_request() || e.is_body(),
            };
            if !retryable || attempt >= self.opts.retries {
                return match result {
                    Ok(r) => Ok(r),
                    Err(e) => Err(RegistryError::Transport { url: without_query(url), reason: short_reason(&e) }),
                };
            }
            attempt += 1;
            let delay = Duration::from_millis(200 * 2u64.pow(attempt.min(5)));
            tracing::debug!(%url, attempt, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn answer_challenge(&self, registry: &str, scope: &str, challenge: &str) -> Result<(), RegistryError> {
        let (kind, params) = parse_challenge(challenge);
        match kind.as_str() {
            "basic" => {
                if self.credential(registry)?.is_none() {
                    return Err(RegistryError::Unauthorized { registry: registry.to_owned() });
                }
                self.schemes.lock().unwrap_or_else(|e| e.into_inner()).insert(registry.to_owned(), Scheme::Basic);
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .cloned()
                    .ok_or_else(|| RegistryError::Protocol(format!("{registry}: bearer challenge without realm")))?;
                let service = params.get("service").cloned();
                self.schemes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(registry.to_owned(), Scheme::Bearer { realm: realm.clone(), service: service.clone() });
                let token = self.fetch_token(registry, &realm, service.as_deref(), scope).await?;
                self.tokens
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((registry.to_owned(), scope.to_owned()), token);
                Ok(())
            }
            _ => Err(RegistryError::Unauthorized { registry: registry.to_owned() }),
        }
    }

    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            query.push(("scope", s));
        }
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| RegistryError::Protocol(format!("{registry}: bad token realm `{realm}`: {e}")))?;
        url.query_pairs_mut().extend_pairs(&query);
        let mut req = self.http.get(url);
        if let Some(c) = self.credential(registry)? {
            req = req.header(AUTHORIZATION, c.basic_header());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RegistryError::Transport { url: realm.to_owned(), reason: error_chain(&e) })?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized { registry: registry.to_owned() });
        }
        if !resp.status().is_success() {
            return Err(RegistryError::Http {
                method: "GET".into(),
                url: realm.to_owned(),
                status: resp.status().as_u16(),
                body: String::new(),
            });
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RegistryError::Transport { url: realm.to_owned(), reason: error_chain(&e) })?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol(format!("token from {realm}: {e}")))?;
        body.get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_owned)
            .ok_or_else(|| RegistryError::Protocol(format!("token response from {realm} has no token")))
    }

    /// `GET /v2/`: checks that the registry answers and accepts our credentials.
    pub async fn ping(&self, registry: &str) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base_url(registry));
        let resp = self.send(registry, "", Method::GET, &url, &|r| r).await?;
        if resp.status().is_success() { Ok(()) } else { Err(http_error("GET", &url, resp).await) }
    }
}

/// Turns an unexpected response into an error with the registry's own message.
pub async fn http_error(method: &str, url: &str, resp: Response) -> RegistryError {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    RegistryError::Http { method: method.to_owned(), url: without_query(url), status, body: message }
}

/// `Bearer realm="…",service="…",scope="…"` → (`bearer`, params).
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let (kind, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_owned());
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    (kind.to_ascii_lowercase(), params)
}

/// A URL for messages: upload state and digests in the query are noise there.
pub(crate) fn without_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

/// The innermost causes of a reqwest error (its outer text repeats the URL).
fn short_reason(e: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    if causes.is_empty() { e.to_string() } else { causes.join(": ") }
}

/// Headers accepted for manifests, most specific first.
pub fn manifest_accept() -> HeaderMap {
    let mut h = HeaderMap::new();
    let accept = [
        crate::image::media::OCI_INDEX,
        crate::image::media::OCI_MANIFEST,
        crate::image::media::DOCKER_MANIFEST_LIST,
        crate::image::media::DOCKER_MANIFEST,
    ]
    .join(", ");
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(reqwest::header::ACCEPT, v);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (k, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(k, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (k, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((k.as_str(), p["realm"].as_str()), ("basic", "Registry Realm"));
    }

    #[test]
    fn base_urls() {
        let r = Registry::new(TransportOptions {
            insecure_registries: vec!["127.0.0.1:5000".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.base_url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(r.base_url("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(r.base_url("quay.io"), "https://quay.io");
    }
}
