//! The Omaha protocol (v3) as Flatcar's `update_engine` speaks it: the request read from
//! untrusted XML within bounds, and the answer written. Pure: no I/O, no registry.
//!
//! A request (one `app`, Flatcar's app id, the node's version and group as `track`):
//!
//! ```xml
//! <request protocol="3.0" ...><os platform="CoreOS" .../>
//!   <app appid="{e96281a6-d1af-4bde-9a0a-97b76e56dc57}" version="4230.2.3" track="stable"
//!        machineid="..." bootid="{...}" oem="" ...>
//!     <ping active="1"/><updatecheck/><event eventtype="3" eventresult="2" previousversion=""/>
//!   </app></request>
//! ```
//!
//! Bounds (a node's request is under 2 KiB): [`MAX_BODY`] bytes, [`MAX_APPS`] apps,
//! [`MAX_EVENTS`] events per app, attribute values of [`MAX_VALUE`] characters, elements
//! [`MAX_DEPTH`] deep. A document type declaration is refused (no entity is ever defined or
//! expanded: only XML's five predefined ones and character references are read).

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// Flatcar's application id, as `update_engine` sends it.
pub const FLATCAR_APP_ID: &str = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}";
pub const MAX_BODY: usize = 16 * 1024;
pub const MAX_APPS: usize = 4;
pub const MAX_EVENTS: usize = 16;
pub const MAX_VALUE: usize = 256;
pub const MAX_DEPTH: usize = 4;

/// An Omaha request, the parts the daemon reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub apps: Vec<App>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct App {
    pub app_id: String,
    pub version: String,
    pub track: String,
    pub machine_id: String,
    pub ping: bool,
    pub update_check: bool,
    pub events: Vec<AppEvent>,
}

impl App {
    /// Whether this is Flatcar (app ids compare without case, braces optional).
    pub fn is_flatcar(&self) -> bool {
        let id = self.app_id.trim_matches(|c| c == '{' || c == '}');
        id.eq_ignore_ascii_case(FLATCAR_APP_ID.trim_matches(|c| c == '{' || c == '}'))
    }
}

/// An `<event>`: `eventtype`, `eventresult`, `errorcode`, `previousversion`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppEvent {
    pub kind: u32,
    pub result: u32,
    pub error_code: Option<i64>,
    pub previous_version: String,
}

/// What an event says of the node's update, as the daemon records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// 13/1: the payload's download started.
    Downloading,
    /// 14/1: downloaded and checked.
    Downloaded,
    /// 3/1 or 800/1: written to the other partition; the node waits for a reboot.
    Applied,
    /// 3/2 with a previous version: the node rebooted from `from` into the version it reports.
    Rebooted { from: String },
    /// Any event with result 0: `update_engine`'s error code.
    Failed { code: Option<i64> },
}

impl AppEvent {
    /// What the event means; `None` for those that say nothing new (the check's own
    /// "complete" event, with no previous version).
    pub fn progress(&self) -> Option<Progress> {
        match (self.kind, self.result) {
            (_, 0) => Some(Progress::Failed {
                code: self.error_code,
            }),
            (13, 1) => Some(Progress::Downloading),
            (14, 1) => Some(Progress::Downloaded),
            (3, 1) | (800, 1) => Some(Progress::Applied),
            (3, 2)
                if !self.previous_version.is_empty()
                    && self.previous_version != "0.0.0.0"
                    && self.previous_version != "0.0.0" =>
            {
                Some(Progress::Rebooted {
                    from: self.previous_version.clone(),
                })
            }
            _ => None,
        }
    }
}

/// Why a request was refused (the HTTP answer is 400 with this text).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the request is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("the request is not well-formed XML: {0}")]
    Xml(String),
    #[error("the request declares a document type: refused (no entity is ever expanded)")]
    DocType,
    #[error("the root element is <{0}>, not <request>")]
    NotARequest(String),
    #[error("the request's protocol is {0:?}, not \"3.0\"")]
    Protocol(String),
    #[error("more than {what_max} {what} in the request")]
    TooMany { what: &'static str, what_max: usize },
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("the attribute {0} is longer than {MAX_VALUE} characters")]
    LongValue(String),
    #[error("the attribute {name} is not a number: {value:?}")]
    NotANumber { name: &'static str, value: String },
    #[error("an <app> without appid")]
    NoAppId,
}

/// Reads an Omaha request within the module's bounds.
pub fn parse(body: &[u8]) -> Result<Request, ParseError> {
    if body.len() > MAX_BODY {
        return Err(ParseError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|e| ParseError::Xml(e.to_string()))?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut request = Request::default();
    let mut depth = 0usize;
    let mut saw_root = false;
    let mut in_app = false;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| ParseError::Xml(e.to_string()))?;
        let (element, empty) = match event {
            Event::Eof => break,
            Event::DocType(_) => return Err(ParseError::DocType),
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(e) => {
                depth = depth.saturating_sub(1);
                if AsRef::<str>::as_ref(&e.name()) == "app" {
                    in_app = false;
                }
                continue;
            }
            // Text, comments, the declaration, CDATA, processing instructions: not read.
            Event::GeneralRef(r) => {
                // An entity reference in text: only the predefined ones are XML without a DTD.
                let name: String = AsRef::<str>::as_ref(&r).to_string();
                if !matches!(name.as_str(), "lt" | "gt" | "amp" | "apos" | "quot")
                    && !name.starts_with('#')
                {
                    return Err(ParseError::Xml(format!("unknown entity &{name};")));
                }
                continue;
            }
            _ => continue,
        };
        if !empty {
            depth += 1;
        }
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        let name: String = AsRef::<str>::as_ref(&element.name()).to_string();
        if !saw_root {
            saw_root = true;
            if name != "request" {
                return Err(ParseError::NotARequest(name));
            }
            let protocol = attr(&element, "protocol")?.unwrap_or_default();
            if protocol != "3.0" {
                return Err(ParseError::Protocol(protocol));
            }
            continue;
        }
        match name.as_str() {
            "app" => {
                if request.apps.len() == MAX_APPS {
                    return Err(ParseError::TooMany {
                        what: "apps",
                        what_max: MAX_APPS,
                    });
                }
                request.apps.push(App {
                    app_id: attr(&element, "appid")?.ok_or(ParseError::NoAppId)?,
                    version: attr(&element, "version")?.unwrap_or_default(),
                    track: attr(&element, "track")?.unwrap_or_default(),
                    machine_id: attr(&element, "machineid")?.unwrap_or_default(),
                    ..App::default()
                });
                in_app = !empty;
            }
            "ping" | "updatecheck" | "event" if in_app => {
                let app = request.apps.last_mut().expect("in an app");
                match name.as_str() {
                    "ping" => app.ping = true,
                    "updatecheck" => app.update_check = true,
                    _ => {
                        if app.events.len() == MAX_EVENTS {
                            return Err(ParseError::TooMany {
                                what: "events in an app",
                                what_max: MAX_EVENTS,
                            });
                        }
                        app.events.push(AppEvent {
                            kind: number(&element, "eventtype")?.unwrap_or(0) as u32,
                            result: number(&element, "eventresult")?.unwrap_or(0) as u32,
                            error_code: number(&element, "errorcode")?,
                            previous_version: attr(&element, "previousversion")?
                                .unwrap_or_default(),
                        });
                    }
                }
            }
            // <os>, and anything a newer client adds.
            _ => {}
        }
    }
    if !saw_root {
        return Err(ParseError::Xml("no root element".into()));
    }
    Ok(request)
}

/// An attribute's value, unescaped (predefined entities and character references only).
fn attr(element: &BytesStart, name: &str) -> Result<Option<String>, ParseError> {
    for a in element.attributes() {
        let a = a.map_err(|e| ParseError::Xml(e.to_string()))?;
        if AsRef::<str>::as_ref(&a.key) != name {
            continue;
        }
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| ParseError::Xml(format!("attribute {name}: {e}")))?;
        if value.chars().count() > MAX_VALUE {
            return Err(ParseError::LongValue(name.into()));
        }
        return Ok(Some(value.into_owned()));
    }
    Ok(None)
}

fn number(element: &BytesStart, name: &'static str) -> Result<Option<i64>, ParseError> {
    match attr(element, name)? {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= -(1 << 31) && *n < (1 << 32))
            .map(Some)
            .ok_or(ParseError::NotANumber { name, value: v }),
    }
}

/// The answer to one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppAnswer {
    /// Not Flatcar: `status="error-unknownApplication"`.
    UnknownApp,
    /// Events and pings acknowledged; the update check (if asked) answered by `check`.
    Ok {
        ping: bool,
        events: usize,
        check: Option<Check>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    NoUpdate,
    /// `error-internal`: the daemon cannot answer (its mirror lacks the release asked for).
    Internal,
    Update(Offer),
}

/// An update: the release, where its payload is, and what `update_engine` checks of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub version: String,
    /// The URL the payload's name is appended to (ends with `/`).
    pub codebase: String,
    pub file: String,
    pub size: u64,
    pub sha1_base64: String,
    pub sha256_base64: String,
}

/// Writes the response to `apps` (the request's app ids with their answers), with the
/// seconds since midnight (UTC) as `daystart`.
pub fn render(apps: &[(String, AppAnswer)], elapsed_seconds: u32) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str("<response protocol=\"3.0\" server=\"lacave\">");
    out.push_str(&format!(
        "<daystart elapsed_seconds=\"{elapsed_seconds}\"/>"
    ));
    for (id, answer) in apps {
        let id = escape(id);
        match answer {
            AppAnswer::UnknownApp => {
                out.push_str(&format!(
                    "<app appid=\"{id}\" status=\"error-unknownApplication\"></app>"
                ));
            }
            AppAnswer::Ok {
                ping,
                events,
                check,
            } => {
                out.push_str(&format!("<app appid=\"{id}\" status=\"ok\">"));
                if *ping {
                    out.push_str("<ping status=\"ok\"/>");
                }
                for _ in 0..*events {
                    out.push_str("<event status=\"ok\"/>");
                }
                match check {
                    None => {}
                    Some(Check::NoUpdate) => out.push_str("<updatecheck status=\"noupdate\"/>"),
                    Some(Check::Internal) => {
                        out.push_str("<updatecheck status=\"error-internal\"/>")
                    }
                    Some(Check::Update(o)) => {
                        out.push_str(&format!(
                            "<updatecheck status=\"ok\"><urls><url codebase=\"{}\"/></urls>\
                             <manifest version=\"{v}\"><packages><package name=\"{}\" hash=\"{}\" hash_sha256=\"{s256}\" size=\"{}\" required=\"true\"/></packages>\
                             <actions><action event=\"postinstall\" ChromeOSVersion=\"{v}\" sha256=\"{s256}\" needsadmin=\"false\" IsDelta=\"false\" DisablePayloadBackoff=\"true\"/></actions>\
                             </manifest></updatecheck>",
                            escape(&o.codebase),
                            escape(&o.file),
                            escape(&o.sha1_base64),
                            o.size,
                            v = escape(&o.version),
                            s256 = escape(&o.sha256_base64),
                        ));
                    }
                }
                out.push_str("</app>");
            }
        }
    }
    out.push_str("</response>\n");
    out
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push_str(&format!("&#{};", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Flatcar's update_engine sends for an update check (its shape, from
    /// go-omaha's update-engine fixtures with Flatcar's app id).
    const CHECK: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="3.0" version="update_engine-0.4.10" updaterversion="update_engine-0.4.10" installsource="scheduler" ismachine="1">
<os version="Chateau" platform="CoreOS" sp="4230.2.3_x86_64"></os>
<app appid="{e96281a6-d1af-4bde-9a0a-97b76e56dc57}" version="4230.2.3" track="stable" bootid="{7D52A1CC-7066-40F0-91C7-7CB6A871BFDE}" oem="" oemversion="" alephversion="4230.2.3" machineid="8bde4c4d90834d61b41c3253212c0c37" lang="en-US" board="amd64-usr" hardware_class="" delta_okay="false" >
<ping active="1" a="-1" r="-1"></ping>
<updatecheck></updatecheck>
<event eventtype="3" eventresult="2" previousversion=""></event>
</app>
</request>"#;

    #[test]
    fn an_update_engine_check_is_read() {
        let r = parse(CHECK.as_bytes()).unwrap();
        assert_eq!(r.apps.len(), 1);
        let app = &r.apps[0];
        assert!(app.is_flatcar());
        assert_eq!(
            (app.version.as_str(), app.track.as_str()),
            ("4230.2.3", "stable")
        );
        assert_eq!(app.machine_id, "8bde4c4d90834d61b41c3253212c0c37");
        assert!(app.ping && app.update_check);
        assert_eq!(app.events.len(), 1);
        assert_eq!(app.events[0].progress(), None, "the check's own event");
    }

    #[test]
    fn events_mean_what_nebraska_makes_of_them() {
        let e = |kind, result, prev: &str| AppEvent {
            kind,
            result,
            error_code: Some(9),
            previous_version: prev.into(),
        };
        assert_eq!(e(13, 1, "").progress(), Some(Progress::Downloading));
        assert_eq!(e(14, 1, "").progress(), Some(Progress::Downloaded));
        assert_eq!(e(3, 1, "").progress(), Some(Progress::Applied));
        assert_eq!(e(800, 1, "").progress(), Some(Progress::Applied));
        assert_eq!(
            e(3, 2, "4230.2.3").progress(),
            Some(Progress::Rebooted {
                from: "4230.2.3".into()
            })
        );
        assert_eq!(e(3, 2, "0.0.0.0").progress(), None);
        assert_eq!(
            e(3, 0, "").progress(),
            Some(Progress::Failed { code: Some(9) })
        );
    }

    #[test]
    fn hostile_requests_are_refused_by_name() {
        let cases: Vec<(String, ParseError)> = vec![
            (
                format!("<request protocol=\"3.0\">{}</request>", " ".repeat(MAX_BODY)),
                ParseError::TooLarge,
            ),
            (
                "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;\">]><request protocol=\"3.0\"><app appid=\"&b;\"/></request>".into(),
                ParseError::DocType,
            ),
            ("<html/>".into(), ParseError::NotARequest("html".into())),
            (
                "<request protocol=\"2.0\"/>".into(),
                ParseError::Protocol("2.0".into()),
            ),
            (
                format!(
                    "<request protocol=\"3.0\">{}</request>",
                    "<app appid=\"x\"/>".repeat(MAX_APPS + 1)
                ),
                ParseError::TooMany {
                    what: "apps",
                    what_max: MAX_APPS,
                },
            ),
            (
                format!(
                    "<request protocol=\"3.0\"><app appid=\"x\">{}</app></request>",
                    "<event eventtype=\"3\" eventresult=\"1\"/>".repeat(MAX_EVENTS + 1)
                ),
                ParseError::TooMany {
                    what: "events in an app",
                    what_max: MAX_EVENTS,
                },
            ),
            (
                "<request protocol=\"3.0\"><a><b><c><d><e/></d></c></b></a></request>".into(),
                ParseError::TooDeep,
            ),
            (
                format!(
                    "<request protocol=\"3.0\"><app appid=\"{}\"/></request>",
                    "x".repeat(MAX_VALUE + 1)
                ),
                ParseError::LongValue("appid".into()),
            ),
            (
                "<request protocol=\"3.0\"><app appid=\"x\"><event eventtype=\"three\"/></app></request>".into(),
                ParseError::NotANumber {
                    name: "eventtype",
                    value: "three".into(),
                },
            ),
            (
                "<request protocol=\"3.0\"><app version=\"1\"/></request>".into(),
                ParseError::NoAppId,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse(body.as_bytes()).unwrap_err(),
                want,
                "{}",
                &body[..body.len().min(120)]
            );
        }
        // An undefined entity, mismatched tags, nothing at all: not XML.
        for body in [
            "<request protocol=\"3.0\"><app appid=\"&x;\"/></request>",
            "<request protocol=\"3.0\"><app appid=\"x\"></request>",
            "",
            "\u{0}\u{1}",
        ] {
            assert!(
                matches!(parse(body.as_bytes()), Err(ParseError::Xml(_))),
                "{body:?}: {:?}",
                parse(body.as_bytes())
            );
        }
    }

    #[test]
    fn an_offer_is_written_as_update_engine_reads_it_and_escaped() {
        let offer = Offer {
            version: "4459.2.1".into(),
            codebase: "http://10.0.0.1:8080/mirror/stable/amd64-usr/4459.2.1/".into(),
            file: "flatcar_production_update.gz".into(),
            size: 1234,
            sha1_base64: "+LXvjiaPkeYDLHoNKlf9qbJwvnk=".into(),
            sha256_base64: "0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=".into(),
        };
        let xml = render(
            &[
                (
                    FLATCAR_APP_ID.into(),
                    AppAnswer::Ok {
                        ping: true,
                        events: 1,
                        check: Some(Check::Update(offer)),
                    },
                ),
                ("<\"evil\">".into(), AppAnswer::UnknownApp),
            ],
            49008,
        );
        assert!(xml.contains("<daystart elapsed_seconds=\"49008\"/>"));
        assert!(xml.contains(
            "<url codebase=\"http://10.0.0.1:8080/mirror/stable/amd64-usr/4459.2.1/\"/>"
        ));
        assert!(xml.contains("<manifest version=\"4459.2.1\">"));
        assert!(xml.contains("name=\"flatcar_production_update.gz\" hash=\"+LXvjiaPkeYDLHoNKlf9qbJwvnk=\" hash_sha256=\"0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=\" size=\"1234\""));
        assert!(xml.contains("sha256=\"0VAlQW3RE99SGtSB5R4m08antAHO8XDoBMKDyxQT/Mg=\""));
        assert!(
            xml.contains("appid=\"&lt;&quot;evil&quot;&gt;\" status=\"error-unknownApplication\"")
        );
        // And it is XML.
        let mut r = Reader::from_str(&xml);
        loop {
            match r.read_event() {
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("{e}: {xml}"),
            }
        }
    }
}
