//! The daemon's calls to the Kubernetes API (kube crate), as its own user (`lacave`, a client
//! certificate from the cluster's CA, bound to cluster-admin): bootstrap tokens, the Node
//! watch that moves nodes to `ready`, and node labels by server-side apply.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};

use super::kubeadm::BootstrapToken;

/// The field manager of everything the daemon applies.
pub const FIELD_MANAGER: &str = "lacave";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the kubeconfig the daemon built is unusable: {0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error(
        "{left} pod(s) still on {node} after {secs} s of draining (a disruption budget or a pod that does not stop)"
    )]
    DrainTimeout {
        node: String,
        left: usize,
        secs: u64,
    },
}

impl KubeError {
    /// Whether the API server could not be reached or did not answer (as opposed to
    /// answering with a refusal).
    pub fn unreachable(&self) -> bool {
        match self {
            KubeError::Api(kube::Error::Api(_)) => false,
            KubeError::Api(_) => true,
            KubeError::Config(_) | KubeError::DrainTimeout { .. } => false,
        }
    }
}

/// A connection to the API server, and a cache of Nodes kept current by a watch.
#[derive(Clone)]
pub struct KubeApi {
    client: kube::Client,
    nodes: reflector::Store<Node>,
    server: String,
    /// Stops the Node watch when the last clone is dropped.
    _watch: Arc<tokio_util::sync::DropGuard>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("server", &self.server)
            .finish()
    }
}

/// A kube client from the daemon's kubeconfig (5 s to connect, `read_timeout` to answer),
/// and the server it names.
async fn client_for(
    kubeconfig: &str,
    read_timeout: Duration,
) -> Result<(kube::Client, String), KubeError> {
    let parsed = kube::config::Kubeconfig::from_yaml(kubeconfig)
        .map_err(|e| KubeError::Config(e.to_string()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(parsed, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(read_timeout);
    let server = config.cluster_url.to_string();
    Ok((kube::Client::try_from(config)?, server))
}

impl KubeApi {
    /// Connects with `kubeconfig` (the daemon's own, its server a control plane's address)
    /// and starts the Node watch, which runs until `cancel`.
    pub async fn connect(
        kubeconfig: &str,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<KubeApi, KubeError> {
        let (client, server) = client_for(kubeconfig, Duration::from_secs(60)).await?;
        let (reader, writer) = reflector::store::<Node>();
        let stream = reflector::reflector(
            writer,
            watcher(
                kube::Api::<Node>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .touched_objects();
        let watched = server.clone();
        let cancel = cancel.child_token();
        let guard = cancel.clone().drop_guard();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    next = stream.next() => match next {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => tracing::debug!(%error, server = %watched, "node watch (retrying)"),
                        None => break,
                    },
                }
            }
        });
        Ok(KubeApi {
            client,
            nodes: reader,
            server,
            _watch: Arc::new(guard),
        })
    }

    /// A client of the API server `kubeconfig` names, without a Node watch (its Node cache
    /// stays empty): for probing one control plane's `/readyz` again and again over one
    /// kept-alive connection.
    pub async fn unwatched(kubeconfig: &str) -> Result<KubeApi, KubeError> {
        let (client, server) = client_for(kubeconfig, Duration::from_secs(5)).await?;
        let (nodes, _writer) = reflector::store::<Node>();
        Ok(KubeApi {
            client,
            nodes,
            server,
            _watch: Arc::new(tokio_util::sync::CancellationToken::new().drop_guard()),
        })
    }

    /// The client, for the add-on engine.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Whether the API server answers `/readyz`.
    pub async fn ready(&self) -> bool {
        let request = http::Request::get("/readyz").body(Vec::new());
        match request {
            Ok(r) => self
                .client
                .request_text(r)
                .await
                .is_ok_and(|t| t.trim() == "ok"),
            Err(_) => false,
        }
    }

    /// The Node's `Ready` condition, from the watch's cache: `None` if there is no such Node.
    pub fn node_ready(&self, name: &str) -> Option<bool> {
        let node = self.nodes.get(&ObjectRef::new(name))?;
        Some(
            node.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        )
    }

    /// What the API server says of a Node (from the watch's cache): `None` if there is none.
    pub fn node_info(&self, name: &str) -> Option<NodeInfo> {
        let node = self.nodes.get(&ObjectRef::new(name))?;
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let roles = labels
            .keys()
            .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
            .map(str::to_string)
            .collect();
        Some(NodeInfo {
            ready: self.node_ready(name).unwrap_or(false),
            kubelet_version: node
                .status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.kubelet_version.clone()),
            roles,
            labels,
        })
    }

    /// Creates a bootstrap token valid for `ttl`, for the kubeadm join of one node.
    pub async fn create_bootstrap_token(
        &self,
        token: &BootstrapToken,
        ttl: Duration,
        node: &str,
    ) -> Result<(), KubeError> {
        let expires = time::OffsetDateTime::now_utc()
            + time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(3600));
        let expires = expires
            .replace_nanosecond(0)
            .unwrap_or(expires)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let data = BTreeMap::from([
            ("token-id".to_string(), token.id.clone()),
            ("token-secret".to_string(), token.secret.clone()),
            ("expiration".to_string(), expires),
            ("usage-bootstrap-authentication".to_string(), "true".into()),
            ("usage-bootstrap-signing".to_string(), "true".into()),
            (
                "auth-extra-groups".to_string(),
                "system:bootstrappers:kubeadm:default-node-token".into(),
            ),
            (
                "description".to_string(),
                format!("lacave: the join of {node}"),
            ),
        ]);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(format!("bootstrap-token-{}", token.id)),
                namespace: Some("kube-system".into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "lacave".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("bootstrap.kubernetes.io/token".into()),
            string_data: Some(data),
            ..Default::default()
        };
        kube::Api::<Secret>::namespaced(self.client.clone(), "kube-system")
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }

    /// Waits until the controller-manager's bootstrap signer has signed `cluster-info` for
    /// this token: kubeadm join's discovery needs that signature, and retries only every 5 s
    /// when it is missing. `false` if it did not appear within `timeout`.
    pub async fn wait_token_signed(&self, token: &BootstrapToken, timeout: Duration) -> bool {
        use k8s_openapi::api::core::v1::ConfigMap;
        let api = kube::Api::<ConfigMap>::namespaced(self.client.clone(), "kube-public");
        let key = format!("jws-kubeconfig-{}", token.id);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(cm) = api.get("cluster-info").await
                && cm.data.as_ref().is_some_and(|d| d.contains_key(&key))
            {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes a bootstrap token; one already gone is fine.
    pub async fn delete_bootstrap_token(&self, id: &str) -> Result<(), KubeError> {
        let api = kube::Api::<Secret>::namespaced(self.client.clone(), "kube-system");
        match api
            .delete(&format!("bootstrap-token-{id}"), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies `labels` to the Node as the `lacave` field manager: labels it applied before
    /// and no longer lists are removed; other managers' labels are left alone.
    pub async fn apply_node_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), KubeError> {
        let patch = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "labels": labels },
        });
        kube::Api::<Node>::all(self.client.clone())
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&patch),
            )
            .await?;
        Ok(())
    }

    /// Marks a Node unschedulable (what `kubectl cordon` does).
    /// Makes a Node schedulable again (after a drain that failed: a removal that stops
    /// must not leave the node cordoned and idle).
    pub async fn uncordon(&self, name: &str) -> Result<(), KubeError> {
        let patch = serde_json::json!({ "spec": { "unschedulable": null } });
        kube::Api::<Node>::all(self.client.clone())
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    pub async fn cordon(&self, name: &str) -> Result<(), KubeError> {
        let patch = serde_json::json!({ "spec": { "unschedulable": true } });
        kube::Api::<Node>::all(self.client.clone())
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Evicts every pod of the Node that a drain moves (not DaemonSet pods, not static
    /// pods), retrying those a disruption budget holds back, until they are gone or
    /// `timeout` passes. Returns how many were evicted.
    pub async fn drain(&self, name: &str, timeout: Duration) -> Result<usize, KubeError> {
        use k8s_openapi::api::core::v1::Pod;
        let all = kube::Api::<Pod>::all(self.client.clone());
        let list_params = kube::api::ListParams::default().fields(&format!("spec.nodeName={name}"));
        let movable = |p: &Pod| {
            let owned_by_daemonset = p
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|r| r.kind == "DaemonSet"));
            let mirror = p
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
            !owned_by_daemonset && !mirror
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut evicted = std::collections::HashSet::new();
        loop {
            // A Node that is not Ready has no kubelet to confirm a deletion: its pods
            // already being deleted are not waited for (the pod garbage collector removes
            // them once the Node is deleted), as kubectl drain's
            // --skip-wait-for-delete-timeout does for an unreachable node.
            let kubelet_gone = self.node_ready(name) != Some(true);
            let pods: Vec<Pod> = all
                .list(&list_params)
                .await?
                .items
                .into_iter()
                .filter(movable)
                .filter(|p| !(kubelet_gone && p.metadata.deletion_timestamp.is_some()))
                .collect();
            if pods.is_empty() {
                return Ok(evicted.len());
            }
            for pod in &pods {
                let (Some(ns), Some(pod_name)) = (&pod.metadata.namespace, &pod.metadata.name)
                else {
                    continue;
                };
                let api = kube::Api::<Pod>::namespaced(self.client.clone(), ns);
                match api
                    .evict(pod_name, &kube::api::EvictParams::default())
                    .await
                {
                    Ok(_) => {
                        evicted.insert(format!("{ns}/{pod_name}"));
                    }
                    // 429: a disruption budget holds it back for now; 404: gone already.
                    Err(kube::Error::Api(e)) if e.code == 429 || e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(KubeError::DrainTimeout {
                    node: name.to_string(),
                    left: pods.len(),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Deletes a Node object; one already gone is fine.
    pub async fn delete_node(&self, name: &str) -> Result<(), KubeError> {
        match kube::Api::<Node>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }
}

/// A Node as the API server sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub ready: bool,
    pub kubelet_version: Option<String>,
    pub roles: Vec<String>,
    pub labels: BTreeMap<String, String>,
}
