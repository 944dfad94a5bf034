//! Prometheus counters kept in memory and rendered in the text exposition format. Gauges that
//! derive from the registry (nodes by state) are computed at scrape time by the caller, so
//! they can never drift from what is stored.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::model::NodeState;

/// A counter family with a fixed list of label names.
pub struct CounterVec {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        CounterVec {
            name,
            help,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, label_values: &[&str]) {
        debug_assert_eq!(label_values.len(), self.labels.len());
        let key = label_values.iter().map(|v| v.to_string()).collect();
        *self
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    pub fn get(&self, label_values: &[&str]) -> u64 {
        let key: Vec<String> = label_values.iter().map(|v| v.to_string()).collect();
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        for (label_values, v) in values.iter() {
            let _ = writeln!(
                out,
                "{}{{{}}} {v}",
                self.name,
                format_labels(self.labels, label_values)
            );
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn format_labels(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every metric the daemon exports.
pub struct Metrics {
    pub api_requests: CounterVec,
    pub dns_queries: CounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            api_requests: CounterVec::new(
                "lacave_http_requests_total",
                "HTTP requests by route template, method and status code.",
                &["route", "method", "status"],
            ),
            dns_queries: CounterVec::new(
                "lacave_dns_queries_total",
                "DNS queries answered, by query type and response code.",
                &["type", "rcode"],
            ),
        }
    }
}

impl Metrics {
    /// The whole exposition, with the registry-derived gauges passed in.
    pub fn render(&self, nodes_by_state: &BTreeMap<NodeState, u64>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP lacave_build_info The running lacave version.\n# TYPE lacave_build_info gauge\nlacave_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP lacave_nodes Nodes in the registry by lifecycle state.\n# TYPE lacave_nodes gauge"
        );
        for state in NodeState::ALL {
            let n = nodes_by_state.get(&state).copied().unwrap_or(0);
            let _ = writeln!(out, "lacave_nodes{{state=\"{state}\"}} {n}");
        }
        self.api_requests.render(&mut out);
        self.dns_queries.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_every_state() {
        let m = Metrics::default();
        m.api_requests.inc(&["/api/v1/nodes", "POST", "201"]);
        m.api_requests.inc(&["/api/v1/nodes", "POST", "201"]);
        let mut by_state = BTreeMap::new();
        by_state.insert(NodeState::Registered, 2);
        let text = m.render(&by_state);
        assert!(text.contains(
            "lacave_http_requests_total{route=\"/api/v1/nodes\",method=\"POST\",status=\"201\"} 2"
        ));
        assert!(text.contains("lacave_nodes{state=\"registered\"} 2"));
        assert!(text.contains("lacave_nodes{state=\"ready\"} 0"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
