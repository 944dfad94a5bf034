//! What the daemon applied of one cluster add-on: the inventory pruning works from (never
//! from guessing), and what drift is measured against.

use serde::{Deserialize, Serialize};

/// One applied object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedObject {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// SHA-256 (hex, 16 characters) of the object as last applied.
    pub hash: String,
    /// What the API server answered to that apply: drift is a different uid or a change in
    /// the fields the daemon owns.
    pub uid: String,
    pub generation: i64,
    pub resource_version: String,
    /// Digest of the fields the `lacave` manager owns (its Apply entry in managedFields): they
    /// change when another manager takes one of them, never on a status update.
    #[serde(default)]
    pub fields: String,
}

impl AppliedObject {
    /// `group/Kind/namespace/name`: one object in the cluster.
    /// The API group (`""` for the core group).
    pub fn group(&self) -> &str {
        api_group(&self.api_version)
    }

    pub fn key(&self) -> String {
        object_key(
            &self.api_version,
            &self.kind,
            self.namespace.as_deref(),
            &self.name,
        )
    }
}

/// The group of an `apiVersion` (`apps/v1` → `apps`, `v1` → `""`).
pub fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// `group/Kind/namespace/name` of an object (the version does not make another object).
pub fn object_key(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> String {
    let group = api_group(api_version);
    format!("{group}/{kind}/{}/{name}", namespace.unwrap_or(""))
}

/// An add-on's inventory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddonInventory {
    pub objects: Vec<AppliedObject>,
}
