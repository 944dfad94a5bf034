//! The cluster aggregate: which control plane initialized the cluster (and when), and the
//! bootstrap token each joining node was given, so that the token is deleted once the node is
//! Ready even across a restart of the daemon; and the kubeconfigs issued to people.

use time::OffsetDateTime;

use super::{Store, StoreError};
use crate::model::{AddonInventory, ClusterState, KubeconfigRecord};

#[derive(serde::Serialize, serde::Deserialize)]
struct ClusterStateV1 {
    initialized_by: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    initialized_at: Option<OffsetDateTime>,
}

fn token_key(hostname: &str) -> Vec<u8> {
    format!("token/{hostname}").into_bytes()
}

impl Store {
    /// What is known of the cluster (nothing before the first `kubeadm init` succeeds).
    pub fn cluster_state(&self) -> Result<ClusterState, StoreError> {
        match self.cluster.get("state")? {
            None => Ok(ClusterState::default()),
            Some(bytes) => {
                let r: ClusterStateV1 = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(format!("cluster state: {e}")))?;
                Ok(ClusterState {
                    initialized_by: r.initialized_by,
                    initialized_at: r.initialized_at,
                })
            }
        }
    }

    /// Records that `hostname` initialized the cluster, durably.
    pub fn set_cluster_initialized(&self, hostname: &str) -> Result<ClusterState, StoreError> {
        let state = ClusterState {
            initialized_by: Some(hostname.to_string()),
            initialized_at: Some(super::now()),
        };
        let record = ClusterStateV1 {
            initialized_by: state.initialized_by.clone(),
            initialized_at: state.initialized_at,
        };
        self.cluster.insert(
            "state",
            serde_json::to_vec(&record).expect("cluster state serializes"),
        )?;
        self.flush_db()?;
        Ok(state)
    }

    /// Forgets the cluster (its last control plane was removed): who initialized it, the
    /// join tokens and the add-on inventories, in one batch, durably. The next control plane
    /// then initializes a new cluster.
    pub fn reset_cluster_state(&self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.remove("state");
        batch.remove("version");
        batch.remove("upgrade");
        for prefix in ["token/", "addon/"] {
            for entry in self.cluster.scan_prefix(prefix) {
                let (key, _) = entry?;
                batch.remove(key);
            }
        }
        self.cluster.apply_batch(batch)?;
        self.flush_db()?;
        Ok(())
    }

    /// The Kubernetes release the cluster runs, as the daemon last made it (`kubeadm init`, then
    /// each finished upgrade): the release new nodes join at. `None` for a cluster made before
    /// the daemon recorded it (`[cluster] kubernetes_version` then).
    pub fn cluster_version(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .cluster
            .get("version")?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the release the cluster runs, durably.
    pub fn set_cluster_version(&self, version: &str) -> Result<(), StoreError> {
        self.cluster.insert("version", version.as_bytes())?;
        self.flush_db()?;
        Ok(())
    }

    /// The last upgrade run's record (`cluster/join/upgrade.rs`), kept across restarts so that
    /// `--resume` continues where it stopped.
    pub fn upgrade_record<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        match self.cluster.get("upgrade")? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("upgrade record: {e}"))),
        }
    }

    /// Records an upgrade run's progress, durably (after each of its steps).
    pub fn set_upgrade_record<T: serde::Serialize>(&self, record: &T) -> Result<(), StoreError> {
        self.cluster.insert(
            "upgrade",
            serde_json::to_vec(record).expect("an upgrade record serializes"),
        )?;
        self.flush_db()?;
        Ok(())
    }

    /// The coordinated reboots' record (`cluster/join/reboots.rs`), if any.
    pub fn reboot_record<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        match self.cluster.get("reboots")? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("reboots record: {e}"))),
        }
    }

    /// Records the reboots' progress, durably (after each step).
    pub fn set_reboot_record<T: serde::Serialize>(&self, record: &T) -> Result<(), StoreError> {
        self.cluster.insert(
            "reboots",
            serde_json::to_vec(record).expect("a reboots record serializes"),
        )?;
        self.flush_db()?;
        Ok(())
    }

    /// Remembers the id of the bootstrap token `hostname` joins with, durably (before the
    /// token is handed out).
    pub fn record_join_token(&self, hostname: &str, token_id: &str) -> Result<(), StoreError> {
        self.cluster
            .insert(token_key(hostname), token_id.as_bytes())?;
        self.flush_db()?;
        Ok(())
    }

    /// The bootstrap token id recorded for `hostname`, if any.
    pub fn join_token(&self, hostname: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .cluster
            .get(token_key(hostname))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Forgets `hostname`'s token once it was deleted from the cluster.
    pub fn forget_join_token(&self, hostname: &str) -> Result<(), StoreError> {
        self.cluster.remove(token_key(hostname))?;
        self.flush_db()?;
        Ok(())
    }
}

fn kubeconfig_key(serial: &str) -> Vec<u8> {
    format!("kubeconfig/{serial}").into_bytes()
}

impl Store {
    /// Records a person's kubeconfig, durably, before it is handed out.
    pub fn record_kubeconfig(&self, record: &KubeconfigRecord) -> Result<(), StoreError> {
        self.cluster.insert(
            kubeconfig_key(&record.serial),
            serde_json::to_vec(record).expect("a kubeconfig record serializes"),
        )?;
        self.flush_db()?;
        Ok(())
    }

    /// Every person's kubeconfig issued, oldest first.
    pub fn kubeconfigs(&self) -> Result<Vec<KubeconfigRecord>, StoreError> {
        let mut out = Vec::new();
        for entry in self.cluster.scan_prefix("kubeconfig/") {
            let (key, value) = entry?;
            let record: KubeconfigRecord = serde_json::from_slice(&value).map_err(|e| {
                StoreError::Corrupt(format!(
                    "kubeconfig record {}: {e}",
                    String::from_utf8_lossy(&key)
                ))
            })?;
            out.push(record);
        }
        out.sort_by_key(|r| r.issued_at);
        Ok(out)
    }
}

fn addon_key(name: &str) -> Vec<u8> {
    format!("addon/{name}").into_bytes()
}

impl Store {
    /// What was applied of add-on `name` (empty if nothing).
    pub fn addon_inventory(&self, name: &str) -> Result<AddonInventory, StoreError> {
        match self.cluster.get(addon_key(name))? {
            None => Ok(AddonInventory::default()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("add-on {name} inventory: {e}"))),
        }
    }

    /// Records add-on `name`'s inventory durably (an empty one is forgotten).
    pub fn set_addon_inventory(
        &self,
        name: &str,
        inventory: &AddonInventory,
    ) -> Result<(), StoreError> {
        if inventory.objects.is_empty() {
            self.cluster.remove(addon_key(name))?;
        } else {
            self.cluster.insert(
                addon_key(name),
                serde_json::to_vec(inventory).expect("an inventory serializes"),
            )?;
        }
        self.flush_db()?;
        Ok(())
    }

    /// The add-ons that have an inventory.
    pub fn addons_applied(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for entry in self.cluster.scan_prefix("addon/") {
            let (key, _) = entry?;
            out.push(String::from_utf8_lossy(&key["addon/".len()..]).into_owned());
        }
        Ok(out)
    }
}
