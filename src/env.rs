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
/// Registry credentials file for push, pull, login and logout. Same as `--authfile`.
pub const KILN_AUTH_FILE: &str = "KILN_AUTH_FILE";
