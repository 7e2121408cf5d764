//! kiln: pack a Kubernetes-based system into one OCI cluster image and deliver it offline.
pub mod image;
pub mod kubefile;
