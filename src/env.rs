//! Every environment variable kiln reads, in one place.

/// Data directory (image store, caches). Same as `--root`.
pub const KILN_ROOT: &str = "KILN_ROOT";
/// `tracing` filter for logs, e.g. `kiln=debug`.
pub const KILN_LOG: &str = "KILN_LOG";
/// Disables colour when set (any value), per no-color.org.
pub const NO_COLOR: &str = "NO_COLOR";
/// Used for the default data directory of non-root users.
pub const XDG_DATA_HOME: &str = "XDG_DATA_HOME";
pub const HOME: &str = "HOME";
/// Seconds since the epoch that `kiln build` writes as the image's creation time instead of now
/// (reproducible-builds.org), so two builds of the same inputs give the same digests.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";
/// Registry credentials file for push, pull, login and logout. Same as `--authfile`.
pub const KILN_AUTH_FILE: &str = "KILN_AUTH_FILE";
