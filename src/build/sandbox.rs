//! RUN: a command on the build host, in its own mount namespace, with the image's rootfs
//! (an overlay of the layers so far) as working directory and the host's network.
//!
//! The child process unshares its mount namespace, makes every mount private, mounts the
//! overlay and changes into it before it execs the command, so nothing it mounts is seen by
//! the host and whatever it writes into its working directory lands in the overlay's upper
//! directory, which becomes the new layer. It then gets a private `/tmp` and the host's root
//! filesystem is remounted read-only in its namespace: a RUN that writes to an absolute host
//! path fails loudly instead of changing the build machine.

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("RUN needs root to set up its mount namespace (run `kiln build` as root): {0}")]
    NotPermitted(std::io::Error),
    #[error("failed to start the RUN command")]
    Spawn(#[source] std::io::Error),
    #[error("RUN command exited with {status}{}", if tail.is_empty() { String::new() } else { format!("; last output:\n{tail}") })]
    Failed { status: String, tail: String },
    #[error("invalid path for the sandbox: `{0}`")]
    BadPath(PathBuf),
}

/// Where the overlay lives for one RUN.
pub struct OverlayDirs {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

/// Runs `argv` with `env` in the overlay; forwards each output line to `on_line`.
pub fn run(
    dirs: &OverlayDirs,
    argv: &[String],
    env: &[(String, String)],
    on_line: &mut dyn FnMut(&str),
) -> Result<(), SandboxError> {
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| SandboxError::BadPath(p.to_owned()));
    let merged = cstr(&dirs.merged)?;
    let options = CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        dirs.lower.display(),
        dirs.upper.display(),
        dirs.work.display()
    ))
    .map_err(|_| SandboxError::BadPath(dirs.lower.clone()))?;
    let overlay = c"overlay";
    let root = c"/";
    let tmp = c"/tmp";
    let tmpfs = c"tmpfs";

    let (program, args) = argv.split_first().ok_or_else(|| SandboxError::BadPath(PathBuf::new()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec; it only makes system calls on data
    // allocated before the fork (no allocation, no locks).
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            unshare(CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&std::ffi::CStr>,
                root,
                None::<&std::ffi::CStr>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&std::ffi::CStr>,
            )?;
            mount(Some(overlay), merged.as_c_str(), Some(overlay), MsFlags::empty(), Some(options.as_c_str()))?;
            // The working directory keeps the overlay reachable even if /tmp is covered next.
            nix::unistd::chdir(merged.as_c_str())?;
            mount(Some(tmpfs), tmp, Some(tmpfs), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None::<&std::ffi::CStr>)?;
            mount(
                None::<&std::ffi::CStr>,
                root,
                None::<&std::ffi::CStr>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&std::ffi::CStr>,
            )?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| match e.raw_os_error() {
        Some(code) if code == nix::libc::EPERM || code == nix::libc::EACCES => SandboxError::NotPermitted(e),
        _ => SandboxError::Spawn(e),
    })?;

    // Interleave stdout and stderr line by line through one channel.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut readers = Vec::new();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        }));
    }
    drop(tx);
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in rx {
        on_line(&line);
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().map_err(SandboxError::Spawn)?;
    if status.success() {
        return Ok(());
    }
    Err(SandboxError::Failed { status: status.to_string(), tail: tail.into_iter().collect::<Vec<_>>().join("\n") })
}
