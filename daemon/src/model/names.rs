//! What may go into a certificate's DNS names.

use super::ValueError;

/// A DNS name for a subjectAltName: lower-cased labels of letters, digits and '-', at most 253
/// characters, optionally starting with one `*.` wildcard label. Returns it lower-cased.
pub fn validate_dns_name(name: &str) -> Result<String, ValueError> {
    let lower = name.to_ascii_lowercase();
    let bad = |why: &str| {
        Err(ValueError::new(format!(
            "{name:?} is not a DNS name: {why}"
        )))
    };
    if lower.is_empty() {
        return bad("it is empty");
    }
    if lower.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    if lower.ends_with('.') {
        return bad("drop the trailing dot");
    }
    let rest = lower.strip_prefix("*.").unwrap_or(&lower);
    if rest.is_empty() {
        return bad("a wildcard needs a domain after it");
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return bad("it has an empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return bad(&format!(
                "{c:?} is not allowed (letters, digits and '-' only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
    }
    Ok(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert_eq!(
            validate_dns_name("Login.Kube.Lacave").unwrap(),
            "login.kube.lacave"
        );
        assert!(validate_dns_name("*.kube.lacave").is_ok());
        assert!(validate_dns_name("localhost").is_ok());
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "*.",
            "a.b.",
            "*.*.b",
            "é.b",
            &"a".repeat(64),
        ] {
            assert!(validate_dns_name(bad).is_err(), "{bad}");
        }
    }
}
