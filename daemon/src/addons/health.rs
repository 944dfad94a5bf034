//! Whether an applied object is healthy, by kstatus' rules (sigs.k8s.io/cli-utils): a
//! controller has seen the latest spec (`observedGeneration`), Deployments are Available with
//! every replica updated, DaemonSets and StatefulSets are ready everywhere, CRDs are
//! Established, `Stalled` is a failure and `Reconciling` or a False `Ready` is progress. An
//! add-on's descriptor may add conditions that must be True (a ClusterIssuer's `Ready`), which
//! then count even before the object has a status. Objects of other kinds are healthy once
//! they exist.

use serde_json::Value;

use super::catalog::HealthRule;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Health {
    Current,
    InProgress(String),
    Failed(String),
}

fn int(v: &Value, path: &[&str]) -> Option<i64> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_i64()
}

fn condition<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn is_true(c: &Value) -> bool {
    c.get("status").and_then(Value::as_str) == Some("True")
}

fn message(c: &Value) -> String {
    let reason = c.get("reason").and_then(Value::as_str).unwrap_or("");
    let msg = c.get("message").and_then(Value::as_str).unwrap_or("");
    crate::model::printable(&format!("{reason}: {msg}"), 200)
}

/// The health of `object` (as the API server returned it).
pub fn of(object: &Value, rules: &[HealthRule]) -> Health {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let generation = int(object, &["metadata", "generation"]);
    let observed = int(object, &["status", "observedGeneration"]);
    if let (Some(g), Some(o)) = (generation, observed)
        && o < g
    {
        return Health::InProgress(format!("generation {g} not observed yet (at {o})"));
    }
    if let Some(c) = condition(object, "Stalled").filter(|c| is_true(c)) {
        return Health::Failed(format!("stalled: {}", message(c)));
    }
    if let Some(c) = condition(object, "Reconciling").filter(|c| is_true(c)) {
        return Health::InProgress(format!("reconciling: {}", message(c)));
    }
    let status = |path: &str| int(object, &["status", path]).unwrap_or(0);
    let builtin = match kind {
        "Deployment" => {
            let want = int(object, &["spec", "replicas"]).unwrap_or(1);
            if observed.is_none() {
                Health::InProgress("no status yet".into())
            } else if status("updatedReplicas") < want {
                Health::InProgress(format!(
                    "{}/{want} replicas updated",
                    status("updatedReplicas")
                ))
            } else if status("replicas") > status("updatedReplicas") {
                Health::InProgress(format!(
                    "{} old replicas pending termination",
                    status("replicas") - status("updatedReplicas")
                ))
            } else if status("availableReplicas") < want {
                Health::InProgress(format!(
                    "{}/{want} replicas available",
                    status("availableReplicas")
                ))
            } else {
                Health::Current
            }
        }
        "DaemonSet" => {
            let want = status("desiredNumberScheduled");
            if observed.is_none() {
                Health::InProgress("no status yet".into())
            } else if status("updatedNumberScheduled") < want {
                Health::InProgress(format!(
                    "{}/{want} pods updated",
                    status("updatedNumberScheduled")
                ))
            } else if status("numberAvailable") < want || status("numberReady") < want {
                Health::InProgress(format!(
                    "{}/{want} pods ready",
                    status("numberReady").min(status("numberAvailable"))
                ))
            } else {
                Health::Current
            }
        }
        "StatefulSet" => {
            let want = int(object, &["spec", "replicas"]).unwrap_or(1);
            if observed.is_none() {
                Health::InProgress("no status yet".into())
            } else if status("readyReplicas") < want {
                Health::InProgress(format!("{}/{want} replicas ready", status("readyReplicas")))
            } else if status("updatedReplicas") < want {
                Health::InProgress(format!(
                    "{}/{want} replicas updated",
                    status("updatedReplicas")
                ))
            } else {
                Health::Current
            }
        }
        "CustomResourceDefinition" => match condition(object, "Established") {
            Some(c) if is_true(c) => Health::Current,
            Some(c) => Health::InProgress(format!("not Established: {}", message(c))),
            None => Health::InProgress("not Established yet".into()),
        },
        "Job" => match condition(object, "Failed").filter(|c| is_true(c)) {
            Some(c) => Health::Failed(format!("job failed: {}", message(c))),
            None if condition(object, "Complete").is_some_and(is_true) => Health::Current,
            None => Health::InProgress("job not complete".into()),
        },
        _ => match condition(object, "Ready") {
            Some(c) if !is_true(c) => Health::InProgress(format!("not Ready: {}", message(c))),
            _ => Health::Current,
        },
    };
    if builtin != Health::Current {
        return builtin;
    }
    for rule in rules.iter().filter(|r| r.kind == kind) {
        match condition(object, &rule.condition) {
            Some(c) if is_true(c) => {}
            Some(c) => {
                return Health::InProgress(format!(
                    "{} is not True: {}",
                    rule.condition,
                    message(c)
                ));
            }
            None => {
                return Health::InProgress(format!("no {} condition yet", rule.condition));
            }
        }
    }
    Health::Current
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployments_count_updated_and_available_replicas() {
        let mut d = json!({"kind": "Deployment", "metadata": {"generation": 2},
            "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}});
        assert!(matches!(of(&d, &[]), Health::InProgress(r) if r.contains("not observed")));
        d["status"]["observedGeneration"] = json!(2);
        assert_eq!(of(&d, &[]), Health::Current);
        d["status"]["availableReplicas"] = json!(1);
        assert_eq!(
            of(&d, &[]),
            Health::InProgress("1/2 replicas available".into())
        );
        d["status"]["replicas"] = json!(3);
        assert!(matches!(of(&d, &[]), Health::InProgress(r) if r.contains("old replicas")));
        let fresh = json!({"kind": "Deployment", "metadata": {"generation": 1}, "spec": {}});
        assert_eq!(of(&fresh, &[]), Health::InProgress("no status yet".into()));
    }

    #[test]
    fn daemonsets_and_crds() {
        let ds = json!({"kind": "DaemonSet", "metadata": {"generation": 1},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3,
                       "numberAvailable": 2, "numberReady": 3}});
        assert_eq!(of(&ds, &[]), Health::InProgress("2/3 pods ready".into()));
        let crd = json!({"kind": "CustomResourceDefinition",
            "status": {"conditions": [{"type": "Established", "status": "True"}]}});
        assert_eq!(of(&crd, &[]), Health::Current);
        let crd = json!({"kind": "CustomResourceDefinition", "status": {}});
        assert!(matches!(of(&crd, &[]), Health::InProgress(_)));
    }

    #[test]
    fn descriptor_conditions_count_before_any_status() {
        let rules = [HealthRule {
            kind: "ClusterIssuer".into(),
            condition: "Ready".into(),
        }];
        let issuer = json!({"kind": "ClusterIssuer", "metadata": {"generation": 1}});
        assert_eq!(of(&issuer, &[]), Health::Current);
        assert_eq!(
            of(&issuer, &rules),
            Health::InProgress("no Ready condition yet".into())
        );
        let ready = json!({"kind": "ClusterIssuer", "status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KeyPairVerified"}]}});
        assert_eq!(of(&ready, &rules), Health::Current);
        let stalled = json!({"kind": "Thing", "status": {"conditions": [
            {"type": "Stalled", "status": "True", "reason": "Bad", "message": "\u{1b}[31mx"}]}});
        assert_eq!(
            of(&stalled, &[]),
            Health::Failed("stalled: Bad: ?[31mx".into())
        );
    }
}
