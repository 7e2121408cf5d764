//! The `kubernetes` cluster runtime: kubeadm configuration and the cluster PKI.

pub mod eviction;
pub mod kubeadm_config;
pub mod node_kernel;
pub mod pki;

#[cfg(test)]
mod tests;
