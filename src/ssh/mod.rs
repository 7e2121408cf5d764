//! SSH transport (russh): one connection per host, reused for every command and upload, host
//! keys checked against known_hosts, password / key / agent auth, jump hosts, and root through
//! sudo for non-root users. Knows nothing of clusters or phases.
//!
//! Secrets (passwords, passphrases, the sudo password) never reach argv, logs or messages: the
//! sudo password goes to `sudo -S` on the channel's stdin.

mod known_hosts;
mod shell;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{self, AuthResult, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

pub use known_hosts::{HostKeyPolicy, HostKeyProblem};
pub use shell::{quote, with_env};

use crate::secret::Secret;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: IpAddr,
    pub port: u16,
    pub user: String,
    pub auth: Auth,
    /// A bastion the connection is tunnelled through (`--bastion`).
    pub jump: Option<Box<Target>>,
}

/// Credentials, tried in order: key file, agent, password.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub password: Option<Secret>,
    pub private_key: Option<PathBuf>,
    pub key_passphrase: Option<Secret>,
    /// Ask `$SSH_AUTH_SOCK`'s agent when no key file works.
    pub use_agent: bool,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub host_keys: HostKeyPolicy,
    pub connect_timeout: Duration,
    /// Default limit for one command; `None`: no limit.
    pub command_timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {host}:{port}: {reason}")]
    Connect { host: String, port: u16, reason: String },
    #[error("host key of {host} refused: {problem}")]
    HostKey { host: String, problem: HostKeyProblem },
    #[error("authentication as `{user}` on {host} failed ({tried})")]
    Auth { host: String, user: String, tried: String },
    #[error("{host}: `{user}` is not root and cannot use sudo: {reason}")]
    Sudo { host: String, user: String, reason: String },
    #[error("{host}: command failed with exit code {status}: {command}\n{output}")]
    Command { host: String, command: String, status: u32, output: String },
    #[error("{host}: `{command}` did not finish within {seconds} s")]
    Timeout { host: String, command: String, seconds: u64 },
    #[error("{host}: upload of `{path}` arrived corrupted (sha256 {expected} sent, {actual} written)")]
    UploadMismatch { host: String, path: String, expected: String, actual: String },
    #[error("{host}: cannot read the data to send")]
    Input {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host}: connection lost: {reason}")]
    Lost { host: String, reason: String },
    #[error("cannot read `{}`", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last `n` lines of stdout and stderr, for error reports.
    pub fn tail(&self, n: usize) -> String {
        let text = format!("{}{}", String::from_utf8_lossy(&self.stdout), String::from_utf8_lossy(&self.stderr));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// The host's side of an upload: stdin into `remote.kiln-part` (and into `consumer`, if any),
/// then the part's sha256 on stdout. The caller compares it and renames.
fn receive_script(remote: &str) -> String {
    let part = quote(&format!("{remote}.kiln-part"));
    let dir = remote.rsplit_once('/').map_or(".", |(d, _)| if d.is_empty() { "/" } else { d });
    format!(
        "set -e; {HOST_SHA256}; mkdir -p {dir}; umask 077; cat > {part}; $hash {part} | cut -d' ' -f1",
        dir = quote(dir)
    )
}

/// The script behind [`Session::pipe_unhashed`]: no hashing; the saved file stays only when
/// every byte arrived and the consumer succeeded, and is removed otherwise.
fn unhashed_script(save_to: Option<&str>, consumer: Option<&str>) -> String {
    // The consumer's status decides; what it leaves unread (tar stops at its end marker) is drained.
    let consume = consumer.map(|c| format!("{{ {c}\ns=$?; cat > /dev/null; exit $s; }} >&2"));
    match (save_to, consume) {
        (Some(path), consume) => {
            let file = quote(path);
            // No pipefail in every sh: a failing tee (a full disk) leaves a mark instead.
            let failed = quote(&format!("{path}.failed"));
            let dir = path.rsplit_once('/').map_or(".", |(d, _)| if d.is_empty() { "/" } else { d });
            let write = match consume {
                Some(consume) => format!("rm -f {failed}; {{ tee {file} || : > {failed}; }} | {consume}"),
                None => format!("cat > {file}"),
            };
            format!(
                "mkdir -p {dir} || exit 1; umask 077; {write}\nrc=$?; [ -e {failed} ] && rc=1; \
                 [ $rc = 0 ] || {{ rm -f {file} {failed}; exit $rc; }}",
                dir = quote(dir),
            )
        }
        (None, Some(consume)) => consume,
        (None, None) => "cat > /dev/null".to_owned(),
    }
}

/// Picks the host's fastest sha256 into `$hash`: OpenSSL's uses the CPU's SHA instructions
/// (about 1.2 GB/s here against coreutils' 200 MB/s); `sha256sum` where there is no openssl.
/// Both print the digest first.
const HOST_SHA256: &str =
    "if command -v openssl >/dev/null 2>&1; then hash='openssl dgst -sha256 -r'; else hash=sha256sum; fi";

/// Where [`Session::run_live`] sends complete lines of output.
type LineSink = tokio::sync::mpsc::UnboundedSender<String>;

/// Cuts a byte stream into lines (without their `\n` or `\r\n`), keeping a partial line until
/// its end arrives.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, data: &[u8], sink: Option<&LineSink>) {
        let Some(sink) = sink else { return };
        self.partial.extend_from_slice(data);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            // A closed receiver only means nobody watches any more.
            let _ = sink.send(text.trim_end_matches(['\n', '\r']).to_owned());
        }
    }

    fn finish(&mut self, sink: Option<&LineSink>) {
        if let Some(sink) = sink
            && !self.partial.is_empty()
        {
            let _ = sink.send(String::from_utf8_lossy(&self.partial).into_owned());
            self.partial.clear();
        }
    }
}

/// Waits before each further connection attempt (7 s in all).
const RETRY_DELAYS: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)];

/// A failed connection attempt, and whether trying again may help.
struct ConnectFailure {
    error: SshError,
    transient: bool,
}

impl From<SshError> for ConnectFailure {
    fn from(error: SshError) -> Self {
        Self { error, transient: false }
    }
}

/// The connection was refused or dropped before authentication: the host is there but its sshd
/// is restarting or throttling new connections. Key, auth and protocol errors are final.
fn is_transient(error: &russh::Error) -> bool {
    use std::io::ErrorKind::*;
    match error {
        russh::Error::IO(io) => {
            matches!(io.kind(), ConnectionRefused | ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe)
        }
        russh::Error::Disconnect | russh::Error::HUP => true,
        _ => false,
    }
}

/// How commands get root.
#[derive(Debug, Clone)]
enum Privilege {
    Root,
    SudoNoPassword,
    SudoPassword(Secret),
}

/// An authenticated connection to one host.
pub struct Session {
    handle: Handle<known_hosts::Checker>,
    target: Target,
    privilege: Privilege,
    options: Options,
    /// Keeps the bastion's connection alive as long as the tunnel through it.
    _jump: Option<Box<Session>>,
    /// Channels open at once: OpenSSH allows 10 sessions per connection (MaxSessions).
    channels: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("host", &self.target.host).field("user", &self.target.user).finish()
    }
}

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        // Dead peers are found by keepalives, not by idle time: commands may be silent for long.
        inactivity_timeout: None,
        // A host that vanished (power loss, partition) is noticed in about 15 s.
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 3,
        nodelay: true,
        preferred: preferred_algorithms(),
        ..Default::default()
    })
}

/// russh's defaults, but AES-256-GCM before ChaCha20-Poly1305 where this CPU has AES
/// instructions (as RHEL's crypto policy orders them): more than twice the throughput here
/// (330-430 MB/s against 160-210 MB/s to an OpenSSH 9.2 server on one link).
fn preferred_algorithms() -> russh::Preferred {
    let mut preferred = russh::Preferred::DEFAULT.clone();
    #[cfg(target_arch = "x86_64")]
    let aes = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes = false;
    if aes {
        let mut ciphers = preferred.cipher.to_vec();
        ciphers.retain(|c| *c != russh::cipher::AES_256_GCM);
        ciphers.insert(0, russh::cipher::AES_256_GCM);
        preferred.cipher = std::borrow::Cow::Owned(ciphers);
    }
    preferred
}

impl Session {
    /// Connects, checks the host key, authenticates and works out how to become root.
    pub async fn connect(target: &Target, options: &Options) -> Result<Self, SshError> {
        let host = target.host.to_string();
        let timeout = options.connect_timeout;
        let mut attempt = 0;
        let mut session = loop {
            attempt += 1;
            let fut = Self::connect_inner(target, options);
            let failure = match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(session)) => break session,
                Ok(Err(failure)) => failure,
                // A host that does not answer at all is down or cut off: waiting again would
                // only delay the report.
                Err(_) => {
                    return Err(SshError::Connect {
                        host,
                        port: target.port,
                        reason: format!("no answer within {} s", timeout.as_secs()),
                    });
                }
            };
            // Connecting changes nothing on the host, so a refused or dropped connection (sshd
            // restarting, its MaxStartups limit) is worth another try.
            match RETRY_DELAYS.get(attempt - 1) {
                Some(delay) if failure.transient => {
                    tracing::debug!(host = %host, attempt, "connection failed, retrying: {}", failure.error);
                    tokio::time::sleep(*delay).await;
                }
                _ => return Err(failure.error),
            }
        };
        // sudo can stall on its own (it looks up the hostname), so it gets its own limit.
        let sudo_limit = Duration::from_secs(30);
        session.privilege =
            tokio::time::timeout(sudo_limit, session.find_privilege()).await.map_err(|_| SshError::Sudo {
                host: host.clone(),
                user: target.user.clone(),
                reason: format!(
                    "sudo did not answer within {} s; it may be waiting on a hostname lookup \
                     (is the host's own name in its /etc/hosts?)",
                    sudo_limit.as_secs()
                ),
            })??;
        Ok(session)
    }

    async fn connect_inner(target: &Target, options: &Options) -> Result<Self, ConnectFailure> {
        let host = target.host.to_string();
        let connect_error = |reason: String| SshError::Connect { host: host.clone(), port: target.port, reason };
        let (checker, problem) = known_hosts::Checker::new(&host, target.port, options.host_keys.clone());
        let config = client_config();
        let (handle, jump) = match &target.jump {
            None => {
                let handle = client::connect(config, (target.host, target.port), checker).await;
                (handle, None)
            }
            Some(bastion) => {
                let jump = Box::pin(Session::connect(bastion, options)).await?;
                let channel = jump
                    .handle
                    .channel_open_direct_tcpip(host.clone(), u32::from(target.port), "127.0.0.1", 0)
                    .await
                    .map_err(|e| connect_error(format!("through bastion {}: {e}", bastion.host)))?;
                let handle = client::connect_stream(config, channel.into_stream(), checker).await;
                (handle, Some(Box::new(jump)))
            }
        };
        let mut handle = match handle {
            Ok(h) => h,
            Err(e) => {
                if let Some(problem) = problem.lock().await.take() {
                    return Err(SshError::HostKey { host, problem }.into());
                }
                return Err(ConnectFailure { transient: is_transient(&e), error: connect_error(e.to_string()) });
            }
        };
        authenticate(&mut handle, target).await?;
        Ok(Self {
            handle,
            target: target.clone(),
            privilege: Privilege::Root,
            options: options.clone(),
            _jump: jump,
            channels: Arc::new(tokio::sync::Semaphore::new(6)),
        })
    }

    pub fn host(&self) -> IpAddr {
        self.target.host
    }

    async fn find_privilege(&self) -> Result<Privilege, SshError> {
        if self.target.user == "root" {
            return Ok(Privilege::Root);
        }
        let sudo_error = |reason: String| SshError::Sudo {
            host: self.target.host.to_string(),
            user: self.target.user.clone(),
            reason,
        };
        let probe = self.raw_exec("sudo -n true", None, &b""[..], |_| {}, None).await?;
        if probe.status == 0 {
            return Ok(Privilege::SudoNoPassword);
        }
        let Some(password) = self.target.auth.password.clone() else {
            return Err(sudo_error(
                "sudo asks for a password and none was given (set `ssh.passwd`, or allow NOPASSWD sudo)".into(),
            ));
        };
        let with_password = Privilege::SudoPassword(password);
        let check = self.raw_exec(&wrap("true", &with_password), Some(&with_password), &b""[..], |_| {}, None).await?;
        if check.status == 0 {
            Ok(with_password)
        } else {
            Err(sudo_error(format!("sudo refused the password: {}", check.tail(2))))
        }
    }

    /// Runs `command` (a shell snippet) as root within the command time limit; a non-zero exit
    /// is not an error here.
    pub async fn exec(&self, command: &str) -> Result<Output, SshError> {
        self.exec_to(command, None).await
    }

    /// [`Session::run`], handing each line of output (stdout and stderr) to `on_line` as it
    /// arrives, so a long script is watched live rather than reported when it ends.
    pub async fn run_live(&self, command: &str, on_line: impl FnMut(&str)) -> Result<Output, SshError> {
        let out = self.exec_live(command, on_line).await?;
        self.check_status(command, out)
    }

    /// [`Session::exec`] (a non-zero exit is no error), handing each line of output to
    /// `on_line` as it arrives.
    pub async fn exec_live(&self, command: &str, mut on_line: impl FnMut(&str)) -> Result<Output, SshError> {
        let (sink, mut received) = tokio::sync::mpsc::unbounded_channel();
        let run = self.exec_to(command, Some(sink));
        let show = async {
            while let Some(line) = received.recv().await {
                on_line(&line);
            }
        };
        let (out, ()) = tokio::join!(run, show);
        out
    }

    async fn exec_to(&self, command: &str, lines: Option<LineSink>) -> Result<Output, SshError> {
        let wrapped = wrap(command, &self.privilege);
        let run = self.raw_exec(&wrapped, Some(&self.privilege), &b""[..], |_| {}, lines);
        match self.options.command_timeout {
            None => run.await,
            Some(limit) => tokio::time::timeout(limit, run).await.map_err(|_| SshError::Timeout {
                host: self.target.host.to_string(),
                command: first_line(command),
                seconds: limit.as_secs(),
            })?,
        }
    }

    /// Pipes `source` into `command` (as the login user, not root: for measuring) and returns
    /// how long that took, from the channel's opening to the command's exit.
    pub async fn timed_pipe<R: AsyncRead + Unpin>(&self, command: &str, source: R) -> Result<Duration, SshError> {
        let started = std::time::Instant::now();
        let out = self.raw_exec(command, None, source, |_| {}, None).await?;
        self.check_status(command, out)?;
        Ok(started.elapsed())
    }

    /// Runs `command` as root and fails, with the end of its output, unless it exits 0.
    pub async fn run(&self, command: &str) -> Result<Output, SshError> {
        let out = self.exec(command).await?;
        self.check_status(command, out)
    }

    #[allow(clippy::result_large_err)] // the error every command of a session returns
    fn check_status(&self, command: &str, out: Output) -> Result<Output, SshError> {
        if out.status != 0 {
            return Err(SshError::Command {
                host: self.target.host.to_string(),
                command: first_line(command),
                status: out.status,
                output: out.tail(20),
            });
        }
        Ok(out)
    }

    /// Streams bytes to the host as root without the host hashing them: SSH's integrity
    /// protection carries them unchanged, and the caller checks them on this machine (a blob
    /// against its digest, while it streams) before it puts anything into use (on a small
    /// host, hashing is a process and two more copies per byte). With `save_to` they are
    /// written to that file (mode 0600), which stays only if everything arrived and `consumer`
    /// succeeded; the caller renames it into place once the bytes proved right. `consumer` (a
    /// shell command reading stdin, e.g. `tar -x`) gets them as they arrive, and what it leaves
    /// unread is drained.
    pub async fn pipe_unhashed<R: AsyncRead + Unpin>(
        &self,
        source: R,
        save_to: Option<&str>,
        consumer: Option<&str>,
    ) -> Result<(), SshError> {
        let wrapped = wrap(&unhashed_script(save_to, consumer), &self.privilege);
        let out = self.raw_exec(&wrapped, Some(&self.privilege), source, |_| {}, None).await?;
        if out.status != 0 {
            let what = save_to.map_or_else(|| consumer.map(first_line).unwrap_or_default(), |p| format!("write {p}"));
            return Err(SshError::Command {
                host: self.target.host.to_string(),
                command: what,
                status: out.status,
                output: out.tail(5),
            });
        }
        Ok(())
    }

    /// Streams `source` to `remote` (as root, mode `mode`): written to `remote.kiln-part`,
    /// checked by sha256 on the host, then renamed into place. Returns the hex sha256.
    pub async fn upload<R: AsyncRead + Unpin>(&self, source: R, remote: &str, mode: u32) -> Result<String, SshError> {
        let part = format!("{remote}.kiln-part");
        let script = receive_script(remote);
        let mut hasher = Sha256::new();
        let wrapped = wrap(&script, &self.privilege);
        let host = self.target.host.to_string();
        let out = self.raw_exec(&wrapped, Some(&self.privilege), source, |chunk| hasher.update(chunk), None).await?;
        if out.status != 0 {
            return Err(SshError::Command {
                host,
                command: format!("write {remote}"),
                status: out.status,
                output: out.tail(5),
            });
        }
        let expected = hex::encode(hasher.finalize());
        let actual = out.stdout_text().trim().to_owned();
        if actual != expected {
            let _ = self.exec(&format!("rm -f {}", quote(&part))).await;
            return Err(SshError::UploadMismatch { host, path: remote.to_owned(), expected, actual });
        }
        self.run(&format!("chmod {mode:o} {p} && mv -f {p} {r}", p = quote(&part), r = quote(remote))).await?;
        Ok(expected)
    }

    /// One exec channel: runs `command` as given, feeds the sudo password if asked and then
    /// `stdin` (each chunk shown to `sent` on its way), collects the output while writing, and
    /// always closes the channel. A channel that ends without an exit status means the
    /// connection was lost.
    async fn raw_exec<R: AsyncRead + Unpin>(
        &self,
        command: &str,
        privilege: Option<&Privilege>,
        mut stdin: R,
        mut sent: impl FnMut(&[u8]),
        lines: Option<LineSink>,
    ) -> Result<Output, SshError> {
        let host = self.target.host.to_string();
        let lost = |reason: String| SshError::Lost { host: host.clone(), reason };
        let started = std::time::Instant::now();
        let mut stdin_bytes = 0u64;
        let _permit = self.channels.acquire().await.map_err(|e| lost(e.to_string()))?;
        let channel = self.handle.channel_open_session().await.map_err(|e| lost(e.to_string()))?;
        channel.exec(true, command.as_bytes()).await.map_err(|e| lost(e.to_string()))?;
        let (mut read, write) = channel.split();
        // Output is read while input is written, so neither side's window can stall the other.
        let collect = tokio::spawn(async move {
            let mut out = Output::default();
            let mut exited = false;
            let (mut stdout_lines, mut stderr_lines) = (LineSplitter::default(), LineSplitter::default());
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        out.stdout.extend_from_slice(&data);
                        stdout_lines.push(&data, lines.as_ref());
                    }
                    ChannelMsg::ExtendedData { data, .. } => {
                        out.stderr.extend_from_slice(&data);
                        stderr_lines.push(&data, lines.as_ref());
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        out.status = exit_status;
                        exited = true;
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        out.status = 128;
                        out.stderr.extend_from_slice(format!("killed by signal {signal_name:?}").as_bytes());
                        exited = true;
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            stdout_lines.finish(lines.as_ref());
            stderr_lines.finish(lines.as_ref());
            (out, exited)
        });
        let feed = async {
            let mut writer = write.make_writer();
            if let Some(Privilege::SudoPassword(p)) = privilege {
                writer.write_all(format!("{}\n", p.expose()).as_bytes()).await.map_err(|e| lost(e.to_string()))?;
            }
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = stdin.read(&mut buf).await.map_err(|source| SshError::Input { host: host.clone(), source })?;
                if n == 0 {
                    break;
                }
                sent(&buf[..n]);
                stdin_bytes += n as u64;
                writer.write_all(&buf[..n]).await.map_err(|e| lost(e.to_string()))?;
            }
            writer.flush().await.map_err(|e| lost(e.to_string()))?;
            drop(writer);
            write.eof().await.map_err(|e| lost(e.to_string()))?;
            collect.await.map_err(|e| lost(e.to_string()))
        };
        // A channel waiting for window space is not always woken when its connection dies (the
        // keepalives found the peer gone): the session's end is watched too.
        let closed = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if self.handle.is_closed() {
                    break;
                }
            }
        };
        let (out, exited) = tokio::select! {
            done = feed => done?,
            () = closed => return Err(lost("the connection was lost".into())),
        };
        let _ = write.close().await;
        // `KILN_LOG=kiln::ssh=debug`: every command with its time, to see where a run spends it.
        tracing::debug!(
            host = %host,
            ms = started.elapsed().as_millis() as u64,
            stdin_bytes,
            status = out.status,
            "{}",
            first_line(command.split_once("export PATH; ").map_or(command, |(_, c)| c))
        );
        if !exited {
            return Err(lost(format!("`{}` ended without an exit status", first_line(command))));
        }
        Ok(out)
    }

    /// Runs `command` as root and writes what it prints on standard output to `dest` as it
    /// arrives, so nothing large is held in memory. Returns the bytes written; a non-zero exit
    /// is an error with the command's standard error.
    pub async fn download(&self, command: &str, dest: &Path) -> Result<u64, SshError> {
        use tokio::io::AsyncWriteExt as _;
        let host = self.target.host.to_string();
        let lost = |reason: String| SshError::Lost { host: host.clone(), reason };
        let local = |source| SshError::Local { path: dest.to_owned(), source };
        let mut file = tokio::fs::File::create(dest).await.map_err(local)?;
        let _permit = self.channels.acquire().await.map_err(|e| lost(e.to_string()))?;
        let mut channel = self.handle.channel_open_session().await.map_err(|e| lost(e.to_string()))?;
        channel.exec(true, wrap(command, &self.privilege).as_bytes()).await.map_err(|e| lost(e.to_string()))?;
        if let Privilege::SudoPassword(p) = &self.privilege {
            channel.data(format!("{}\n", p.expose()).as_bytes()).await.map_err(|e| lost(e.to_string()))?;
        }
        channel.eof().await.map_err(|e| lost(e.to_string()))?;
        let (mut written, mut stderr, mut status) = (0u64, Vec::new(), None);
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    file.write_all(&data).await.map_err(local)?;
                    written += data.len() as u64;
                }
                ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::ExitSignal { .. } => status = Some(128),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        file.sync_all().await.map_err(local)?;
        match status {
            Some(0) => Ok(written),
            Some(status) => Err(SshError::Command {
                host,
                command: first_line(command),
                status,
                output: String::from_utf8_lossy(&stderr).into_owned(),
            }),
            None => Err(lost(format!("`{}` ended without an exit status", first_line(command)))),
        }
    }

    /// A TCP connection that the host makes to `address:port` (as the host sees it), carried
    /// by this session: how kiln talks to services that listen only inside the cluster.
    pub async fn tunnel(&self, address: &str, port: u16) -> Result<russh::ChannelStream<client::Msg>, SshError> {
        let channel =
            self.handle.channel_open_direct_tcpip(address.to_owned(), u32::from(port), "127.0.0.1", 0).await.map_err(
                |e| SshError::Connect {
                    host: self.target.host.to_string(),
                    port,
                    reason: format!("the host could not open a connection to {address}:{port} for kiln: {e}"),
                },
            )?;
        Ok(channel.into_stream())
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

/// The command as sent: through sudo when not root, always under `sh -c` so env prefixes and
/// `&&` chains behave the same everywhere.
fn wrap(command: &str, privilege: &Privilege) -> String {
    let script = format!("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH; {command}");
    match privilege {
        Privilege::Root => format!("sh -c {}", quote(&script)),
        Privilege::SudoNoPassword => format!("sudo -n -- sh -c {}", quote(&script)),
        // `-p ''`: no prompt text in the output; the password arrives on stdin.
        Privilege::SudoPassword(_) => format!("sudo -S -p '' -- sh -c {}", quote(&script)),
    }
}

fn first_line(command: &str) -> String {
    let line = command.lines().next().unwrap_or_default();
    if line.chars().count() > 120 {
        format!("{}…", line.chars().take(120).collect::<String>())
    } else {
        line.to_owned()
    }
}

async fn authenticate(handle: &mut Handle<known_hosts::Checker>, target: &Target) -> Result<(), SshError> {
    let host = target.host.to_string();
    let user = target.user.clone();
    let lost = |e: russh::Error| SshError::Connect { host: host.clone(), port: target.port, reason: e.to_string() };
    let mut tried = Vec::new();
    let rsa_hash = handle.best_supported_rsa_hash().await.map_err(lost)?.flatten();

    // Key files: the one given, else the usual defaults.
    let keys: Vec<PathBuf> = match &target.auth.private_key {
        Some(k) => vec![expand_home(k)],
        None if target.auth.password.is_none() => ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .filter_map(|n| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh").join(n)))
            .filter(|p| p.is_file())
            .collect(),
        None => vec![],
    };
    for path in keys {
        let passphrase = target.auth.key_passphrase.as_ref().map(|p| p.expose().to_owned());
        let key = russh::keys::load_secret_key(&path, passphrase.as_deref())
            .map_err(|e| SshError::Local { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
        let hash = if key.algorithm().is_rsa() { rsa_hash } else { None };
        let result = handle
            .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(lost)?;
        if matches!(result, AuthResult::Success) {
            return Ok(());
        }
        tried.push(format!("key {}", path.display()));
    }
    if target.auth.use_agent
        && let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await
        && let Ok(identities) = agent.request_identities().await
    {
        for identity in identities {
            let key = identity.public_key().into_owned();
            let hash = if key.algorithm().is_rsa() { rsa_hash } else { None };
            if let Ok(AuthResult::Success) = handle.authenticate_publickey_with(&user, key, hash, &mut agent).await {
                return Ok(());
            }
        }
        tried.push("agent".into());
    }
    if let Some(password) = &target.auth.password {
        let result = handle.authenticate_password(&user, password.expose()).await.map_err(lost)?;
        if matches!(result, AuthResult::Success) {
            return Ok(());
        }
        tried.push("password".into());
    }
    if tried.is_empty() {
        tried.push("no password, key or agent was available".into());
    }
    Err(SshError::Auth { host, user, tried: tried.join(", ") })
}

fn expand_home(path: &std::path::Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_owned(),
    }
}

/// SHA256 fingerprint in OpenSSH's form (`SHA256:…`).
pub fn fingerprint(key: &russh::keys::PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_into_lines_across_chunks() {
        let (sink, mut received) = tokio::sync::mpsc::unbounded_channel();
        let mut splitter = LineSplitter::default();
        for chunk in [&b"first li"[..], b"ne\r\nsecond\nthi", b"rd \xff", b""] {
            splitter.push(chunk, Some(&sink));
        }
        splitter.finish(Some(&sink));
        drop(sink);
        let mut lines = Vec::new();
        while let Ok(line) = received.try_recv() {
            lines.push(line);
        }
        assert_eq!(lines, ["first line", "second", "third \u{fffd}"]);
    }

    /// A tar of one file `hello` in `dir/src`, with more zero padding past its end marker than a
    /// pipe holds, and the empty directory `dir/into` to unpack it in.
    fn tar_with_padding(dir: &std::path::Path) -> (Vec<u8>, std::path::PathBuf) {
        let src = dir.join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("hello"), "hi\n").unwrap();
        let mut archive = tar::Builder::new(Vec::new());
        archive.append_dir_all(".", &src).unwrap();
        let mut bytes = archive.into_inner().unwrap();
        bytes.extend_from_slice(&vec![0u8; 1 << 20]);
        let into = dir.join("into");
        std::fs::create_dir(&into).unwrap();
        (bytes, into)
    }

    /// The receiving side, run here under `sh` (dash, like Debian hosts): the consumer unpacks
    /// while the file is written, trailing bytes tar leaves unread are drained, and a failing
    /// consumer or a failing write fails the pipe and leaves no file.
    #[test]
    fn unhashed_script_saves_only_whole_files_and_unpacks_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, into) = tar_with_padding(dir.path());
        let part = dir.path().join("blobs/abc.kiln-part").display().to_string();
        let consumer = format!("tar -x -f - -C {}", quote(&into.display().to_string()));
        let run = |save_to: Option<&str>, consumer: Option<&str>| {
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(unhashed_script(save_to, consumer))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            let _ = child.stdin.take().unwrap().write_all(&bytes); // a failed upload stops reading
            child.wait_with_output().unwrap()
        };
        let out = run(Some(&part), Some(&consumer));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(&part).unwrap(), bytes, "saved whole, padding after tar's end included");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&part).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(into.join("hello")).unwrap(), "hi\n");
        std::fs::remove_file(&part).unwrap();

        let failed = run(Some(&part), Some("tar -x -z -f - -C /nonexistent"));
        assert!(!failed.status.success(), "a failing consumer fails the upload");
        assert!(!std::path::Path::new(&part).exists(), "and leaves no file");
        assert!(!std::path::Path::new(&format!("{part}.failed")).exists(), "nor its mark");

        // A tee that cannot write its file (here a directory stands in its way; a full disk
        // alike) fails the upload too, though tar succeeded.
        std::fs::create_dir_all(&part).unwrap();
        let out = run(Some(&part), Some(&consumer));
        assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!std::path::Path::new(&format!("{part}.failed")).exists());
        std::fs::remove_dir(&part).unwrap();

        let streamed = run(None, Some(&consumer));
        assert!(streamed.status.success());
        assert!(!run(None, Some("false")).status.success());
    }

    #[test]
    fn commands_run_under_sh_and_sudo_without_a_prompt() {
        assert!(wrap("echo hi", &Privilege::Root).starts_with("sh -c 'PATH="));
        assert!(wrap("echo hi", &Privilege::SudoNoPassword).starts_with("sudo -n -- sh -c "));
        assert!(wrap("echo hi", &Privilege::SudoPassword(Secret::new("pw"))).starts_with("sudo -S -p '' -- sh -c "));
        let secret = "hunter2-sudo-secret";
        assert!(
            !wrap("echo hi", &Privilege::SudoPassword(Secret::new(secret))).contains(secret),
            "the password goes to stdin"
        );
    }
}
