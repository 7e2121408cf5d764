//! Content digests. kiln stores and produces sha256 only, so the type holds exactly that.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex>` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("unsupported digest algorithm in `{0}` (kiln handles sha256)")]
    Algorithm(String),
    #[error("invalid sha256 digest `{0}`: expected 64 lowercase hex characters")]
    Hex(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self { hex: hex::encode(Sha256::digest(bytes)) }
    }

    /// The digest a finished hasher computed.
    pub fn from_sha256(hasher: Sha256) -> Self {
        Self { hex: hex::encode(hasher.finalize()) }
    }

    /// The 64 hex characters, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Converts into the oci-spec digest type for descriptors.
    pub fn to_oci(&self) -> oci_spec::image::Digest {
        // Infallible: a valid sha256 digest always parses.
        oci_spec::image::Digest::from_str(&self.to_string()).unwrap_or_else(|_| unreachable!("valid sha256"))
    }

    pub fn from_oci(d: &oci_spec::image::Digest) -> Result<Self, DigestError> {
        d.to_string().parse()
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(DigestError::Algorithm(s.to_owned()));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::Hex(s.to_owned()));
        }
        Ok(Self { hex: hex.to_owned() })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that counts and hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), written: 0 }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Returns the inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        let hex = hex::encode(self.hasher.finalize());
        (self.inner, Digest { hex }, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what it reads and, at end of input, fails unless the content matches
/// the expected digest and size. Consumers therefore never act on unverified bytes' end.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    expected: Digest,
    expected_size: Option<u64>,
    checked: bool,
}

impl<R: io::Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: Digest, expected_size: Option<u64>) -> Self {
        Self { inner, hasher: Sha256::new(), read: 0, expected, expected_size, checked: false }
    }
}

impl<R: io::Read> io::Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.read += n as u64;
            if self.expected_size.is_some_and(|s| self.read > s) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is larger than its descriptor says", self.expected),
                ));
            }
            return Ok(n);
        }
        if !self.checked && !buf.is_empty() {
            self.checked = true;
            let actual = Digest { hex: hex::encode(self.hasher.clone().finalize()) };
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("digest mismatch: expected {}, got {actual}", self.expected),
                ));
            }
            if let Some(size) = self.expected_size.filter(|&s| s != self.read) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: size mismatch: expected {size} bytes, got {}", self.expected, self.read),
                ));
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_and_display() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.to_string(), EMPTY);
        assert!("sha512:ab".parse::<Digest>().is_err());
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "G".repeat(64)).parse::<Digest>().is_err());
    }

    #[test]
    fn verifying_reader_rejects_mismatch() {
        let mut out = Vec::new();
        let mut r = VerifyingReader::new(&b"hello"[..], Digest::of(b"hello"), Some(5));
        r.read_to_end(&mut out).unwrap();
        let mut r = VerifyingReader::new(&b"hellO"[..], Digest::of(b"hello"), Some(5));
        assert!(r.read_to_end(&mut out).unwrap_err().to_string().contains("digest mismatch"));
        let mut r = VerifyingReader::new(&b"hello"[..], Digest::of(b"hello"), Some(4));
        assert!(r.read_to_end(&mut out).is_err());
    }

    #[test]
    fn hashing_writer() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello").unwrap();
        let (buf, d, n) = w.finish();
        assert_eq!((buf.len(), n), (5, 5));
        assert_eq!(d, Digest::of(b"hello"));
    }
}
