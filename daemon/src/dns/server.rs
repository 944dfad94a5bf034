//! The DNS service: one UDP worker thread per core on `[dns] listen` (`SO_REUSEPORT`), `tcp.rs`
//! the TCP side, this handler decides. A UDP query seen before is answered by its worker from
//! the answers already sent (`fast.rs`: bytes in, bytes out); any other goes to the handler on
//! the DNS runtime. Answers come from the current [`Zone`], rebuilt when the registry or the
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
use tokio::net::TcpListener;
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
    /// The zone and the (registered nodes' generation, DNS record generation) it was built
    /// from.
    current: RwLock<((u64, u64), Arc<Zone>)>,
    rebuild: tokio::sync::Mutex<()>,
    forwarder: Option<TokioResolver>,
    metrics: Arc<Metrics>,
    /// The zone's answers already sent over UDP, by query bytes.
    answers: super::fast::AnswerCache,
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
            service_names: service_names(config),
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
            answers: super::fast::AnswerCache::default(),
        })))
    }

    /// The registry this handler answers from.
    pub(super) fn store(&self) -> &Store {
        &self.0.store
    }

    /// The registry state the zone is built from (nodes, operator records).
    fn registry_state(&self) -> super::fast::Generation {
        (
            self.0.store.registered_generation(),
            self.0.store.dns_generation(),
        )
    }

    /// The answer to a UDP query from the answers already sent, into `out`, if there is one
    /// for the registry as it is now; counted like any other.
    pub fn cached_answer(&self, query: &[u8], out: &mut Vec<u8>) -> bool {
        if !self.0.answers.answer(query, self.registry_state(), out) {
            return false;
        }
        let qtype = question_type(query).map_or(RecordType::Unknown(0), RecordType::from);
        self.count(qtype, ResponseCode::from(0, out[3] & 0x0f));
        true
    }

    /// The full path for a UDP query: parsed, decided, encoded; the answer kept for the next
    /// time the same query comes if it may be.
    pub async fn answer_udp(&self, query: &[u8], src: SocketAddr) -> Vec<Vec<u8>> {
        let state = self.registry_state();
        let answers =
            super::tcp::answer(self, query, src, hickory_server::net::xfer::Protocol::Udp).await;
        if let [answer] = answers.as_slice() {
            self.0.answers.store(query, answer, state);
        }
        answers
    }

    /// The zone as of now, rebuilt first if the registry changed since it was built.
    pub async fn zone(&self) -> Arc<Zone> {
        let inner = &self.0;
        let want = (
            inner.store.registered_generation(),
            inner.store.dns_generation(),
        );
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
            if cur.0 == (inner.store.registered_generation(), dns_generation) {
                return cur.1.clone();
            }
        }
        let mut extra = inner.config.records.clone();
        extra.extend(inner.store.dns_records().into_iter().map(|(_, r)| r));
        let (generation, (records, reverse, dropped)) = inner
            .store
            .with_registered_nodes(|g, nodes| (g, zone_records(&inner.settings, nodes, &extra)));
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

/// The type of a query's (first) question, read from its bytes.
fn question_type(query: &[u8]) -> Option<u16> {
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        at += 1 + len;
    }
    Some(u16::from_be_bytes([
        *query.get(at + 1)?,
        *query.get(at + 2)?,
    ]))
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

/// Binds UDP and TCP on `addr` (the same port, also when `addr` asks for port 0): one UDP
/// socket per core (at most 8) with `SO_REUSEPORT`, so the kernel spreads queries over the
/// workers.
/// The add-ons' names the zone serves under the cluster name: the dashboard's with the
/// cluster's add-ons, Keycloak's with `[identity]`.
fn service_names(config: &Config) -> Vec<String> {
    let mut names = Vec::new();
    if config.cluster.enabled && config.addons.enabled.contains("dashboard") {
        names.push("dashboard".to_string());
    }
    if config.identity.enabled {
        names.push("login".to_string());
    }
    names
}

pub async fn bind(
    addr: SocketAddr,
) -> std::io::Result<(Vec<std::net::UdpSocket>, TcpListener, SocketAddr)> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let udp_at = crate::conns::reuseport_udp;
    for _ in 0..20 {
        let first = udp_at(addr)?;
        let bound = first.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => {
                let mut udp = vec![first];
                for _ in 1..workers {
                    udp.push(udp_at(bound)?);
                }
                return Ok((udp, tcp, bound));
            }
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no port free for both UDP and TCP",
    ))
}

/// Queries waiting for the full path, at most; beyond, a query is dropped (the client asks
/// again), as a busy server drops what its socket buffer cannot hold.
const SLOW_QUEUE: usize = 4096;

/// A UDP query for the full path: its bytes, its sender, and which worker's socket answers.
type SlowQuery = (Vec<u8>, SocketAddr, usize);

/// Serves DNS on the bound sockets until `cancel` fires. Each UDP socket has a worker thread
/// that receives, answers what it has answered before, and sends, with no task or message in
/// between; the other queries, and TCP, go to a thread of their own with a single-threaded
/// runtime, which answers them through the handler (forwarding included).
pub fn serve(
    handler: DnsHandler,
    udp: Vec<std::net::UdpSocket>,
    tcp: TcpListener,
    tcp_slots: Arc<crate::conns::ConnTable>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<()> {
    let tcp = tcp.into_std()?;
    let (slow_tx, mut slow_rx) = tokio::sync::mpsc::channel::<SlowQuery>(SLOW_QUEUE);
    let mut senders = Vec::with_capacity(udp.len());
    // Set once the daemon stops; read by the workers after each wait (an atomic load, where
    // asking the token takes a lock).
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (i, socket) in udp.into_iter().enumerate() {
        // The full path answers through a clone of the worker's socket (the same file
        // description: it stays blocking, as the worker needs; a UDP send does not block).
        senders.push(socket.try_clone()?);
        // A bounded wait, so the worker sees the daemon stop.
        socket.set_read_timeout(Some(Duration::from_millis(250)))?;
        let (handler, stopping, slow_tx) = (handler.clone(), stopping.clone(), slow_tx.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("lacave-dns-{i}"))
            .spawn(move || {
                udp_worker(&socket, i, &handler, &slow_tx, &stopping);
                let _ = done_tx.send(());
            })?;
        tasks.spawn(async move {
            let _ = done_rx.await;
        });
    }
    drop(slow_tx);
    let stop = cancel.clone();
    tasks.spawn(async move {
        stop.cancelled().await;
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let senders = Arc::new(senders);
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
                let tcp = match TcpListener::from_std(tcp) {
                    Ok(t) => t,
                    Err(error) => {
                        tracing::error!(%error, "cannot register the DNS TCP socket");
                        return;
                    }
                };
                let tcp = tokio::spawn(super::tcp::serve(
                    tcp,
                    handler.clone(),
                    tcp_slots,
                    cancel.clone(),
                ));
                let queries = tokio_util::task::TaskTracker::new();
                loop {
                    let (query, src, worker) = tokio::select! {
                        _ = cancel.cancelled() => break,
                        next = slow_rx.recv() => match next {
                            Some(q) => q,
                            None => break,
                        },
                    };
                    let (handler, senders) = (handler.clone(), senders.clone());
                    queries.spawn(async move {
                        for answer in handler.answer_udp(&query, src).await {
                            if let Err(error) = senders[worker].send_to(&answer, src) {
                                tracing::debug!(%src, %error, "sending a DNS answer failed");
                            }
                        }
                    });
                }
                queries.close();
                queries.wait().await;
                let _ = tcp.await;
            });
            let _ = done_tx.send(());
        })?;
    // The daemon's shutdown waits for the DNS threads like for any task.
    tasks.spawn(async move {
        let _ = done_rx.await;
    });
    Ok(())
}

/// One UDP socket's loop: answers from the answers already sent, hands the rest over.
fn udp_worker(
    socket: &std::net::UdpSocket,
    worker: usize,
    handler: &DnsHandler,
    slow: &tokio::sync::mpsc::Sender<SlowQuery>,
    stopping: &std::sync::atomic::AtomicBool,
) {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(512);
    while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
        let (len, src) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(error) => {
                // ICMP errors of earlier sends (ECONNREFUSED) and the like: not fatal.
                tracing::debug!(%error, "DNS receive");
                continue;
            }
        };
        let query = &buf[..len];
        if handler.cached_answer(query, &mut out) {
            if let Err(error) = socket.send_to(&out, src) {
                tracing::debug!(%src, %error, "sending a DNS answer failed");
            }
            continue;
        }
        if slow.try_send((query.to_vec(), src, worker)).is_err() {
            tracing::debug!(%src, "DNS query dropped: the full path is saturated");
        }
    }
}
