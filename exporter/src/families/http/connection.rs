//! One TCP connection's HTTP/1.x conversation, rebuilt from the bytes of each read and write:
//! requests and responses matched in order (keep-alive and pipelining), bodies delimited by
//! Content-Length, chunking or close, 1xx responses (100-continue) skipped, and a response split
//! over many writes ending at the write that completes it.
//!
//! Timing: a server request starts when the read that returned its first bytes exits and ends
//! when the write that completes its response is entered; a client request starts when the
//! write of its first bytes is entered and ends when the read that completes the response
//! exits. So the server's duration never exceeds what its client can measure.

use std::collections::VecDeque;

use super::{
    http2::Http2,
    parse::{self, Body, Chunked, ChunkedError, ParseError},
};

/// Requests in flight on one connection (pipelining depth); older ones are dropped beyond it.
pub const MAX_IN_FLIGHT: usize = 64;
/// A request or response head split over reads is reassembled up to this size.
pub const MAX_PARTIAL_HEAD: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Server,
    Client,
}

/// The bytes of one read or write as the kernel reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io<'a> {
    pub start_ns: u64,
    pub end_ns: u64,
    /// Bytes transferred.
    pub len: u64,
    /// The leading bytes (all of them when `captured.len() == len`).
    pub captured: &'a [u8],
    /// The last bytes, when beyond the captured ones.
    pub tail: &'a [u8],
    pub tid: u32,
    /// What `captured` holds.
    pub capture: Capture,
}

/// How the kernel captured a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Its leading bytes (and its last ones in `tail`).
    Plain,
    /// An HTTP/2 connection's frames, walked by the kernel (`IO_H2`): `opener`, what opened the
    /// connection's HTTP/2 in this transfer; `cut`, the walk lost its place in it, so the
    /// connection's later transfers come [`Capture::Plain`].
    Frames { opener: Option<Opener>, cut: bool },
}

/// What showed the kernel that a connection speaks HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    /// The client preface, written by a client or read by a server.
    ClientPreface,
    /// A server's SETTINGS frame, written before it read the preface (TLS's ALPN told it).
    ServerSettings,
    /// A HEADERS frame, on a connection established before Periscope started: joined midway,
    /// its HPACK tables unknown.
    Midway,
}

impl Opener {
    /// Whether the connection's HTTP/2 was seen from its start.
    pub fn from_start(self) -> bool {
        self != Self::Midway
    }
}

impl Io<'_> {
    fn fully_captured(&self) -> bool {
        self.captured.len() as u64 == self.len
    }

    /// The last bytes of this IO, when known.
    fn last_bytes(&self) -> Option<&[u8]> {
        if self.fully_captured() {
            Some(self.captured)
        } else if !self.tail.is_empty() {
            Some(self.tail)
        } else {
            None
        }
    }
}

/// The HTTP version a request was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
    Http2,
}

impl Version {
    /// HTTP/1.`minor`.
    fn http1(minor: u8) -> Self {
        if minor == 0 {
            Self::Http10
        } else {
            Self::Http11
        }
    }

    /// `network.protocol.version`.
    pub fn attribute(self) -> &'static str {
        match self {
            Self::Http10 => "1.0",
            Self::Http11 => "1.1",
            Self::Http2 => "2",
        }
    }
}

/// A request whose response is not complete yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub traceparent: Option<String>,
    pub host: Option<String>,
    pub start_ns: u64,
    /// The thread that read (server) or wrote (client) the request.
    pub tid: u32,
    /// Span ids and parent span id, once given (only when spans are exported).
    pub span: Option<(super::span::TraceRef, Option<[u8; 8]>)>,
}

impl Request {
    /// `url.path`: the target without query string or fragment.
    pub fn path(&self) -> &str {
        let end = self.target.find(['?', '#']).unwrap_or(self.target.len());
        &self.target[..end]
    }
}

/// A finished request/response pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub request: Request,
    pub status: u16,
    pub end_ns: u64,
}

/// What feeding bytes produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exchange(Exchange),
    /// Bytes that are not HTTP/1.x where a message head was expected.
    Invalid,
    /// A request that will never get its response (connection closed, process gone, pipeline
    /// overflow).
    Dropped(&'static str),
    /// A response without a request (Periscope attached mid-conversation).
    Unmatched,
    /// An HTTP/2 stream that is a gRPC call: counted in the RPC metrics, not as a request.
    Call(super::grpc::Call),
}

/// Where a byte stream (requests or responses) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// At the start of a message head.
    Head,
    /// In a body with this many bytes left.
    Length(u64),
    /// In a chunked body, followed by its chunk sizes.
    Chunked(Chunked),
    UntilClose,
    /// Lost track (garbage, or a body of unknown length): wait for bytes starting a head.
    Lost,
    /// The connection switched protocols (`101`: WebSocket, h2c): nothing after is HTTP/1.x.
    Upgraded,
}

impl Stream {
    fn from_body(body: Body) -> Self {
        match body {
            Body::None => Self::Head,
            Body::Length(n) => Self::Length(n),
            Body::Chunked => Self::Chunked(Chunked::START),
            Body::UntilClose => Self::UntilClose,
        }
    }
}

/// Follows a chunked body through `io` from `offset`: its captured bytes, then those not
/// captured (skipped by count while they lie inside one chunk's data), then its last bytes.
/// Where the body ends in this IO (`Some(offset)`), or `None`: it goes on. Once the sizes are
/// lost (a chunk boundary among the bytes not captured) the end is guessed from the last bytes,
/// as the only thing left to go on.
fn follow_chunked(
    decoder: &mut Chunked,
    io: &Io<'_>,
    offset: u64,
) -> Result<Option<u64>, ChunkedError> {
    let guess = |io: &Io<'_>| {
        io.last_bytes()
            .is_some_and(parse::ends_chunked_body)
            .then_some(io.len)
    };
    if *decoder == Chunked::Blind {
        return Ok(guess(io));
    }
    let captured = io.captured.len() as u64;
    if let Some(bytes) = io.captured.get(offset as usize..)
        && let Some(used) = decoder.feed(bytes)?
    {
        return Ok(Some(offset + used as u64));
    }
    let seen = offset.max(captured);
    if seen >= io.len {
        return Ok(None);
    }
    // The tail is the IO's last bytes; those of it already seen are not fed twice.
    let tail_start = io.len.saturating_sub(io.tail.len() as u64).max(seen);
    let tail = &io.tail[io.tail.len() - (io.len - tail_start) as usize..];
    if !decoder.skip(tail_start - seen) {
        return Ok(guess(io));
    }
    Ok(decoder.feed(tail)?.map(|used| tail_start + used as u64))
}

/// The response being sent/received for the oldest request.
#[derive(Debug, Clone, Copy)]
struct OpenResponse {
    status: u16,
    /// Time of the last response bytes seen (the end if the body ends with the connection).
    last_ns: u64,
}

/// A head's bytes: what earlier IO left of it, then `bytes` (borrowed when nothing was left).
fn with_partial<'a>(partial: &[u8], bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    if partial.is_empty() {
        std::borrow::Cow::Borrowed(bytes)
    } else {
        std::borrow::Cow::Owned([partial, bytes].concat())
    }
}

#[derive(Debug)]
pub struct Connection {
    role: Role,
    requests: Stream,
    responses: Stream,
    request_partial: Vec<u8>,
    /// When the first bytes of a partial request head arrived.
    request_partial_start: u64,
    response_partial: Vec<u8>,
    /// When the last bytes of a partial response head arrived.
    response_partial_ns: u64,
    in_flight: VecDeque<Request>,
    open_response: Option<OpenResponse>,
    /// Whether a valid HTTP message was ever seen here.
    pub seen_http: bool,
    /// HTTP/2, from the client preface on: every later byte goes to it.
    http2: Option<Box<Http2>>,
}

impl Connection {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            requests: Stream::Head,
            responses: Stream::Head,
            request_partial: Vec::new(),
            request_partial_start: 0,
            response_partial: Vec::new(),
            response_partial_ns: 0,
            in_flight: VecDeque::new(),
            open_response: None,
            seen_http: false,
            http2: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes read from the socket.
    pub fn on_read(&mut self, io: &Io<'_>, out: &mut Vec<Outcome>) {
        if self.follow_http2(io, true, out) {
            return;
        }
        match self.role {
            Role::Server => self.on_request_bytes(io, io.end_ns, out),
            Role::Client => self.on_response_bytes(io, io.end_ns, out),
        }
    }

    /// Bytes written to the socket.
    pub fn on_write(&mut self, io: &Io<'_>, out: &mut Vec<Outcome>) {
        if self.follow_http2(io, false, out) {
            return;
        }
        match self.role {
            Role::Server => self.on_response_bytes(io, io.start_ns, out),
            Role::Client => self.on_request_bytes(io, io.start_ns, out),
        }
    }

    /// Whether the transfer belongs to HTTP/2 (this one starts it with the client preface, or
    /// an earlier one did), and went to its decoder.
    fn follow_http2(&mut self, io: &Io<'_>, read: bool, out: &mut Vec<Outcome>) -> bool {
        if self.http2.is_none() {
            // The kernel walks a connection's frames from its client preface on.
            let Capture::Frames { opener, .. } = io.capture else {
                return false;
            };
            self.seen_http = true;
            self.http2 = Some(Box::new(Http2::new(opener.is_some_and(Opener::from_start))));
        }
        if let Some(http2) = &mut self.http2 {
            http2.on_io(self.role, read, io, out);
        }
        true
    }

    /// The connection closed: a response delimited by the close is complete, and so is one
    /// whose status was seen (see [`Connection::complete_seen_response`]); requests still
    /// waiting are dropped.
    pub fn on_close(&mut self, out: &mut Vec<Outcome>) {
        if let Some(http2) = &mut self.http2 {
            http2.on_close(false, out);
        }
        self.complete_seen_response(out);
        for _ in self.in_flight.drain(..) {
            out.push(Outcome::Dropped("connection_closed"));
        }
    }

    /// The process exited: a response whose status was seen is complete enough to count (a
    /// fork-per-connection server's child writes a 404 without a length and exits; `wget` exits
    /// after reading a 404's head); the rest in flight will never complete.
    pub fn on_exit(&mut self, out: &mut Vec<Outcome>) {
        if let Some(http2) = &mut self.http2 {
            http2.on_close(true, out);
        }
        self.complete_seen_response(out);
        for _ in self.in_flight.drain(..) {
            out.push(Outcome::Dropped("process_exit"));
        }
    }

    /// Ends the oldest request's exchange when its final response status was seen, at the last
    /// response bytes seen: a response being sent or received, or a head still incomplete
    /// (split over reads) whose status line is there.
    fn complete_seen_response(&mut self, out: &mut Vec<Outcome>) {
        if let Some(open) = self.open_response.take() {
            self.complete(open.status, open.last_ns, out);
            self.responses = Stream::Lost;
            return;
        }
        if self.response_partial.is_empty() || self.in_flight.is_empty() {
            return;
        }
        if let Ok(head) = parse::response(&self.response_partial)
            && head.status >= 200
        {
            self.complete(head.status, self.response_partial_ns, out);
        }
        self.response_partial.clear();
        self.responses = Stream::Lost;
    }

    /// Records of this connection were lost: what is in flight cannot be matched any more, and
    /// both streams wait for the next message head.
    pub fn on_lost(&mut self, out: &mut Vec<Outcome>) {
        if let Some(http2) = &mut self.http2 {
            http2.on_lost(out);
        }
        self.open_response = None;
        self.request_partial.clear();
        self.response_partial.clear();
        self.requests = Stream::Lost;
        self.responses = Stream::Lost;
        for _ in self.in_flight.drain(..) {
            out.push(Outcome::Dropped("events_lost"));
        }
    }

    /// Requests in flight that have no span ids yet.
    pub fn requests_without_span(&mut self) -> impl Iterator<Item = &mut Request> {
        self.in_flight.iter_mut().filter(|r| r.span.is_none())
    }

    /// Requests waiting for their response (bounded by the pipelining depth).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn on_request_bytes(&mut self, io: &Io<'_>, start_ns: u64, out: &mut Vec<Outcome>) {
        let mut offset = 0u64;
        while offset < io.len {
            match self.requests {
                Stream::Length(left) => {
                    let take = left.min(io.len - offset);
                    offset += take;
                    self.requests = if take == left {
                        Stream::Head
                    } else {
                        Stream::Length(left - take)
                    };
                }
                Stream::Chunked(mut decoder) => match follow_chunked(&mut decoder, io, offset) {
                    Ok(Some(end)) => {
                        offset = end;
                        self.requests = Stream::Head;
                    }
                    Ok(None) => {
                        self.requests = Stream::Chunked(decoder);
                        return;
                    }
                    Err(ChunkedError) => {
                        out.push(Outcome::Invalid);
                        self.requests = Stream::Lost;
                        return;
                    }
                },
                Stream::UntilClose | Stream::Upgraded => return,
                Stream::Lost => {
                    if offset == 0 && parse::looks_like_request(io.captured) {
                        self.requests = Stream::Head;
                    } else {
                        return;
                    }
                }
                Stream::Head => {
                    let Some(bytes) = io.captured.get(offset as usize..).filter(|b| !b.is_empty())
                    else {
                        // The rest of this IO was not captured: its framing is unknown.
                        self.requests = Stream::Lost;
                        return;
                    };
                    match self.request_head(bytes, io, offset, start_ns, out) {
                        Some(used) => offset += used,
                        None => return,
                    }
                }
            }
        }
    }

    /// Parses a request head at the start of `bytes` (after any partial head kept from earlier
    /// IO); returns the bytes of this IO it used, or None when the rest of the IO is consumed.
    fn request_head(
        &mut self,
        bytes: &[u8],
        io: &Io<'_>,
        offset: u64,
        start_ns: u64,
        out: &mut Vec<Outcome>,
    ) -> Option<u64> {
        let earlier = self.request_partial.len();
        let input = with_partial(&self.request_partial, bytes);
        let rest_captured = offset + bytes.len() as u64 == io.len;
        let start_ns = if earlier > 0 {
            self.request_partial_start
        } else {
            start_ns
        };
        if earlier == 0 {
            self.request_partial_start = start_ns;
        }
        match parse::request(&input) {
            Err(ParseError::TooShort) if rest_captured && input.len() < MAX_PARTIAL_HEAD => {
                self.request_partial = input.to_vec();
                None
            }
            Err(_) => {
                self.request_partial.clear();
                out.push(Outcome::Invalid);
                self.requests = Stream::Lost;
                None
            }
            Ok(head) if head.head.len.is_none() => {
                if rest_captured && input.len() < MAX_PARTIAL_HEAD {
                    // The head continues in the next read.
                    self.request_partial = input.to_vec();
                } else {
                    // Cut off by the capture limit: keep what we know, framing is lost.
                    self.request_partial.clear();
                    self.start_request(head, io, start_ns, out);
                    self.requests = Stream::Lost;
                }
                None
            }
            Ok(head) => {
                self.request_partial.clear();
                let head_len = head.head.len.unwrap_or(0);
                let body = head.body();
                self.start_request(head, io, start_ns, out);
                self.requests = Stream::from_body(body);
                // Bytes of this IO used by the head (the part before it came from earlier IO).
                Some(head_len.saturating_sub(earlier).max(1) as u64)
            }
        }
    }

    fn start_request(
        &mut self,
        head: parse::RequestHead,
        io: &Io<'_>,
        start_ns: u64,
        out: &mut Vec<Outcome>,
    ) {
        self.seen_http = true;
        // A response delimited only by what follows it ends when the next request starts.
        if let Some(open) = self.open_response.take() {
            self.complete(open.status, open.last_ns, out);
            self.responses = Stream::Head;
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.in_flight.pop_front();
            out.push(Outcome::Dropped("pipeline_overflow"));
        }
        self.in_flight.push_back(Request {
            method: head.method,
            target: head.target,
            version: Version::http1(head.head.minor_version.unwrap_or(1)),
            traceparent: head.head.traceparent,
            host: head.head.host,
            start_ns,
            tid: io.tid,
            span: None,
        });
    }

    fn on_response_bytes(&mut self, io: &Io<'_>, at_ns: u64, out: &mut Vec<Outcome>) {
        if let Some(open) = &mut self.open_response {
            open.last_ns = at_ns;
        }
        let mut offset = 0u64;
        while offset < io.len {
            match self.responses {
                Stream::Length(left) => {
                    let take = left.min(io.len - offset);
                    offset += take;
                    if take == left {
                        self.responses = Stream::Head;
                        self.finish_response(at_ns, out);
                    } else {
                        self.responses = Stream::Length(left - take);
                    }
                }
                Stream::Chunked(mut decoder) => match follow_chunked(&mut decoder, io, offset) {
                    Ok(Some(end)) => {
                        offset = end;
                        self.responses = Stream::Head;
                        self.finish_response(at_ns, out);
                    }
                    Ok(None) => {
                        self.responses = Stream::Chunked(decoder);
                        return;
                    }
                    Err(ChunkedError) => {
                        out.push(Outcome::Invalid);
                        self.responses = Stream::Lost;
                        return;
                    }
                },
                Stream::UntilClose | Stream::Upgraded => return,
                Stream::Lost => {
                    if offset == 0 && parse::looks_like_response(io.captured) {
                        self.responses = Stream::Head;
                    } else {
                        return;
                    }
                }
                Stream::Head => {
                    let Some(bytes) = io.captured.get(offset as usize..).filter(|b| !b.is_empty())
                    else {
                        self.responses = Stream::Lost;
                        return;
                    };
                    match self.response_head(bytes, io, offset, at_ns, out) {
                        Some(used) => offset += used,
                        None => return,
                    }
                }
            }
        }
    }

    fn response_head(
        &mut self,
        bytes: &[u8],
        io: &Io<'_>,
        offset: u64,
        at_ns: u64,
        out: &mut Vec<Outcome>,
    ) -> Option<u64> {
        let earlier = self.response_partial.len();
        let input = with_partial(&self.response_partial, bytes);
        let rest_captured = offset + bytes.len() as u64 == io.len;
        self.response_partial_ns = at_ns;
        let head = match parse::response(&input) {
            Err(ParseError::TooShort) if rest_captured && input.len() < MAX_PARTIAL_HEAD => {
                self.response_partial = input.to_vec();
                return None;
            }
            Err(_) => {
                self.response_partial.clear();
                out.push(Outcome::Invalid);
                self.responses = Stream::Lost;
                return None;
            }
            Ok(head) => head,
        };
        if head.head.len.is_none() && rest_captured && input.len() < MAX_PARTIAL_HEAD {
            self.response_partial = input.to_vec();
            return None;
        }
        self.response_partial.clear();
        self.seen_http = true;
        if head.status == 101 && !self.in_flight.is_empty() {
            // Switching Protocols: the exchange is over, and the connection's later bytes both
            // ways (WebSocket frames) are another protocol's.
            self.requests = Stream::Upgraded;
            self.responses = Stream::Upgraded;
            self.request_partial.clear();
            self.complete(head.status, at_ns, out);
            return None;
        }
        if head.status < 200 {
            // 100 Continue and friends: the final response is still to come.
            self.responses = if head.head.len.is_some() {
                Stream::Head
            } else {
                Stream::Lost
            };
            return head
                .head
                .len
                .map(|n| n.saturating_sub(earlier).max(1) as u64);
        }
        let Some(request) = self.in_flight.front() else {
            out.push(Outcome::Unmatched);
            self.responses = Stream::Lost;
            return None;
        };
        let body = head.body(&request.method);
        self.open_response = Some(OpenResponse {
            status: head.status,
            last_ns: at_ns,
        });
        let Some(head_len) = head.head.len else {
            // Cut off by the capture limit: the framing is unknown, so the response ends when
            // the next request starts or the connection closes.
            self.responses = Stream::UntilClose;
            return None;
        };
        self.responses = Stream::from_body(body);
        if body == Body::None {
            self.finish_response(at_ns, out);
        }
        Some(head_len.saturating_sub(earlier).max(1) as u64)
    }

    fn finish_response(&mut self, at_ns: u64, out: &mut Vec<Outcome>) {
        if let Some(open) = self.open_response.take() {
            self.complete(open.status, at_ns, out);
        }
    }

    fn complete(&mut self, status: u16, end_ns: u64, out: &mut Vec<Outcome>) {
        if let Some(request) = self.in_flight.pop_front() {
            let end_ns = end_ns.max(request.start_ns);
            out.push(Outcome::Exchange(Exchange {
                request,
                status,
                end_ns,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(t: u64, bytes: &[u8]) -> Io<'_> {
        Io {
            start_ns: t,
            end_ns: t + 1,
            len: bytes.len() as u64,
            captured: &bytes[..bytes.len().min(512)],
            tail: if bytes.len() > 512 {
                &bytes[bytes.len() - 8..]
            } else {
                &[]
            },
            tid: 7,
            capture: Capture::Plain,
        }
    }

    proptest::proptest! {
        /// Arbitrary reads and writes (hostile, binary, truncated) never panic, and what a
        /// connection holds stays bounded.
        #[test]
        fn arbitrary_traffic_is_bounded(
            ios in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..700), 0u64..100_000),
                0..40,
            ),
            server in proptest::bool::ANY,
        ) {
            let mut c = Connection::new(if server { Role::Server } else { Role::Client });
            let mut out = Vec::new();
            for (i, (read, bytes, extra)) in ios.iter().enumerate() {
                let captured = &bytes[..bytes.len().min(512)];
                let io = Io {
                    start_ns: i as u64 * 10,
                    end_ns: i as u64 * 10 + 5,
                    len: bytes.len() as u64 + if bytes.len() > 512 { *extra } else { 0 },
                    captured,
                    tail: &[],
                    tid: 1,
                    capture: Capture::Plain,
                };
                if *read { c.on_read(&io, &mut out) } else { c.on_write(&io, &mut out) }
                proptest::prop_assert!(c.in_flight() <= MAX_IN_FLIGHT);
                proptest::prop_assert!(c.request_partial.len() <= MAX_PARTIAL_HEAD + 700);
                proptest::prop_assert!(c.response_partial.len() <= MAX_PARTIAL_HEAD + 700);
            }
            c.on_close(&mut out);
            proptest::prop_assert_eq!(c.in_flight(), 0);
        }
    }

    fn exchanges(out: &[Outcome]) -> Vec<(String, u16, u64, u64)> {
        out.iter()
            .filter_map(|o| match o {
                Outcome::Exchange(e) => Some((
                    e.request.target.clone(),
                    e.status,
                    e.request.start_ns,
                    e.end_ns,
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn keep_alive_server_with_split_response() {
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        c.on_read(&io(10, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"), &mut out);
        c.on_write(
            &io(20, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
            &mut out,
        );
        c.on_write(&io(30, b"01234"), &mut out);
        assert!(exchanges(&out).is_empty());
        c.on_write(&io(40, b"56789"), &mut out);
        c.on_read(&io(50, b"GET /b HTTP/1.1\r\n\r\n"), &mut out);
        c.on_write(
            &io(60, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        assert_eq!(
            exchanges(&out),
            vec![("/a".into(), 200, 11, 40), ("/b".into(), 404, 51, 60)]
        );
    }

    #[test]
    fn pipelined_requests_in_one_read() {
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        c.on_read(
            &io(10, b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n\r\n"),
            &mut out,
        );
        assert_eq!(c.in_flight(), 3);
        c.on_write(
            &io(20, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 1\r\n\r\nx"),
            &mut out,
        );
        let got: Vec<_> = exchanges(&out).into_iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(
            got,
            vec![("/1".into(), 200), ("/2".into(), 201), ("/3".into(), 500)]
        );
    }

    #[test]
    fn chunked_response_ends_at_terminator_even_beyond_capture() {
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        c.on_read(&io(10, b"GET / HTTP/1.1\r\n\r\n"), &mut out);
        c.on_write(
            &io(20, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            &mut out,
        );
        let mut big = b"3e8\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', 1000));
        big.extend(b"\r\n");
        c.on_write(&io(30, &big), &mut out);
        assert!(exchanges(&out).is_empty());
        let mut last = big.clone();
        last.extend(b"0\r\n\r\n");
        c.on_write(&io(40, &last), &mut out);
        assert_eq!(exchanges(&out), vec![("/".into(), 200, 11, 40)]);
    }

    /// nginx answers a chunked POST before reading its body, then reads the body's end and the
    /// next request in one read: the next request starts where the chunk sizes say the body
    /// ends.
    #[test]
    fn a_request_after_a_chunked_body_in_the_same_read_is_seen() {
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        c.on_read(
            &io(
                10,
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            &mut out,
        );
        c.on_write(&io(20, ok), &mut out);
        c.on_read(
            &io(30, b"5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
            &mut out,
        );
        c.on_write(&io(40, ok), &mut out);
        assert_eq!(
            exchanges(&out),
            vec![("/a".into(), 200, 11, 20), ("/b".into(), 200, 31, 40)]
        );
    }

    /// A body whose data ends like a chunked body's end (`0\r\n\r\n`, CSV rows) goes on: data
    /// is skipped by its size.
    #[test]
    fn chunk_data_that_looks_like_the_end_does_not_end_the_body() {
        let mut c = Connection::new(Role::Client);
        let mut out = Vec::new();
        c.on_write(
            &io(
                10,
                b"POST /csv HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            &mut out,
        );
        // A 10-byte chunk: "b,0\r\n\r\nc,0", then its CRLF.
        c.on_write(&io(20, b"a\r\nb,0\r\n\r\nc,0\r\n"), &mut out);
        c.on_read(
            &io(30, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        assert_eq!(exchanges(&out), vec![("/csv".into(), 201, 10, 31)]);
        c.on_write(&io(40, b"0\r\n\r\nGET /next HTTP/1.1\r\n\r\n"), &mut out);
        c.on_read(
            &io(50, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        assert_eq!(exchanges(&out)[1..], [("/next".into(), 200, 40, 51)]);
    }

    /// Node's chunked `req.write()`: one `writev` whose first iovec (the head and the first
    /// chunk's size) is all that is captured and whose last (`0\r\n\r\n`) is shorter than the
    /// usual tail. The sizes are lost between them; the last bytes still end the body.
    #[test]
    fn a_chunked_write_captured_in_part_ends_by_its_last_bytes() {
        let mut c = Connection::new(Role::Client);
        let mut out = Vec::new();
        let head = b"POST /items HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3";
        let write = Io {
            len: head.len() as u64 + 17,
            captured: head,
            tail: b"0\r\n\r\n",
            ..io(10, b"")
        };
        c.on_write(&write, &mut out);
        c.on_read(
            &io(20, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        c.on_write(&io(30, b"GET /users/1 HTTP/1.1\r\n\r\n"), &mut out);
        c.on_read(
            &io(40, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        assert_eq!(
            exchanges(&out),
            vec![
                ("/items".into(), 201, 10, 21),
                ("/users/1".into(), 200, 30, 41)
            ]
        );
    }

    #[test]
    fn invalid_chunk_framing_is_counted_and_the_next_request_resynchronises() {
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        c.on_read(
            &io(
                10,
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            ),
            &mut out,
        );
        assert!(out.contains(&Outcome::Invalid));
        c.on_read(&io(20, b"GET /b HTTP/1.1\r\n\r\n"), &mut out);
        assert_eq!(c.in_flight(), 2, "the next request head is read again");
    }

    #[test]
    fn continue_then_final_response() {
        let mut c = Connection::new(Role::Client);
        let mut out = Vec::new();
        c.on_write(
            &io(
                10,
                b"PUT /u HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
            ),
            &mut out,
        );
        c.on_read(&io(20, b"HTTP/1.1 100 Continue\r\n\r\n"), &mut out);
        c.on_write(&io(30, b"data"), &mut out);
        c.on_read(
            &io(40, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        assert_eq!(exchanges(&out), vec![("/u".into(), 201, 10, 41)]);
    }

    #[test]
    fn close_delimited_response_and_dropped_requests() {
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        c.on_read(&io(10, b"GET /old HTTP/1.0\r\n\r\n"), &mut out);
        c.on_write(&io(20, b"HTTP/1.0 200 OK\r\n\r\n"), &mut out);
        c.on_write(&io(30, b"body"), &mut out);
        c.on_close(&mut out);
        assert_eq!(exchanges(&out), vec![("/old".into(), 200, 11, 30)]);
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        c.on_read(&io(10, b"GET /x HTTP/1.1\r\n\r\n"), &mut out);
        c.on_exit(&mut out);
        assert_eq!(out, vec![Outcome::Dropped("process_exit")]);
    }

    #[test]
    fn head_split_across_reads() {
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        c.on_read(&io(10, b"GET /split HT"), &mut out);
        c.on_read(&io(12, b"TP/1.1\r\nHost: a\r\n\r\n"), &mut out);
        c.on_write(
            &io(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        assert_eq!(exchanges(&out), vec![("/split".into(), 200, 11, 20)]);
    }

    #[test]
    fn an_unknown_method_first_on_a_keep_alive_connection_is_an_exchange() {
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        c.on_read(
            &io(10, b"PURGE /cache/a HTTP/1.1\r\nHost: x\r\n\r\n"),
            &mut out,
        );
        c.on_write(
            &io(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        // Split where it cannot tell yet.
        c.on_read(&io(30, b"PROPFIND /d"), &mut out);
        c.on_read(&io(32, b"av/ HTTP/1.1\r\nDepth: 1\r\n\r\n"), &mut out);
        c.on_write(
            &io(
                40,
                b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n",
            ),
            &mut out,
        );
        c.on_read(&io(50, b"GET /after HTTP/1.1\r\n\r\n"), &mut out);
        c.on_write(
            &io(60, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        assert!(!out.contains(&Outcome::Invalid), "{out:?}");
        assert_eq!(
            exchanges(&out),
            vec![
                ("/cache/a".into(), 200, 11, 20),
                ("/dav/".into(), 207, 31, 40),
                ("/after".into(), 200, 51, 60)
            ]
        );
    }

    #[test]
    fn a_websocket_upgrade_is_one_exchange_and_its_frames_are_not_http() {
        for role in [Role::Server, Role::Client] {
            let mut c = Connection::new(role);
            let mut out = Vec::new();
            let (request, response): (fn(&mut Connection, &Io<'_>, &mut Vec<Outcome>), _) =
                match role {
                    Role::Server => (
                        Connection::on_read,
                        Connection::on_write as fn(&mut _, &_, &mut _),
                    ),
                    Role::Client => (
                        Connection::on_write,
                        Connection::on_read as fn(&mut _, &_, &mut _),
                    ),
                };
            request(
                &mut c,
                &io(
                    10,
                    b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                ),
                &mut out,
            );
            // The 101 and the server's first frame in one write.
            response(
                &mut c,
                &io(
                    20,
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi",
                ),
                &mut out,
            );
            for t in 0..5 {
                request(
                    &mut c,
                    &io(30 + t, b"\x82\x85\x01\x02\x03\x04GET / HTTP/1.1"),
                    &mut out,
                );
                response(&mut c, &io(40 + t, b"HTTP/1.1 200 OK\r\n\r\n"), &mut out);
            }
            c.on_close(&mut out);
            assert_eq!(exchanges(&out).len(), 1, "{role:?}: {out:?}");
            assert_eq!(exchanges(&out)[0].1, 101);
            assert_eq!(out.len(), 1, "{role:?}: nothing else: {out:?}");
        }
    }

    #[test]
    fn garbage_is_counted_and_recovery_follows() {
        let mut c = Connection::new(Role::Server);
        let mut out = Vec::new();
        c.on_read(&io(10, b"\x00\x01\x02garbage\r\n\r\n"), &mut out);
        assert_eq!(out, vec![Outcome::Invalid]);
        c.on_read(&io(20, b"GET /ok HTTP/1.1\r\n\r\n"), &mut out);
        c.on_write(
            &io(30, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            &mut out,
        );
        assert_eq!(exchanges(&out).len(), 1);
    }
}
