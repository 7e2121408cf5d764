//! Layers: writing them (tar → diff_id → compression → blob digest, one streaming pass,
//! constant memory) and applying them to a directory (whiteouts honoured, escapes refused).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path};

use super::digest::{Digest, HashingWriter};
use super::media::Compression;
use super::store::{BlobWriter, Store, StoreError};

/// gzip level used by default (the same as `gzip -6`).
pub const DEFAULT_GZIP_LEVEL: u32 = 6;
const ZSTD_LEVEL: i32 = 3;

enum Compressor {
    None(BlobWriter),
    Gzip(flate2::write::GzEncoder<BlobWriter>),
    Zstd(zstd::stream::write::Encoder<'static, BlobWriter>),
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::None(w) => w.write(buf),
            Self::Gzip(w) => w.write(buf),
            Self::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::None(w) => w.flush(),
            Self::Gzip(w) => w.flush(),
            Self::Zstd(w) => w.flush(),
        }
    }
}

impl Compressor {
    fn finish(self) -> io::Result<BlobWriter> {
        match self {
            Self::None(w) => Ok(w),
            Self::Gzip(w) => w.finish(),
            Self::Zstd(w) => w.finish(),
        }
    }
}

/// A finished layer blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub media_type: String,
}

/// Writes one layer into the store as a tar stream.
pub struct LayerWriter {
    tar: tar::Builder<HashingWriter<Compressor>>,
    compression: Compression,
    /// No entry is newer than this (seconds since 1970): `SOURCE_DATE_EPOCH` builds.
    newest_mtime: Option<u64>,
}

/// Ownership and mode overrides for added files (COPY `--chown` / `--chmod`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryOptions {
    pub uid: u64,
    pub gid: u64,
    pub mode: Option<u32>,
}

fn tar_err(e: io::Error) -> StoreError {
    StoreError::Io { action: "write a layer".into(), path: None, source: e }
}

impl LayerWriter {
    pub fn new(store: &Store, compression: Compression) -> Result<Self, StoreError> {
        let blob = store.blob_writer()?;
        let compressor = match compression {
            Compression::None => Compressor::None(blob),
            Compression::Gzip => {
                Compressor::Gzip(flate2::write::GzEncoder::new(blob, flate2::Compression::new(DEFAULT_GZIP_LEVEL)))
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(blob, ZSTD_LEVEL).map_err(tar_err)?;
                // Both cores: zstd's own worker thread compresses while we read and tar.
                let _ = enc.multithread(1);
                Compressor::Zstd(enc)
            }
        };
        let mut tar = tar::Builder::new(HashingWriter::new(compressor));
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        Ok(Self { tar, compression, newest_mtime: None })
    }

    /// Clamps every entry's mtime to `newest` (reproducible builds: files made at build time
    /// get the same time in every build).
    pub fn clamp_mtimes(mut self, newest: Option<u64>) -> Self {
        self.newest_mtime = newest;
        self
    }

    fn mtime(&self, mtime: u64) -> u64 {
        self.newest_mtime.map_or(mtime, |newest| mtime.min(newest))
    }

    /// Adds a directory entry.
    pub fn add_dir(&mut self, path: &str, mode: u32, mtime: u64, opts: EntryOptions) -> Result<(), StoreError> {
        let mut h = header(tar::EntryType::Directory, opts.mode.unwrap_or(mode), self.mtime(mtime), opts);
        h.set_size(0);
        self.tar.append_data(&mut h, format!("{}/", path.trim_end_matches('/')), io::empty()).map_err(tar_err)
    }

    /// Adds a regular file with content from `reader`.
    pub fn add_file(
        &mut self,
        path: &str,
        size: u64,
        mode: u32,
        mtime: u64,
        opts: EntryOptions,
        reader: impl Read,
    ) -> Result<(), StoreError> {
        let mut h = header(tar::EntryType::Regular, opts.mode.unwrap_or(mode), self.mtime(mtime), opts);
        h.set_size(size);
        self.tar.append_data(&mut h, path, reader).map_err(tar_err)
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &Path, mtime: u64, opts: EntryOptions) -> Result<(), StoreError> {
        let mut h = header(tar::EntryType::Symlink, 0o777, self.mtime(mtime), opts);
        h.set_size(0);
        self.tar.append_link(&mut h, path, target).map_err(tar_err)
    }

    /// Adds an OCI whiteout that deletes `path` from lower layers.
    pub fn add_whiteout(&mut self, path: &str) -> Result<(), StoreError> {
        let p = Path::new(path);
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let wh = match p.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => format!("{}/.wh.{name}", dir.display()),
            None => format!(".wh.{name}"),
        };
        self.add_file(&wh, 0, 0o644, 0, EntryOptions::default(), io::empty())
    }

    /// Adds a file, directory or symlink from disk at `path` in the layer.
    pub fn add_from_disk(
        &mut self,
        disk: &Path,
        path: &str,
        meta: &fs::Metadata,
        opts: EntryOptions,
    ) -> Result<(), StoreError> {
        let mtime = meta.mtime().max(0) as u64;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_dir() {
            self.add_dir(path, mode, mtime, opts)
        } else if ft.is_symlink() {
            let target = fs::read_link(disk).map_err(|e| StoreError::io("read link", disk, e))?;
            self.add_symlink(path, &target, mtime, opts)
        } else if ft.is_file() {
            let file = fs::File::open(disk).map_err(|e| StoreError::io("open", disk, e))?;
            self.add_file(path, meta.len(), mode, mtime, opts, file)
        } else {
            tracing::warn!(path = %disk.display(), "skipping special file (device, socket or fifo)");
            Ok(())
        }
    }

    /// Finishes the tar stream and commits the blob.
    pub fn finish(self) -> Result<LayerBlob, StoreError> {
        let hashing = self.tar.into_inner().map_err(tar_err)?;
        let (compressor, diff_id, _) = hashing.finish();
        let blob = compressor.finish().map_err(tar_err)?;
        let (digest, size) = blob.commit()?;
        Ok(LayerBlob { digest, size, diff_id, media_type: self.compression.layer_media_type().to_owned() })
    }
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64, opts: EntryOptions) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(opts.uid);
    h.set_gid(opts.gid);
    h
}

/// Turns an overlayfs upper directory into layer entries: 0/0 character devices become
/// `.wh.` whiteouts and opaque directories get `.wh..wh..opq`.
pub fn add_overlay_upper(writer: &mut LayerWriter, upper: &Path) -> Result<usize, StoreError> {
    let mut count = 0;
    for entry in walkdir::WalkDir::new(upper).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|e| StoreError::io("walk", upper, io::Error::other(e)))?;
        let rel = entry.path().strip_prefix(upper).unwrap_or(entry.path()).to_string_lossy().into_owned();
        let meta = entry.path().symlink_metadata().map_err(|e| StoreError::io("stat", entry.path(), e))?;
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            writer.add_whiteout(&rel)?;
        } else {
            writer.add_from_disk(
                entry.path(),
                &rel,
                &meta,
                EntryOptions { uid: meta.uid() as u64, gid: meta.gid() as u64, mode: None },
            )?;
            if meta.is_dir() && is_opaque(entry.path()) {
                writer.add_file(&format!("{rel}/.wh..wh..opq"), 0, 0o644, 0, EntryOptions::default(), io::empty())?;
            }
        }
        count += 1;
    }
    Ok(count)
}

fn is_opaque(dir: &Path) -> bool {
    matches!(xattr::get(dir, "trusted.overlay.opaque"), Ok(Some(v)) if v == b"y")
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("layer entry `{0}` escapes the target directory")]
    Escapes(String),
    #[error("failed to apply layer entry `{path}`")]
    Entry {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to read the layer")]
    Read(#[source] io::Error),
}

/// What a host must do around extracting a layer with GNU tar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostScan {
    pub entries: usize,
    /// Paths (relative to the rootfs) an earlier layer wrote and this one deletes.
    pub whiteouts: Vec<String>,
    /// Directories whose earlier content this layer hides.
    pub opaque_dirs: Vec<String>,
}

/// Reads a layer that another tool (GNU tar on a host) will extract and checks, without
/// writing anything, that it stays inside its directory: no absolute or `..` paths, no hard
/// link leaving the root, and no entry written through a symbolic link that may point outside.
/// `symlinks` carries such links from earlier layers of the same rootfs. Also lists the layer's
/// whiteouts, which tar does not understand.
pub fn scan_for_host(
    reader: impl Read,
    symlinks: &mut std::collections::BTreeSet<std::path::PathBuf>,
) -> Result<HostScan, ApplyError> {
    let escapes = |p: &Path| {
        p.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_)))
    };
    let mut archive = tar::Archive::new(reader);
    let mut scan = HostScan::default();
    for entry in archive.entries().map_err(ApplyError::Read)? {
        let entry = entry.map_err(ApplyError::Read)?;
        let path = entry
            .path()
            .map_err(ApplyError::Read)?
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect::<std::path::PathBuf>();
        let shown = path.to_string_lossy().into_owned();
        if escapes(&path) {
            return Err(ApplyError::Escapes(shown));
        }
        if path.ancestors().skip(1).any(|a| symlinks.contains(a)) {
            return Err(ApplyError::Escapes(format!("{shown} (written through a symbolic link)")));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let parent = path.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = if parent.is_empty() { ".".to_owned() } else { parent };
        if name == ".wh..wh..opq" {
            scan.opaque_dirs.push(parent);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            scan.whiteouts.push(format!("{parent}/{hidden}"));
            continue;
        }
        match entry.header().entry_type() {
            // Relative links that stay below their directory resolve inside the root; others
            // may point anywhere on the host, so nothing may be written through them.
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(ApplyError::Read)?.unwrap_or_default().into_owned();
                if escapes(&target) {
                    symlinks.insert(path);
                } else {
                    symlinks.remove(&path);
                }
            }
            tar::EntryType::Link => {
                let target = entry.link_name().map_err(ApplyError::Read)?.unwrap_or_default().into_owned();
                if escapes(&target) {
                    return Err(ApplyError::Escapes(format!("{shown} (hard link to {})", target.display())));
                }
                symlinks.remove(&path);
            }
            _ => {
                symlinks.remove(&path);
            }
        }
        scan.entries += 1;
    }
    Ok(scan)
}

/// Applies an uncompressed layer tar stream onto `dest`, honouring whiteouts.
/// Entries with absolute paths or `..` are refused, never written.
pub fn apply_layer(reader: impl Read, dest: &Path) -> Result<usize, ApplyError> {
    apply_layer_where(reader, dest, &|_| true)
}

/// Like [`apply_layer`], but writes only entries whose path `keep` accepts.
pub fn apply_layer_where(reader: impl Read, dest: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<usize, ApplyError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut count = 0;
    for entry in archive.entries().map_err(ApplyError::Read)? {
        let mut entry = entry.map_err(ApplyError::Read)?;
        let path = entry.path().map_err(ApplyError::Read)?.into_owned();
        let shown = path.to_string_lossy().into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_))) {
            return Err(ApplyError::Escapes(shown));
        }
        if !keep(&path) {
            continue;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let parent = dest.join(path.parent().unwrap_or(Path::new("")));
        if name == ".wh..wh..opq" {
            if let Ok(children) = fs::read_dir(&parent) {
                for child in children.flatten() {
                    remove_any(&child.path()).map_err(|source| ApplyError::Entry { path: shown.clone(), source })?;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let victim = parent.join(hidden);
            if victim.symlink_metadata().is_ok() {
                remove_any(&victim).map_err(|source| ApplyError::Entry { path: shown.clone(), source })?;
            }
            continue;
        }
        // A non-directory replaces whatever is there; a directory merges.
        let target = dest.join(&path);
        if let Ok(existing) = target.symlink_metadata()
            && (entry.header().entry_type() != tar::EntryType::Directory || !existing.is_dir())
        {
            remove_any(&target).map_err(|source| ApplyError::Entry { path: shown.clone(), source })?;
        }
        let unpacked = entry.unpack_in(dest).map_err(|source| ApplyError::Entry { path: shown.clone(), source })?;
        if !unpacked {
            return Err(ApplyError::Escapes(shown));
        }
        count += 1;
    }
    Ok(count)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A reader over a layer blob's uncompressed tar stream (verified against the blob digest).
pub fn open_layer(store: &Store, digest: &Digest, media_type: &str) -> Result<Box<dyn Read + Send>, StoreError> {
    let raw = store.open_blob(digest, None)?;
    match Compression::of_media_type(media_type) {
        Some(Compression::Gzip) => Ok(Box::new(flate2::read::MultiGzDecoder::new(raw))),
        Some(Compression::Zstd) => Ok(Box::new(
            zstd::stream::read::Decoder::new(raw)
                .map_err(|e| StoreError::io("decompress", store.blob_path(digest), e))?,
        )),
        Some(Compression::None) => Ok(Box::new(raw)),
        None => Err(StoreError::CorruptBlob {
            digest: digest.clone(),
            reason: format!("unknown layer media type `{media_type}`"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_apply_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let mut w = LayerWriter::new(&store, Compression::Gzip).unwrap();
        w.add_dir("etc", 0o755, 0, EntryOptions::default()).unwrap();
        w.add_file("etc/a", 3, 0o644, 0, EntryOptions::default(), &b"abc"[..]).unwrap();
        w.add_file("etc/gone", 1, 0o644, 0, EntryOptions::default(), &b"x"[..]).unwrap();
        let first = w.finish().unwrap();
        assert_ne!(first.digest, first.diff_id);

        let mut w = LayerWriter::new(&store, Compression::Zstd).unwrap();
        w.add_whiteout("etc/gone").unwrap();
        let second = w.finish().unwrap();

        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        for l in [&first, &second] {
            apply_layer(open_layer(&store, &l.digest, &l.media_type).unwrap(), &root).unwrap();
        }
        assert_eq!(fs::read(root.join("etc/a")).unwrap(), b"abc");
        assert!(!root.join("etc/gone").exists());
    }

    #[test]
    fn diff_id_is_the_uncompressed_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = LayerWriter::new(&store, Compression::Gzip).unwrap();
        w.add_file("f", 2, 0o644, 0, EntryOptions::default(), &b"hi"[..]).unwrap();
        let blob = w.finish().unwrap();
        let mut raw = Vec::new();
        open_layer(&store, &blob.digest, &blob.media_type).unwrap().read_to_end(&mut raw).unwrap();
        assert_eq!(Digest::of(&raw), blob.diff_id);
    }

    #[test]
    fn entries_through_symlinks_or_outside_hard_links_are_not_contained() {
        let layer = |build: &dyn Fn(&mut tar::Builder<&mut Vec<u8>>)| {
            let mut data = Vec::new();
            {
                let mut b = tar::Builder::new(&mut data);
                build(&mut b);
                b.finish().unwrap();
            }
            data
        };
        let file = |b: &mut tar::Builder<&mut Vec<u8>>, path: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, &b"x"[..]).unwrap();
        };
        let link = |b: &mut tar::Builder<&mut Vec<u8>>, kind: tar::EntryType, path: &str, target: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o777);
            h.set_entry_type(kind);
            b.append_link(&mut h, path, target).unwrap();
        };
        let fine = layer(&|b| {
            file(b, "etc/a");
            link(b, tar::EntryType::Symlink, "lib", "usr/lib");
            file(b, "lib/libc.so");
            link(b, tar::EntryType::Symlink, "bin/sh", "/usr/bin/dash");
            link(b, tar::EntryType::Link, "etc/b", "etc/a");
        });
        assert_eq!(scan_for_host(&fine[..], &mut Default::default()).unwrap().entries, 5);
        let through = layer(&|b| {
            link(b, tar::EntryType::Symlink, "etc", "/etc");
            file(b, "etc/passwd");
        });
        assert!(matches!(scan_for_host(&through[..], &mut Default::default()), Err(ApplyError::Escapes(_))));
        // A link from an earlier layer counts too.
        let mut earlier = Default::default();
        scan_for_host(&layer(&|b| link(b, tar::EntryType::Symlink, "opt", "/opt"))[..], &mut earlier).unwrap();
        assert!(scan_for_host(&layer(&|b| file(b, "opt/x"))[..], &mut earlier).is_err());
        let hard = layer(&|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_entry_type(tar::EntryType::Link);
            h.set_path("etc/shadow-copy").unwrap();
            h.as_gnu_mut().unwrap().linkname[..14].copy_from_slice(b"../etc/shadow\0");
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        });
        assert!(scan_for_host(&hard[..], &mut Default::default()).is_err());
        let whiteouts = layer(&|b| {
            file(b, "etc/.wh.gone");
            file(b, ".wh.top");
            file(b, "opt/.wh..wh..opq");
            file(b, "opt/new");
        });
        let scan = scan_for_host(&whiteouts[..], &mut Default::default()).unwrap();
        assert_eq!(scan.whiteouts, ["etc/gone", "./top"]);
        assert_eq!(scan.opaque_dirs, ["opt"]);
        assert_eq!(scan.entries, 1);
    }

    #[test]
    fn escaping_entries_are_refused() {
        let mut data = Vec::new();
        {
            let mut b = tar::Builder::new(&mut data);
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // `append_data` refuses `..`; write the name bytes directly as an attacker would.
            h.as_old_mut().name[..7].copy_from_slice(b"../evil");
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
            b.finish().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let err = apply_layer(&data[..], dir.path()).unwrap_err();
        assert!(matches!(err, ApplyError::Escapes(p) if p == "../evil"));
        assert!(!dir.path().parent().unwrap().join("evil").exists());
    }
}
