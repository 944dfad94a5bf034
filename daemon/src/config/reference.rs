//! The configuration reference, generated from the settings code: every key of the file is a
//! field of a `Raw*` struct (the serde types the file is read into), documented by its doc
//! comment, whose last paragraph says its default (`Default: …`). `utoipa::ToSchema` carries
//! the comments and types to run time; this module walks that schema.
//!
//! `lacave config reference` prints the reference (the documentation's page is that output,
//! checked by a test); `lacave config example` prints a commented file. A default written as
//! one code span holding a TOML value (`` `30` ``, `` `"off"` ``) is a literal: a test sets
//! each such key to it and checks that the configuration does not change.

use utoipa::PartialSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayItems, Schema, SchemaType, Type};

/// One key of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// The table it is in: empty at the top level, `dhcp`, `cluster.etcd_snapshot`.
    pub section: String,
    /// Whether the section is an array of tables (`[[dns.records]]`).
    pub array: bool,
    pub name: String,
    /// `string`, `integer`, `boolean`, `float`, `array of strings`, `table`.
    pub kind: String,
    pub description: String,
    pub default: Default,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Default {
    /// A TOML value the key takes when absent.
    Literal(String),
    /// What the daemon does without the key, in words.
    Prose(String),
}

impl Key {
    /// `dhcp.mode`.
    pub fn dotted(&self) -> String {
        if self.section.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.section, self.name)
        }
    }
}

/// One table of the file, in the order of the code.
#[derive(Clone, Debug)]
pub struct Section {
    pub name: String,
    pub array: bool,
    pub description: String,
    pub keys: Vec<Key>,
}

/// Every table and key, from the schema of the file's root type.
pub fn sections() -> Vec<Section> {
    let mut components = Vec::new();
    <super::RawConfig as utoipa::ToSchema>::schemas(&mut components);
    let defs: Defs = components
        .into_iter()
        .filter_map(|(name, schema)| match schema {
            RefOr::T(schema) => Some((name, schema)),
            RefOr::Ref(_) => None,
        })
        .collect();
    let root = super::RawConfig::schema();
    let mut out = vec![Section {
        name: String::new(),
        array: false,
        description: "The file's top level.".into(),
        keys: Vec::new(),
    }];
    walk(&root, &defs, "", false, &mut out);
    out
}

/// The keys of every section, in order.
pub fn keys() -> Vec<Key> {
    sections().into_iter().flat_map(|s| s.keys).collect()
}

type Defs = std::collections::BTreeMap<String, Schema>;

/// Follows a `$ref`, and the `oneOf [T, null]` an `Option` of a struct becomes.
fn resolve<'a>(schema: &'a RefOr<Schema>, defs: &'a Defs) -> Option<&'a Schema> {
    match schema {
        RefOr::Ref(r) => r
            .ref_location
            .strip_prefix("#/components/schemas/")
            .and_then(|name| defs.get(name)),
        RefOr::T(Schema::OneOf(one)) => one
            .items
            .iter()
            .filter_map(|s| resolve(s, defs))
            .find(|s| !is_null(s)),
        RefOr::T(schema) => Some(schema),
    }
}

fn is_null(schema: &Schema) -> bool {
    matches!(schema, Schema::Object(o) if o.schema_type == SchemaType::Type(Type::Null))
}

/// A schema type without its `null`.
fn main_type(t: &SchemaType) -> Option<&Type> {
    match t {
        SchemaType::Type(t) => Some(t),
        SchemaType::Array(ts) => ts.iter().find(|t| **t != Type::Null),
        _ => None,
    }
}

fn kind(schema: &RefOr<Schema>, defs: &Defs) -> String {
    match resolve(schema, defs) {
        Some(Schema::Array(array)) => {
            let item = match &array.items {
                ArrayItems::RefOrSchema(item) => kind(item, defs),
                _ => "value".into(),
            };
            format!("array of {}s", item.trim_end_matches('s'))
        }
        Some(Schema::Object(o)) => match main_type(&o.schema_type) {
            Some(Type::String) => "string".into(),
            Some(Type::Integer) => "integer".into(),
            Some(Type::Boolean) => "boolean".into(),
            Some(Type::Number) => "float".into(),
            _ => "table".into(),
        },
        _ => "table".into(),
    }
}

/// The struct behind a property, when it is a table.
fn table<'a>(schema: &'a RefOr<Schema>, defs: &'a Defs) -> Option<&'a utoipa::openapi::Object> {
    match resolve(schema, defs) {
        Some(Schema::Object(o)) if !o.properties.is_empty() => Some(o),
        _ => None,
    }
}

/// The struct an array's items are, when it is an array of tables.
fn array_of_tables<'a>(schema: &'a RefOr<Schema>, defs: &'a Defs) -> Option<&'a RefOr<Schema>> {
    match resolve(schema, defs) {
        Some(Schema::Array(array)) => match &array.items {
            ArrayItems::RefOrSchema(item) if table(item, defs).is_some() => Some(item),
            _ => None,
        },
        _ => None,
    }
}

fn description(schema: &RefOr<Schema>) -> &str {
    match schema {
        RefOr::Ref(r) => &r.description,
        RefOr::T(Schema::Object(o)) => o.description.as_deref().unwrap_or_default(),
        RefOr::T(Schema::Array(a)) => a.description.as_deref().unwrap_or_default(),
        RefOr::T(Schema::OneOf(o)) => o.description.as_deref().unwrap_or_default(),
        _ => "",
    }
}

/// The description and the default of a doc comment (`…\n\nDefault: …`).
fn split_doc(doc: &str) -> (String, Option<Default>) {
    let (text, default) = match doc.rsplit_once("Default: ") {
        Some((text, default)) => (text, Some(default.trim().trim_end_matches('.'))),
        None => (doc, None),
    };
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let default = default.map(|d| {
        let literal = d
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .filter(|inner| !inner.contains('`'))
            .filter(|inner| toml::from_str::<toml::Table>(&format!("v = {inner}")).is_ok());
        match literal {
            Some(value) => Default::Literal(value.to_string()),
            None => Default::Prose(d.to_string()),
        }
    });
    (text, default)
}

fn walk(schema: &RefOr<Schema>, defs: &Defs, section: &str, array: bool, out: &mut Vec<Section>) {
    let Some(object) = table(schema, defs) else {
        return;
    };
    let index = out.len() - 1;
    let mut nested = Vec::new();
    for (name, property) in &object.properties {
        let doc = description(property);
        let dotted = if section.is_empty() {
            name.clone()
        } else {
            format!("{section}.{name}")
        };
        // A table, or an array of tables: a section of its own.
        if table(property, defs).is_some() {
            nested.push((dotted, property, false, doc));
            continue;
        }
        if let Some(item) = array_of_tables(property, defs) {
            nested.push((dotted, item, true, doc));
            continue;
        }
        let (description, default) = split_doc(doc);
        out[index].keys.push(Key {
            section: section.to_string(),
            array,
            name: name.clone(),
            kind: kind(property, defs),
            description,
            default: default.unwrap_or_else(|| Default::Prose(String::new())),
        });
    }
    for (dotted, property, is_array, doc) in nested {
        let (description, _) = split_doc(doc);
        out.push(Section {
            name: dotted.clone(),
            array: is_array,
            description,
            keys: Vec::new(),
        });
        walk(property, defs, &dotted, is_array, out);
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn header(section: &Section) -> String {
    match (section.name.as_str(), section.array) {
        ("", _) => "Top level".into(),
        (name, true) => format!("`[[{name}]]`"),
        (name, false) => format!("`[{name}]`"),
    }
}

/// The reference page (Markdown): what `lacave config reference` prints.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated by `lacave config reference` from the settings code \
         (daemon/src/config/reference.rs); a test fails when this page and the code differ. -->\n\n\
         One TOML file: `/etc/lacave/lacave.toml` under systemd (`lacave serve --config PATH`); \
         without one the daemon runs on the embedded defaults (everything on loopback, every \
         network-boot service off). Unknown keys are errors. `lacave check-config --config PATH` \
         exits 0, or 64 with one line per problem naming the file, the key and the reason. \
         `lacave config example` prints a file with every key commented out at its default.\n",
    );
    for section in sections() {
        out.push_str(&format!("\n## {}\n\n", header(&section)));
        if !section.name.is_empty() {
            out.push_str(&format!("{}\n\n", section.description));
        }
        if section.name == "addons" {
            out.push_str(
                "Each add-on also has a table of its own, `[addons.<name>]` (`cert-manager`, \
                 `dashboard`, `monitoring`, …): `enabled = false` turns it off, and its other keys \
                 are the add-on's values (see the add-ons chapter).\n\n",
            );
        }
        if section.keys.is_empty() {
            continue;
        }
        out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
        for key in &section.keys {
            let default = match &key.default {
                Default::Literal(v) => format!("`{v}`"),
                Default::Prose(p) => p.clone(),
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                key.name,
                key.kind,
                cell(&default),
                cell(&key.description)
            ));
        }
    }
    out
}

fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + word.len() + 1 > 90 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// A configuration file with every key commented out at its default: what `lacave config
/// example` prints. As it is, it is the embedded defaults.
pub fn example() -> String {
    let mut out = String::from(
        "# lacave configuration: every key, commented out at its default (`lacave config example`).\n\
         # Uncomment what your site changes; `lacave check-config --config FILE` checks the file.\n",
    );
    for section in sections() {
        out.push('\n');
        if !section.name.is_empty() {
            comment(&mut out, &section.description);
            // A table header alone changes nothing; an array-of-tables header would add an
            // empty entry, so it stays commented.
            if section.array {
                out.push_str(&format!("# [[{}]]\n", section.name));
            } else {
                out.push_str(&format!("[{}]\n", section.name));
            }
        }
        for (i, key) in section.keys.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            comment(&mut out, &key.description);
            match &key.default {
                Default::Literal(v) => out.push_str(&format!("# {} = {v}\n", key.name)),
                Default::Prose(p) => out.push_str(&format!("# {} (default: {p})\n", key.name)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn without_source(mut config: Config) -> String {
        config.source = None;
        format!("{config:?}")
    }

    #[test]
    fn every_key_is_described_with_a_type_and_a_default() {
        let keys = keys();
        assert!(keys.len() > 100, "{} keys", keys.len());
        for key in &keys {
            assert!(
                key.description.len() > 5,
                "{}: no description (a doc comment on its field)",
                key.dotted()
            );
            assert!(
                !matches!(&key.default, Default::Prose(p) if p.is_empty()),
                "{}: no `Default: …` paragraph in its doc comment",
                key.dotted()
            );
        }
        let names: Vec<String> = keys.iter().map(Key::dotted).collect();
        for expected in [
            "state_dir",
            "http.listen",
            "dhcp.mode",
            "dns.records.type",
            "cluster.etcd_snapshot.keep",
            "addons.tenants.namespace",
            "cluster.kubelet_config",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing");
        }
        let kind = |n: &str| keys.iter().find(|k| k.dotted() == n).unwrap().kind.clone();
        assert_eq!(kind("dhcp.lease_time"), "integer");
        assert_eq!(kind("dns.forwarders"), "array of strings");
        assert_eq!(kind("flatcar.autologin"), "boolean");
        assert_eq!(kind("cluster.cert_renew_fraction"), "float");
        assert_eq!(kind("cluster.kubelet_config"), "table");
    }

    /// The documented defaults are the real ones: setting a key to its documented default
    /// changes nothing.
    #[test]
    fn every_literal_default_is_the_default() {
        // Keys that only count beside others: compared within that context.
        const CONTEXT: &[(&str, &str)] = &[(
            "cluster.oidc_",
            "oidc_issuer_url = \"https://login.example\"\noidc_client_id = \"kubeapi\"\n",
        )];
        let mut checked = 0;
        for key in keys() {
            let Default::Literal(value) = &key.default else {
                continue;
            };
            if key.array {
                continue;
            }
            let dotted = key.dotted();
            let context = CONTEXT
                .iter()
                .find(|(prefix, _)| dotted.starts_with(prefix) && !dotted.ends_with("_url"))
                .map_or("", |(_, lines)| lines);
            let section = if key.section.is_empty() {
                String::new()
            } else {
                format!("[{}]\n", key.section)
            };
            let load = |text: String| {
                Config::from_toml(&text, Path::new("t.toml"))
                    .unwrap_or_else(|e| panic!("{dotted} = {value}: {e}"))
            };
            let defaults = without_source(load(format!("{section}{context}")));
            let config = load(format!("{section}{context}{} = {value}\n", key.name));
            assert_eq!(
                without_source(config),
                defaults,
                "{} = {value} is documented as the default but changes the configuration",
                key.dotted()
            );
            checked += 1;
        }
        assert!(checked > 50, "{checked} literal defaults");
    }

    #[test]
    fn the_example_is_the_embedded_defaults_and_names_every_key() {
        let example = example();
        let config = Config::from_toml(&example, Path::new("example.toml")).unwrap();
        assert_eq!(
            without_source(config),
            without_source(Config::embedded_defaults())
        );
        for key in keys() {
            assert!(
                example.contains(&format!("# {} = ", key.name))
                    || example.contains(&format!("# {} (default: ", key.name)),
                "{} is not in the example",
                key.dotted()
            );
        }
    }

    /// The documentation's page is the generated reference.
    #[test]
    fn the_documentation_page_is_the_generated_reference() {
        let page =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/reference/configuration.md");
        let text = std::fs::read_to_string(&page).unwrap_or_default();
        assert!(
            text == markdown(),
            "{} differs from the code: regenerate it with `cargo run -q -p lacave -- config \
             reference > docs/src/reference/configuration.md`",
            page.display()
        );
    }
}
