//! The sd_notify protocol: one datagram to `$NOTIFY_SOCKET` per state change. Without that
//! variable (not under systemd) every call is a no-op.

use std::os::unix::net::UnixDatagram;

fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket: `@` stands for the leading NUL byte.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(error) = sent {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

/// Tells systemd that start-up is complete (`Type=notify`).
pub fn notify_ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// Tells systemd that shutdown has begun.
pub fn notify_stopping() {
    notify("STOPPING=1\nSTATUS=shutting down");
}

/// True when stderr goes to the journal, so logs should carry no timestamps or colours of
/// their own (journald adds both).
pub fn logging_to_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}
