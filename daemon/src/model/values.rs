//! Validated values of the node model. Each `FromStr` error says what is wrong in words an
//! operator can act on; the API and the CLI put the field name in front of it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Why a value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(String);

impl ValueError {
    pub fn new(reason: impl Into<String>) -> Self {
        ValueError(reason.into())
    }
}

/// A unicast Ethernet address, shown in canonical lower-case colon form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    pub const fn new(octets: [u8; 6]) -> Self {
        MacAddr(octets)
    }
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// `52-54-00-12-34-56`: the form of a MAC in URLs, as iPXE's `${mac:hexhyp}` writes it.
    pub fn hexhyp(&self) -> String {
        self.to_string().replace(':', "-")
    }

    /// The address of a network card: neither all-zero nor multicast/broadcast. Every MAC
    /// that comes in, as text or from a packet's octets, passes here.
    pub fn unicast(octets: [u8; 6]) -> Result<Self, ValueError> {
        let mac = MacAddr(octets);
        if octets == [0; 6] {
            return Err(ValueError::new(format!(
                "{mac} is the all-zero MAC address, which no network card has"
            )));
        }
        if octets[0] & 1 == 1 {
            return Err(ValueError::new(format!(
                "{mac} is a multicast or broadcast address, not a network card's"
            )));
        }
        Ok(mac)
    }
}

impl FromStr for MacAddr {
    type Err = ValueError;

    /// Accepts `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`, Cisco's `aabb.ccdd.eeff` and bare
    /// `aabbccddeeff`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ValueError::new(format!(
                "{s:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, aabb.ccdd.eeff or aabbccddeeff)"
            ))
        };
        let groups: Vec<&str> = if s.contains(':') {
            s.split(':').collect()
        } else if s.contains('-') {
            s.split('-').collect()
        } else if s.contains('.') {
            s.split('.').collect()
        } else {
            vec![s]
        };
        let expected_len = match groups.len() {
            6 => 2,
            3 if s.contains('.') => 4,
            1 => 12,
            _ => return Err(bad()),
        };
        let mut hex = String::with_capacity(12);
        for g in &groups {
            if g.len() != expected_len || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            hex.push_str(g);
        }
        let mut octets = [0u8; 6];
        for (i, o) in octets.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        MacAddr::unicast(octets)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// A host name that is a single RFC 1123 label, stored lower-case: it becomes
/// `<hostname>.<zone>` in DNS and the Kubernetes node name, which must be lower-case.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Hostname {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ValueError::new("must not be empty"));
        }
        if s.len() > 63 {
            return Err(ValueError::new(format!(
                "{s:?} is {} characters long; a host name is at most 63",
                s.len()
            )));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(ValueError::new(format!(
                "{s:?} contains {c:?}; a host name is one DNS label of letters, digits and '-' (no dots)"
            )));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(ValueError::new(format!(
                "{s:?} starts or ends with '-', which RFC 1123 forbids"
            )));
        }
        Ok(Hostname(s.to_ascii_lowercase()))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hostname({})", self.0)
    }
}

/// A node's IPv4 address: a unicast address a machine can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIp(Ipv4Addr);

impl NodeIp {
    pub fn addr(&self) -> Ipv4Addr {
        self.0
    }
}

impl TryFrom<Ipv4Addr> for NodeIp {
    type Error = ValueError;
    fn try_from(ip: Ipv4Addr) -> Result<Self, Self::Error> {
        let why = if ip.is_unspecified() {
            Some("the unspecified address")
        } else if ip.is_loopback() {
            Some("a loopback address")
        } else if ip.is_multicast() {
            Some("a multicast address")
        } else if ip.is_broadcast() {
            Some("the broadcast address")
        } else if ip.is_link_local() {
            Some("a link-local address")
        } else {
            None
        };
        match why {
            Some(why) => Err(ValueError::new(format!(
                "{ip} is {why}, not one a node can hold"
            ))),
            None => Ok(NodeIp(ip)),
        }
    }
}

impl FromStr for NodeIp {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ip: Ipv4Addr = s
            .parse()
            .map_err(|_| ValueError::new(format!("{s:?} is not an IPv4 address")))?;
        NodeIp::try_from(ip)
    }
}

impl fmt::Display for NodeIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a node does in the Kubernetes cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    ControlPlane,
    Worker,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::ControlPlane, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

impl FromStr for Role {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "control-plane" => Ok(Role::ControlPlane),
            "worker" => Ok(Role::Worker),
            _ => Err(ValueError::new(format!(
                "{s:?} is not a role (expected \"control-plane\" or \"worker\")"
            ))),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The block device `flatcar-install -d` writes to. It ends up on a shell command line in the
/// install config, so only plain device paths are accepted.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstallDisk(String);

impl InstallDisk {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for InstallDisk {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(rest) = s.strip_prefix("/dev/") else {
            return Err(ValueError::new(format!(
                "{s:?} is not a device path (expected /dev/…, e.g. /dev/sda or /dev/disk/by-id/…)"
            )));
        };
        let plain = |c: char| c.is_ascii_alphanumeric() || "/-_.:+@".contains(c);
        if rest.is_empty()
            || !rest.chars().all(plain)
            || rest
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(ValueError::new(format!(
                "{s:?} is not a plain device path (letters, digits, '/', '-', '_', '.', ':', '+', '@'; no '..')"
            )));
        }
        Ok(InstallDisk(s.to_string()))
    }
}

impl fmt::Display for InstallDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstallDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstallDisk({})", self.0)
    }
}

/// A node's own boot file, given to its firmware instead of the configured one (e.g.
/// `snponly.efi` for a NIC whose UEFI driver misbehaves under `ipxe.efi`): a file name inside
/// the TFTP root, short enough for the DHCP `file` field.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootFile(String);

impl BootFile {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BootFile {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 127 {
            return Err(ValueError::new(format!(
                "{s:?} must be 1 to 127 bytes long (the DHCP file field holds 128)"
            )));
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || "/-_.+".contains(c);
        if s.starts_with('/')
            || !s.chars().all(plain)
            || s.split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(ValueError::new(format!(
                "{s:?} is not a relative path inside the TFTP root (letters, digits, '/', '-', '_', '.', '+'; no '..')"
            )));
        }
        Ok(BootFile(s.to_string()))
    }
}

impl fmt::Display for BootFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BootFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootFile({})", self.0)
    }
}

/// Kubernetes node labels, validated by Kubernetes' own rules so that applying them later
/// cannot fail.
pub type Labels = BTreeMap<String, String>;

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Checks one label against Kubernetes' rules for keys (`[prefix/]name`) and values.
pub fn validate_label(key: &str, value: &str) -> Result<(), ValueError> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return Err(ValueError::new(format!(
                    "label key {key:?}: prefix {prefix:?} is not a lower-case DNS subdomain"
                )));
            }
            name
        }
        None => key,
    };
    if !is_label_name(name) {
        return Err(ValueError::new(format!(
            "label key {key:?}: name must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )));
    }
    if !value.is_empty() && !is_label_name(value) {
        return Err(ValueError::new(format!(
            "label {key:?}: value {value:?} must be empty or 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

pub fn validate_labels(labels: &Labels) -> Result<(), ValueError> {
    labels.iter().try_for_each(|(k, v)| validate_label(k, v))
}

/// Parses `key=value` as given to `lacave node add --label`.
pub fn parse_label(s: &str) -> Result<(String, String), ValueError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| ValueError::new(format!("{s:?} is not key=value")))?;
    validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms_canonicalise() {
        for s in [
            "52:54:00:12:34:56",
            "52-54-00-12-34-56",
            "5254.0012.3456",
            "525400123456",
            "52:54:00:12:34:56".to_uppercase().as_str(),
        ] {
            assert_eq!(
                s.parse::<MacAddr>().unwrap().to_string(),
                "52:54:00:12:34:56",
                "{s}"
            );
        }
    }

    #[test]
    fn bad_macs_say_why() {
        for (s, why) in [
            ("", "not a MAC"),
            ("52:54:00:12:34", "not a MAC"),
            ("52:54:00:12:34:5g", "not a MAC"),
            ("52:54-00:12:34:56", "not a MAC"),
            ("5254.0012.345", "not a MAC"),
            ("52:54:00:12:34:567", "not a MAC"),
            ("00:00:00:00:00:00", "all-zero"),
            ("ff:ff:ff:ff:ff:ff", "broadcast"),
            ("01:00:5e:00:00:01", "multicast"),
        ] {
            let err = s.parse::<MacAddr>().unwrap_err().to_string();
            assert!(err.contains(why), "{s}: {err}");
        }
    }

    #[test]
    fn hostnames_are_single_lowercase_labels() {
        assert_eq!("Kube01".parse::<Hostname>().unwrap().as_str(), "kube01");
        assert!("a".parse::<Hostname>().is_ok());
        assert!("a".repeat(63).parse::<Hostname>().is_ok());
        for bad in [
            "",
            "-kube",
            "kube-",
            "kube.lacave",
            "kube_01",
            "kübe",
            &"a".repeat(64),
        ] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad}");
        }
    }

    #[test]
    fn node_ips_must_be_assignable() {
        assert!("192.168.1.21".parse::<NodeIp>().is_ok());
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
            "192.168.1",
            "::1",
        ] {
            assert!(bad.parse::<NodeIp>().is_err(), "{bad}");
        }
    }

    #[test]
    fn roles() {
        assert_eq!("worker".parse::<Role>(), Ok(Role::Worker));
        assert_eq!("control-plane".parse::<Role>(), Ok(Role::ControlPlane));
        assert!("master".parse::<Role>().is_err());
    }

    #[test]
    fn boot_files_stay_inside_the_tftp_root() {
        for ok in ["snponly.efi", "arm64/ipxe.efi", "undionly.kpxe"] {
            assert!(ok.parse::<BootFile>().is_ok(), "{ok}");
        }
        let long = "a".repeat(128);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a b",
            "x\0",
            long.as_str(),
        ] {
            assert!(bad.parse::<BootFile>().is_err(), "{bad}");
        }
    }

    #[test]
    fn install_disks_are_plain_device_paths() {
        for ok in [
            "/dev/sda",
            "/dev/nvme0n1",
            "/dev/disk/by-id/ata-Samsung_SSD_860_S3Z9NB0K123456",
        ] {
            assert!(ok.parse::<InstallDisk>().is_ok(), "{ok}");
        }
        for bad in [
            "sda",
            "/dev/",
            "/dev/../etc/passwd",
            "/dev/sda; rm -rf /",
            "/dev/sda b",
            "/dev//sda",
        ] {
            assert!(bad.parse::<InstallDisk>().is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_follow_kubernetes_rules() {
        assert!(parse_label("disktype=ssd").is_ok());
        assert!(parse_label("topology.kubernetes.io/zone=rack-1").is_ok());
        assert!(parse_label("empty=").is_ok());
        for bad in [
            "novalue",
            "=x",
            "a b=c",
            "Bad_Prefix.io/x=y",
            "k=-v",
            "k=v v",
        ] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
    }
}
