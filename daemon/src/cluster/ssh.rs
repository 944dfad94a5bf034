//! SSH to nodes (russh), as root with the daemon's own key, and only to the host key the node
//! pinned in its `booted` callback: any other key is refused before authentication, so a
//! machine that took a node's address learns nothing and runs nothing. There is no
//! trust-on-first-use: a node without a pinned key is not contacted.
//!
//! Commands run with `exec`; their output is kept bounded (the last [`OUTPUT_TAIL`] bytes of
//! each stream), for the node's history and the journal.
//!
//! A command that outlives its caller is stopped on the node: sshd starts each command as
//! the leader of a new session and process group, and the command first writes that
//! group's id to a file under the step directory (`/run/lacave/steps`). When its time runs
//! out, or the caller gives up on it (a cancelled join, the daemon shutting down), the
//! whole group gets SIGTERM, then SIGKILL two seconds later, over a new channel; dropping
//! the SSH connection alone would leave `kubeadm` running while a retry resets the node.
//! [`Session::stop_leftover_steps`] does the same for every group still recorded (a daemon
//! that died mid-step), before a join or a removal starts over.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

/// How much of each output stream a command keeps (its tail).
pub const OUTPUT_TAIL: usize = 64 * 1024;

/// Where each running command records its process group on the node (tmpfs: gone at boot,
/// as the processes are).
pub const STEP_DIR: &str = "/run/lacave/steps";

/// How long stopping a command on the node may take (a new channel, TERM, 2 s, KILL).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("the daemon's SSH key {path}: {reason}")]
    ClientKey { path: String, reason: String },
    #[error("the node has no pinned SSH host key (its booted callback carries one)")]
    NotPinned,
    #[error("the pinned SSH host key cannot be read: {0}")]
    BadPinnedKey(String),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error(
        "{addr} presented SSH host key {presented}, not the pinned {pinned}: refusing to talk to it"
    )]
    HostKeyMismatch {
        addr: SocketAddr,
        presented: String,
        pinned: String,
    },
    #[error("{addr} refused the daemon's key for root")]
    AuthRefused { addr: SocketAddr },
    #[error("{what} took longer than {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("ssh: {0}")]
    Protocol(String),
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The exit status; `None` when the command ended without one (killed by a signal).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The last `lines` lines of stdout and stderr together, for an event or an error, with
    /// every secret taken out ([`crate::secrets::redact`]): this is the only form in which a
    /// command's output leaves this module.
    pub fn tail(&self, lines: usize) -> String {
        let mut text = String::from_utf8_lossy(&self.stdout).into_owned();
        if !self.stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&String::from_utf8_lossy(&self.stderr));
        }
        // Redacted as a whole first: a PEM key is removed whole even when the tail would
        // keep only its last lines.
        let text = crate::secrets::redact(&text);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The daemon's client key, loaded once.
#[derive(Clone)]
pub struct SshClient {
    key: Arc<PrivateKey>,
    port: u16,
    step_dir: String,
}

impl std::fmt::Debug for SshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshClient")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl SshClient {
    /// Loads the daemon's private key (`<state_dir>/ssh/id_ed25519`, made at first start).
    pub fn load(private_key: &Path, port: u16) -> Result<SshClient, SshError> {
        let err = |reason: String| SshError::ClientKey {
            path: private_key.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(private_key).map_err(|e| err(e.to_string()))?;
        let key = russh::keys::decode_secret_key(&text, None).map_err(|e| err(e.to_string()))?;
        Ok(SshClient {
            key: Arc::new(key),
            port,
            step_dir: STEP_DIR.to_string(),
        })
    }

    /// Another step directory on the nodes than [`STEP_DIR`] (tests whose "node" is the host
    /// they share with other tests).
    pub fn with_step_dir(mut self, dir: &str) -> SshClient {
        self.step_dir = dir.to_string();
        self
    }

    /// Connects to `ip` as root, accepting only `pinned` (OpenSSH one-line form) as its host
    /// key, within `timeout` for the whole handshake and authentication.
    pub async fn connect(
        &self,
        ip: std::net::IpAddr,
        pinned: Option<&str>,
        timeout: Duration,
    ) -> Result<Session, SshError> {
        let pinned = pinned.ok_or(SshError::NotPinned)?;
        let pinned = PublicKey::from_openssh(pinned.trim())
            .map_err(|e| SshError::BadPinnedKey(e.to_string()))?;
        let addr = SocketAddr::new(ip, self.port);
        let seen = Arc::new(Mutex::new(None));
        let config = client::Config {
            inactivity_timeout: Some(Duration::from_secs(3600)),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            nodelay: true,
            // Ask only for the pinned key's algorithm, so the server presents that key.
            preferred: russh::Preferred {
                key: Cow::Owned(vec![pinned.algorithm()]),
                ..Default::default()
            },
            ..Default::default()
        };
        let handler = Pinned {
            pinned: pinned.clone(),
            seen: seen.clone(),
        };
        let handshake = async {
            let mut handle = client::connect(Arc::new(config), addr, handler)
                .await
                .map_err(|e| {
                    if let Some(presented) = seen.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        return SshError::HostKeyMismatch {
                            addr,
                            presented,
                            pinned: fingerprint(&pinned),
                        };
                    }
                    match e {
                        russh::Error::IO(io) => SshError::Connect {
                            addr,
                            reason: io.to_string(),
                        },
                        other => SshError::Connect {
                            addr,
                            reason: other.to_string(),
                        },
                    }
                })?;
            let auth = handle
                .authenticate_publickey("root", PrivateKeyWithHashAlg::new(self.key.clone(), None))
                .await
                .map_err(|e| SshError::Protocol(e.to_string()))?;
            if !auth.success() {
                return Err(SshError::AuthRefused { addr });
            }
            Ok(Session {
                handle: Arc::new(handle),
                addr,
                step_dir: self.step_dir.clone(),
            })
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(result) => result,
            Err(_) => Err(SshError::Timeout {
                what: format!("SSH to {addr}"),
                secs: timeout.as_secs(),
            }),
        }
    }
}

/// The SHA-256 fingerprint OpenSSH prints (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

struct Pinned {
    pinned: PublicKey,
    /// The fingerprint of a key that was refused, for the error.
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = presented else {
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
                Some("a host certificate".into());
            return Ok(false);
        };
        // Compare the key material, not the comment.
        if key.key_data() == self.pinned.key_data() {
            return Ok(true);
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fingerprint(key));
        Ok(false)
    }
}

/// One authenticated connection to a node.
pub struct Session {
    handle: Arc<client::Handle<Pinned>>,
    addr: SocketAddr,
    step_dir: String,
}

/// Stops a command's process group on the node if the caller dropped the command's future
/// before it ended (disarmed when it ends, or when its timeout already stopped it).
struct StopOnDrop {
    handle: Arc<client::Handle<Pinned>>,
    pidfile: String,
    armed: bool,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let handle = self.handle.clone();
        let command = stop_command(&self.pidfile);
        runtime.spawn(async move {
            let _ = tokio::time::timeout(STOP_TIMEOUT, exec(&handle, &command, None)).await;
        });
    }
}

/// The shell that stops the process group recorded in `pidfile` (TERM, then KILL) and
/// removes the file.
fn stop_command(pidfile: &str) -> String {
    let f = shquote(pidfile);
    format!(
        "p=$(cat {f} 2>/dev/null); case \"$p\" in ''|*[!0-9]*) ;; *) kill -TERM -\"$p\" 2>/dev/null && sleep 2; kill -KILL -\"$p\" 2>/dev/null;; esac; rm -f {f}"
    )
}

/// `command` made to record its process group in `pidfile` while it runs. sshd makes the
/// shell a session (and group) leader, so `$$` is the group every child shares.
fn recorded_command(step_dir: &str, pidfile: &str, command: &str) -> String {
    let dir = shquote(step_dir);
    let f = shquote(pidfile);
    // The trap removes the record however the command ends, `exit` in it included.
    format!(
        "mkdir -p {dir} && echo $$ > {f} || exit 125\ntrap {} EXIT\n{{ {command}\n}}",
        shquote(&format!("rm -f {f}"))
    )
}

/// Runs `command` on a new channel and collects its status and output tails.
async fn exec(
    handle: &client::Handle<Pinned>,
    command: &str,
    stdin: Option<&[u8]>,
) -> Result<Output, SshError> {
    let mut channel = handle
        .channel_open_session()
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    channel
        .exec(true, command)
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    if let Some(data) = stdin {
        channel
            .data(data)
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
    }
    channel
        .eof()
        .await
        .map_err(|e| SshError::Protocol(e.to_string()))?;
    let mut out = Output {
        status: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    while let Some(message) = channel.wait().await {
        match message {
            ChannelMsg::Data { data } => keep_tail(&mut out.stdout, &data),
            ChannelMsg::ExtendedData { data, .. } => keep_tail(&mut out.stderr, &data),
            ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
            _ => {}
        }
    }
    Ok(out)
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("addr", &self.addr).finish()
    }
}

impl Session {
    /// Runs `command` (through the node's shell), feeding it `stdin`, and waits at most
    /// `timeout` for it to end. When the time is up, or when the caller drops this future,
    /// the command's whole process group is stopped on the node (see the module's header).
    pub async fn run(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let pidfile = format!(
            "{}/{}.pid",
            self.step_dir.trim_end_matches('/'),
            crate::secrets::random_hex(8)
        );
        let mut guard = StopOnDrop {
            handle: self.handle.clone(),
            pidfile: pidfile.clone(),
            armed: true,
        };
        let wrapped = recorded_command(&self.step_dir, &pidfile, command);
        let result = tokio::time::timeout(timeout, exec(&self.handle, &wrapped, stdin)).await;
        guard.armed = false;
        match result {
            Ok(result) => result,
            Err(_) => {
                let stopped = match tokio::time::timeout(
                    STOP_TIMEOUT,
                    exec(&self.handle, &stop_command(&pidfile), None),
                )
                .await
                {
                    Ok(Ok(_)) => "stopped on the node",
                    _ => "could not be stopped on the node (it is stopped before the next try)",
                };
                Err(SshError::Timeout {
                    what: format!("`{}` on {} ({stopped})", first_words(command), self.addr),
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    /// Stops every command a daemon started on the node and that still runs (its process
    /// group recorded in the step directory): one left by a daemon that died, or whose stop
    /// did not get through. Returns how many were stopped.
    pub async fn stop_leftover_steps(&self) -> Result<usize, SshError> {
        let dir = shquote(self.step_dir.trim_end_matches('/'));
        let command = format!(
            "n=0; for f in {dir}/*.pid; do [ -f \"$f\" ] || continue; p=$(cat \"$f\" 2>/dev/null); case \"$p\" in ''|*[!0-9]*) ;; *) if kill -TERM -\"$p\" 2>/dev/null; then n=$((n+1)); sleep 1; kill -KILL -\"$p\" 2>/dev/null; fi;; esac; rm -f \"$f\"; done; echo $n"
        );
        let out = tokio::time::timeout(STOP_TIMEOUT * 4, exec(&self.handle, &command, None))
            .await
            .map_err(|_| SshError::Timeout {
                what: format!("stopping leftover commands on {}", self.addr),
                secs: (STOP_TIMEOUT * 4).as_secs(),
            })??;
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0))
    }

    /// Writes `contents` to `path` on the node with `mode`, atomically (a temporary file in
    /// the same directory, then a rename), creating the directory (0700 if new).
    pub async fn upload(&self, path: &str, mode: u32, contents: &[u8]) -> Result<(), SshError> {
        let quoted = shquote(path);
        let dir = shquote(path.rsplit_once('/').map_or(".", |(d, _)| d));
        let tmp = shquote(&format!("{path}.lacave-tmp"));
        let command = format!(
            "umask 077 && mkdir -p {dir} && cat > {tmp} && chmod {mode:o} {tmp} && mv -f {tmp} {quoted}"
        );
        let out = self
            .run(&command, Some(contents), Duration::from_secs(60))
            .await?;
        if out.success() {
            Ok(())
        } else {
            Err(SshError::Protocol(format!(
                "writing {path} on {} failed: {}",
                self.addr,
                out.tail(5)
            )))
        }
    }

    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn keep_tail(buf: &mut Vec<u8>, data: &[u8]) {
    buf.extend_from_slice(data);
    if buf.len() > OUTPUT_TAIL {
        let cut = buf.len() - OUTPUT_TAIL;
        buf.drain(..cut);
    }
}

fn first_words(command: &str) -> String {
    command
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// POSIX shell single-quoting.
pub fn shquote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_keeps_its_tail() {
        let mut buf = Vec::new();
        keep_tail(&mut buf, &vec![b'a'; OUTPUT_TAIL]);
        keep_tail(&mut buf, b"end");
        assert_eq!(buf.len(), OUTPUT_TAIL);
        assert!(buf.ends_with(b"aend"));
        let out = Output {
            status: Some(1),
            stdout: b"one\ntwo\nthree\n".to_vec(),
            stderr: b"error: four".to_vec(),
        };
        assert_eq!(out.tail(2), "three\nerror: four");
        assert!(!out.success());
        let init = Output {
            status: Some(0),
            stdout: b"kubeadm join kube.lacave:6443 --token abcdef.0123456789abcdef\n".to_vec(),
            stderr: Vec::new(),
        };
        assert_eq!(
            init.tail(5),
            "kubeadm join kube.lacave:6443 --token abcdef.<redacted>"
        );
    }

    #[test]
    fn quoting_survives_hostile_paths() {
        assert_eq!(shquote("/etc/it's"), r"'/etc/it'\''s'");
    }
}
