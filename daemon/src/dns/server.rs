//! The DNS service: hickory-server moves the UDP bytes on `[dns] listen`, `tcp.rs` the TCP
//! ones, this handler decides. Answers come from the current [`Zone`], rebuilt when the registry or the
//! operator's records change, so a change is visible to the next query. Names outside our
//! zones are forwarded (with the resolver's cache) for clients in `allow_recursion_from`
//! only; everyone else gets REFUSED: the daemon is never an open resolver.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{LowerName, Name, Record, RecordType};
use hickory_server::resolver::TokioResolver;
use hickory_server::resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::settings::DnsConfig;
use super::zone::{Lookup, Zone, ZoneSettings, digest, zone_records};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

/// Records per message of a zone transfer.
const AXFR_CHUNK: usize = 200;

struct Inner {
    store: Store,
    settings: ZoneSettings,
    config: DnsConfig,
    /// The zone and the (node generation, DNS record generation) it was built from.
    current: RwLock<((u64, u64), Arc<Zone>)>,
    rebuild: tokio::sync::Mutex<()>,
    forwarder: Option<TokioResolver>,
    metrics: Arc<Metrics>,
}

/// The hickory-server request handler.
#[derive(Clone)]
pub struct DnsHandler(Arc<Inner>);

impl DnsHandler {
    pub fn new(config: &Config, store: Store, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let dns = config.dns.clone();
        let settings = ZoneSettings {
            zone: dns.zone.clone(),
            ttl: dns.ttl,
            cluster_name: dns.cluster_name.clone(),
            cluster_roles: dns.cluster_roles.clone(),
            server_ip: config.server_ip,
            serving_only: config.cluster.enabled,
        };
        let forwarder = if dns.forwarders.is_empty() {
            None
        } else {
            let servers = dns
                .forwarders
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut opts = ResolverOpts::default();
            opts.cache_size = 4096;
            // Give up within about 2 s: the client's own resolver retries, and a stuck
            // forwarder must not hold queries for longer than the client waits.
            opts.timeout = Duration::from_secs(2);
            opts.attempts = 1;
            let resolver = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
            .with_options(opts)
            .build()
            .map_err(|e| std::io::Error::other(format!("DNS forwarder: {e}")))?;
            Some(resolver)
        };
        let empty = Zone::assemble(&settings, Vec::new(), Vec::new(), Vec::new(), 0);
        Ok(DnsHandler(Arc::new(Inner {
            store,
            settings,
            config: dns,
            current: RwLock::new(((u64::MAX, u64::MAX), Arc::new(empty))),
            rebuild: tokio::sync::Mutex::new(()),
            forwarder,
            metrics,
        })))
    }

    /// The zone as of now, rebuilt first if the registry changed since it was built.
    pub async fn zone(&self) -> Arc<Zone> {
        let inner = &self.0;
        let want = (inner.store.generation(), inner.store.dns_generation());
        {
            let cur = inner.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.0 == want {
                return cur.1.clone();
            }
        }
        let _one_at_a_time = inner.rebuild.lock().await;
        let dns_generation = inner.store.dns_generation();
        {
            let cur = inner.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.0 == (inner.store.generation(), dns_generation) {
                return cur.1.clone();
            }
        }
        let mut extra = inner.config.records.clone();
        extra.extend(inner.store.dns_records().into_iter().map(|(_, r)| r));
        let (generation, (records, reverse, dropped)) = inner
            .store
            .with_nodes(|g, nodes| (g, zone_records(&inner.settings, nodes, &extra)));
        let content = digest(&records, &reverse);
        let store = inner.store.clone();
        let serial = match tokio::task::spawn_blocking(move || store.dns_serial(content)).await {
            Ok(Ok(serial)) => serial,
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot record the zone serial; serving the previous zone");
                return inner
                    .current
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .1
                    .clone();
            }
            Err(error) => {
                tracing::error!(%error, "zone rebuild panicked");
                return inner
                    .current
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .1
                    .clone();
            }
        };
        for d in &dropped {
            tracing::warn!(record = %d, "DNS record left out of the zone");
        }
        let zone = Arc::new(Zone::assemble(
            &inner.settings,
            records,
            reverse,
            dropped,
            serial,
        ));
        tracing::debug!(serial, "zone rebuilt");
        *inner.current.write().unwrap_or_else(|e| e.into_inner()) =
            ((generation, dns_generation), zone.clone());
        zone
    }

    fn recursion_allowed(&self, ip: IpAddr) -> bool {
        self.0
            .config
            .allow_recursion_from
            .iter()
            .any(|net| net.contains(&ip))
    }

    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> Result<ResponseInfo, String> {
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let builder = || MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let send_error = |code| builder().error_msg(&request.metadata, code);
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return response
                .send_response(send_error(ResponseCode::BADVERS))
                .await
                .map_err(|e| e.to_string());
        }
        if request.metadata.op_code != OpCode::Query {
            return response
                .send_response(send_error(ResponseCode::NotImp))
                .await
                .map_err(|e| e.to_string());
        }
        let Ok(info) = request.request_info() else {
            return response
                .send_response(send_error(ResponseCode::FormErr))
                .await
                .map_err(|e| e.to_string());
        };
        let qname: LowerName = info.query.name().clone();
        let qtype = info.query.query_type();
        let src = request.src();
        // Every zone here is of class IN: a CHAOS (`version.bind`) or other-class query gets
        // no IN data, and is not forwarded either.
        if info.query.query_class() != hickory_proto::rr::DNSClass::IN {
            self.count(qtype, ResponseCode::Refused);
            return response
                .send_response(send_error(ResponseCode::Refused))
                .await
                .map_err(|e| e.to_string());
        }

        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return self.transfer(request, response, &qname, src, builder).await;
        }

        let zone = self.zone().await;
        let mut meta = Metadata::response_from_request(&request.metadata);
        match zone.lookup(&qname, qtype) {
            Lookup::Answer {
                rcode,
                answers,
                authority,
                additional,
            } => {
                meta.authoritative = true;
                meta.response_code = rcode;
                self.count(qtype, rcode);
                let msg = builder().build(
                    meta,
                    answers.iter().copied(),
                    authority.iter().copied(),
                    std::iter::empty(),
                    additional.iter().copied(),
                );
                response.send_response(msg).await.map_err(|e| e.to_string())
            }
            Lookup::NotOurs => match &self.0.forwarder {
                Some(resolver) if self.recursion_allowed(src.ip()) => {
                    meta.recursion_available = true;
                    let name: Name = qname.into();
                    let (rcode, answers, authority) = match resolver.lookup(name, qtype).await {
                        Ok(lookup) => {
                            (ResponseCode::NoError, lookup.answers().to_vec(), Vec::new())
                        }
                        Err(e) => match e {
                            hickory_server::net::NetError::Dns(
                                hickory_server::net::DnsError::NoRecordsFound(no),
                            ) => {
                                let soa: Vec<Record> = no
                                    .soa
                                    .map(|s| vec![s.as_ref().clone().into_record_of_rdata()])
                                    .unwrap_or_default();
                                (no.response_code, Vec::new(), soa)
                            }
                            other => {
                                tracing::debug!(error = %other, "forwarding failed");
                                (ResponseCode::ServFail, Vec::new(), Vec::new())
                            }
                        },
                    };
                    meta.response_code = rcode;
                    self.count(qtype, rcode);
                    let msg = builder().build(
                        meta,
                        answers.iter(),
                        authority.iter(),
                        std::iter::empty(),
                        std::iter::empty(),
                    );
                    response.send_response(msg).await.map_err(|e| e.to_string())
                }
                _ => {
                    self.count(qtype, ResponseCode::Refused);
                    response
                        .send_response(send_error(ResponseCode::Refused))
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        }
    }

    /// AXFR over TCP for addresses in `axfr_allow`, of a zone we serve; REFUSED otherwise.
    async fn transfer<'q, R: ResponseHandler>(
        &self,
        request: &'q Request,
        mut response: R,
        qname: &LowerName,
        src: SocketAddr,
        builder: impl Fn() -> MessageResponseBuilder<'q>,
    ) -> Result<ResponseInfo, String> {
        let allowed = self.0.config.axfr_allow.contains(&src.ip())
            && request.protocol() == hickory_server::net::xfer::Protocol::Tcp;
        let zone = self.zone().await;
        let records = if allowed { zone.transfer(qname) } else { None };
        let Some(records) = records else {
            tracing::info!(%src, zone = %qname, "zone transfer refused");
            self.count(RecordType::AXFR, ResponseCode::Refused);
            return response
                .send_response(builder().error_msg(&request.metadata, ResponseCode::Refused))
                .await
                .map_err(|e| e.to_string());
        };
        self.count(RecordType::AXFR, ResponseCode::NoError);
        let mut last = None;
        for chunk in records.chunks(AXFR_CHUNK) {
            let mut meta = Metadata::response_from_request(&request.metadata);
            meta.authoritative = true;
            let msg = builder().build(
                meta,
                chunk.iter(),
                std::iter::empty(),
                std::iter::empty(),
                std::iter::empty(),
            );
            last = Some(
                response
                    .send_response(msg)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok(last.expect("a transfer has at least its SOA"))
    }

    fn count(&self, qtype: RecordType, rcode: ResponseCode) {
        let qtype: &str = qtype.into();
        self.0.metrics.dns_queries.inc(qtype, rcode_label(rcode));
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        match self.respond(request, response_handle).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, src = %request.src(), "sending a DNS answer failed");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The mnemonic dig prints (`NOERROR`, `NXDOMAIN`, …), for metric labels.
fn rcode_label(rcode: ResponseCode) -> &'static str {
    match u16::from(rcode) {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        16 => "BADVERS",
        _ => "other",
    }
}

/// Binds UDP and TCP on `addr` (the same port, also when `addr` asks for port 0).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr).await?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no port free for both UDP and TCP",
    ))
}

/// Serves DNS on the bound sockets until `cancel` fires, on a thread of its own with a
/// single-threaded runtime: a query is received, answered and sent without waking another
/// worker thread, which is most of the cost of a small UDP exchange.
pub fn serve(
    handler: DnsHandler,
    udp: UdpSocket,
    tcp: TcpListener,
    tcp_slots: Arc<crate::conns::ConnTable>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<()> {
    // Sockets belong to the runtime that made them: hand them over as std sockets.
    let udp = udp.into_std()?;
    let tcp = tcp.into_std()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("lacave-dns".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(%error, "cannot start the DNS runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let (udp, tcp) = match (UdpSocket::from_std(udp), TcpListener::from_std(tcp)) {
                    (Ok(u), Ok(t)) => (u, t),
                    (Err(error), _) | (_, Err(error)) => {
                        tracing::error!(%error, "cannot register the DNS sockets");
                        return;
                    }
                };
                let tcp = tokio::spawn(super::tcp::serve(
                    tcp,
                    handler.clone(),
                    tcp_slots,
                    cancel.clone(),
                ));
                let mut server = hickory_server::Server::new(handler);
                server.register_socket(udp);
                cancel.cancelled().await;
                let _ = tcp.await;
                if let Err(error) = server.shutdown_gracefully().await {
                    tracing::warn!(%error, "DNS server shutdown");
                }
            });
            let _ = done_tx.send(());
        })?;
    // The daemon's shutdown waits for the DNS thread like for any task.
    tasks.spawn(async move {
        let _ = done_rx.await;
    });
    Ok(())
}
