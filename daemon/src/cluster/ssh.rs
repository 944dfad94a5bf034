//! SSH to nodes (russh), as root with the daemon's own key, and only to the host key the node
//! pinned in its `booted` callback: any other key is refused before authentication, so a
//! machine that took a node's address learns nothing and runs nothing. There is no
//! trust-on-first-use: a node without a pinned key is not contacted.
//!
//! Commands run with `exec`; their output is kept bounded (the last [`OUTPUT_TAIL`] bytes of
//! each stream), for the node's history and the journal.

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

    /// The last `lines` lines of stdout and stderr together, for an event or an error.
    pub fn tail(&self, lines: usize) -> String {
        let mut text = String::from_utf8_lossy(&self.stdout).into_owned();
        if !self.stderr.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&String::from_utf8_lossy(&self.stderr));
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The daemon's client key, loaded once.
#[derive(Clone)]
pub struct SshClient {
    key: Arc<PrivateKey>,
    port: u16,
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
        })
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
            Ok(Session { handle, addr })
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
    handle: client::Handle<Pinned>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("addr", &self.addr).finish()
    }
}

impl Session {
    /// Runs `command` (through the node's shell), feeding it `stdin`, and waits at most
    /// `timeout` for it to end.
    pub async fn run(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let work = async {
            let mut channel = self
                .handle
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
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(SshError::Timeout {
                what: format!("`{}` on {}", first_words(command), self.addr),
                secs: timeout.as_secs(),
            }),
        }
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
    }

    #[test]
    fn quoting_survives_hostile_paths() {
        assert_eq!(shquote("/etc/it's"), r"'/etc/it'\''s'");
    }
}
