//! The add-on engine's calls to the API server: discovery of each kind's resource and scope,
//! server-side apply as `lacave`, metadata-only lists of what carries the add-on label,
//! reads for health, deletes for pruning.

use std::collections::HashMap;
use std::time::Duration;

use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy,
};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;

use super::catalog::ADDON_LABEL;
use crate::cluster::kube::FIELD_MANAGER;

/// An API call that failed, classified for the status.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Another field manager owns a field the add-on sets (HTTP 409 on apply).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The kind is not served (its CRD not installed or not Established yet).
    #[error("the API server does not serve {0}")]
    NoKind(String),
    #[error("{0}")]
    Other(String),
}

fn classify(e: kube::Error) -> CallError {
    match e {
        kube::Error::Api(status) if status.code == 409 => CallError::Conflict(status.message),
        kube::Error::Api(status) => CallError::Other(format!(
            "{} ({} {})",
            crate::model::printable(&status.message, 300),
            status.code,
            status.reason
        )),
        other => CallError::Other(other.to_string()),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A kind's API resource, cached for the life of the connection.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// One API connection with its discovery cache.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    resolved: HashMap<(String, String), Resolved>,
}

impl Cluster {
    pub fn new(client: kube::Client) -> Cluster {
        Cluster {
            client,
            resolved: HashMap::new(),
        }
    }

    /// The resource serving `api_version`/`kind`.
    pub async fn resolve(&mut self, api_version: &str, kind: &str) -> Result<Resolved, CallError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.resolved.get(&key) {
            return Ok(r.clone());
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let resolved = match tokio::time::timeout(
            Duration::from_secs(10),
            kube::discovery::pinned_kind(&self.client, &gvk),
        )
        .await
        {
            Err(_) => {
                return Err(CallError::Other(format!(
                    "discovery of {api_version} {kind} timed out"
                )));
            }
            Ok(Err(e)) => {
                return Err(match e {
                    kube::Error::Api(s) if s.code == 404 => {
                        CallError::NoKind(format!("{api_version} {kind}"))
                    }
                    kube::Error::Discovery(_) => CallError::NoKind(format!("{api_version} {kind}")),
                    other => classify(other),
                });
            }
            Ok(Ok((resource, caps))) => Resolved {
                resource,
                namespaced: caps.scope == Scope::Namespaced,
            },
        };
        self.resolved.insert(key, resolved.clone());
        Ok(resolved)
    }

    fn api(&self, r: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        match (r.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &r.resource),
            _ => Api::all_with(self.client.clone(), &r.resource),
        }
    }

    /// Server-side apply of `value` as the `lacave` field manager.
    pub async fn apply(
        &self,
        r: &Resolved,
        namespace: Option<&str>,
        name: &str,
        value: &serde_json::Value,
        force: bool,
    ) -> Result<DynamicObject, CallError> {
        let mut params = PatchParams::apply(FIELD_MANAGER);
        if force {
            params = params.force();
        }
        self.api(r, namespace)
            .patch(name, &params, &Patch::Apply(value))
            .await
            .map_err(classify)
    }

    /// `(namespace, name) → (uid, resourceVersion, fields owned, add-on label)` of every object of
    /// the kind that carries the add-on label, metadata only.
    pub async fn list_labelled(
        &self,
        r: &Resolved,
    ) -> Result<HashMap<(Option<String>, String), LiveMeta>, CallError> {
        let list = self
            .api(r, None)
            .list_metadata(&ListParams::default().labels(ADDON_LABEL))
            .await
            .map_err(classify)?;
        Ok(list
            .items
            .into_iter()
            .map(|o| {
                let m = o.metadata;
                (
                    (m.namespace.clone(), m.name.clone().unwrap_or_default()),
                    LiveMeta {
                        uid: m.uid.unwrap_or_default(),
                        resource_version: m.resource_version.unwrap_or_default(),
                        fields: owned_fields(m.managed_fields.as_deref()),
                        addon: m
                            .labels
                            .and_then(|l| l.get(ADDON_LABEL).cloned())
                            .unwrap_or_default(),
                    },
                )
            })
            .collect())
    }

    /// The whole object, as JSON.
    pub async fn get(
        &self,
        r: &Resolved,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<serde_json::Value>, CallError> {
        match self.api(r, namespace).get_opt(name).await {
            Ok(o) => Ok(o.map(|o| serde_json::to_value(o).unwrap_or_default())),
            Err(e) => Err(classify(e)),
        }
    }

    /// Deletes one object (dependents in the background); gone already is fine.
    pub async fn delete(
        &self,
        r: &Resolved,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), CallError> {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match self.api(r, namespace).delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    /// Whether any object of `r` exists that no add-on put there (a CRD still in use).
    pub async fn foreign_objects(&self, r: &Resolved) -> Result<bool, CallError> {
        let list = self
            .api(r, None)
            .list_metadata(
                &ListParams::default()
                    .labels(&format!("!{ADDON_LABEL}"))
                    .limit(1),
            )
            .await
            .map_err(classify)?;
        Ok(!list.items.is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveMeta {
    pub uid: String,
    pub resource_version: String,
    /// [`owned_fields`] of the object.
    pub fields: String,
    pub addon: String,
}

/// A digest of the field set the `lacave` manager owns by Apply (empty if none).
pub fn owned_fields(
    managed: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry]>,
) -> String {
    use sha2::Digest;
    let Some(entry) = managed.into_iter().flatten().find(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER)
            && m.operation.as_deref() == Some("Apply")
            && m.subresource.as_deref().unwrap_or("").is_empty()
    }) else {
        return String::new();
    };
    let bytes = serde_json::to_vec(&entry.fields_v1).unwrap_or_default();
    sha2::Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}
