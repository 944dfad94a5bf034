//! DNS records an operator adds: static ones from `[[dns.records]]` and those managed through
//! `/api/v1/dns/records`. Names are relative to the cluster zone unless they end with a dot.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::Name;

use super::FieldError;

/// What a record holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecordValue {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// A target name as given (relative to the zone unless it ends with a dot).
    Cname(String),
    Txt(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Mx {
        preference: u16,
        exchange: String,
    },
}

/// One operator record: owner name as given, value, optional TTL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecordSpec {
    pub name: String,
    pub value: RecordValue,
    pub ttl: Option<u32>,
}

pub const RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME", "TXT", "SRV", "MX"];

fn is_owner_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// Turns a name as an operator writes it into an absolute name: `@` is the zone itself,
/// `login.kube` is `login.kube.<zone>.`, `host.example.` is absolute.
pub fn absolute_name(name: &str, zone: &Name) -> Result<Name, String> {
    if name == "@" {
        return Ok(zone.clone());
    }
    let (text, is_absolute) = match name.strip_suffix('.') {
        Some(t) => (t, true),
        None => (name, false),
    };
    if text.is_empty() || text.len() > 253 {
        return Err(format!("{name:?} is not a DNS name"));
    }
    if let Some(bad) = text.split('.').find(|l| !is_owner_label(l)) {
        return Err(format!(
            "{name:?} is not a DNS name: label {bad:?} (letters, digits, '-', '_'; 1-63 characters)"
        ));
    }
    let parsed = Name::from_ascii(text).map_err(|e| format!("{name:?}: {e}"))?;
    let full = if is_absolute {
        parsed
    } else {
        parsed
            .append_domain(zone)
            .map_err(|e| format!("{name:?}: {e}"))?
    };
    let mut full = full.to_lowercase();
    full.set_fqdn(true);
    Ok(full)
}

impl RecordSpec {
    /// Checks a record, naming each bad field (`name`, `type`, `value`, `ttl`).
    pub fn parse(
        name: &str,
        rtype: &str,
        value: &str,
        ttl: Option<u32>,
        zone: &Name,
    ) -> Result<RecordSpec, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut fail = |field: &str, reason: String| {
            errors.push(FieldError {
                field: field.to_string(),
                reason,
            })
        };
        match absolute_name(name, zone) {
            Ok(owner) if !zone.zone_of(&owner) => fail(
                "name",
                format!("{owner} is outside the zone {zone}; records live in the cluster zone"),
            ),
            Ok(_) => {}
            Err(e) => fail("name", e),
        }
        let target = |t: &str| absolute_name(t, zone).map(|_| t.to_string());
        let value = match rtype.to_ascii_uppercase().as_str() {
            "A" => value
                .parse()
                .map(RecordValue::A)
                .map_err(|_| format!("{value:?} is not an IPv4 address")),
            "AAAA" => value
                .parse()
                .map(RecordValue::Aaaa)
                .map_err(|_| format!("{value:?} is not an IPv6 address")),
            "CNAME" => target(value).map(RecordValue::Cname),
            "TXT" => {
                if value.len() > 4000 {
                    Err("a TXT value is at most 4000 characters".to_string())
                } else if value.chars().any(|c| c.is_control()) {
                    Err("a TXT value holds no control characters".to_string())
                } else {
                    Ok(RecordValue::Txt(value.to_string()))
                }
            }
            "SRV" => {
                let parts: Vec<&str> = value.split_whitespace().collect();
                match parts.as_slice() {
                    [p, w, port, t] => match (p.parse(), w.parse(), port.parse()) {
                        (Ok(priority), Ok(weight), Ok(port)) => {
                            target(t).map(|target| RecordValue::Srv {
                                priority,
                                weight,
                                port,
                                target,
                            })
                        }
                        _ => Err(format!(
                            "{value:?}: priority, weight and port are numbers from 0 to 65535"
                        )),
                    },
                    _ => Err(format!(
                        "{value:?} is not \"priority weight port target\" (e.g. \"10 5 443 kube\")"
                    )),
                }
            }
            "MX" => {
                let parts: Vec<&str> = value.split_whitespace().collect();
                match parts.as_slice() {
                    [p, x] => match p.parse() {
                        Ok(preference) => target(x).map(|exchange| RecordValue::Mx {
                            preference,
                            exchange,
                        }),
                        Err(_) => Err(format!("{value:?}: the preference is a number")),
                    },
                    _ => Err(format!(
                        "{value:?} is not \"preference exchange\" (e.g. \"10 mail\")"
                    )),
                }
            }
            other => {
                fail(
                    "type",
                    format!(
                        "{other:?} is not a record type this zone serves (expected one of {})",
                        RECORD_TYPES.join(", ")
                    ),
                );
                Err(String::new())
            }
        };
        let value = match value {
            Ok(v) => Some(v),
            Err(e) if e.is_empty() => None,
            Err(e) => {
                fail("value", e);
                None
            }
        };
        if let Some(ttl) = ttl
            && !(1..=604_800).contains(&ttl)
        {
            fail("ttl", format!("{ttl} is not between 1 and 604800 seconds"));
        }
        match value {
            Some(value) if errors.is_empty() => Ok(RecordSpec {
                name: name.to_string(),
                value,
                ttl,
            }),
            _ => Err(errors),
        }
    }

    pub fn type_str(&self) -> &'static str {
        match self.value {
            RecordValue::A(_) => "A",
            RecordValue::Aaaa(_) => "AAAA",
            RecordValue::Cname(_) => "CNAME",
            RecordValue::Txt(_) => "TXT",
            RecordValue::Srv { .. } => "SRV",
            RecordValue::Mx { .. } => "MX",
        }
    }
}

impl fmt::Display for RecordValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordValue::A(ip) => ip.fmt(f),
            RecordValue::Aaaa(ip) => ip.fmt(f),
            RecordValue::Cname(t) => f.write_str(t),
            RecordValue::Txt(t) => f.write_str(t),
            RecordValue::Srv {
                priority,
                weight,
                port,
                target,
            } => write!(f, "{priority} {weight} {port} {target}"),
            RecordValue::Mx {
                preference,
                exchange,
            } => write!(f, "{preference} {exchange}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Name {
        Name::from_ascii("lacave.").unwrap()
    }

    #[test]
    fn names_are_relative_to_the_zone() {
        let z = zone();
        assert_eq!(absolute_name("@", &z).unwrap().to_string(), "lacave.");
        assert_eq!(
            absolute_name("Login.Kube", &z).unwrap().to_string(),
            "login.kube.lacave."
        );
        assert_eq!(
            absolute_name("x.example.", &z).unwrap().to_string(),
            "x.example."
        );
        assert_eq!(
            absolute_name("_https._tcp", &z).unwrap().to_string(),
            "_https._tcp.lacave."
        );
        assert!(absolute_name("a..b", &z).is_err());
        assert!(absolute_name("bad name", &z).is_err());
    }

    #[test]
    fn every_type_parses_and_bad_fields_are_named() {
        let z = zone();
        for (t, v) in [
            ("A", "192.168.1.50"),
            ("aaaa", "fd00::1"),
            ("CNAME", "kube"),
            ("TXT", "v=spf1 -all"),
            ("SRV", "10 5 443 kube"),
            ("MX", "10 mail.example."),
        ] {
            assert!(
                RecordSpec::parse("svc", t, v, Some(60), &z).is_ok(),
                "{t} {v}"
            );
        }
        let fields = |r: Result<RecordSpec, Vec<FieldError>>| -> Vec<String> {
            r.unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(
            fields(RecordSpec::parse("a b", "A", "1.2.3.4", None, &z)),
            ["name"]
        );
        assert_eq!(
            fields(RecordSpec::parse("x.other.", "A", "1.2.3.4", None, &z)),
            ["name"]
        );
        assert_eq!(
            fields(RecordSpec::parse("x", "PTR", "y", None, &z)),
            ["type"]
        );
        assert_eq!(
            fields(RecordSpec::parse("x", "A", "300.1.1.1", None, &z)),
            ["value"]
        );
        assert_eq!(
            fields(RecordSpec::parse("x", "SRV", "1 2 kube", None, &z)),
            ["value"]
        );
        assert_eq!(
            fields(RecordSpec::parse("x", "A", "1.1.1.1", Some(0), &z)),
            ["ttl"]
        );
    }
}
