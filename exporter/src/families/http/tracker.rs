//! The HTTP tracker: ring-buffer record -> [`connection`] (parse and match) -> [`aggregate`]
//! (metrics) and [`span`] (traces), per connection and process.

use crate::model::names;
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use foldhash::{HashMap, HashMapExt};
use opentelemetry::trace::SpanKind;
use periscope_common::hist::ns_to_units;
use periscope_common::http::{ConnectAddr, SockOpen, TLS_FD, conn_key};

use crate::{
    model::histogram::Exemplar,
    model::metrics::{Attributes, Metric, Points},
    model::resource::ProcessResource,
    model::span::{SpanQueue, SpanRecord},
    process::{self, ProcessCache, ProcessInfo, select},
};

use super::{
    aggregate::{HttpMetrics, RequestKey},
    config::HttpConfig,
    connection::{Capture, Connection, Exchange, Io, Opener, Outcome, Role, Version},
    grpc::{self, Methods},
    h2, parse,
    record::{self, Conn, Record, Transfer},
    route::Routes,
    span,
    span::{Sampling, TraceRef},
};

/// Connections followed in user space at once; beyond it the least recently active are
/// forgotten (their state restarts from the next message head).
const MAX_CONNECTIONS: usize = 65_536;
/// Forks followed up from a process to the one whose instance it belongs to.
const MAX_FORK_DEPTH: usize = 8;
/// Threads with a server request in progress remembered for client-span parenting.
const MAX_ACTIVE_THREADS: usize = 65_536;

/// What the tracker counted about the traffic itself (`periscope.http.messages`).
#[derive(Debug, Default, Clone)]
pub struct HttpStats {
    pub exchanges: u64,
    /// Exchanges counted with a field that could not be decoded (an HTTP/2 stream's method
    /// or path, on a connection joined midway).
    pub partial_exchanges: u64,
    pub invalid: u64,
    pub unmatched_responses: u64,
    pub dropped: HashMap<&'static str, u64>,
    pub not_selected: u64,
    /// Connections followed from their establishment (accept, connect, or a socket whose
    /// establishment the kernel saw), and from the middle (opened before Periscope started, or
    /// forgotten): in the second, a message under way when they were found is not counted.
    pub followed_from_start: u64,
    pub followed_mid_stream: u64,
    pub records: u64,
    pub malformed_records: u64,
}

/// Shared between the tracker task and the exporters.
#[derive(Debug)]
pub struct HttpState {
    pub metrics: HttpMetrics,
    pub stats: HttpStats,
    pub connections: usize,
    /// Processes the tracker holds (resource attributes, selection) right now.
    pub processes: usize,
}

impl HttpState {
    pub fn new(max_series: usize) -> Self {
        Self {
            metrics: HttpMetrics::new(max_series),
            stats: HttpStats::default(),
            connections: 0,
            processes: 0,
        }
    }

    pub fn collect(&mut self, out: &mut Vec<Metric>) {
        self.metrics.expire();
        self.metrics.collect(out);
        let s = &self.stats;
        let mut points = vec![
            (
                vec![("outcome", "exchange".to_string())],
                s.exchanges as f64,
            ),
            (
                vec![("outcome", "exchange_partial".to_string())],
                s.partial_exchanges as f64,
            ),
            (vec![("outcome", "invalid".to_string())], s.invalid as f64),
            (
                vec![("outcome", "unmatched_response".to_string())],
                s.unmatched_responses as f64,
            ),
            (
                vec![("outcome", "not_selected".to_string())],
                s.not_selected as f64,
            ),
        ];
        for reason in [
            "connection_closed",
            "process_exit",
            "pipeline_overflow",
            "events_lost",
            "stream_overflow",
            "http2_undecoded",
        ] {
            points.push((
                vec![("outcome", format!("dropped_{reason}"))],
                s.dropped.get(reason).copied().unwrap_or(0) as f64,
            ));
        }
        out.push(Metric {
            name: names::PERISCOPE_HTTP_MESSAGES,
            description: "What the HTTP capture made of the traffic: matched exchanges, bytes that were not HTTP, responses without a request, requests dropped (and why).",
            unit: "1",
            points: Points::Counter(points),
            resource: None,
        });
        out.push(Metric {
            name: names::PERISCOPE_HTTP_CONNECTIONS_FOLLOWED,
            description: "Connections the HTTP capture started following: from their establishment, or found in the middle (opened before Periscope started, or forgotten), where a message under way is not counted.",
            unit: "1",
            points: Points::Counter(vec![
                (
                    vec![("seen", "from_start".to_string())],
                    s.followed_from_start as f64,
                ),
                (
                    vec![("seen", "mid_stream".to_string())],
                    s.followed_mid_stream as f64,
                ),
            ]),
            resource: None,
        });
        out.push(Metric {
            name: names::PERISCOPE_HTTP_CONNECTIONS,
            description: "TCP connections the HTTP capture follows right now.",
            unit: "1",
            points: Points::Gauge(vec![(vec![], self.connections as f64)]),
            resource: None,
        });
        out.push(Metric {
            name: names::PERISCOPE_HTTP_PROCESSES,
            description: "Processes the HTTP capture holds resource attributes for right now.",
            unit: "1",
            points: Points::Gauge(vec![(vec![], self.processes as f64)]),
            resource: None,
        });
        out.push(Metric {
            name: names::PERISCOPE_HTTP_SERIES,
            description: "Distinct HTTP metric series held (capped by probes.http.max_series).",
            unit: "1",
            points: Points::Gauge(vec![(vec![], self.metrics.series_count() as f64)]),
            resource: None,
        });
    }
}

struct TrackedConnection {
    conn: Connection,
    /// Server: the listening port; client: the port connected to.
    port: Option<u16>,
    /// Client: the peer address.
    peer: Option<String>,
    /// Open descriptors for it (dup'ed fds are aliases of the first one).
    fds: u32,
    last_active: u64,
}

/// Monotonic (the kernel's clock) to wall-clock time.
fn realtime_offset_ns() -> i128 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    now - crate::families::monotonic_ns() as i128
}

/// Who forked a process that has not exec'd since, by tgid.
pub type ForkLookup = Box<dyn Fn(u32) -> Option<u32> + Send>;

/// The thread of records not tied to one (Go's TLS probes): no user thread has id 0.
const NO_THREAD: u32 = 0;

/// Consumes ring-buffer records and turns them into metrics and spans.
pub struct Tracker {
    config: HttpConfig,
    conns: HashMap<(u32, u32), TrackedConnection>,
    /// Duplicated descriptors -> the descriptor their connection is tracked under.
    aliases: HashMap<(u32, u32), (u32, u32)>,
    /// Descriptors given up on (not selected, not HTTP): records of theirs still in the ring
    /// buffer are skipped at once, until the descriptor is closed or reused.
    ignored: foldhash::HashSet<(u32, u32)>,
    /// Processes the last [`Tracker::reap_exited`] found gone.
    missing: foldhash::HashSet<u32>,
    /// Connections the last [`Tracker::reap_evicted`] found gone from the kernel map, with
    /// their last activity then (a descriptor number reused since is another connection).
    evicted: HashMap<(u32, u32), u64>,
    /// Each process's instance: its own, or (forked without exec) the one of the process it is a
    /// copy of, the same `Arc` (series are keyed by the resource's identity).
    processes: ProcessCache<Arc<ProcessInfo>>,
    /// The process that forked a process without exec since (the kernel's `HTTP_FORKED`).
    forked: Option<ForkLookup>,
    listen_ports: HashMap<(u32, u32), Option<u16>>,
    /// Connections announced by the socket tracepoints without a side (established before
    /// Periscope started, or their side evicted from its kernel map): their ports, until their
    /// first bytes tell the side.
    unsided: HashMap<(u32, u32), SockOpen>,
    /// Server span each thread is serving (parent of its client calls).
    active: HashMap<u32, TraceRef>,
    routes: Routes,
    /// gRPC's `rpc.service`/`rpc.method`, bounded per service like routes.
    methods: Methods,
    sampling: Sampling,
    spans: Option<SpanQueue>,
    state: Arc<Mutex<HttpState>>,
    /// Counted here and copied into `state` by [`Tracker::publish`] after each batch of
    /// records: a lock per record showed in the daemon's profile.
    stats: HttpStats,
    clock_offset: i128,
    /// Kernel connection entries to delete (connections that are not HTTP or not selected).
    pub forget: Vec<u64>,
    outcomes: Vec<Outcome>,
}

impl Tracker {
    pub fn new(
        config: HttpConfig,
        state: Arc<Mutex<HttpState>>,
        spans: Option<SpanQueue>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            routes: Routes::new(&config.routes, config.max_routes_per_service)
                .map_err(anyhow::Error::msg)?,
            methods: Methods::new(config.max_routes_per_service),
            sampling: Sampling::parse(&config.sampler, config.sampler_arg)
                .map_err(anyhow::Error::msg)?,
            config,
            conns: HashMap::new(),
            aliases: HashMap::new(),
            ignored: foldhash::HashSet::default(),
            missing: foldhash::HashSet::default(),
            evicted: HashMap::new(),
            processes: ProcessCache::new(),
            forked: None,
            listen_ports: HashMap::new(),
            unsided: HashMap::new(),
            active: HashMap::new(),
            spans,
            state,
            stats: HttpStats::default(),
            clock_offset: realtime_offset_ns(),
            forget: Vec::new(),
            outcomes: Vec::new(),
        })
    }

    /// Re-reads the wall clock (NTP steps it; the monotonic clock does not move with it).
    pub fn refresh_clock(&mut self) {
        self.clock_offset = realtime_offset_ns();
    }

    fn unix_ns(&self, monotonic: u64) -> u64 {
        (monotonic as i128 + self.clock_offset).max(0) as u64
    }

    /// Handles one ring-buffer record.
    pub fn handle(&mut self, bytes: &[u8]) {
        let record = match record::decode(bytes) {
            Ok(record) => record,
            Err(_) => {
                self.stats.malformed_records += 1;
                return;
            }
        };
        self.stats.records += 1;
        tracing::trace!(?record, "http record");
        match record {
            Record::Accept {
                conn,
                listen_fd,
                comm,
            } => self.on_accept(conn, listen_fd, &comm),
            Record::Connect { conn, peer, comm } => self.open_connection(
                conn,
                Role::Client,
                Some(peer.port),
                Some(ip_of(&peer)),
                &comm,
            ),
            Record::Open {
                conn,
                side,
                open,
                comm,
            } => self.on_socket_open(conn, side, open, &comm),
            Record::Io(transfer) => self.on_io(&transfer),
            Record::Close { conn, whole_socket } => self.on_close(conn.tgid, conn.fd, whole_socket),
            Record::Dup { conn, original_fd } => self.on_dup(conn.tgid, original_fd, conn.fd),
            Record::Exit { tgid } => self.on_exit(tgid),
        }
    }

    fn state_mut(&self) -> std::sync::MutexGuard<'_, HttpState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where to learn which processes were forked without exec, and by whom.
    pub fn set_forked(&mut self, lookup: ForkLookup) {
        self.forked = Some(lookup);
    }

    /// The process whose service instance `tgid` belongs to when it was forked without exec:
    /// the furthest ancestor, up such forks, still alive (a daemon's intermediate fork that
    /// exited is skipped). A fork-per-connection server's children are its instance, not one
    /// instance per child.
    fn instance_owner(&self, tgid: u32) -> Option<u32> {
        let lookup = self.forked.as_ref()?;
        let (mut pid, mut owner) = (tgid, None);
        for _ in 0..MAX_FORK_DEPTH {
            let Some(parent) = lookup(pid).filter(|p| *p != 0 && *p != pid && *p != tgid) else {
                break;
            };
            if std::path::Path::new(&format!("/proc/{parent}")).exists() {
                owner = Some(parent);
            }
            pid = parent;
        }
        owner
    }

    fn process(&mut self, tgid: u32, comm: &str) -> Arc<ProcessInfo> {
        if let Some(p) = self.processes.get(tgid) {
            return p.clone();
        }
        if let Some(owner) = self.instance_owner(tgid) {
            let info = self.process(owner, comm);
            self.processes.insert(tgid, info.clone());
            return info;
        }
        let info = Arc::new(ProcessInfo::read(tgid, comm, self.processes.host(), None));
        self.processes.insert(tgid, info.clone());
        info
    }

    /// Whether a connection on `port` of process `tgid` is selected; a selector that names the
    /// service renames the process's resource.
    fn selected(&mut self, tgid: u32, comm: &str, port: Option<u16>) -> bool {
        let info = self.process(tgid, comm);
        let name = match select(&self.config.select, &info, port) {
            None => return false,
            Some(None) => return true,
            Some(Some(s)) => s.service_name.clone(),
        };
        if let Some(name) = name
            && info.resource.service_name != name
        {
            // The instance's owner and its forked copies share the renamed resource.
            let renamed = Arc::new(ProcessInfo::read(
                info.pid,
                &info.comm,
                self.processes.host(),
                Some(&name),
            ));
            self.processes
                .replace_where(|held| Arc::ptr_eq(held, &info), &renamed);
            self.processes.insert(tgid, renamed);
        }
        true
    }

    /// A server accepted `conn`: its port is the listening socket's.
    fn on_accept(&mut self, conn: Conn, listen_fd: u32, comm: &str) {
        let key = (conn.tgid, listen_fd);
        let port = match self.listen_ports.get(&key) {
            Some(p) => *p,
            None => {
                let p = process::listening_port(conn.tgid, listen_fd);
                if self.listen_ports.len() > MAX_CONNECTIONS {
                    self.listen_ports.clear();
                }
                self.listen_ports.insert(key, p);
                p
            }
        };
        self.open_connection(conn, Role::Server, port, None, comm);
    }

    /// A new socket on `conn` (socket programs), with its peer and local port: a connection of
    /// the side the kernel saw it established as. One established before Periscope started has
    /// no side yet: its first bytes will tell (see [`role_of`]).
    fn on_socket_open(&mut self, conn: Conn, side: Option<Role>, open: SockOpen, comm: &str) {
        let Some(role) = side else {
            self.replace((conn.tgid, conn.fd));
            if self.unsided.len() >= MAX_CONNECTIONS {
                self.unsided.clear();
            }
            self.unsided.insert((conn.tgid, conn.fd), open);
            return;
        };
        let port = side_port(role, open.local_port, open.peer.port);
        let peer = (role == Role::Client).then(|| ip_of(&open.peer));
        self.open_connection(conn, role, Some(port), peer, comm);
    }

    /// Starts following `conn`, when its process is selected.
    fn open_connection(
        &mut self,
        conn: Conn,
        role: Role,
        port: Option<u16>,
        peer: Option<String>,
        comm: &str,
    ) {
        let key = (conn.tgid, conn.fd);
        self.replace(key);
        if !self.selected(conn.tgid, comm, port) {
            self.stats.not_selected += 1;
            self.give_up(key);
            return;
        }
        self.stats.followed_from_start += 1;
        self.track(key, role, port, peer, conn.time_ns);
    }

    /// Starts following a connection (making room first).
    fn track(
        &mut self,
        key: (u32, u32),
        role: Role,
        port: Option<u16>,
        peer: Option<String>,
        now_ns: u64,
    ) {
        self.make_room();
        self.conns.insert(
            key,
            TrackedConnection {
                conn: Connection::new(role),
                port,
                peer,
                fds: 1,
                last_active: now_ns,
            },
        );
    }

    fn make_room(&mut self) {
        if self.conns.len() < MAX_CONNECTIONS {
            return;
        }
        let mut by_age: Vec<((u32, u32), u64)> = self
            .conns
            .iter()
            .map(|(k, c)| (*k, c.last_active))
            .collect();
        by_age.sort_by_key(|(_, t)| *t);
        for (k, _) in by_age.iter().take(MAX_CONNECTIONS / 8) {
            self.conns.remove(k);
        }
    }

    /// Stops following a descriptor: in the kernel (its entry is deleted) and here.
    fn give_up(&mut self, key: (u32, u32)) {
        // The kernel follows a TLS connection under its socket's fd: forgetting that stops
        // the Go probes too, whose records name the socket exactly.
        self.forget.push(conn_key(key.0, key.1 & !TLS_FD));
        self.conns.remove(&key);
        if self.ignored.len() >= MAX_CONNECTIONS {
            self.ignored.clear();
        }
        self.ignored.insert(key);
    }

    /// The key a descriptor's connection is tracked under.
    fn resolve(&self, key: (u32, u32)) -> (u32, u32) {
        self.aliases.get(&key).copied().unwrap_or(key)
    }

    fn on_dup(&mut self, tgid: u32, old: u32, new: u32) {
        let canonical = self.resolve((tgid, old));
        if let Some(tracked) = self.conns.get_mut(&canonical) {
            tracked.fds += 1;
            if self.aliases.len() >= MAX_CONNECTIONS {
                self.aliases.clear();
            }
            self.aliases.insert((tgid, new), canonical);
        }
    }

    fn on_io(&mut self, h: &Transfer) {
        let (io, captured) = (h.io, h.io.captured);
        let key = self.resolve((h.tgid, h.fd));
        if self.ignored.contains(&key) {
            return;
        }
        let socket = (h.tgid, h.fd & !TLS_FD);
        if h.fd & TLS_FD != 0 && !self.conns.contains_key(&key) && self.conns.contains_key(&socket)
        {
            // Plaintext of a connection whose handshake record was not seen (lost, or the
            // connection was opened before Periscope started).
            self.switch_to_tls(socket);
        }
        if !self.conns.contains_key(&key) {
            // Opened before Periscope started, forgotten, or the plaintext of a TLS connection
            // whose fd was not seen: follow it from here, with what /proc can still tell.
            let Some(role) = role_of(h) else {
                // HTTP/2 frames of a connection opened before Periscope started: the kernel
                // follows it from its next HEADERS frame (a stream's start says the side).
                if !(h.side.is_none() && looks_like_http2(&io)) {
                    self.give_up(key);
                }
                return;
            };
            // Announced by the socket tracepoints, else read from /proc (which lists every
            // socket of the namespace).
            let ports = match self.unsided.remove(&key) {
                Some(open) => Some((open.local_port, open.peer.port)),
                None => process::socket_ports(h.tgid, h.fd & !TLS_FD),
            };
            let port = ports.map(|(local, remote)| side_port(role, local, remote));
            if !self.selected(h.tgid, "", port) {
                self.give_up(key);
                return;
            }
            self.stats.followed_mid_stream += 1;
            self.track(key, role, port, None, io.end_ns);
        }
        if h.fd & TLS_FD == 0
            && io.capture == Capture::Plain
            && is_tls_record(captured)
            && !self.conns[&key].conn.seen_http
        {
            self.switch_to_tls(key);
            return;
        }
        let mut outcomes = std::mem::take(&mut self.outcomes);
        let tracked = self.conns.get_mut(&key).expect("inserted above");
        tracked.last_active = io.end_ns;
        if h.after_loss {
            tracked.conn.on_lost(&mut outcomes);
        }
        if h.read {
            tracked.conn.on_read(&io, &mut outcomes);
        } else {
            tracked.conn.on_write(&io, &mut outcomes);
        }
        self.assign_spans(key);
        // Bytes that never looked like HTTP: stop capturing this connection in the kernel.
        let tracked = &self.conns[&key];
        if !tracked.conn.seen_http && outcomes.contains(&Outcome::Invalid) {
            self.give_up(key);
        }
        self.finish(key, h.tgid, &mut outcomes);
        self.outcomes = outcomes;
    }

    /// Gives new requests their span ids: a server request is a child of its `traceparent` and
    /// becomes its thread's active span; a client request is a child of its thread's active
    /// server span.
    fn assign_spans(&mut self, key: (u32, u32)) {
        if self.spans.is_none() {
            return;
        }
        let Some(tracked) = self.conns.get_mut(&key) else {
            return;
        };
        let role = tracked.conn.role();
        for request in tracked.conn.requests_without_span() {
            let (parent, kind) = match role {
                Role::Server => (
                    request
                        .traceparent
                        .as_deref()
                        .and_then(span::parse_traceparent),
                    SpanKind::Server,
                ),
                // Thread 0: a runtime whose requests are not tied to a thread (Go's records
                // name none): no parent rather than a wrong one.
                Role::Client if request.tid == NO_THREAD => (None, SpanKind::Client),
                Role::Client => (self.active.get(&request.tid).copied(), SpanKind::Client),
            };
            let ids = span::new_span(&self.sampling, parent, kind);
            request.span = Some((ids, parent.map(|p| p.span_id)));
            if role == Role::Server && request.tid != NO_THREAD {
                if self.active.len() >= MAX_ACTIVE_THREADS {
                    self.active.clear();
                }
                self.active.insert(request.tid, ids);
            }
        }
    }

    fn finish(&mut self, key: (u32, u32), tgid: u32, outcomes: &mut Vec<Outcome>) {
        for outcome in outcomes.drain(..) {
            match outcome {
                Outcome::Exchange(e) => self.record(key, tgid, e),
                Outcome::Call(call) => self.record_call(key, tgid, call),
                Outcome::Invalid => self.stats.invalid += 1,
                Outcome::Unmatched => self.stats.unmatched_responses += 1,
                Outcome::Dropped(reason) => *self.stats.dropped.entry(reason).or_default() += 1,
            }
        }
    }

    fn record(&mut self, key: (u32, u32), tgid: u32, mut e: Exchange) {
        let Some(tracked) = self.conns.get(&key) else {
            return;
        };
        let role = tracked.conn.role();
        if e.request.version == Version::Http2 && e.request.span.is_none() && self.spans.is_some() {
            e.request.span = Some(stream_span(
                &self.sampling,
                role,
                e.request.traceparent.as_deref(),
            ));
        }
        let port = tracked.port;
        // Clients name the server they called; the peer is the fallback for a missing Host.
        let address = match role {
            Role::Server => None,
            Role::Client => e
                .request
                .host
                .as_deref()
                .map(|host| std::borrow::Cow::Borrowed(host_without_port(host)))
                .or_else(|| tracked.peer.clone().map(std::borrow::Cow::Owned)),
        };
        let info = self.process(tgid, "");
        let method = normalize_method(&e.request.method);
        let path = e.request.path();
        // An HTTP/2 stream whose path could not be decoded has no route (never a guessed one).
        let partial = path.is_empty() || e.request.method.is_empty();
        let error = match role {
            Role::Server => e.status >= 500,
            Role::Client => e.status >= 400,
        };
        let version = e.request.version.attribute();
        let duration = e.end_ns.saturating_sub(e.request.start_ns);
        let span = e
            .request
            .span
            .filter(|(ids, _)| ids.sampled && self.spans.is_some());
        self.count_exchange(partial);
        let exemplar = span.map(|(ids, _)| self.exemplar(ids, duration, e.end_ns));
        // Borrowed: an exchange of a series seen before allocates nothing here.
        let route = if path.is_empty() {
            ""
        } else {
            self.routes.route(&info.resource.service_name, path)
        };
        let request = RequestKey {
            method,
            status: e.status,
            route,
            version,
            error,
            port,
            address: address.as_deref(),
        };
        // Built only for a span: the metrics need neither.
        let span_attributes = span.map(|_| request.to_attributes());
        let name = span.map(|_| span_name(role, method, route));
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .metrics
            .record(&info.resource, role, request, duration, exemplar);
        if role == Role::Server
            && let Some((ids, _)) = e.request.span
            && self.active.get(&e.request.tid) == Some(&ids)
        {
            self.active.remove(&e.request.tid);
        }
        let (Some(span), Some(mut attributes), Some(name)) = (span, span_attributes, name) else {
            return;
        };
        if !path.is_empty() {
            attributes.push(("url.path", path.to_string()));
        }
        if method == "_OTHER" && !e.request.method.is_empty() {
            attributes.push(("http.request.method_original", e.request.method.clone()));
        }
        self.push_span(
            &info.resource,
            Finished {
                span,
                role,
                name,
                start_ns: e.request.start_ns,
                end_ns: e.end_ns,
                attributes,
                int_attributes: [
                    Some(("http.response.status_code", i64::from(e.status))),
                    port.map(|p| ("server.port", i64::from(p))),
                ]
                .into_iter()
                .flatten()
                .collect(),
                error,
            },
        );
    }

    /// An exchange counted in the metrics; `partial`: some of its fields could not be decoded.
    fn count_exchange(&mut self, partial: bool) {
        if partial {
            self.stats.partial_exchanges += 1;
        } else {
            self.stats.exchanges += 1;
        }
    }

    /// A gRPC call: the RPC metrics, with the same port, peer and process as an HTTP request,
    /// and its span, made as an HTTP/2 stream's ([`stream_span`]), named
    /// `{rpc.service}/{rpc.method}`.
    fn record_call(&mut self, key: (u32, u32), tgid: u32, call: grpc::Call) {
        let Some(tracked) = self.conns.get(&key) else {
            return;
        };
        let role = tracked.conn.role();
        let port = tracked.port;
        let address = match role {
            Role::Server => None,
            Role::Client => call
                .authority
                .as_deref()
                .map(|host| host_without_port(host).to_string())
                .or_else(|| tracked.peer.clone()),
        };
        let info = self.process(tgid, "");
        let (service, method) = self.methods.name(&info.resource.service_name, &call.path);
        let partial = call.path.is_empty();
        let attributes = grpc::CallAttributes {
            service,
            method,
            status: call.status,
            error: grpc::error_type(role, call.status),
            port,
            address,
        };
        let duration = call.end_ns.saturating_sub(call.start_ns);
        let span = self
            .spans
            .as_ref()
            .map(|_| stream_span(&self.sampling, role, call.traceparent.as_deref()))
            .filter(|(ids, _)| ids.sampled);
        // The attributes are moved into the series; a span needs its own.
        let span_attributes = span.map(|_| attributes.to_attributes());
        let name = span.map(|_| format!("{}/{}", attributes.service, attributes.method));
        let error = attributes.error.is_some();
        self.count_exchange(partial);
        let exemplar = span.map(|(ids, _)| self.exemplar(ids, duration, call.end_ns));
        self.state_mut()
            .metrics
            .record_call(&info.resource, role, attributes, duration, exemplar);
        let (Some(span), Some(attributes), Some(name)) = (span, span_attributes, name) else {
            return;
        };
        self.push_span(
            &info.resource,
            Finished {
                span,
                role,
                name,
                start_ns: call.start_ns,
                end_ns: call.end_ns,
                attributes,
                int_attributes: [
                    call.status
                        .map(|code| ("rpc.grpc.status_code", i64::from(code))),
                    port.map(|p| ("server.port", i64::from(p))),
                ]
                .into_iter()
                .flatten()
                .collect(),
                error,
            },
        );
    }

    /// A sampled span's ids travel with its value: the bucket's exemplar links to the trace.
    fn exemplar(&self, ids: TraceRef, duration_ns: u64, end_ns: u64) -> Exemplar {
        Exemplar {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            value: ns_to_units(duration_ns),
            time_unix_ns: self.unix_ns(end_ns),
        }
    }

    /// Queues a finished span (when spans are on), stamped in wall-clock time; an attribute
    /// in `int_attributes` is exported as that integer only.
    fn push_span(&self, resource: &Arc<ProcessResource>, f: Finished) {
        let Some(queue) = &self.spans else {
            return;
        };
        let (ids, parent) = f.span;
        let ints = &f.int_attributes;
        queue.push(SpanRecord {
            resource: resource.clone(),
            ids,
            parent_span_id: parent,
            kind: match f.role {
                Role::Server => SpanKind::Server,
                Role::Client => SpanKind::Client,
            },
            name: f.name,
            start_unix_ns: self.unix_ns(f.start_ns),
            end_unix_ns: self.unix_ns(f.end_ns),
            attributes: f
                .attributes
                .into_iter()
                .filter(|(k, _)| !ints.iter().any(|(i, _)| i == k))
                .collect(),
            int_attributes: f.int_attributes,
            error: f.error,
        });
    }

    /// A connection whose bytes are TLS records: its plaintext will come from the OpenSSL
    /// probes under `fd | TLS_FD`, with the same role and port; its encrypted bytes are
    /// skipped (the kernel stopped capturing them when it saw the handshake record).
    fn switch_to_tls(&mut self, key: (u32, u32)) {
        let Some(tracked) = self.conns.remove(&key) else {
            return;
        };
        let role = tracked.conn.role();
        self.ignored.insert(key);
        self.conns.insert(
            (key.0, key.1 | TLS_FD),
            TrackedConnection {
                conn: Connection::new(role),
                ..tracked
            },
        );
    }

    /// (`tgid`, `fd`) closed; `socket_closed` (socket programs): the socket itself, so every
    /// descriptor of it is over.
    fn on_close(&mut self, tgid: u32, fd: u32, socket_closed: bool) {
        let raw = (tgid, fd);
        self.ignored.remove(&raw);
        self.unsided.remove(&raw);
        // The plaintext side of a TLS connection ends with it.
        if fd & TLS_FD == 0
            && let Some(tls) = self.conns.get(&(tgid, fd | TLS_FD))
            && (tls.fds <= 1 || socket_closed)
        {
            self.on_close(tgid, fd | TLS_FD, socket_closed);
        }
        let key = self.resolve(raw);
        self.aliases.remove(&raw);
        if socket_closed {
            self.aliases.retain(|_, canonical| *canonical != key);
            if let Some(tracked) = self.conns.get_mut(&key) {
                tracked.fds = 1;
            }
        }
        if let Some(tracked) = self.conns.get_mut(&key)
            && tracked.fds > 1
        {
            // Another descriptor still refers to the connection.
            tracked.fds -= 1;
            if raw == key {
                self.rekey(key);
            }
            return;
        }
        let Some(mut tracked) = self.conns.remove(&key) else {
            return;
        };
        let mut outcomes = std::mem::take(&mut self.outcomes);
        tracked.conn.on_close(&mut outcomes);
        // `record` needs the connection's port and role: put it back for the moment.
        self.conns.insert(key, tracked);
        self.finish(key, tgid, &mut outcomes);
        self.conns.remove(&key);
        self.outcomes = outcomes;
    }

    /// The descriptor a connection is tracked under closed while copies of it remain: the
    /// connection moves to one of them, so that the closed number, once reused, names only
    /// its new connection.
    fn rekey(&mut self, key: (u32, u32)) {
        let Some(survivor) = self
            .aliases
            .iter()
            .find(|(_, canonical)| **canonical == key)
            .map(|(alias, _)| *alias)
        else {
            return;
        };
        self.aliases.remove(&survivor);
        for canonical in self.aliases.values_mut() {
            if *canonical == key {
                *canonical = survivor;
            }
        }
        if let Some(tracked) = self.conns.remove(&key) {
            self.conns.insert(survivor, tracked);
        }
    }

    /// The (process, fd) pair `key` names a new connection: whatever it named is over, as if
    /// closed (the kernel says so first, unless that record or its map entry was lost), so that
    /// its requests in flight are counted as dropped rather than forgotten.
    fn replace(&mut self, key: (u32, u32)) {
        self.unsided.remove(&key);
        if self.conns.contains_key(&key) || self.aliases.contains_key(&key) {
            self.on_close(key.0, key.1, false);
        }
        self.ignored.remove(&key);
    }

    fn on_exit(&mut self, tgid: u32) {
        let keys: Vec<(u32, u32)> = self.conns.keys().filter(|k| k.0 == tgid).copied().collect();
        let mut outcomes = std::mem::take(&mut self.outcomes);
        for key in keys {
            let Some(tracked) = self.conns.get_mut(&key) else {
                continue;
            };
            tracked.conn.on_exit(&mut outcomes);
            self.forget.push(conn_key(key.0, key.1));
            // `record` needs the connection's port and role: it goes after its outcomes.
            self.finish(key, tgid, &mut outcomes);
            self.conns.remove(&key);
        }
        self.outcomes = outcomes;
        self.listen_ports.retain(|k, _| k.0 != tgid);
        self.aliases.retain(|k, _| k.0 != tgid);
        self.ignored.retain(|k| k.0 != tgid);
        // A forked copy leaving ends nothing of its instance's owner.
        if let Some(info) = self.processes.forget(tgid)
            && info.pid == tgid
        {
            self.state_mut().metrics.process_exited(&info.resource);
        }
    }

    /// Publishes the counters and gauges (connections followed, processes held) to the shared
    /// state the exporters read; called after each batch of records.
    pub fn publish(&self) {
        let mut state = self.state_mut();
        state.stats.clone_from(&self.stats);
        state.connections = self.conns.len();
        state.processes = self.processes.len();
    }

    /// Forgets processes that are gone although their exit record never arrived (lost to a full
    /// ring buffer), with their connections: without this, every exit lost under a flood would
    /// keep a process (and its connections and descriptors) until its pid is reused.
    /// Forgets connections the kernel no longer follows although their close record never
    /// arrived: evicted from the kernel's LRU map (more connections open than
    /// `probes.http.max_connections`) or closed while the ring buffer was full. The kernel sends
    /// nothing more for them, so without this a long-lived process would keep them (up to the
    /// table's cap). `in_kernel` says whether a `conn_key` is in the kernel map; a connection
    /// is forgotten on the second call that finds none of its descriptors there and no record
    /// of it in between (so not a new connection on a reused descriptor).
    /// Whether the last reaping round found processes or connections gone that the next round
    /// will forget (so it should come soon).
    pub fn reap_pending(&self) -> bool {
        !self.missing.is_empty() || !self.evicted.is_empty()
    }

    pub fn reap_evicted(&mut self, in_kernel: impl Fn(u64) -> bool) {
        let mut dups: HashMap<(u32, u32), Vec<(u32, u32)>> = HashMap::new();
        for (raw, canonical) in &self.aliases {
            dups.entry(*canonical).or_default().push(*raw);
        }
        let gone: Vec<((u32, u32), u64)> = self
            .conns
            .iter()
            .filter(|(key, _)| key.1 & TLS_FD == 0)
            .filter(|(key, _)| {
                !std::iter::once(**key)
                    .chain(dups.get(*key).into_iter().flatten().copied())
                    .any(|(tgid, fd)| in_kernel(conn_key(tgid, fd)))
            })
            .map(|(key, tracked)| (*key, tracked.last_active))
            .collect();
        for (key, last_active) in &gone {
            if self.evicted.get(key) != Some(last_active) {
                continue;
            }
            for raw in dups.get(key).into_iter().flatten() {
                self.aliases.remove(raw);
            }
            if let Some(mut tracked) = self.conns.remove(key) {
                let mut outcomes = std::mem::take(&mut self.outcomes);
                tracked.conn.on_close(&mut outcomes);
                self.conns.insert(*key, tracked);
                self.finish(*key, key.0, &mut outcomes);
                self.conns.remove(key);
                self.outcomes = outcomes;
            }
        }
        self.evicted = gone.into_iter().collect();
    }

    /// A process is forgotten on the second call that finds it gone, so that every record it
    /// wrote before exiting has been drained by then.
    pub fn reap_exited(&mut self) {
        let mut tgids: Vec<u32> = self.processes.pids().collect();
        tgids.extend(self.conns.keys().map(|k| k.0));
        tgids.extend(self.ignored.iter().map(|k| k.0));
        tgids.sort_unstable();
        tgids.dedup();
        let gone: Vec<u32> = tgids
            .into_iter()
            .filter(|tgid| !std::path::Path::new(&format!("/proc/{tgid}")).exists())
            .collect();
        for tgid in &gone {
            if self.missing.contains(tgid) {
                self.on_exit(*tgid);
            }
        }
        self.missing = gone.into_iter().collect();
    }
}

/// An HTTP/2 stream's (or gRPC call's) span ids, given when the stream ends (its request's
/// span is not needed before: no thread is known to be serving a stream): a server stream is a
/// child of its request's `traceparent`; a client stream has no parent (its transfers' threads
/// say nothing of which server request made it, so none rather than a wrong one).
fn stream_span(
    sampling: &Sampling,
    role: Role,
    traceparent: Option<&str>,
) -> (TraceRef, Option<[u8; 8]>) {
    let (parent, kind) = match role {
        Role::Server => (
            traceparent.and_then(span::parse_traceparent),
            SpanKind::Server,
        ),
        Role::Client => (None, SpanKind::Client),
    };
    (
        span::new_span(sampling, parent, kind),
        parent.map(|p| p.span_id),
    )
}

/// A finished span's fields, before [`Tracker::push_span`] stamps and queues it.
struct Finished {
    /// Its ids and parent.
    span: (TraceRef, Option<[u8; 8]>),
    role: Role,
    name: String,
    start_ns: u64,
    end_ns: u64,
    attributes: Attributes,
    int_attributes: Vec<(&'static str, i64)>,
    error: bool,
}

/// The side of a connection first seen in the middle: from the kernel's role, else (a
/// connection established before Periscope started, seen on socket tracepoints, or the
/// plaintext of a TLS connection whose fd was not seen) from what the bytes are. `None` when
/// they do not say.
fn role_of(h: &Transfer) -> Option<Role> {
    if let Some(role) = h.side {
        return Some(role);
    }
    match h.io.capture {
        // The client preface: a client writes it, a server reads it.
        Capture::Frames {
            opener: Some(Opener::ClientPreface),
            ..
        } => return Some(if h.read { Role::Server } else { Role::Client }),
        Capture::Frames {
            opener: Some(Opener::ServerSettings),
            ..
        } => return Some(Role::Server),
        // A request's HEADERS is written by a client and read by a server, a response's the
        // other way round.
        Capture::Frames {
            opener: Some(Opener::Midway),
            ..
        } => {
            let client_sent = h2::midway_sender(h.io.captured)? == h2::Side::Client;
            return Some(if client_sent == h.read {
                Role::Server
            } else {
                Role::Client
            });
        }
        _ => {}
    }
    let response = parse::looks_like_response(h.io.captured);
    let request = !response && parse::looks_like_request(h.io.captured);
    match (h.read, request, response) {
        (true, true, _) | (false, _, true) => Some(Role::Server),
        (true, _, true) | (false, true, _) => Some(Role::Client),
        _ => None,
    }
}

/// Whether a transfer's bytes are HTTP/2 frames, as far as they were captured.
fn looks_like_http2(io: &Io<'_>) -> bool {
    io.capture == Capture::Plain
        && h2::frame::plausible_frames(io.captured, io.len, h2::frame::DEFAULT_MAX_FRAME)
}

/// A TLS record header: handshake (22) or application data (23), version 3.x.
fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [22 | 23, 3, 0..=4, ..])
}

/// The port a connection's metrics name (`server.port`): a server's own, a client's the one it
/// called.
fn side_port(role: Role, local: u16, remote: u16) -> u16 {
    match role {
        Role::Server => local,
        Role::Client => remote,
    }
}

/// The address of a peer, as text.
fn ip_of(addr: &ConnectAddr) -> String {
    if addr.family == 2 {
        let b = addr.addr;
        Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
    } else {
        Ipv6Addr::from(addr.addr).to_string()
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    host.split(':').next().unwrap_or(host)
}

/// `http.request.method`: the known methods, or `_OTHER` (semantic conventions).
fn normalize_method(method: &str) -> &'static str {
    parse::KNOWN_METHODS
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("_OTHER")
}

/// A span's name: `{method} {route}` (server) or `{method}` (client), where an unknown method
/// is `HTTP` (semantic conventions: the name never carries a method outside the known set).
fn span_name(role: Role, method: &str, route: &str) -> String {
    let method = if method == "_OTHER" { "HTTP" } else { method };
    match role {
        Role::Server if !route.is_empty() => format!("{method} {route}"),
        Role::Server => method.to_string(),
        Role::Client => method.to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! The records the socket-tracepoint programs send, in the order they send them, through
    //! the tracker (no kernel: the e2e tests drive the real programs).
    use super::record::build;
    use super::*;
    use periscope_common::http::{KIND_READ, KIND_WRITE, ROLE_CLIENT, ROLE_SERVER};

    fn tracker() -> Tracker {
        let config = HttpConfig::default();
        let state = Arc::new(Mutex::new(HttpState::new(config.max_series)));
        Tracker::new(config, state, None).expect("tracker")
    }

    /// A new socket of this process (so /proc has it) on `fd`, established as `side`.
    fn open(side: u8, fd: u32) -> Vec<u8> {
        let open = SockOpen {
            peer: ConnectAddr {
                family: 2,
                port: 8080,
                addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..Default::default()
            },
            local_port: 40000,
            ..Default::default()
        };
        build::open(side, fd, open)
    }

    fn io(kind: u8, fd: u32, bytes: &[u8]) -> Vec<u8> {
        build::io(kind == KIND_READ, fd, bytes)
    }

    const REQUEST: &[u8] = b"GET /items HTTP/1.1\r\nHost: a\r\n\r\n";
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

    fn role(tracker: &Tracker, fd: u32) -> Option<Role> {
        let key = tracker.resolve((std::process::id(), fd));
        tracker.conns.get(&key).map(|c| c.conn.role())
    }

    #[test]
    fn a_server_span_without_a_route_is_named_by_its_method() {
        assert_eq!(
            span_name(Role::Server, "GET", "/users/{id}"),
            "GET /users/{id}"
        );
        assert_eq!(span_name(Role::Server, "POST", ""), "POST");
        assert_eq!(span_name(Role::Server, "_OTHER", ""), "HTTP");
        assert_eq!(span_name(Role::Client, "GET", "/x"), "GET");
    }

    #[test]
    fn a_second_descriptor_of_a_socket_is_one_connection_until_the_socket_closes() {
        let mut t = tracker();
        t.handle(&open(ROLE_SERVER, 5));
        t.handle(&io(KIND_READ, 5, REQUEST));
        // Rust's try_clone: the response goes out through another descriptor of the socket.
        t.handle(&build::dup(ROLE_SERVER, 6, 5));
        t.handle(&io(KIND_WRITE, 6, RESPONSE));
        assert_eq!(t.stats.exchanges, 1);
        assert_eq!(t.stats.unmatched_responses, 0);
        // The socket closes: both descriptors are over, whatever number the close names.
        t.handle(&build::close(ROLE_SERVER, 5, true));
        assert!(t.conns.is_empty(), "{:?}", t.conns.keys());
        assert!(t.aliases.is_empty(), "{:?}", t.aliases);
        // fd 6 now names a client connection of its own, not an alias of the old one.
        t.handle(&open(ROLE_CLIENT, 6));
        t.handle(&io(KIND_WRITE, 6, REQUEST));
        t.handle(&io(KIND_READ, 6, RESPONSE));
        assert_eq!(role(&t, 6), Some(Role::Client));
        assert_eq!(t.stats.exchanges, 2);
        assert_eq!(t.conns[&(std::process::id(), 6)].port, Some(8080));
    }

    #[test]
    fn a_connection_without_a_known_side_takes_it_from_its_first_bytes() {
        let mut t = tracker();
        // Established before Periscope started: no side in the announcement.
        t.handle(&open(0, 7));
        assert_eq!(role(&t, 7), None);
        t.handle(&io(KIND_WRITE, 7, REQUEST));
        assert_eq!(role(&t, 7), Some(Role::Client), "a request written");
        t.handle(&io(KIND_READ, 7, RESPONSE));
        assert_eq!(t.stats.exchanges, 1);
        t.handle(&open(0, 8));
        t.handle(&io(KIND_READ, 8, REQUEST));
        assert_eq!(role(&t, 8), Some(Role::Server), "a request read");
        // Bytes that say nothing: not followed.
        t.handle(&open(0, 9));
        t.handle(&io(KIND_READ, 9, b"\x00\x01binary"));
        assert_eq!(role(&t, 9), None);
        assert_eq!(t.forget, vec![conn_key(std::process::id(), 9)]);
    }

    #[test]
    fn a_response_delimited_by_close_ends_when_the_socket_closes() {
        let mut t = tracker();
        t.handle(&open(ROLE_SERVER, 5));
        t.handle(&io(KIND_READ, 5, b"GET / HTTP/1.0\r\n\r\n"));
        t.handle(&io(KIND_WRITE, 5, b"HTTP/1.0 200 OK\r\n\r\nbody"));
        assert_eq!(t.stats.exchanges, 0, "the body may go on");
        t.handle(&build::close(ROLE_SERVER, 5, true));
        assert_eq!(t.stats.exchanges, 1);
    }

    #[test]
    fn closing_the_descriptor_a_connection_is_tracked_under_leaves_it_to_its_copy() {
        let mut t = tracker();
        let pid = std::process::id();
        // Rust's try_clone: the clone (6) reads first, the original (5) writes.
        t.handle(&open(ROLE_SERVER, 6));
        t.handle(&io(KIND_READ, 6, REQUEST));
        t.handle(&build::dup(ROLE_SERVER, 5, 6));
        t.handle(&io(KIND_WRITE, 5, RESPONSE));
        // The clone is dropped and 6 is reused at once by another connection (the kernel ends
        // what 6 named first); the old socket lives on through 5.
        t.handle(&build::close(ROLE_SERVER, 6, false));
        t.handle(&open(ROLE_SERVER, 6));
        t.handle(&io(KIND_READ, 6, REQUEST));
        assert_eq!(t.conns.len(), 2, "{:?}", t.conns.keys());
        // 5 closes (its socket's close names 6, which now is another socket: the kernel says
        // nothing), then 5 is reused: the kernel ends what 5 named.
        t.handle(&build::close(ROLE_SERVER, 5, false));
        assert!(
            t.conns.contains_key(&(pid, 6)),
            "the new connection on 6 lives"
        );
        assert!(!t.conns.contains_key(&(pid, 5)));
        assert!(t.aliases.is_empty(), "{:?}", t.aliases);
        t.handle(&io(KIND_WRITE, 6, RESPONSE));
        assert_eq!(t.stats.exchanges, 2);
        assert!(t.stats.dropped.is_empty(), "{:?}", t.stats.dropped);
    }

    #[test]
    fn a_process_forked_without_exec_is_the_instance_of_its_forker() {
        let mut t = tracker();
        let me = std::process::id();
        // Pids no process has: a child gone before its records were read, and a forker gone.
        let (child, orphan, gone) = (u32::MAX - 7, u32::MAX - 8, u32::MAX - 9);
        t.set_forked(Box::new(move |tgid| match tgid {
            t if t == child => Some(me),
            t if t == orphan => Some(gone),
            _ => None,
        }));
        let owner = t.process(me, "");
        let copy = t.process(child, "httpd");
        assert!(Arc::ptr_eq(&owner, &copy), "{:?}", copy.resource);
        let alone = t.process(orphan, "httpd");
        assert_eq!(alone.pid, orphan, "a forker that is gone owns nothing");
        // The copy's exit leaves the owner's instance alone.
        t.on_exit(child);
        assert!(t.processes.get(me).is_some());
        assert!(t.processes.get(child).is_none());
    }

    #[test]
    fn a_connection_replaced_without_a_close_counts_its_request_as_dropped() {
        let mut t = tracker();
        t.handle(&open(ROLE_SERVER, 5));
        t.handle(&io(KIND_READ, 5, REQUEST));
        // The close record was lost (ring buffer full) or its map entry evicted.
        t.handle(&open(ROLE_SERVER, 5));
        assert_eq!(t.stats.dropped.get("connection_closed"), Some(&1));
    }

    #[test]
    fn a_new_socket_on_a_descriptor_replaces_the_old_connection() {
        let mut t = tracker();
        t.handle(&open(ROLE_SERVER, 5));
        t.handle(&io(KIND_READ, 5, REQUEST));
        // The kernel ends the old socket's connection before announcing the new one.
        t.handle(&build::close(ROLE_SERVER, 5, false));
        assert_eq!(t.stats.dropped.get("connection_closed"), Some(&1));
        t.handle(&open(ROLE_SERVER, 5));
        t.handle(&io(KIND_READ, 5, REQUEST));
        t.handle(&io(KIND_WRITE, 5, RESPONSE));
        assert_eq!(t.stats.exchanges, 1);
    }
}
