//! The `[pki]` section: its file format, how a new CA is made ([`CaSettings`]) and the leaf
//! defaults, and their checks. Below `config` (which assembles the file).

use serde::Deserialize;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPki {
    /// The subject CN of a CA the daemon creates.
    ///
    /// Default: `"Lacave Root CA"`.
    common_name: Option<String>,
    /// The subject O of a CA the daemon creates.
    ///
    /// Default: unset.
    organization: Option<String>,
    /// `ecdsa-p256`, `rsa2048` or `rsa3072` (for old clients).
    ///
    /// Default: `"ecdsa-p256"`.
    key_type: Option<String>,
    /// The validity of a CA the daemon creates.
    ///
    /// Default: `3650`.
    validity_days: Option<u32>,
    /// The validity of issued certificates when a request gives none; less than the CA's.
    ///
    /// Default: `365`.
    leaf_validity_days: Option<u32>,
}

/// The key algorithm of a generated CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    Rsa2048,
    Rsa3072,
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" => Ok(KeyType::EcdsaP256),
            "rsa2048" => Ok(KeyType::Rsa2048),
            "rsa3072" => Ok(KeyType::Rsa3072),
            _ => Err(format!(
                "{s:?} is not a key type (expected \"ecdsa-p256\", \"rsa2048\" or \"rsa3072\")"
            )),
        }
    }
}

/// How to create a new CA.
#[derive(Clone, Debug)]
pub struct CaSettings {
    pub common_name: String,
    pub organization: Option<String>,
    pub key_type: KeyType,
    pub validity_days: u32,
}

#[derive(Clone, Debug)]
pub struct PkiConfig {
    /// How a new CA is made (on first start or `lacave pki init`).
    pub ca: CaSettings,
    /// Validity of leaf certificates when a request gives none.
    pub leaf_validity_days: u32,
}

/// Checks `[pki]`, naming every problem through `problem`.
pub fn validate(raw: RawPki, problem: &mut impl FnMut(&str, String)) -> PkiConfig {
    let common_name = raw
        .common_name
        .unwrap_or_else(|| "Lacave Root CA".to_string());
    if common_name.trim().is_empty() || common_name.len() > 64 {
        problem("pki.common_name", "must be 1 to 64 characters".into());
    }
    let key_type = match raw
        .key_type
        .as_deref()
        .unwrap_or("ecdsa-p256")
        .parse::<KeyType>()
    {
        Ok(k) => k,
        Err(e) => {
            problem("pki.key_type", e);
            KeyType::EcdsaP256
        }
    };
    let ca_days = raw.validity_days.unwrap_or(3650);
    if !(1..=36_500).contains(&ca_days) {
        problem(
            "pki.validity_days",
            format!("{ca_days} is not between 1 and 36500"),
        );
    }
    let leaf_days = raw.leaf_validity_days.unwrap_or(365);
    if leaf_days == 0 || leaf_days >= ca_days {
        problem(
            "pki.leaf_validity_days",
            format!("{leaf_days} must be at least 1 and less than pki.validity_days ({ca_days})"),
        );
    }
    PkiConfig {
        ca: CaSettings {
            common_name,
            organization: raw.organization,
            key_type,
            validity_days: ca_days,
        },
        leaf_validity_days: leaf_days,
    }
}
