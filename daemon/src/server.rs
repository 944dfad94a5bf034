//! Starting and stopping the daemon, in phases: (config is validated by the caller) → open the
//! state directory and the store → load or create the API token → bind every socket → spawn the
//! services. [`Daemon::shutdown`] cancels one token tree and waits, bounded, for every task.
//! Tests run exactly this code in-process on port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, Shared, Surfaces};
use crate::config::Config;
use crate::conns::{self, ConnTable};
use crate::pki::server_cert::{self, ServerNames};
use crate::pki::{Ca, IssueError, PkiError};
use crate::secrets::{self, SecretError};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state_dir {path} is mode {mode:o}: others could read the registry, keys and token in it; make it private (chmod 700 {path})"
    )]
    StateDirOpen { path: PathBuf, mode: u32 },
    #[error("cannot open the registry in {path}: {source}{}", store_hint(source))]
    Store { path: PathBuf, source: StoreError },
    #[error("API token: {0}")]
    Token(#[from] SecretError),
    #[error("cluster CA: {0}")]
    Ca(#[from] PkiError),
    #[error("API certificate: {0}")]
    ApiCertificate(#[from] IssueError),
    #[error("DNS: {0}")]
    Dns(std::io::Error),
    #[error("boot flow: {}", .0.join("; "))]
    Boot(Vec<String>),
    #[error("cluster join: {0}")]
    Cluster(String),
    #[error("identity: {0}")]
    Identity(String),
    #[error("cannot listen on {addr} ({what}): {source}{}", bind_hint(what, *addr, source))]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The configuration key that sets a listener, for the operator.
fn listen_key(what: &str) -> &'static str {
    match what {
        "http" => "http.listen",
        "mirror" => "http.mirror_listen",
        "api" => "api.listen",
        "dns" => "dns.listen",
        "tftp" => "tftp.listen",
        "dhcp" => "dhcp.server_port / dhcp.proxy_port",
        _ => "dhcp.interface",
    }
}

/// What to do about a listener that cannot be bound.
fn bind_hint(what: &str, addr: SocketAddr, source: &std::io::Error) -> String {
    let key = listen_key(what);
    match source.kind() {
        std::io::ErrorKind::AddrInUse
            if what == "dns" && addr.port() == 53 && addr.ip().is_unspecified() =>
        {
            format!(
                " — another server holds it (on Ubuntu, systemd-resolved's stub on 127.0.0.53:53): set {key} to this host's address (server_ip:53) instead of {addr}"
            )
        }
        std::io::ErrorKind::AddrInUse => {
            format!(" — another program holds it: change {key}, or stop that program")
        }
        std::io::ErrorKind::AddrNotAvailable => format!(
            " — no interface has that address yet: change {key}, or start lacave after the network is up"
        ),
        _ => format!(" (set by {key})"),
    }
}

/// A hint for an I/O error opening the registry (another daemon holding it); the other
/// errors say what to do themselves.
fn store_hint(e: &StoreError) -> &'static str {
    match e {
        StoreError::Io(_) => " (is another lacave running on this state directory?)",
        _ => "",
    }
}

impl StartError {
    /// A registry that cannot be read (damaged, or written by a newer lacave) exits 65
    /// (EX_DATAERR): restarting will not help.
    pub fn is_damaged_data(&self) -> bool {
        matches!(
            self,
            StartError::Store {
                source: StoreError::Damaged { .. }
                    | StoreError::Corrupt(_)
                    | StoreError::SchemaTooNew { .. },
                ..
            }
        )
    }

    /// Problems the operator fixes in the configuration or its files exit like a bad config.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            StartError::Token(SecretError::TooOpen { .. } | SecretError::Malformed { .. })
                | StartError::Ca(
                    PkiError::Invalid(_) | PkiError::Secret(SecretError::TooOpen { .. })
                )
                | StartError::Boot(_)
                | StartError::StateDirOpen { .. }
        ) || matches!(
            // An address in use is fixed in the configuration (or by stopping the other
            // program), not by restarting: exit like a bad configuration, so systemd does not
            // loop. (An address not there yet may come with the network: that one restarts.)
            self,
            StartError::Bind { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse
        )
    }
}

/// A running daemon.
pub struct Daemon {
    http_addr: SocketAddr,
    /// The API's own listener and whether it speaks HTTPS, when configured.
    api: Option<(SocketAddr, bool)>,
    /// The DNS address (UDP and TCP), when DNS is on.
    dns: Option<SocketAddr>,
    /// The TFTP address, when TFTP is on.
    tftp: Option<SocketAddr>,
    token_path: PathBuf,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Set (with the reason) when the daemon must stop to be restarted.
    restart: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

/// Why [`Daemon::run_until`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The signal future resolved (SIGTERM, SIGINT).
    Signal,
    /// The daemon cannot go on as it is (the registry's storage failed and came back
    /// unwritable): exit non-zero so that systemd starts it again.
    Restart(String),
}

fn create_state_dir(config: &Config) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    // Only the daemon's user reads its state: it holds the token and keys. A directory the
    // operator made open to others is refused, not silently used.
    let dir = &config.state_dir;
    let err = |source| StartError::StateDir {
        path: dir.clone(),
        source,
    };
    secrets::create_private_dir(dir).map_err(err)?;
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StartError::StateDirOpen {
            path: dir.clone(),
            mode,
        });
    }
    // sled makes its directory 0755 and its files 0644: keep the registry private even on a
    // state directory an older version made, or one copied from a backup.
    let registry = config.registry_dir();
    secrets::create_private_dir(&registry).map_err(err)?;
    let registry_mode = std::fs::metadata(&registry)
        .map_err(err)?
        .permissions()
        .mode();
    if registry_mode & 0o077 != 0 {
        std::fs::set_permissions(&registry, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Opens the store, binds every socket and spawns the services, in named phases: the
/// state (directory, registry, token), the identity (CA, boot templates), every socket,
/// the cluster half, then each service on its socket.
pub async fn start(config: Config) -> Result<Daemon, StartError> {
    let caps = conns::raise_fd_limit();
    let State {
        store,
        token,
        token_path,
    } = open_state(&config).await?;
    let (ca, boot) = load_identity(&config).await?;
    wait_for_addresses(&config).await;
    let bound = bind_sockets(&config, &store, &ca).await?;

    let metrics = Arc::new(crate::metrics::Metrics::default());
    let dns_handler = match &bound.dns {
        Some(_) => Some(
            crate::dns::server::DnsHandler::new(&config, store.clone(), metrics.clone())
                .map_err(StartError::Dns)?,
        ),
        None => None,
    };
    let cancel = CancellationToken::new();
    let shared = Arc::new(
        Shared::new(
            config,
            store,
            token,
            ca,
            boot,
            metrics,
            cancel.child_token(),
        )
        .with_caps(caps),
    );
    let tasks = TaskTracker::new();
    if shared.config.cluster.enabled {
        start_cluster(&shared, &tasks, &cancel).await?;
    } else if shared.config.updates.enabled && shared.config.updates.coordinate_reboots {
        let plain = crate::cluster::plain_reboots::PlainReboots::prepare(
            &shared.config,
            shared.store.clone(),
            cancel.child_token(),
        )
        .map_err(StartError::Cluster)?;
        plain.spawn(&tasks);
        let _ = shared.plain_reboots.set(plain);
    }
    if shared.config.identity.enabled {
        let identity = Arc::new(
            crate::identity::Identity::new(
                shared.config.identity.clone(),
                &shared.ca.bundle_pem(),
                zone_lookup(dns_handler.clone()),
            )
            .map_err(StartError::Identity)?,
        );
        tasks.spawn(identity.clone().run(cancel.child_token()));
        let _ = shared.identity.set(identity);
    }
    spawn_forget_stale(&shared.store, shared.config.history, &tasks, &cancel);
    if shared.config.power.poll_secs > 0 {
        tasks.spawn(shared.bmcs.clone().poll(
            std::time::Duration::from_secs(shared.config.power.poll_secs.into()),
            cancel.child_token(),
        ));
    }
    let restart = Arc::new(tokio::sync::watch::Sender::new(None));
    spawn_storage_watch(
        &shared.store,
        &shared.config.registry_dir(),
        restart.clone(),
        &tasks,
        &cancel,
    );
    spawn_reload(&shared, &tasks, &cancel).map_err(|source| StartError::Bind {
        what: "SIGHUP handler",
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let listening = serve_all(&shared, bound, dns_handler, caps, &tasks, &cancel).await?;
    Ok(Daemon {
        http_addr: listening.http,
        api: listening.api,
        dns: listening.dns,
        tftp: listening.tftp,
        token_path,
        shared,
        cancel,
        tasks,
        restart,
    })
}

/// The state directory, the registry and the API token.
struct State {
    store: Store,
    token: secrets::ApiToken,
    token_path: PathBuf,
}

async fn open_state(config: &Config) -> Result<State, StartError> {
    create_state_dir(config)?;
    let registry = config.registry_dir();
    let store = tokio::task::spawn_blocking({
        let registry = registry.clone();
        move || Store::open(&registry)
    })
    .await
    .expect("opening the store does not panic")
    .map_err(|source| StartError::Store {
        path: registry,
        source,
    })?;
    store.set_discovery_limits(config.discovery);
    let token_path = config.token_path();
    let generate = config.api.token_file.is_none();
    let (token, created) = secrets::load_or_create_token(&token_path, generate)?;
    if created {
        tracing::info!(path = %token_path.display(), "generated a new API token");
    }
    // Console sessions belong to the token they were opened with: a rotated token ends them.
    let fingerprint: [u8; 32] = sha2::Sha256::digest(token.as_str().as_bytes()).into();
    let ended = store
        .bind_sessions_to_token(&fingerprint)
        .map_err(|source| StartError::Store {
            path: config.registry_dir(),
            source,
        })?;
    if ended > 0 {
        tracing::warn!(
            sessions = ended,
            "the API token changed: every web console session was ended"
        );
    }
    Ok(State {
        store,
        token,
        token_path,
    })
}

/// The lacave CA and the boot templates (checked now, so that a broken template stops
/// start-up); says which mirror files an install would miss.
async fn load_identity(config: &Config) -> Result<(Arc<Ca>, Arc<crate::boot::Boot>), StartError> {
    let ca = tokio::task::spawn_blocking({
        let config = config.clone();
        move || load_or_create_ca(&config)
    })
    .await
    .expect("loading the CA does not panic")?;

    let boot = tokio::task::spawn_blocking({
        let (config, ca_pem) = (config.clone(), ca.bundle_pem());
        move || crate::boot::Boot::load(&config, &ca_pem)
    })
    .await
    .expect("loading the boot templates does not panic")
    .map_err(StartError::Boot)?;
    let boot = Arc::new(boot);
    let missing = crate::boot::missing_mirror_files(config);
    if !missing.is_empty() {
        tracing::warn!(
            dir = %config.flatcar.mirror_dir.display(),
            missing = %missing.join(", "),
            "the Flatcar mirror lacks files an install needs: installs will fail until they are there (lacave mirror fetch flatcar; documentation: Mirror and registry)"
        );
    }
    Ok((ca, boot))
}

/// Every socket the configuration asks for, bound before any service starts (a port in
/// use stops start-up with its address), and the API's TLS configuration.
struct Bound {
    http: (TcpListener, SocketAddr),
    mirror: Option<(TcpListener, SocketAddr)>,
    api: Option<(TcpListener, SocketAddr)>,
    api_tls: Option<Arc<rustls::ServerConfig>>,
    dns: Option<(Vec<std::net::UdpSocket>, TcpListener, SocketAddr)>,
    tftp: Option<(Vec<std::net::UdpSocket>, SocketAddr)>,
    dhcp: Option<(std::net::UdpSocket, Option<std::net::UdpSocket>)>,
    ra: Option<((socket2::Socket, u32), String)>,
}

async fn bind_sockets(config: &Config, store: &Store, ca: &Arc<Ca>) -> Result<Bound, StartError> {
    let (http_listener, http_addr) = bind("http", config.http.listen).await?;
    let mirror_listener = match config.http.mirror_listen {
        Some(addr) => Some(bind("mirror", addr).await?),
        None => None,
    };
    let api_listener = match config.api.listen {
        Some(addr) => Some(bind("api", addr).await?),
        None => None,
    };
    let api_tls = match &api_listener {
        Some((_, addr)) if config.api.tls => {
            let names = api_server_names(config, *addr);
            let (dir, store, ca) = (config.pki_dir(), store.clone(), ca.clone());
            let days = config.pki.leaf_validity_days;
            let tls = tokio::task::spawn_blocking(move || {
                let now = time::OffsetDateTime::now_utc();
                server_cert::ensure(&dir, &ca, &store, &names, days, now)
            })
            .await
            .expect("issuing the API certificate does not panic")?;
            Some(tls)
        }
        _ => None,
    };

    let dns_sockets = match config.dns.listen {
        Some(addr) => {
            Some(
                crate::dns::server::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind {
                        what: "dns",
                        addr,
                        source,
                    })?,
            )
        }
        None => None,
    };

    let tftp_socket = match config.tftp.listen {
        Some(addr) => {
            let err = |source| StartError::Bind {
                what: "tftp",
                addr,
                source,
            };
            let sockets = crate::tftp::bind(addr).map_err(err)?;
            let bound = sockets[0].local_addr().map_err(err)?;
            Some((sockets, bound))
        }
        None => None,
    };

    let dhcp_sockets = match &config.dhcp {
        Some(dhcp) => {
            let iface = dhcp.interface.as_deref();
            let bind = |port: u16| {
                crate::dhcp::server::bind(port, iface).map_err(|source| StartError::Bind {
                    what: "dhcp",
                    addr: SocketAddr::from(([0, 0, 0, 0], port)),
                    source,
                })
            };
            let main = bind(dhcp.server_port)?;
            let proxy = match dhcp.settings.mode {
                crate::dhcp::settings::Mode::Proxy => Some(bind(dhcp.proxy_port)?),
                crate::dhcp::settings::Mode::Full => None,
            };
            Some((main, proxy))
        }
        None => None,
    };

    let ra_socket = match &config.dhcp {
        Some(dhcp) if dhcp.router_advertisements => {
            let iface = dhcp.interface.clone().unwrap_or_default();
            let socket = crate::dhcp::ra::bind(&iface).map_err(|source| StartError::Bind {
                what: "ipv6 router advertisements",
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
            Some((socket, iface))
        }
        _ => None,
    };
    Ok(Bound {
        http: (http_listener, http_addr),
        mirror: mirror_listener,
        api: api_listener,
        api_tls,
        dns: dns_sockets,
        tftp: tftp_socket,
        dhcp: dhcp_sockets,
        ra: ra_socket,
    })
}

/// The cluster half: the join loop (its PKI, SSH key and templates checked first) and the
/// add-on engine on its API connection (every add-on rendered first).
async fn start_cluster(
    shared: &Arc<Shared>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(), StartError> {
    let (config, store, token) = (
        Arc::new(shared.config.clone()),
        shared.store.clone(),
        cancel.child_token(),
    );
    let joiner =
        tokio::task::spawn_blocking(move || crate::cluster::join::prepare(config, store, token))
            .await
            .expect("preparing the cluster join does not panic")
            .map_err(StartError::Cluster)?;
    joiner.spawn(tasks);
    let catalog =
        crate::addons::catalog::Catalog::load(shared.config.addons.resources_dir.as_deref())
            .map_err(|e| {
                StartError::Cluster(format!("the add-ons are broken: {}", e.join("; ")))
            })?;
    let base = crate::addons::base_context(&shared.config, &shared.ca);
    crate::addons::engine::check_render(&catalog, &base, &shared.config.addons)
        .map_err(|e| StartError::Cluster(format!("the add-ons are broken: {}", e.join("; "))))?;
    let addons = crate::addons::Addons::new(
        catalog,
        shared.config.addons.clone(),
        base,
        shared.store.clone(),
        joiner.api(),
        cancel.child_token(),
    );
    addons.spawn(tasks);
    let _ = shared.addons.set(addons);
    let _ = shared.cluster.set(joiner);
    Ok(())
}

/// Where the daemon serves, once every service runs.
struct Listening {
    http: SocketAddr,
    api: Option<(SocketAddr, bool)>,
    dns: Option<SocketAddr>,
    tftp: Option<SocketAddr>,
}

/// Starts each service on its bound socket and logs where it serves.
async fn serve_all(
    shared: &Arc<Shared>,
    bound: Bound,
    dns_handler: Option<crate::dns::server::DnsHandler>,
    caps: conns::Caps,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Listening, StartError> {
    let Bound {
        http,
        mirror,
        api,
        api_tls,
        dns,
        tftp,
        dhcp,
        ra,
    } = bound;
    let (http, api) = serve_tcp(shared, http, mirror, api, api_tls, caps, tasks, cancel);
    let (dns, tftp) = serve_udp(
        shared,
        dns,
        dns_handler,
        tftp,
        dhcp,
        ra,
        caps,
        tasks,
        cancel,
    )
    .await?;
    Ok(Listening {
        http,
        api,
        dns,
        tftp,
    })
}

/// HTTP (node endpoints, and the API when it has no listener of its own), the image
/// mirror, the API's own listener. Returns the HTTP address and the API's (and whether it
/// speaks HTTPS).
#[allow(clippy::too_many_arguments)]
fn serve_tcp(
    shared: &Arc<Shared>,
    (http_listener, http_addr): (TcpListener, SocketAddr),
    mirror_listener: Option<(TcpListener, SocketAddr)>,
    api_listener: Option<(TcpListener, SocketAddr)>,
    api_tls: Option<Arc<rustls::ServerConfig>>,
    caps: conns::Caps,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> (SocketAddr, Option<(SocketAddr, bool)>) {
    let separate_api = api_listener.is_some();
    let surfaces = Surfaces {
        api: !separate_api,
        node: true,
        console: !separate_api && api::console_enabled(&shared.config),
    };
    crate::http::serve(
        http_listener,
        None,
        api::router(shared.clone(), surfaces),
        ConnTable::new("http", caps.http, shared.metrics.clone()),
        cancel.child_token(),
        tasks,
    );
    tracing::info!(
        addr = %http_addr,
        "http listening (node endpoints, /ca.pem, /healthz, /metrics{})",
        if separate_api { "" } else { ", API" }
    );
    if surfaces.console {
        tracing::info!("web console: http://{http_addr}/console/ (log in with the API token)");
    } else if !separate_api {
        tracing::info!(
            "web console off: the API shares [http] listen, which machines reach; set [api] listen to serve it on a listener of its own"
        );
    }

    if let Some((listener, addr)) = mirror_listener {
        crate::mirror::serve(
            listener,
            shared.config.flatcar.mirror_dir.clone(),
            crate::images::ImageStore::new(&shared.config.state_dir),
            ConnTable::new("mirror", caps.mirror, shared.metrics.clone()),
            shared.metrics.clone(),
            cancel.child_token(),
            tasks,
        );
        tracing::info!(%addr, dir = %shared.config.flatcar.mirror_dir.display(), "image mirror listening (sendfile: /mirror/ and the /v2/ registry)");
    }

    let mut api = None;
    if let Some((listener, addr)) = api_listener {
        let surfaces = Surfaces {
            api: true,
            node: false,
            console: true,
        };
        let app = api::router(shared.clone(), surfaces);
        crate::http::serve(
            listener,
            api_tls,
            app,
            ConnTable::new("api", caps.api, shared.metrics.clone()),
            cancel.child_token(),
            tasks,
        );
        let tls = shared.config.api.tls;
        let scheme = if tls { "https" } else { "http" };
        tracing::info!(%addr, scheme, "API listening");
        tracing::info!("web console: {scheme}://{addr}/console/ (log in with the API token)");
        api = Some((addr, tls));
    }
    (http_addr, api)
}

/// DNS, TFTP, DHCP and IPv6 router advertisements on their bound sockets. Returns the DNS
/// and TFTP addresses.
#[allow(clippy::too_many_arguments)]
async fn serve_udp(
    shared: &Arc<Shared>,
    dns_sockets: Option<(Vec<std::net::UdpSocket>, TcpListener, SocketAddr)>,
    dns_handler: Option<crate::dns::server::DnsHandler>,
    tftp_socket: Option<(Vec<std::net::UdpSocket>, SocketAddr)>,
    dhcp_sockets: Option<(std::net::UdpSocket, Option<std::net::UdpSocket>)>,
    ra_socket: Option<((socket2::Socket, u32), String)>,
    caps: conns::Caps,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(Option<SocketAddr>, Option<SocketAddr>), StartError> {
    let mut dns = None;
    if let (Some((udp, tcp, addr)), Some(handler)) = (dns_sockets, dns_handler) {
        // Build the zone now, so that a broken record shows in the log at start.
        let zone = handler.zone().await;
        let slots = ConnTable::new("dns", caps.dns_tcp, shared.metrics.clone());
        crate::dns::server::serve(handler, udp, tcp, slots, cancel.child_token(), tasks)
            .map_err(StartError::Dns)?;
        tracing::info!(%addr, zone = %shared.config.dns.zone, serial = zone.serial, "DNS listening (UDP and TCP)");
        dns = Some(addr);
    }

    let mut tftp = None;
    if let Some((socket, addr)) = tftp_socket {
        let settings = crate::tftp::TftpSettings {
            root: shared.config.tftp.root.clone(),
            follow_links_into: shared.config.tftp.follow_links_into.clone(),
            max_transfers_per_client: shared.config.tftp.max_transfers_per_client,
            max_transfers: caps.tftp,
        };
        crate::tftp::serve(
            socket,
            settings,
            shared.metrics.clone(),
            cancel.child_token(),
            tasks,
        )
        .map_err(|source| StartError::Bind {
            what: "tftp",
            addr,
            source,
        })?;
        tracing::info!(%addr, root = %shared.config.tftp.root.display(), "TFTP listening (read-only)");
        tftp = Some(addr);
    }

    if let (Some((main, proxy)), Some(dhcp)) = (dhcp_sockets, shared.config.dhcp.clone()) {
        let dhcp = Arc::new(dhcp);
        let err = |source| StartError::Bind {
            what: "dhcp",
            addr: SocketAddr::from(([0, 0, 0, 0], dhcp.server_port)),
            source,
        };
        let (store, metrics) = (shared.store.clone(), shared.metrics.clone());
        crate::dhcp::server::serve(
            main,
            dhcp.clone(),
            store.clone(),
            metrics.clone(),
            false,
            cancel.child_token(),
            tasks,
        )
        .map_err(err)?;
        if let Some(proxy) = proxy {
            crate::dhcp::server::serve(
                proxy,
                dhcp.clone(),
                store,
                metrics,
                true,
                cancel.child_token(),
                tasks,
            )
            .map_err(err)?;
        }
        tracing::info!(
            mode = ?dhcp.settings.mode,
            port = dhcp.server_port,
            interface = dhcp.interface.as_deref().unwrap_or("(all)"),
            "DHCP listening"
        );
    }

    if let Some(((socket, index), iface)) = ra_socket {
        crate::dhcp::ra::serve(
            socket,
            index,
            iface.clone(),
            shared.metrics.clone(),
            cancel.child_token(),
            tasks,
        )
        .map_err(|source| StartError::Bind {
            what: "ipv6 router advertisements",
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        tracing::info!(interface = %iface, "answering IPv6 router solicitations (lifetime 0, no prefix: iPXE stops waiting for IPv6)");
    }
    Ok((dns, tftp))
}

/// While registry writes fail (a full disk), checks every 5 s whether space is back; then a
/// small write is tried: when it works the daemon goes on, when it still fails (sled refuses
/// every write after an I/O error) the daemon asks to be restarted, which reopens the
/// registry. Reads (DHCP for known machines, DNS, TFTP, scripts) go on meanwhile; `/healthz`
/// says 503 and nothing is acknowledged.
fn spawn_storage_watch(
    store: &Store,
    dir: &std::path::Path,
    restart: Arc<tokio::sync::watch::Sender<Option<String>>>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    const FREE_ENOUGH: u64 = 1 << 20;
    let (store, dir, cancel) = (store.clone(), dir.to_path_buf(), cancel.clone());
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let Some(failure) = store.storage_failure() else {
                continue;
            };
            let free = rustix::fs::statvfs(&dir)
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
                .unwrap_or(0);
            if free < FREE_ENOUGH {
                tracing::warn!(%failure, free, dir = %dir.display(), "registry writes still fail: free some space");
                continue;
            }
            let s = store.clone();
            let probed = tokio::task::spawn_blocking(move || s.probe()).await;
            if let Ok(Err(error)) = probed {
                let reason = format!(
                    "registry writes failed ({failure}) and still fail with {free} bytes free ({error}): restarting to reopen the registry"
                );
                tracing::error!("{reason}");
                restart.send_replace(Some(reason));
                return;
            }
        }
    });
}

/// Every 10 minutes (and once at start), forgets discovered machines unseen for
/// `[discovery] forget_after_hours`, and applies the history's retention (`[history]`).
fn spawn_forget_stale(
    store: &Store,
    history: crate::store::settings::HistoryLimits,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    let (store, cancel) = (store.clone(), cancel.clone());
    tasks.spawn(async move {
        loop {
            let s = store.clone();
            let pruned = tokio::task::spawn_blocking(move || {
                s.prune_history(history, time::OffsetDateTime::now_utc())
            })
            .await;
            match pruned {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(
                    pruned = n,
                    max_per_node = history.max_per_node,
                    "node history beyond its retention was removed ([history])"
                ),
                Ok(Err(error)) => tracing::warn!(%error, "pruning node history failed"),
                Err(error) => tracing::warn!(%error, "pruning node history failed"),
            }
            let s = store.clone();
            let forgotten = tokio::task::spawn_blocking(move || {
                s.forget_stale_discovered(time::OffsetDateTime::now_utc())
            })
            .await;
            match forgotten {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(
                    forgotten = n,
                    "discovered machines unseen too long were forgotten"
                ),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "forgetting stale discovered machines failed")
                }
                Err(error) => tracing::warn!(%error, "forgetting stale discovered machines failed"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
        }
    });
}

/// How long start-up waits for the configured addresses to appear on an interface.
const ADDRESS_WAIT: Duration = Duration::from_secs(60);

/// Waits (up to [`ADDRESS_WAIT`]) until every listener's specific address (the example binds
/// DNS to `server_ip`) is on an interface: at boot the unit may start before DHCP or networkd has configured them
/// (`network-online.target` is only as good as the host's wait-online service), and binding
/// would fail with "cannot assign requested address" and restart in a loop. Past the wait, the
/// bind fails and names the key.
async fn wait_for_addresses(config: &Config) {
    let mut wanted: std::collections::BTreeSet<std::net::IpAddr> = [
        Some(config.http.listen),
        config.http.mirror_listen,
        config.api.listen,
        config.dns.listen,
        config.tftp.listen,
    ]
    .into_iter()
    .flatten()
    .map(|a| a.ip())
    .collect();
    wanted.retain(|ip| !ip.is_unspecified() && !ip.is_loopback());
    let absent = |ip: &std::net::IpAddr| {
        std::net::UdpSocket::bind(SocketAddr::new(*ip, 0))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrNotAvailable)
    };
    let deadline = tokio::time::Instant::now() + ADDRESS_WAIT;
    let mut told = false;
    loop {
        let missing: Vec<String> = wanted
            .iter()
            .filter(|ip| absent(ip))
            .map(|ip| ip.to_string())
            .collect();
        if missing.is_empty() {
            if told {
                tracing::info!("the configured addresses are up");
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            return; // the bind that follows fails, naming the key
        }
        if !told {
            tracing::warn!(
                missing = %missing.join(", "),
                "waiting (up to 60 s) for these listen addresses to be on an interface"
            );
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// The cluster CA, created (and saved) on first start.
fn load_or_create_ca(config: &Config) -> Result<Arc<Ca>, StartError> {
    let dir = config.pki_dir();
    let now = time::OffsetDateTime::now_utc();
    let ca = match Ca::load(&dir, now) {
        Ok(ca) => ca,
        Err(PkiError::Missing(_)) => {
            let ca = Ca::generate(&config.pki.ca, now)?;
            ca.save(&dir)?;
            tracing::info!(subject = %ca.subject(), dir = %dir.display(), "created the cluster CA");
            ca
        }
        Err(e) => return Err(e.into()),
    };
    let days_left = (ca.not_after() - now).whole_days();
    if days_left < 90 {
        tracing::warn!(subject = %ca.subject(), days_left, "the cluster CA expires soon");
    }
    Ok(Arc::new(ca))
}

/// The names the API certificate carries: `localhost` and this host's name, the configured
/// extra names, loopback, `server_ip` and the listen address when it names one.
fn api_server_names(config: &Config, addr: SocketAddr) -> ServerNames {
    let mut dns: std::collections::BTreeSet<String> =
        config.api.tls_names.iter().cloned().collect();
    dns.insert("localhost".into());
    // uname(2), not /proc/sys/kernel/hostname: the unit's ProcSubset=pid hides /proc/sys.
    let uname = rustix::system::uname();
    if let Ok(host) = uname.nodename().to_str()
        && let Ok(host) = crate::model::validate_dns_name(host.trim())
    {
        dns.insert(host);
    } else {
        tracing::warn!(
            "this host's name is not a DNS name: the API certificate names only localhost, the addresses and [api] tls_names"
        );
    }
    let mut ips: std::collections::BTreeSet<std::net::IpAddr> = [
        std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::Ipv6Addr::LOCALHOST.into(),
    ]
    .into();
    ips.insert(config.server_ip.into());
    if !addr.ip().is_unspecified() {
        ips.insert(addr.ip());
    }
    ServerNames { dns, ips }
}

impl Daemon {
    /// The bound HTTP address (the real port when the config asked for port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The API's own listener and whether it is HTTPS, when `[api] listen` is set.
    pub fn api_listener(&self) -> Option<(SocketAddr, bool)> {
        self.api
    }

    /// The DNS address (UDP and TCP), when `[dns] listen` is set.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns
    }

    /// The TFTP address, when `[tftp] listen` is set.
    pub fn tftp_addr(&self) -> Option<SocketAddr> {
        self.tftp
    }

    /// The base URL of the API: the API listener when there is one, else the HTTP listener.
    pub fn api_url(&self) -> String {
        match self.api {
            Some((addr, true)) => format!("https://{addr}"),
            Some((addr, false)) => format!("http://{addr}"),
            None => format!("http://{}", self.http_addr),
        }
    }

    /// The web console's address, when the daemon serves one (see `api::console_enabled`).
    pub fn console_url(&self) -> Option<String> {
        crate::api::console_enabled(&self.shared.config)
            .then(|| format!("{}/console/", self.api_url()))
    }

    pub fn api_token(&self) -> &str {
        self.shared.token.as_str()
    }

    pub fn token_path(&self) -> &std::path::Path {
        &self.token_path
    }

    /// Waits for `signal`, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> Stopped {
        let mut restart = self.restart.subscribe();
        let stopped = tokio::select! {
            _ = signal => Stopped::Signal,
            reason = restart.wait_for(Option::is_some) => match reason {
                Ok(reason) => Stopped::Restart(reason.clone().unwrap_or_default()),
                Err(_) => Stopped::Signal,
            },
        };
        self.shutdown(Duration::from_secs(10)).await;
        stopped
    }

    /// Stops every service, waiting at most `grace` for in-flight requests, then makes sure the
    /// store is flushed and closed (so another `start` on the same state directory works).
    pub async fn shutdown(self, grace: Duration) {
        tracing::info!("shutting down");
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "some tasks did not stop in time"
            );
        }
        let shared = self.shared;
        let flushed = tokio::task::spawn_blocking(move || {
            // The last handle to the store goes here; sled releases its lock on drop.
            let result = shared.store.flush();
            drop(shared);
            result
        })
        .await;
        match flushed {
            Ok(Ok(())) => tracing::info!("stopped"),
            Ok(Err(error)) => tracing::error!(%error, "final flush of the registry failed"),
            Err(error) => tracing::error!(%error, "final flush of the registry panicked"),
        }
    }
}

/// On SIGHUP (`systemctl reload lacave`): reads the configuration file again and applies its
/// `[addons]` section (an add-on turned on or off is applied or removed at once). Other sections
/// take effect at the next restart; a file with problems changes nothing.
fn spawn_reload(
    shared: &Arc<Shared>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let (shared, cancel) = (shared.clone(), cancel.clone());
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = hup.recv() => {}
            }
            let Some(source) = shared.config.source.clone() else {
                tracing::warn!("SIGHUP: the daemon runs on embedded defaults; nothing to reload");
                continue;
            };
            let loaded = tokio::task::spawn_blocking(move || Config::load(&source)).await;
            match loaded {
                Ok(Ok(config)) => match shared.addons.get() {
                    Some(addons) => match addons.reload(config.addons) {
                        Ok(changes) => tracing::info!(%changes, "SIGHUP: [addons] reloaded (other sections take effect at restart)"),
                        Err(problems) => tracing::error!(problems = %problems.join("; "), "SIGHUP: the add-ons are broken; nothing changed"),
                    },
                    None => tracing::info!("SIGHUP: the cluster is off; only [addons] reloads, at restart for the rest"),
                },
                Ok(Err(error)) => tracing::error!(%error, "SIGHUP: the configuration has problems; nothing changed"),
                Err(error) => tracing::error!(%error, "SIGHUP: reading the configuration panicked"),
            }
        }
    });
    Ok(())
}

/// SIGTERM and SIGINT handlers. Installed before the daemon reports ready, so that a stop
/// request arriving right after start-up is a graceful shutdown, not the default kill.
pub struct TerminationSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl TerminationSignals {
    pub fn install() -> std::io::Result<TerminationSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(TerminationSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("received SIGTERM"),
            _ = self.int.recv() => tracing::info!("received SIGINT"),
        }
    }
}

/// Names in the daemon's own zone, answered from the zone (the daemon must never ask the
/// host's resolver for them: it may be on another network), for clients the daemon itself
/// runs (the identity reconciler).
fn zone_lookup(
    dns: Option<crate::dns::server::DnsHandler>,
) -> crate::identity::keycloak::ZoneLookup {
    Arc::new(move |host: String| {
        let dns = dns.clone();
        Box::pin(async move {
            use hickory_server::proto::rr::{LowerName, Name, RData, RecordType};
            let dns = dns?;
            let name = Name::from_ascii(format!("{}.", host.trim_end_matches('.'))).ok()?;
            let zone = dns.zone().await;
            match zone.lookup(&LowerName::from(name), RecordType::A) {
                crate::dns::zone::Lookup::NotOurs => None,
                crate::dns::zone::Lookup::Answer { answers, .. } => Some(
                    answers
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                            _ => None,
                        })
                        .collect(),
                ),
            }
        })
    })
}
