//! Network namespaces for tests that need real addresses: created with a unique name, torn
//! down on drop (with their `/etc/netns/<name>` directory). Traffic stays inside them.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails the test with a clear message unless it runs as root with `ip` available.
pub fn require_root(what: &str) {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "{what} needs root (network namespaces); run the tests with `sudo scripts/test`"
    );
    assert!(
        Command::new("ip").arg("-V").output().is_ok(),
        "{what} needs `ip` from the iproute2 package"
    );
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with `lo` up and a private `/etc/netns/<name>/resolv.conf`, so that
    /// nothing run inside can touch the host's resolver.
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("lcv-{tag}-{}-{n}", std::process::id());
        sh("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        let etc = ns.etc_dir();
        std::fs::create_dir_all(&etc).expect("/etc/netns is writable by root");
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        sh("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Adds an address (CIDR) to a device inside the namespace.
    pub fn add_addr(&self, dev: &str, cidr: &str) {
        sh("ip", &["-n", &self.name, "addr", "add", cidr, "dev", dev]);
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The body of an HTTP GET made from inside the namespace (curl).
    pub fn http_get(&self, url: &str) -> String {
        let out = self
            .command("curl")
            .args(["-sS", "--fail", url])
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "GET {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Links `machine` to this namespace like [`Netns::link`], the machine's card carrying
    /// `mac` (the MAC it is registered with). Returns both interface names.
    pub fn link_machine(
        &self,
        a_cidr: &str,
        machine: &Netns,
        b_cidr: &str,
        mac: &str,
    ) -> (String, String) {
        let (a, b) = self.link(a_cidr, machine, b_cidr);
        for args in [
            vec!["link", "set", "dev", &b, "down"],
            vec!["link", "set", "dev", &b, "address", mac],
            vec!["link", "set", "dev", &b, "up"],
        ] {
            let mut full = vec!["-n", machine.name.as_str()];
            full.extend(args);
            sh("ip", &full);
        }
        (a, b)
    }

    /// Links two namespaces with a veth pair, `a_cidr` on this side, `b_cidr` on the other
    /// (either may be empty: no address). Returns the two interface names.
    pub fn link(&self, a_cidr: &str, other: &Netns, b_cidr: &str) -> (String, String) {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let (a, b) = (format!("lva{n}"), format!("lvb{n}"));
        sh(
            "ip",
            &[
                "link",
                "add",
                &a,
                "netns",
                &self.name,
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                &other.name,
            ],
        );
        if !a_cidr.is_empty() {
            self.add_addr(&a, a_cidr);
        }
        if !b_cidr.is_empty() {
            other.add_addr(&b, b_cidr);
        }
        sh("ip", &["-n", &self.name, "link", "set", &a, "up"]);
        sh("ip", &["-n", &other.name, "link", "set", &b, "up"]);
        (a, b)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep nothing alive: deleting the name is enough for the
        // kernel to free the namespace once they exit.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}
