//! A real registry for tests: Debian's `docker-registry` (distribution 2.8) on a loopback port,
//! open, with htpasswd basic auth, or with bearer tokens from a small issuer written here; and
//! a TCP proxy that counts the bytes each way, to prove what a transfer sent.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub enum Auth {
    None,
    Htpasswd { user: String, password: String },
    Token(TokenIssuer),
}

pub struct TestRegistry {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    config: PathBuf,
    /// The CA (self-signed certificate) of a TLS registry.
    pub ca: Option<PathBuf>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestRegistry {
    pub fn start(dir: &Path, auth: &Auth) -> Self {
        Self::start_with(dir, auth, false)
    }

    /// Serves HTTPS with a self-signed certificate for 127.0.0.1 (its path in `ca`).
    pub fn start_tls(dir: &Path) -> Self {
        Self::start_with(dir, &Auth::None, true)
    }

    fn start_with(dir: &Path, auth: &Auth, tls: bool) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let auth_yaml = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd { user, password } => {
                let file = dir.join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbc", file.to_str().unwrap(), user, password])
                    .output()
                    .expect("htpasswd (apache2-utils)");
                assert!(out.status.success());
                format!("auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n", file.display())
            }
            Auth::Token(issuer) => format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: kiln-test\n    issuer: kiln-test-issuer\n    rootcertbundle: {}\n",
                issuer.port,
                issuer.cert_pem.display()
            ),
        };
        let mut tls_yaml = String::new();
        let mut ca = None;
        if tls {
            let (ca_cert, cert, key) = make_tls(dir);
            tls_yaml = format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display());
            ca = Some(ca_cert);
        }
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_yaml}{auth_yaml}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let mut r = Self { dir: dir.to_owned(), port, child: None, config, ca };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry");
        self.child = Some(child);
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Blob files the registry holds (by hex digest).
    pub fn blobs(&self) -> Vec<String> {
        let root = self.dir.join("data/docker/registry/v2/blobs/sha256");
        let mut out = Vec::new();
        for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for b in std::fs::read_dir(prefix.path()).into_iter().flatten().flatten() {
                if b.path().join("data").exists() {
                    out.push(b.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Forwards a loopback port to the registry and counts bytes in each direction.
pub struct CountingProxy {
    pub port: u16,
    pub to_registry: Arc<AtomicU64>,
    pub from_registry: Arc<AtomicU64>,
    /// `PATCH /v2/…` request lines seen (chunked upload pieces).
    pub patches: Arc<AtomicU64>,
    /// Requests for blobs (`/blobs/sha256:` in a request line) seen.
    pub blob_requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CountingProxy {
    pub fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let to_registry = Arc::new(AtomicU64::new(0));
        let from_registry = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let patches = Arc::new(AtomicU64::new(0));
        let blob_requests = Arc::new(AtomicU64::new(0));
        let (up, down, halt, seen, blobs) =
            (to_registry.clone(), from_registry.clone(), stop.clone(), patches.clone(), blob_requests.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else { continue };
                        pipe(
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            up.clone(),
                            Some((seen.clone(), blobs.clone())),
                        );
                        pipe(server, client, down.clone(), None);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { port, to_registry, from_registry, patches, blob_requests, stop }
    }

    pub fn reset(&self) {
        self.to_registry.store(0, Ordering::SeqCst);
        self.from_registry.store(0, Ordering::SeqCst);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    counter: Arc<AtomicU64>,
    requests: Option<(Arc<AtomicU64>, Arc<AtomicU64>)>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    if let Some((patches, blobs)) = &requests {
                        let hits = buf[..n].windows(10).filter(|w| *w == b"PATCH /v2/").count();
                        patches.fetch_add(hits as u64, Ordering::Relaxed);
                        let hits = buf[..n].windows(14).filter(|w| *w == b"/blobs/sha256:").count();
                        blobs.fetch_add(hits as u64, Ordering::Relaxed);
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// A token issuer for the registry's `auth: token` mode: checks Basic credentials and signs
/// an ES256 JWT (with the certificate in `x5c`) granting what the scope asks.
pub struct TokenIssuer {
    pub port: u16,
    pub cert_pem: PathBuf,
    pub requests: Arc<AtomicUsize>,
}

impl TokenIssuer {
    pub fn start(dir: &Path, user: &str, password: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let key_pem = dir.join("key.pem");
        let cert_pem = dir.join("cert.pem");
        let ok = |c: &mut Command| assert!(c.output().unwrap().status.success());
        ok(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=kiln-test-issuer",
            ])
            .arg("-keyout")
            .arg(&key_pem)
            .arg("-out")
            .arg(&cert_pem));
        let key_der = dir.join("key.der");
        let cert_der = dir.join("cert.der");
        ok(Command::new("openssl")
            .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"])
            .arg("-in")
            .arg(&key_pem)
            .arg("-out")
            .arg(&key_der));
        ok(Command::new("openssl")
            .args(["x509", "-outform", "DER"])
            .arg("-in")
            .arg(&cert_pem)
            .arg("-out")
            .arg(&cert_der));
        let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &std::fs::read(&key_der).unwrap(),
        )
        .unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x5c = b64.encode(std::fs::read(&cert_der).unwrap());
        let expected_auth = format!("Basic {}", b64.encode(format!("{user}:{password}")));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                counter.fetch_add(1, Ordering::SeqCst);
                let authorized = req.lines().any(|l| {
                    l.trim() == format!("Authorization: {expected_auth}")
                        || l.trim() == format!("authorization: {expected_auth}")
                });
                if !authorized {
                    let _ = s.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    continue;
                }
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
                let access: Vec<serde_json::Value> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .map(percent_decode)
                    .filter_map(|s| {
                        let mut parts = s.splitn(3, ':');
                        let (t, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({"type": t, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                    })
                    .collect();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
                let claims = serde_json::json!({"iss": "kiln-test-issuer", "sub": "tester", "aud": "kiln-test", "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{n}"), "access": access});
                let signing_input =
                    format!("{}.{}", b64url.encode(header.to_string()), b64url.encode(claims.to_string()));
                let sig = key.sign(&aws_lc_rs::rand::SystemRandom::new(), signing_input.as_bytes()).unwrap();
                let token = format!("{signing_input}.{}", b64url.encode(sig.as_ref()));
                let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { port, cert_pem, requests }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where [`random_image`] leaves the OCI layout directory and the OCI archive it makes for `name`.
pub fn random_image_files(env: &super::Env, name: &str) -> (PathBuf, PathBuf) {
    let safe = name.replace(['/', ':'], "_");
    (env.dir.path().join(format!("layout-{safe}")), env.dir.path().join(format!("{safe}.tar")))
}

/// Writes an OCI archive with one image of uncompressed random layers (fast to make in a
/// debug build) and loads it.
pub fn random_image(env: &super::Env, name: &str, layer_sizes: &[usize]) -> Vec<String> {
    use kiln::image::Digest;
    let (dir, archive) = random_image_files(env, name);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut seed = 0x9e3779b97f4a7c15u64 ^ layer_sizes.len() as u64 ^ name.len() as u64;
    for size in layer_sizes {
        let mut tar = tar::Builder::new(Vec::new());
        let mut data = vec![0u8; *size];
        for chunk in data.chunks_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let bytes = seed.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("blob-{size}"), &data[..]).unwrap();
        let bytes = tar.into_inner().unwrap();
        let d = Digest::of(&bytes);
        fs::write(blobs.join(d.hex()), &bytes).unwrap();
        layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": bytes.len()}));
        diff_ids.push(d.to_string());
    }
    let config =
        serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let cd = Digest::of(&config_bytes);
    fs::write(blobs.join(cd.hex()), &config_bytes).unwrap();
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config_bytes.len()},
        "layers": layers});
    let mb = serde_json::to_vec(&manifest).unwrap();
    let md = Digest::of(&mb);
    fs::write(blobs.join(md.hex()), &mb).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": mb.len(),
        "annotations": {"org.opencontainers.image.ref.name": name}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let mut t = tar::Builder::new(fs::File::create(&archive).unwrap());
    t.append_dir_all(".", &dir).unwrap();
    t.finish().unwrap();
    env.ok(&["load", "-q", "-i", archive.to_str().unwrap()]);
    let mut all: Vec<String> =
        layers.iter().map(|l| l["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned()).collect();
    all.push(cd.hex().to_owned());
    all
}

/// A test CA and a server certificate for 127.0.0.1 signed by it: (ca.crt, tls.crt, tls.key).
pub fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (ca_key, ca_cert) = (dir.join("ca.key"), dir.join("ca.crt"));
    let (key, csr, cert, ext) = (dir.join("tls.key"), dir.join("tls.csr"), dir.join("tls.crt"), dir.join("tls.ext"));
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        .unwrap();
    let run = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(Command::new("openssl")
        .args(["req", "-x509", "-days", "2", "-subj", "/CN=kiln-test-ca"])
        .args(ec)
        .arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca_cert));
    run(Command::new("openssl")
        .args(["req", "-subj", "/CN=127.0.0.1"])
        .args(ec)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca_cert)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (ca_cert, cert, key)
}
