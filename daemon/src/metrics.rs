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

    /// Every series: its label values and count.
    pub fn snapshot(&self) -> Vec<(Vec<String>, u64)> {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
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

/// A counter over two small, fixed label sets: one atomic per pair, no allocation or lock when
/// counting (for per-packet paths such as DNS queries).
pub struct CounterGrid {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; 2],
    rows: &'static [&'static str],
    cols: &'static [&'static str],
    cells: Vec<std::sync::atomic::AtomicU64>,
}

impl CounterGrid {
    /// The last value of `rows` and of `cols` is the catch-all (e.g. "other").
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: [&'static str; 2],
        rows: &'static [&'static str],
        cols: &'static [&'static str],
    ) -> Self {
        CounterGrid {
            name,
            help,
            labels,
            rows,
            cols,
            cells: (0..rows.len() * cols.len())
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn inc(&self, row: &str, col: &str) {
        let r = self
            .rows
            .iter()
            .position(|x| *x == row)
            .unwrap_or(self.rows.len() - 1);
        let c = self
            .cols
            .iter()
            .position(|x| *x == col)
            .unwrap_or(self.cols.len() - 1);
        self.cells[r * self.cols.len() + c].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Totals by column (e.g. DNS queries by response code), non-zero ones.
    pub fn column_totals(&self) -> Vec<(&'static str, u64)> {
        self.cols
            .iter()
            .map(|col| (*col, self.rows.iter().map(|row| self.get(row, col)).sum()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn get(&self, row: &str, col: &str) -> u64 {
        match (
            self.rows.iter().position(|x| *x == row),
            self.cols.iter().position(|x| *x == col),
        ) {
            (Some(r), Some(c)) => {
                self.cells[r * self.cols.len() + c].load(std::sync::atomic::Ordering::Relaxed)
            }
            _ => 0,
        }
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        for (r, row) in self.rows.iter().enumerate() {
            for (c, col) in self.cols.iter().enumerate() {
                let v =
                    self.cells[r * self.cols.len() + c].load(std::sync::atomic::Ordering::Relaxed);
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "{}{{{}=\"{row}\",{}=\"{col}\"}} {v}",
                        self.name, self.labels[0], self.labels[1]
                    );
                }
            }
        }
    }
}

/// DNS query types counted by name; the rest are "other".
pub const DNS_TYPES: &[&str] = &[
    "A", "AAAA", "CNAME", "SOA", "NS", "PTR", "MX", "TXT", "SRV", "ANY", "AXFR", "IXFR", "other",
];
/// DNS response codes counted by name; the rest are "other".
pub const DNS_RCODES: &[&str] = &[
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];

/// Every metric the daemon exports.
pub struct Metrics {
    pub api_requests: CounterVec,
    pub dns_queries: CounterGrid,
    pub tftp_transfers: CounterVec,
    pub dhcp_messages: CounterVec,
    pub connections_dropped: CounterVec,
    pub auth_failures: CounterVec,
    pub omaha: CounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            api_requests: CounterVec::new(
                "lacave_http_requests_total",
                "HTTP requests by route template, method and status code.",
                &["route", "method", "status"],
            ),
            dhcp_messages: CounterVec::new(
                "lacave_dhcp_messages_total",
                "DHCP messages received, by type (malformed ones included).",
                &["type"],
            ),
            tftp_transfers: CounterVec::new(
                "lacave_tftp_transfers_total",
                "TFTP requests by outcome: complete, aborted, refused, not_found, write_refused, busy.",
                &["result"],
            ),
            connections_dropped: CounterVec::new(
                "lacave_connections_dropped_total",
                "TCP connections closed by the daemon's limits, by listener (http, api, mirror, \
                 dns) and reason: evicted (the longest-waiting idle one, to make room), refused \
                 (every slot busy), timeout (request head, TLS handshake or write).",
                &["listener", "reason"],
            ),
            auth_failures: CounterVec::new(
                "lacave_auth_failures_total",
                "Wrong API tokens, by surface (api: the bearer header, console: the login form) \
                 and result: refused (401), throttled (429: the source address is over its \
                 failed logins for the window, the token was not looked at).",
                &["surface", "result"],
            ),
            omaha: CounterVec::new(
                "lacave_omaha_requests_total",
                "Omaha update checks and reports from nodes' update_engine, by outcome: request \
                 (every one), update (an update offered), noupdate, unanswered (the mirror cannot \
                 offer the site's release), refused (not from a registered node), malformed, \
                 unknown_app.",
                &["outcome"],
            ),
            dns_queries: CounterGrid::new(
                "lacave_dns_queries_total",
                "DNS queries answered, by query type and response code.",
                ["type", "rcode"],
                DNS_TYPES,
                DNS_RCODES,
            ),
        }
    }
}

impl Metrics {
    /// Counts an Omaha request's outcome.
    pub fn count_omaha(&self, outcome: &str) {
        self.omaha.inc(&[outcome]);
    }

    /// The whole exposition, with the registry-derived gauges passed in.
    pub fn render(&self, nodes_by_state: &BTreeMap<NodeState, u64>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP lacave_build_info The running lacave version and the commit it was built from.\n# TYPE lacave_build_info gauge\nlacave_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            env!("LACAVE_COMMIT")
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
        self.tftp_transfers.render(&mut out);
        self.dhcp_messages.render(&mut out);
        self.connections_dropped.render(&mut out);
        self.auth_failures.render(&mut out);
        self.omaha.render(&mut out);
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
    fn grid_counts_with_a_catch_all() {
        let m = Metrics::default();
        m.dns_queries.inc("A", "NXDOMAIN");
        m.dns_queries.inc("A", "NXDOMAIN");
        m.dns_queries.inc("HINFO", "RCODE9");
        let text = m.render(&BTreeMap::new());
        assert!(text.contains("lacave_dns_queries_total{type=\"A\",rcode=\"NXDOMAIN\"} 2"));
        assert!(text.contains("lacave_dns_queries_total{type=\"other\",rcode=\"other\"} 1"));
        assert!(
            !text.contains("rcode=\"NOERROR\""),
            "zero cells are not rendered"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
