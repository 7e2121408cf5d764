//! The `kubernetes` cluster runtime: kubeadm configuration and the cluster PKI.

pub mod kubeadm_config;
pub mod pki;

#[cfg(test)]
mod tests;
