//! The `lacave` command line: `serve` and `check-config` run the daemon's own code; `node …`
//! is a client of a running daemon's API.

mod addons;
mod client;
mod cluster;
mod dns;
mod identity;
mod mirror;
mod output;
mod pki;
mod site_backup;
mod updates;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

pub use client::{Client, ClientError, Target, load_config};

/// Exit codes, from sysexits(3) where one fits.
pub mod exit {
    /// A bad configuration (EX_USAGE, as systemd's `RestartPreventExitStatus=64` expects).
    pub const CONFIG: u8 = 64;
    /// The daemon refused the request's data (EX_DATAERR).
    pub const DATA: u8 = 65;
    /// The daemon cannot be reached (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// An output file cannot be written: its disk reached the reserve (EX_CANTCREAT).
    pub const CANT_CREATE: u8 = 73;
    /// The daemon answered but its HTTPS certificate does not check out (EX_PROTOCOL).
    pub const PROTOCOL: u8 = 76;
    /// The API token is missing or refused (EX_NOPERM).
    pub const NO_PERMISSION: u8 = 77;
    /// `serve` stopped to be restarted: the registry's storage failed and must be reopened
    /// (EX_TEMPFAIL; the unit's `Restart=on-failure` starts it again).
    pub const RESTART: u8 = 75;
}

#[derive(Parser, Debug)]
#[command(
    name = "lacave",
    version = crate::VERSION,
    about = "Provisioning appliance for bare-metal Kubernetes on Flatcar Container Linux"
)]
pub struct Cli {
    /// How to reach the daemon (and, for `serve` and `check-config`, its configuration):
    /// accepted before or after the command (`lacave --url … node list`).
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print only what a script reads: results (a name, a table, JSON) and errors; no notes,
    /// confirmations or progress.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `--quiet` was given.
pub(crate) fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// A note for people on standard error (progress, what a result means), not under `--quiet`.
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::cli::quiet() {
            eprintln!($($arg)*);
        }
    };
}
/// A confirmation on standard output ("registered kube01 …"), not under `--quiet`.
macro_rules! said {
    ($($arg:tt)*) => {
        if !$crate::cli::quiet() {
            println!($($arg)*);
        }
    };
}
pub(crate) use {note, said};

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon on --config (embedded defaults without it).
    Serve {
        /// How the log is written: `text`, or `json` (one object per line, for log shippers).
        #[arg(long, value_enum, env = "LACAVE_LOG_FORMAT", default_value = "text")]
        log_format: crate::LogFormat,
    },
    /// Validate the configuration file given with --config: exit 0, or 64 with one line per
    /// problem.
    CheckConfig,
    /// Copy the registry of a running daemon to a file (written whole, then renamed: an
    /// interrupted backup leaves no file that looks complete). It holds the registry only:
    /// not the state directory's files (pki/, cluster/, ssh/, the API token) nor the
    /// cluster's etcd (lacave cluster snapshot save). --site saves all of them in one tar.
    Backup {
        /// Where to write it (mode 0600: it holds the nodes' callback secrets).
        #[arg(long, short)]
        output: PathBuf,
        /// The site's whole state in one tar: the registry, an etcd snapshot taken now and
        /// the state directory's files (keys included), with a MANIFEST.txt saying what it
        /// holds and does not. Run on the provisioning host, with the daemon's --config.
        #[arg(long)]
        site: bool,
    },
    /// Replace the registry of a stopped daemon (--config names it) with a backup. The
    /// current registry is moved aside, never deleted.
    Restore {
        /// A file written by `lacave backup`.
        file: PathBuf,
    },
    /// Manage nodes through a running daemon.
    Node {
        #[command(subcommand)]
        command: Box<NodeCommand>,
    },
    /// Records of the cluster DNS zone.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// The cluster certificate authority.
    Pki {
        #[command(subcommand)]
        command: Box<PkiCommand>,
    },
    /// The Kubernetes cluster the daemon builds.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The image mirror: fetch verified Flatcar releases, list, prune.
    Mirror {
        #[command(subcommand)]
        command: mirror::MirrorCommand,
    },
    /// The cluster add-ons (cert-manager, dashboard, monitoring …) the daemon applies.
    Addon {
        #[command(subcommand)]
        command: AddonCommand,
    },
    /// Single sign-on: the Keycloak realm the daemon declares and the API server trusts.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Flatcar updates the daemon serves its nodes: the release offered, where each node is.
    Updates {
        #[command(subcommand)]
        command: UpdatesCommand,
    },
    /// The web console's sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Print a shell completion script (the .deb and deploy/install.sh install them:
    /// bash, zsh and fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (lacave(1) and one per subcommand, lacave-node-add(1) …) into a
    /// directory, or print lacave(1) to standard output without --dir.
    Man {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The configuration file's reference and a commented example, from the settings code.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the OpenAPI 3.1 document of the operator API (what a running daemon serves at
    /// /api/v1/openapi.json), to generate a client from.
    Openapi,
    /// Print what a node would get now (its state does not change).
    Render {
        /// ipxe (its script), install or final (its Ignition configs).
        #[arg(value_parser = ["ipxe", "install", "final"])]
        what: String,
        /// Hostname or MAC address.
        node: String,
    },
}

/// A node's BMC on `node add` and `node edit` (`lacave node bmc` does the same alone).
#[derive(clap::Args, Debug, Default)]
pub struct BmcArgs {
    /// Its BMC: ipmi://HOST[:PORT] or redfish://HOST[:PORT][?sha256=FINGERPRINT].
    #[arg(long, value_name = "BMC_URL", requires = "bmc_user")]
    pub bmc: Option<String>,
    /// A BMC user with the administrator role.
    #[arg(long, requires = "bmc")]
    pub bmc_user: Option<String>,
    /// A file holding the BMC password (its first line).
    #[arg(long, requires = "bmc", conflicts_with = "bmc_password_stdin")]
    pub bmc_password_file: Option<PathBuf>,
    /// Read the BMC password from standard input (its first line).
    #[arg(long, requires = "bmc")]
    pub bmc_password_stdin: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every key of the configuration file: its type, default and meaning (Markdown;
    /// the documentation's configuration page is this output).
    Reference,
    /// Print a configuration file with every key commented out at its default, each with
    /// what it does: a start for /etc/lacave/lacave.toml.
    Example,
}

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// End web console sessions at once (logout everywhere). Rotating the API token (a new
    /// token file, then a restart) ends them all too.
    Revoke {
        /// Every session (the only choice: sessions are not listed by who holds them).
        #[arg(long, required = true)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Power on every node that has a BMC: the control planes first, then — once a control
    /// plane is ready (with `[cluster] enabled`) — the workers. Each node's result is printed;
    /// one dead BMC holds up no other.
    PowerOn {
        /// How long to wait for a control plane to be ready before the workers (seconds).
        #[arg(long, default_value_t = 1800)]
        wait_secs: u64,
        /// Power the workers on at once, without waiting for a control plane.
        #[arg(long)]
        no_wait: bool,
    },
    /// Nodes as the registry and the API server see them.
    Status {
        #[command(flatten)]
        out: output::OutputArgs,
        /// Print again each time a node changes (the event stream), until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Print a kubeconfig for a person: a client certificate from the cluster's CA, its server
    /// the control-plane endpoint; with --oidc, one that signs in through the [identity]
    /// realm with kubelogin (`kubectl oidc-login`).
    Kubeconfig {
        /// The user name in the certificate (default admin); with --oidc, the context's name
        /// and the name Keycloak's login page is offered.
        #[arg(long)]
        user: Option<String>,
        /// A group of the user (repeatable); default kubeadm:cluster-admins (cluster-admin).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long it is valid: 30m, 24h (default), 7d (at most a year).
        #[arg(long)]
        ttl: Option<String>,
        /// No certificate: the user signs in through Keycloak (groups and lifetime come from
        /// the realm).
        #[arg(long)]
        oidc: bool,
    },
    /// List the kubeconfigs issued to people: user, groups, when, and until when (a client
    /// certificate cannot be revoked; this is who holds one).
    Kubeconfigs {
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Every certificate of the cluster that can expire, soonest first, with days left: on
    /// each control plane (kubeadm's report), each node's kubelet, the cluster CAs and the
    /// daemon's own (checked hourly; --refresh checks now).
    Certs {
        #[arg(long)]
        refresh: bool,
        #[command(flatten)]
        out: output::OutputArgs,
        /// Renew kubeadm's certificates on every control plane now, one at a time (in the
        /// background: follow each control plane's history), instead of at two thirds of
        /// their life.
        #[arg(long, conflicts_with_all = ["refresh", "json", "output"])]
        renew: bool,
    },
    /// The cluster's etcd snapshots: list, take one now, or restore one (the way back from a
    /// lost control plane or lost objects).
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Upgrade Kubernetes, one node at a time (control planes first): skew rules checked, an
    /// etcd snapshot taken, then per node cordon and drain, the release's sysext from the
    /// mirror, kubeadm upgrade apply/node, the kubelet restarted, Ready at the new version,
    /// uncordon. Stops at the first failure with the node and command named. Waits until
    /// done, printing each node's progress.
    Upgrade {
        /// The release to upgrade to, like v1.37.2 (one minor release at a time).
        #[arg(long, required_unless_present_any = ["resume", "status"])]
        to: Option<String>,
        /// Check and print the plan only: nothing changes.
        #[arg(long)]
        dry_run: bool,
        /// Continue the last run, which failed or was interrupted, from the node it stopped at.
        #[arg(long, conflicts_with = "dry_run")]
        resume: bool,
        /// How long each node's drain may take, in seconds (pods a disruption budget holds
        /// back are retried until then).
        #[arg(long, value_name = "SECS")]
        drain_timeout: Option<u64>,
        /// Return once started (follow with lacave cluster upgrade --status).
        #[arg(long)]
        no_wait: bool,
        /// Print the last run and exit.
        #[arg(long, conflicts_with_all = ["to", "dry_run", "resume", "no_wait"])]
        status: bool,
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Print an inventory of the registry for kubespray's playbooks.
    Inventory {
        /// Only `kubespray` (a `hosts.yaml`).
        #[arg(long, default_value = "kubespray", value_parser = ["kubespray"])]
        format: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// The snapshots the daemon holds, newest first: when, from which member, revision, size
    /// and SHA-256.
    List {
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Take a snapshot now (through etcd's API; [cluster.etcd_snapshot] takes them on a
    /// schedule too). Prints its name.
    Save,
    /// Restore the cluster's etcd from a snapshot: onto the first control plane (its static
    /// pods stopped, `etcdutl snapshot restore`, pods back), the other control planes reset
    /// and joined again. Everything written to the cluster after the snapshot is lost.
    /// Waits until done, printing each step.
    Restore {
        /// A snapshot's name (lacave cluster snapshot list), or its path in the daemon's
        /// snapshot directory.
        snapshot: String,
        /// Say that the cluster's current state may be replaced.
        #[arg(long)]
        yes: bool,
        /// Return once started (follow with GET /api/v1/cluster/restore).
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum IdentityCommand {
    /// The realm: issuer, groups, users, the last pass and the drift it repaired.
    Status {
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Compare the realm with its declaration and repair it now (otherwise every [identity]
    /// resync_secs).
    Sync,
}

#[derive(Subcommand, Debug)]
pub enum UpdatesCommand {
    /// The release offered to nodes and each node's update: version, state (offered,
    /// downloading, applied …), last check.
    Status {
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Start no coordinated reboot until resumed (a reboot running ends).
    Pause,
    /// Let coordinated reboots start again, after a pause or after a node that did not come
    /// back stopped them.
    Resume,
}

#[derive(clap::Subcommand, Debug)]
pub enum AddonCommand {
    /// Every add-on: on or off, state, objects.
    List {
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// One add-on: its unhealthy objects, conflicts and recent events.
    Status {
        name: String,
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Reconcile now (otherwise every [addons] resync_secs).
    Apply { name: String },
    /// Print a short-lived token for the add-on's login account (dashboard: the admin-user
    /// ServiceAccount, for Headlamp's login page).
    Token {
        name: String,
        /// How long it is valid: 10m to 24h.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Print every container image the add-ons need (what an air-gapped site mirrors); reads
    /// the embedded add-ons, no daemon needed.
    Images,
}

#[derive(Subcommand, Debug)]
pub enum DnsCommand {
    /// Add a record: `lacave dns add login.kube CNAME kube`.
    Add {
        /// Owner name, relative to the zone (`@` for the zone itself).
        name: String,
        /// A, AAAA, CNAME, TXT, SRV or MX.
        #[arg(value_name = "TYPE")]
        rtype: String,
        /// The value ("10 5 443 kube" for SRV, "10 mail" for MX).
        value: String,
        #[arg(long)]
        ttl: Option<u32>,
    },
    /// List the records added by operators and by the configuration file.
    List {
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Remove a record by its id (from `lacave dns list`).
    Rm { id: String },
}

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create the cluster CA in the state directory (the daemon also does on first start).
    Init {
        /// Replace an existing CA (every node and certificate then needs the new one).
        #[arg(long)]
        force: bool,
    },
    /// Import an existing CA: its certificate (optionally with its issuers, e.g. root and
    /// intermediate) and the signing CA's unencrypted private key.
    Import {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate through the daemon. The key is generated here and never sent.
    Issue {
        /// DNS name (repeatable).
        #[arg(long = "dns", value_name = "NAME")]
        dns_names: Vec<String>,
        /// IP address (repeatable).
        #[arg(long = "ip", value_name = "ADDRESS")]
        ips: Vec<String>,
        /// Validity in days (default: [pki] leaf_validity_days).
        #[arg(long)]
        days: Option<u32>,
        /// For TLS servers (the default when neither --server nor --client is given).
        #[arg(long)]
        server: bool,
        /// For TLS clients.
        #[arg(long)]
        client: bool,
        /// Directory to write cert.pem, chain.pem, ca.pem and key.pem (0600) into.
        #[arg(long)]
        out: PathBuf,
    },
    /// List issued certificates.
    List {
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Mark a certificate revoked.
    Revoke {
        serial: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print manifests for other tools.
    Export {
        #[command(subcommand)]
        what: ExportTarget,
    },
}

#[derive(Subcommand, Debug)]
pub enum ExportTarget {
    /// The Secret and ClusterIssuer that let cert-manager issue from the cluster CA.
    CertManager,
}

/// The help section of the options every command shares.
const CONNECTION: &str = "Connection (any command, before or after it)";

/// How the client finds the daemon: flags, then the environment, then the configuration
/// (`--config`, `$LACAVE_CONFIG`, /etc/lacave/lacave.toml, or embedded defaults).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Base URL of the daemon, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, env = "LACAVE_URL", help_heading = CONNECTION)]
    pub url: Option<String>,
    /// API token (prefer LACAVE_TOKEN or --token-file: arguments show up in `ps`).
    #[arg(
        long,
        global = true,
        env = "LACAVE_TOKEN",
        hide_env_values = true,
        help_heading = CONNECTION
    )]
    pub token: Option<String>,
    /// File holding the API token.
    #[arg(long, global = true, help_heading = CONNECTION)]
    pub token_file: Option<PathBuf>,
    /// The daemon's configuration file (TOML): what `serve` runs on and `check-config` checks;
    /// client commands find the daemon's address, token file and CA in it.
    #[arg(long, short, global = true, env = "LACAVE_CONFIG", help_heading = CONNECTION)]
    pub config: Option<PathBuf>,
    /// CA bundle to check an https:// daemon against (default: the cluster CA in the state
    /// directory).
    #[arg(long, global = true, env = "LACAVE_CA", help_heading = CONNECTION)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Register a node by its MAC address (or adopt a discovered one).
    Add {
        /// The machine's MAC address: aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or
        /// aabbccddeeff (the one it network-boots from).
        #[arg(long)]
        mac: String,
        /// Its host name: one DNS label (letters, digits, '-'); DNS publishes
        /// <hostname>.<zone>.
        #[arg(long)]
        hostname: String,
        /// Its static IPv4 address (DHCP reserves it; the installed system keeps it).
        #[arg(long)]
        ip: String,
        /// control-plane or worker.
        #[arg(long)]
        role: String,
        /// A Kubernetes node label, key=value (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Install disk, e.g. /dev/sda (default: the configured one).
        #[arg(long)]
        disk: Option<String>,
        /// The node's own boot file in the TFTP root, e.g. snponly.efi (default: by firmware).
        #[arg(long)]
        boot_file: Option<String>,
        #[command(flatten)]
        bmc: BmcArgs,
    },
    /// Change a node: only the fields given change (what `PATCH /api/v1/nodes/{name}` does).
    Edit {
        /// Hostname or MAC address.
        name: String,
        /// A new MAC address (a replaced network card or machine).
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long)]
        ip: Option<String>,
        /// control-plane or worker.
        #[arg(long)]
        role: Option<String>,
        /// A Kubernetes node label, key=value (repeatable): the labels given replace them all.
        #[arg(long = "label", value_name = "KEY=VALUE", conflicts_with = "no_labels")]
        labels: Vec<String>,
        /// Remove every label.
        #[arg(long)]
        no_labels: bool,
        /// Install disk, e.g. /dev/sdb.
        #[arg(long, conflicts_with = "default_disk")]
        disk: Option<String>,
        /// Go back to the configured install disk.
        #[arg(long)]
        default_disk: bool,
        /// The node's own boot file in the TFTP root.
        #[arg(long, conflicts_with = "default_boot_file")]
        boot_file: Option<String>,
        /// Go back to the boot file chosen by firmware.
        #[arg(long)]
        default_boot_file: bool,
        #[command(flatten)]
        bmc: BmcArgs,
    },
    /// List nodes.
    List {
        #[command(flatten)]
        out: output::OutputArgs,
        /// Print again each time a node changes (the event stream), until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Show a node and its history.
    Show {
        /// Hostname or MAC address.
        name: String,
        #[command(flatten)]
        out: output::OutputArgs,
    },
    /// Remove a node: a node in the cluster is first cordoned, drained and reset
    /// (`kubeadm reset -f`), and its Node deleted.
    Rm {
        name: String,
        /// Remove the last control plane too (that ends the cluster).
        #[arg(long)]
        force: bool,
    },
    /// Reinstall a node on its next network boot.
    Reinstall {
        name: String,
        /// Also set its next boot to the network and power-cycle it through its BMC, so that
        /// it reinstalls now (see `lacave node bmc`).
        #[arg(long)]
        power: bool,
    },
    /// Show, set or remove a node's BMC: `ipmi://HOST[:PORT]` (IPMI v2.0, cipher suite 3) or
    /// `redfish://HOST[:PORT][?sha256=FINGERPRINT]` (HTTPS, the lacave CA or the pinned
    /// certificate). The password comes from a file or standard input, never the command line;
    /// the daemon keeps it 0600 and never shows it.
    Bmc {
        /// Hostname or MAC address.
        name: String,
        /// The BMC's address (ipmi://… or redfish://…); with --user and a password, sets it.
        #[arg(value_name = "BMC_URL")]
        bmc_url: Option<String>,
        /// A BMC user with the administrator role.
        #[arg(long, requires = "bmc_url")]
        user: Option<String>,
        /// A file holding the password (its first line).
        #[arg(long, requires = "bmc_url", conflicts_with = "password_stdin")]
        password_file: Option<PathBuf>,
        /// Read the password from standard input (its first line).
        #[arg(long, requires = "bmc_url")]
        password_stdin: bool,
        /// Forget the node's BMC and its credentials.
        #[arg(long, conflicts_with_all = ["bmc_url", "user", "password_file", "password_stdin"])]
        remove: bool,
    },
    /// Power a node on or off, power-cycle it, make its next boot a network boot
    /// (`pxe-once`), or ask its BMC (`status`).
    Power {
        /// Hostname or MAC address.
        name: String,
        #[arg(value_parser = ["status", "on", "off", "cycle", "pxe-once"])]
        action: String,
    },
    /// Join a node to the cluster again (after a failed join, or to repair one): the daemon
    /// runs `kubeadm reset -f` on it and joins it from the start.
    Rejoin { name: String },
}

/// `lacave backup`: fetched whole, written to a temporary file, fsynced, renamed.
async fn backup(args: &ClientArgs, output: &std::path::Path) -> Result<(), ClientError> {
    let client = Client::new(Target::resolve(args)?)?;
    let bytes = client.backup().await?;
    let write = |e: crate::secrets::SecretError| ClientError::Config(format!("{e}"));
    crate::secrets::write_private(output, &bytes).map_err(write)?;
    println!(
        "registry backed up to {} ({} bytes); restore with: lacave restore {}",
        output.display(),
        bytes.len(),
        output.display()
    );
    println!(
        "it holds the registry only: not the state directory's keys and files, nor the cluster's etcd (snapshots: lacave cluster snapshot list); lacave backup --site saves them all"
    );
    Ok(())
}

/// `lacave restore FILE`: into the registry of the configuration's state directory, with the
/// daemon stopped.
fn restore(args: &ClientArgs, file: &std::path::Path) -> ExitCode {
    let config = match client::load_config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lacave: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    // Streamed: a backup of any size is restored in bounded memory.
    let reader = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("lacave: cannot read {}: {e}", file.display());
            return ExitCode::from(exit::DATA);
        }
    };
    let dir = config.registry_dir();
    // A running daemon holds the registry's lock.
    if dir.exists() {
        match crate::store::Store::open(&dir) {
            Ok(store) => drop(store),
            Err(crate::store::StoreError::InUse(_)) => {
                eprintln!(
                    "lacave: the registry {} is in use: stop the daemon first (systemctl stop lacave), then restore",
                    dir.display()
                );
                return ExitCode::from(exit::UNAVAILABLE);
            }
            Err(_) => {} // damaged: that is what a restore is for
        }
    }
    match crate::store::Store::restore_from(&dir, reader) {
        Ok(r) => {
            println!(
                "restored {} nodes and {} events from the backup of {} into {}",
                r.nodes,
                r.events,
                r.created_at,
                dir.display()
            );
            if let Some(previous) = r.previous {
                println!("the registry it replaced is kept in {}", previous.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lacave: {} was not restored: {e}", file.display());
            ExitCode::from(exit::DATA)
        }
    }
}

/// A CA hash of the right shape, for rendering kubeadm templates in `check-config` (which
/// touches no state directory).
const SAMPLE_CA_HASH: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    let client = cli.client;
    match cli.command {
        Command::Serve { log_format } => crate::run_serve(client.config, log_format),
        Command::CheckConfig => {
            let Some(config) = client.config else {
                eprintln!(
                    "lacave check-config: give the file to check with --config (or LACAVE_CONFIG)"
                );
                return ExitCode::from(exit::CONFIG);
            };
            check_config(&config)
        }
        Command::Node { command } => {
            client_result(runtime().block_on(output::run_node_command(&client, *command)))
        }
        Command::Backup {
            output,
            site: false,
        } => client_result(runtime().block_on(backup(&client, &output))),
        Command::Backup { output, site: true } => {
            client_result(runtime().block_on(site_backup::site_backup(&client, &output)))
        }
        Command::Restore { file } => restore(&client, &file),
        Command::Mirror { command } => mirror::run(&client, command),
        Command::Dns { command } => {
            client_result(runtime().block_on(dns::run_dns_command(&client, command)))
        }
        Command::Pki { command } => {
            client_result(runtime().block_on(pki::run_pki_command(&client, *command)))
        }
        Command::Addon {
            command: AddonCommand::Images,
        } => addons::images(),
        Command::Addon { command } => {
            client_result(runtime().block_on(addons::run_addon_command(&client, command)))
        }
        Command::Cluster { command } => {
            client_result(runtime().block_on(cluster::run_cluster_command(&client, command)))
        }
        Command::Identity { command } => {
            client_result(runtime().block_on(identity::run(&client, command)))
        }
        Command::Updates { command } => {
            client_result(runtime().block_on(updates::run(&client, command)))
        }
        Command::Sessions {
            command: SessionsCommand::Revoke { all: _ },
        } => client_result(runtime().block_on(async {
            let client = client::Client::new(client::Target::resolve(&client)?)?;
            let revoked = client.revoke_sessions().await?;
            println!("{revoked} web console session(s) ended");
            Ok(())
        })),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "lacave", &mut script);
            // A closed pipe (`| head`) is the reader's choice, not an error to panic on.
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(&script);
            ExitCode::SUCCESS
        }
        Command::Man { dir } => man_pages(dir.as_deref()),
        Command::Config { command } => {
            use std::io::Write as _;
            let text = match command {
                ConfigCommand::Reference => crate::config::reference::markdown(),
                ConfigCommand::Example => crate::config::reference::example(),
            };
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Command::Openapi => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), "{}", crate::api::openapi_document());
            ExitCode::SUCCESS
        }
        Command::Render { what, node } => client_result(runtime().block_on(async {
            let client = client::Client::new(client::Target::resolve(&client)?)?;
            print!("{}", client.render(&node, &what).await?);
            Ok(())
        })),
    }
}

/// `lacave man`: lacave(1) on standard output, or every page (`lacave-cluster-upgrade.1` …)
/// into `dir`, each written whole then renamed.
fn man_pages(dir: Option<&std::path::Path>) -> ExitCode {
    let command = <Cli as clap::CommandFactory>::command().version(crate::VERSION);
    let Some(dir) = dir else {
        let mut out = Vec::new();
        if let Err(e) = clap_mangen::Man::new(command).render(&mut out) {
            eprintln!("lacave man: {e}");
            return ExitCode::FAILURE;
        }
        use std::io::Write as _;
        let _ = std::io::stdout().write_all(&out);
        return ExitCode::SUCCESS;
    };
    let mut pages = Vec::new();
    collect_pages(command, "lacave", &mut pages);
    let written = (|| -> std::io::Result<usize> {
        std::fs::create_dir_all(dir)?;
        for (name, page) in &pages {
            let path = dir.join(format!("{name}.1"));
            let tmp = dir.join(format!(".{name}.1.tmp"));
            std::fs::write(&tmp, page)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(pages.len())
    })();
    match written {
        Ok(n) => {
            eprintln!("{n} man pages written to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lacave man: {}: {e}", dir.display());
            ExitCode::from(exit::CANT_CREATE)
        }
    }
}

/// Renders `command`'s page as `name` and its subcommands' as `name-sub`, depth first.
fn collect_pages(command: clap::Command, name: &str, pages: &mut Vec<(String, Vec<u8>)>) {
    let command = command
        .name(name.to_string())
        .bin_name(name.replace('-', " "));
    let subs: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .cloned()
        .collect();
    let mut page = Vec::new();
    if clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .is_ok()
    {
        pages.push((name.to_string(), page));
    }
    for sub in subs {
        let sub_name = format!("{name}-{}", sub.get_name());
        collect_pages(sub, &sub_name, pages);
    }
}

/// `lacave check-config`: exit 0, or 64 naming every problem.
fn check_config(config: &std::path::Path) -> ExitCode {
    match Config::load(config) {
        Ok(c) => match crate::boot::Boot::check_templates(&c).and_then(|()| {
            if !c.cluster.enabled {
                return Ok(());
            }
            let templates = crate::boot::Templates::load(c.flatcar.templates_dir.as_deref())?;
            crate::cluster::join::check_templates(&c, &templates, SAMPLE_CA_HASH)
                .map_err(|e| vec![e])?;
            let catalog = crate::addons::catalog::Catalog::load(c.addons.resources_dir.as_deref())?;
            let mut base = crate::addons::catalog::RenderContext::default();
            base.cluster.domain = format!("{}.{}", c.dns.cluster_name, c.dns.zone);
            crate::addons::engine::check_render(&catalog, &base, &c.addons)
        }) {
            Ok(()) => {
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: the templates are broken:", config.display());
                for e in errors {
                    eprintln!("  - {e}");
                }
                ExitCode::from(exit::CONFIG)
            }
        },
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(exit::CONFIG)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

fn client_result(result: Result<(), ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lacave: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
