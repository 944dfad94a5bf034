//! Redfish (DMTF DSP0266) power control: the first `ComputerSystem` of the service,
//! its `PowerState`, `ComputerSystem.Reset`, and a one-time `Boot` override to `Pxe`. Over
//! HTTPS only, the server's certificate checked against the lacave CA or, for a BMC with a
//! certificate of its own, pinned by its SHA-256; HTTP basic authentication.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;

use super::{PowerAction, PowerError, PowerState};

/// One request's limit (the whole operation has [`super::DEADLINE`]).
const REQUEST: Duration = Duration::from_secs(8);
/// How much of an answer is read.
const MAX_BODY: usize = 1 << 20;

fn client(sha256: Option<&str>, ca_pem: Option<&str>) -> Result<reqwest::Client, PowerError> {
    let builder = reqwest::Client::builder()
        .timeout(REQUEST)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    let builder = match (sha256, ca_pem) {
        (Some(sha256), _) => {
            // Exactly one certificate, by the SHA-256 of its DER.
            let pinned = sha256.to_string();
            let config = crate::tls::CertCheck::client_config(move |end_entity| {
                let seen: String = sha2::Sha256::digest(end_entity.as_ref())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if seen == pinned {
                    Ok(())
                } else {
                    Err(rustls::Error::General(format!(
                        "the BMC's certificate has SHA-256 {seen}, not the pinned {pinned}"
                    )))
                }
            })
            .map_err(|e| PowerError::Protocol(e.to_string()))?;
            builder.tls_backend_preconfigured(config)
        }
        (None, Some(pem)) => {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| PowerError::Protocol(format!("the lacave CA: {e}")))?;
            builder.tls_certs_only([ca])
        }
        (None, None) => {
            return Err(PowerError::Certificate(
                "no CA to check it against: pin it (redfish://HOST?sha256=…)".into(),
            ));
        }
    };
    builder
        .build()
        .map_err(|e| PowerError::Protocol(e.to_string()))
}

/// Turns a transport error into what it means for the operator.
fn transport(what: &str, e: reqwest::Error) -> PowerError {
    let text = crate::tls::error_chain(&e);
    if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("pinned") {
        PowerError::Certificate(format!("{what}: {text}"))
    } else if e.is_timeout() {
        PowerError::Unreachable(format!("{what}: no answer within {} s", REQUEST.as_secs()))
    } else {
        PowerError::Unreachable(format!("{what}: {text}"))
    }
}

struct Service {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
}

impl Service {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, PowerError> {
        let what = format!("{method} {path}");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.user, Some(&self.password))
            .header("Accept", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.map_err(|e| transport(&what, e))?;
        let status = answer.status();
        let bytes = answer.bytes().await.map_err(|e| transport(&what, e))?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(PowerError::Credentials);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(PowerError::Refused {
                what,
                reason: format!("{status}: {}", crate::model::printable(&text, 300)),
            });
        }
        if bytes.len() > MAX_BODY {
            return Err(PowerError::Protocol(format!(
                "{what}: an answer of {} bytes",
                bytes.len()
            )));
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| PowerError::Protocol(format!("{what}: not JSON ({e})")))
    }

    /// The path of the service's first ComputerSystem.
    async fn system(&self) -> Result<String, PowerError> {
        let systems = self
            .call(reqwest::Method::GET, "/redfish/v1/Systems", None)
            .await?;
        let id = systems["Members"]
            .as_array()
            .and_then(|m| m.first())
            .and_then(|m| m["@odata.id"].as_str())
            .ok_or_else(|| PowerError::Protocol("/redfish/v1/Systems lists no system".into()))?;
        if !id.starts_with("/redfish/v1/") || id.contains("..") || id.contains(['?', '#']) {
            return Err(PowerError::Protocol(format!("a system at {id:?}")));
        }
        Ok(id.to_string())
    }

    async fn state(&self, system: &str) -> Result<PowerState, PowerError> {
        let value = self.call(reqwest::Method::GET, system, None).await?;
        match value["PowerState"].as_str() {
            Some("On") | Some("PoweringOff") => Ok(PowerState::On),
            Some("Off") | Some("PoweringOn") => Ok(PowerState::Off),
            other => Err(PowerError::Protocol(format!(
                "{system}: PowerState {other:?}"
            ))),
        }
    }

    /// Waits for the system to show `target`, within [`super::SETTLE`] (BMCs apply a
    /// change after they accept it).
    async fn settle(&self, system: &str, target: PowerState) -> Result<PowerState, PowerError> {
        let deadline = tokio::time::Instant::now() + super::SETTLE;
        loop {
            if self.state(system).await? == target {
                return Ok(target);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(super::never_settled(target));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn reset(&self, system: &str, kind: &str) -> Result<(), PowerError> {
        self.call(
            reqwest::Method::POST,
            &format!("{system}/Actions/ComputerSystem.Reset"),
            Some(json!({ "ResetType": kind })),
        )
        .await
        .map(|_| ())
    }
}

/// One power operation on a Redfish service.
pub async fn run(
    host: &str,
    port: u16,
    sha256: Option<&str>,
    ca_pem: Option<&str>,
    user: &str,
    password: &str,
    action: PowerAction,
) -> Result<PowerState, PowerError> {
    let host_part = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let service = Service {
        http: client(sha256, ca_pem)?,
        base: format!("https://{host_part}:{port}"),
        user: user.to_string(),
        password: password.to_string(),
    };
    let system = service.system().await?;
    match action {
        PowerAction::Status => service.state(&system).await,
        PowerAction::On => {
            if service.state(&system).await? == PowerState::Off {
                service.reset(&system, "On").await?;
            }
            service.settle(&system, PowerState::On).await
        }
        PowerAction::Off => {
            if service.state(&system).await? == PowerState::On {
                service.reset(&system, "ForceOff").await?;
            }
            service.settle(&system, PowerState::Off).await
        }
        PowerAction::Cycle => {
            match service.state(&system).await? {
                PowerState::On => service.reset(&system, "ForceRestart").await?,
                PowerState::Off => service.reset(&system, "On").await?,
            }
            Ok(PowerState::On)
        }
        PowerAction::PxeOnce => {
            service
                .call(
                    reqwest::Method::PATCH,
                    &system,
                    Some(json!({ "Boot": {
                        "BootSourceOverrideTarget": "Pxe",
                        "BootSourceOverrideEnabled": "Once",
                    }})),
                )
                .await?;
            service.state(&system).await
        }
    }
}
