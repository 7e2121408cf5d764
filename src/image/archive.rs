//! OCI archives (save/load).
