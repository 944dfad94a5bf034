//! Flatcar release versions (`4459.2.1`): what the mirror, the Omaha answers and the install
//! all name.

/// A dotted version of digits, as Flatcar numbers its releases (at most 32 characters).
pub fn is_flatcar_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Dotted versions compared number by number (`4459.10.0` > `4459.2.1`).
pub fn compare_flatcar_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dotted_digits_compared_number_by_number() {
        assert!(is_flatcar_version("4459.2.1"));
        for bad in ["", ".1", "1..2", "4459.2.1-rc", "4459.2.", &"1".repeat(33)] {
            assert!(!is_flatcar_version(bad), "{bad:?}");
        }
        assert!(compare_flatcar_versions("4459.10.0", "4459.2.1").is_gt());
        assert!(compare_flatcar_versions("4230.2.3", "4459.2.1").is_lt());
        assert!(compare_flatcar_versions("4459.2.1", "4459.2.1").is_eq());
    }
}
