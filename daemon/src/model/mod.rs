//! Domain types of the node registry: what a node *is*, independent of how it is stored
//! (`store/`) or shown over HTTP (`api/`). Every value here is validated on construction, so
//! code holding a `Node` never re-checks a MAC or a hostname.
//!
//! It is the lowest layer: it also holds the value types that several layers share (a DHCP
//! `Lease`, an operator's DNS `RecordSpec`, a `CertificateRecord`, a request's `FieldError`),
//! so that `store` keeps them without depending on the services that make them. It uses no
//! other module of the crate.

mod addon;
mod certificate;
mod dns_record;
mod field_error;
mod lease;
mod lifecycle;
mod names;
mod update;
mod values;
mod version;

pub use addon::{AddonInventory, AppliedObject, api_group, object_key};
pub use certificate::CertificateRecord;
pub use dns_record::{RECORD_TYPES, RecordSpec, RecordValue, absolute_name};
pub use field_error::FieldError;
pub use lease::Lease;
pub use lifecycle::{NodeState, TransitionError, check_transition};
pub use names::validate_dns_name;
pub use update::{NodeUpdate, UpdateState};
pub use values::{
    BootFile, Hostname, InstallDisk, Labels, MacAddr, NodeIp, Role, ValueError, parse_label,
    validate_labels,
};
pub use version::{compare_flatcar_versions, is_flatcar_version};

use time::OffsetDateTime;

/// A kubeconfig issued to a person (`lacave cluster kubeconfig`): Kubernetes cannot revoke a
/// client certificate, so the daemon keeps who got one, when, and until when, for `lacave
/// cluster kubeconfigs` to list. The key is never kept.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KubeconfigRecord {
    /// The certificate's serial number (lower-case hex).
    pub serial: String,
    pub user: String,
    pub groups: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// User names a person's kubeconfig may not carry: the daemon's own (`lacave`, bound to
/// cluster-admin) and those kubeadm gives its components, so that no person's certificate
/// can pass for one of them in the API server's audit log or bindings.
pub const RESERVED_KUBERNETES_USERS: &[&str] = &[
    "lacave",
    "kubernetes-admin",
    "kubernetes-super-admin",
    "kube-apiserver-kubelet-client",
    "kube-apiserver-etcd-client",
    "kube-etcd-healthcheck-client",
    "front-proxy-client",
];

/// The cluster add-ons the daemon knows (`resources/<name>/`), in catalog order. Here because
/// both `[addons]` (below `config`) and the add-on engine name them.
pub const ADDON_NAMES: &[&str] = &[
    "cni",
    "cert-manager",
    "ca-issuer",
    "ingress",
    "dashboard",
    "metrics-server",
    "storage",
    "keycloak",
    "monitoring",
    "tenants",
];

/// Add-ons that are off unless turned on (`[addons.<name>] enabled = true`): `keycloak` runs a
/// database and asks for `[identity]`; `tenants` is on when tenants or OIDC groups are set.
pub const ADDONS_OFF_BY_DEFAULT: &[&str] = &["keycloak", "tenants"];

/// Namespaces a tenant may not be given: Kubernetes' own and every add-on's (the catalog's
/// test `no_addon_uses_a_tenant_namespace` keeps this list in step with the manifests). A
/// tenant's admins there could reach the cluster's system components or an add-on's
/// secrets (the CA issuer's key in `cert-manager`). `default` stays allowed: the original
/// project's example tenant is the `default` namespace.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "kube-flannel",
    "cert-manager",
    "traefik",
    "headlamp",
    "keycloak",
    "local-path-storage",
    "monitoring",
];

/// `text` from the network made safe to store and show: printable ASCII only (anything else,
/// such as a terminal escape, becomes `?`), at most `max` characters.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// What the daemon knows of the Kubernetes cluster it builds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// The control-plane node whose `kubeadm init` made the cluster; `None` before.
    pub initialized_by: Option<String>,
    pub initialized_at: Option<OffsetDateTime>,
}

/// Why and where a node failed; set only while the node is in [`NodeState::Failed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The phase that failed (`install`, `boot`, `join`, …).
    pub phase: String,
    /// What went wrong, for the operator.
    pub reason: String,
}

/// What a machine last showed of itself on the network (its DHCP packets): for an operator
/// deciding what a `discovered` machine is, and whether a node is still there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// When (kept to the minute: a packet within a minute of the last one is not written).
    pub at: OffsetDateTime,
    /// Client system architecture (DHCP option 93): 0 BIOS, 7 UEFI x64, 11 UEFI ARM64, …
    pub arch: Option<u16>,
    /// Vendor class (option 60), e.g. `PXEClient:Arch:00007:UNDI:003016`.
    pub vendor_class: Option<String>,
}

impl Sighting {
    /// How stale a stored sighting may be before a new packet is written over it.
    pub const RESOLUTION: time::Duration = time::Duration::minutes(1);

    /// Whether this sighting says something `stored` does not: a change of arch or vendor
    /// class, or a minute more.
    pub fn news_over(&self, stored: Option<&Sighting>) -> bool {
        stored.is_none_or(|s| {
            s.arch != self.arch
                || s.vendor_class != self.vendor_class
                || self.at - s.at >= Self::RESOLUTION
        })
    }
}

/// A machine known to the daemon: registered by an operator, or only seen on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub mac: MacAddr,
    /// `None` only for `discovered` machines, which nobody has named yet.
    pub hostname: Option<Hostname>,
    pub ip: Option<NodeIp>,
    pub role: Option<Role>,
    pub labels: Labels,
    /// `None` means "the configured default"; resolved where the disk is used.
    pub install_disk: Option<InstallDisk>,
    /// The node's own boot file for its firmware; `None`: the configured one for its arch.
    pub boot_file: Option<BootFile>,
    pub state: NodeState,
    pub failure: Option<Failure>,
    /// The secret this node's callbacks must carry: issued when its install starts, cleared
    /// by a reinstall. Never shown by the API's node views.
    pub callback_secret: Option<String>,
    /// The SSH host public key the installed system reported (`booted`), pinned for SSH.
    pub ssh_host_key: Option<String>,
    /// The machine's last DHCP packet (first seen is `created_at` for a discovered one).
    pub last_seen: Option<Sighting>,
    pub created_at: OffsetDateTime,
    /// The last change by an operator or the lifecycle; sightings do not move it.
    pub updated_at: OffsetDateTime,
    /// When the node entered its current state.
    pub state_since: OffsetDateTime,
}

impl Node {
    /// Whether the node is in the Kubernetes cluster, or may be (a failed join can leave a
    /// Node): what removal, rejoin and the identity lock go by.
    pub fn in_cluster(&self) -> bool {
        matches!(
            self.state,
            NodeState::Joining | NodeState::Joined | NodeState::Ready | NodeState::NotReady
        ) || (self.state == NodeState::Failed
            && self.failure.as_ref().is_some_and(|f| f.phase == "join"))
    }

    /// A machine seen on the network at `at` and nothing more: the base every node record
    /// starts from (registration fills in the rest).
    pub fn discovered(mac: MacAddr, at: OffsetDateTime) -> Node {
        Node {
            mac,
            hostname: None,
            ip: None,
            role: None,
            labels: Labels::new(),
            install_disk: None,
            boot_file: None,
            state: NodeState::Discovered,
            failure: None,
            callback_secret: None,
            ssh_host_key: None,
            last_seen: None,
            created_at: at,
            updated_at: at,
            state_since: at,
        }
    }

    /// The name an operator uses for this node: its hostname, or its MAC while it has none.
    pub fn display_name(&self) -> String {
        match &self.hostname {
            Some(h) => h.to_string(),
            None => self.mac.to_string(),
        }
    }
}

/// Everything an operator gives to register a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNode {
    pub mac: MacAddr,
    pub hostname: Hostname,
    pub ip: NodeIp,
    pub role: Role,
    pub labels: Labels,
    pub install_disk: Option<InstallDisk>,
    /// The node's own boot file for its firmware; `None`: the configured one for its arch.
    pub boot_file: Option<BootFile>,
}

/// A partial update of a registered node. `None` leaves a field as it is;
/// `install_disk: Some(None)` returns the node to the configured default disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePatch {
    pub mac: Option<MacAddr>,
    pub hostname: Option<Hostname>,
    pub ip: Option<NodeIp>,
    pub role: Option<Role>,
    pub labels: Option<Labels>,
    pub install_disk: Option<Option<InstallDisk>>,
    pub boot_file: Option<Option<BootFile>>,
}

impl NodePatch {
    /// Names of the fields this patch sets, for the event log.
    pub fn field_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.mac.is_some() {
            names.push("mac");
        }
        if self.hostname.is_some() {
            names.push("hostname");
        }
        if self.ip.is_some() {
            names.push("ip");
        }
        if self.role.is_some() {
            names.push("role");
        }
        if self.labels.is_some() {
            names.push("labels");
        }
        if self.install_disk.is_some() {
            names.push("install_disk");
        }
        if self.boot_file.is_some() {
            names.push("boot_file");
        }
        names
    }

    pub fn is_empty(&self) -> bool {
        self.field_names().is_empty()
    }
}

/// One entry of a node's append-only history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Global, strictly increasing across the whole store (and across restarts).
    pub seq: u64,
    pub at: OffsetDateTime,
    pub kind: EventKind,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The node entered the registry in `state`.
    Created { state: NodeState },
    /// A lifecycle transition.
    Transition { from: NodeState, to: NodeState },
    /// An operator changed these fields.
    Updated { fields: Vec<String> },
    /// DHCP bound, released or refused an address for the node's MAC. Renewals of the same
    /// lease are not logged (one event per lease, not per renewal).
    Lease {
        action: LeaseAction,
        ip: std::net::Ipv4Addr,
    },
    /// A step the daemon ran on the node (over SSH) in `phase` (`join`, `remove`, …): the
    /// command, its exit status (`None`: it did not finish), and the tail of its output in
    /// the event's message.
    Step {
        phase: String,
        command: String,
        status: Option<u32>,
    },
    /// A request for the node's script, configs or callbacks came from another machine and
    /// was refused (403); the message says which request and why.
    Refused { peer: std::net::IpAddr },
    /// The node's Flatcar update moved to `state` (reported to the Omaha endpoint), about
    /// `version` (the release offered, applied or booted).
    Update { state: UpdateState, version: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// A new lease (or a lease on a different address) was acknowledged.
    Bound,
    /// The client released its lease.
    Released,
    /// The client declined the address: something else on the network answers for it.
    Declined,
}

impl LeaseAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseAction::Bound => "bound",
            LeaseAction::Released => "released",
            LeaseAction::Declined => "declined",
        }
    }

    pub fn parse(s: &str) -> Option<LeaseAction> {
        [
            LeaseAction::Bound,
            LeaseAction::Released,
            LeaseAction::Declined,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// The registry's own id of a node: given at registration, never reused, never changed by
/// an edit (a hostname, MAC or address can be). What the cluster loops key their work by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node #{}", self.0)
    }
}

/// How a node is named: by an operator in a URL or on the command line (hostname or MAC),
/// or inside the daemon by its registry id (never parsed from outside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKey {
    Hostname(Hostname),
    Mac(MacAddr),
    Id(NodeId),
}

impl NodeKey {
    /// Reads a name as given by an operator. A hostname wins when a string is both a valid
    /// hostname and a MAC (`aa-bb-cc-dd-ee-ff` is a legal DNS label): the store falls back to
    /// the MAC reading through [`NodeKey::alternatives`].
    pub fn parse(name: &str) -> Result<Vec<NodeKey>, ValueError> {
        let mut keys = Vec::new();
        if let Ok(h) = name.parse::<Hostname>() {
            keys.push(NodeKey::Hostname(h));
        }
        if let Ok(m) = name.parse::<MacAddr>() {
            keys.push(NodeKey::Mac(m));
        }
        if keys.is_empty() {
            return Err(ValueError::new(format!(
                "{name:?} is neither a hostname nor a MAC address"
            )));
        }
        Ok(keys)
    }
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeKey::Hostname(h) => h.fmt(f),
            NodeKey::Mac(m) => m.fmt(f),
            NodeKey::Id(id) => id.fmt(f),
        }
    }
}
