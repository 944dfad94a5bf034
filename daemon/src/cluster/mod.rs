//! The Kubernetes cluster the daemon builds from its nodes: `booted → joining → joined →
//! ready`, with zero human steps.
//!
//! - `settings.rs`: the `[cluster]` section.
//! - `pki.rs`: the cluster's own CAs and service-account key (not the lacave root CA).
//! - `ssh.rs`: SSH to nodes with russh, only to the host key each node pinned.
//! - `certs.rs`: every certificate of the cluster that can expire, and when.
//! - `csr.rs`: kubelet serving certificates approved against the registry.
//! - `snapshot.rs`: etcd snapshots through etcd's API, checked before a restore.

pub mod certs;
pub mod cni;
pub mod connection;
pub mod csr;
pub mod etcd;
pub mod inventory;
pub mod join;
pub mod kube;
pub mod kubeadm;
pub mod pki;
pub mod plain_reboots;
pub mod seams;
pub mod settings;
pub mod snapshot;
pub mod ssh;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod join_tests;
