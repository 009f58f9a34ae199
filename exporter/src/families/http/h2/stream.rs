//! The streams of one HTTP/2 connection: each client-initiated stream is one exchange, from
//! its first request HEADERS to the frame that ends its response (END_STREAM from the server,
//! RST_STREAM from either side, a server's GOAWAY below its id, or the connection's close).
//! Streaming RPCs are one exchange per call, like any other stream.

use std::collections::BTreeMap;

use super::hpack::Field;

/// Streams followed per connection; beyond it the oldest (lowest id) is dropped. Servers
/// advertise 100 to 250 concurrent streams (nginx 128, Go 250, gRPC 100).
pub const MAX_STREAMS: usize = 512;
/// A header value longer than this is kept up to it (a path as far as the HTTP/1 capture would
/// go, and more).
pub const MAX_VALUE: usize = 1024;

/// A field of a header block: its value, unknown (the block had fields whose name could not
/// be decoded, or the block itself was not), or absent for sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<T> {
    Known(T),
    Unknown,
    Absent,
}

impl<T> Value<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Value<U> {
        match self {
            Self::Known(v) => Value::Known(f(v)),
            Self::Unknown => Value::Unknown,
            Self::Absent => Value::Absent,
        }
    }

    pub fn known(self) -> Option<T> {
        match self {
            Self::Known(v) => Some(v),
            _ => None,
        }
    }

    /// `self`, or when absent for sure, `other`; unknown wins over a known `other` only
    /// when nothing better is known.
    fn or(self, other: Self) -> Self {
        match (self, other) {
            (Self::Known(v), _) => Self::Known(v),
            (_, Self::Known(v)) => Self::Known(v),
            (Self::Unknown, _) | (_, Self::Unknown) => Self::Unknown,
            _ => Self::Absent,
        }
    }
}

impl<'a> Value<&'a str> {
    /// The value, or "" when it could not be decoded (the tracker's "unknown": counted, never
    /// named by a guess); `None` when the block was decoded and did not have it (a malformed
    /// stream).
    pub fn known_or_empty(self) -> Option<&'a str> {
        match self {
            Self::Known(v) => Some(v),
            Self::Unknown => Some(""),
            Self::Absent => None,
        }
    }
}

/// The fields of one header block that the HTTP aggregation and spans use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub status: Option<String>,
    pub content_type: Option<String>,
    pub grpc_status: Option<String>,
    pub grpc_message: Option<String>,
    pub traceparent: Option<String>,
    /// Fields whose name is unknown: any field absent above may be one of them.
    pub unknown: u32,
}

impl Headers {
    /// A block that could not be decoded at all.
    pub fn undecoded() -> Self {
        Self {
            unknown: 1,
            ..Self::default()
        }
    }

    /// Takes one decoded field (the first of each name counts).
    pub fn add(&mut self, field: Field<'_>) {
        let Some(name) = field.name else {
            self.unknown += 1;
            return;
        };
        let slot = match name {
            b":method" => &mut self.method,
            b":path" => &mut self.path,
            b":authority" => &mut self.authority,
            b":scheme" => &mut self.scheme,
            b":status" => &mut self.status,
            b"content-type" => &mut self.content_type,
            b"grpc-status" => &mut self.grpc_status,
            b"grpc-message" => &mut self.grpc_message,
            b"traceparent" => &mut self.traceparent,
            _ => return,
        };
        if slot.is_none()
            && let Some(value) = field.value
        {
            let value = &value[..value.len().min(MAX_VALUE)];
            *slot = Some(String::from_utf8_lossy(value).into_owned());
        }
    }

    /// A field's value as known from this block.
    pub fn get<'a>(&self, field: &'a Option<String>) -> Value<&'a str> {
        match field {
            Some(v) => Value::Known(v.as_str()),
            None if self.unknown > 0 => Value::Unknown,
            None => Value::Absent,
        }
    }

    fn grpc_code(&self) -> Value<u32> {
        match self.get(&self.grpc_status) {
            Value::Known(s) => s.parse().map_or(Value::Unknown, Value::Known),
            other => other.map(|_| 0),
        }
    }

    /// `:status`, when it is a 3-digit status (RFC 9113 §8.3.2).
    fn status_code(&self) -> Value<u16> {
        match self.get(&self.status) {
            Value::Known(s) => s
                .parse()
                .ok()
                .filter(|c| (100..=999).contains(c))
                .map_or(Value::Unknown, Value::Known),
            other => other.map(|_| 0),
        }
    }
}

/// Which peer sent something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Client,
    Server,
}

/// What ended a stream's exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server's END_STREAM (HEADERS or DATA).
    Stream,
    /// RST_STREAM, with its error code, sent by this side.
    Reset { by: Side, code: u32 },
    /// The server's GOAWAY did not include the stream (it was not processed).
    GoAway { code: u32 },
    /// The connection closed after the response's status was seen.
    Closed,
}

/// One stream's request and response: what the HTTP aggregation and spans need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub stream_id: u32,
    /// The request's header block.
    pub request: Headers,
    /// The response's (final) header block, if it was seen.
    pub response: Option<Headers>,
    /// The trailers (a second response HEADERS, ending the stream), if any.
    pub trailers: Option<Headers>,
    /// When the first request HEADERS went by, and the frame that ended the exchange.
    pub start_ns: u64,
    pub end_ns: u64,
    pub end: End,
}

impl Exchange {
    pub fn method(&self) -> Value<&str> {
        self.request.get(&self.request.method)
    }

    /// The request target (`:path`, with any query string).
    pub fn target(&self) -> Value<&str> {
        self.request.get(&self.request.path)
    }

    pub fn authority(&self) -> Value<&str> {
        self.request.get(&self.request.authority)
    }

    pub fn traceparent(&self) -> Value<&str> {
        self.request.get(&self.request.traceparent)
    }

    /// The final `:status`; unknown when the response head was not seen or not decoded.
    pub fn status(&self) -> Value<u16> {
        self.response
            .as_ref()
            .map_or(Value::Unknown, Headers::status_code)
    }

    /// gRPC, by `content-type: application/grpc*` on the request (else the response).
    pub fn grpc(&self) -> Value<bool> {
        let is_grpc = |v: Value<&str>| v.map(|ct| ct.starts_with("application/grpc"));
        let request = is_grpc(self.request.get(&self.request.content_type));
        let response = self
            .response
            .as_ref()
            .map_or(Value::Unknown, |r| is_grpc(r.get(&r.content_type)));
        match (request, response) {
            (Value::Known(true), _) | (_, Value::Known(true)) => Value::Known(true),
            (Value::Known(false), _) => Value::Known(false),
            (Value::Absent, Value::Absent | Value::Known(false)) => Value::Known(false),
            _ => Value::Unknown,
        }
    }

    /// `grpc-status`: in the trailers, or in the response head of a trailers-only response.
    pub fn grpc_status(&self) -> Value<u32> {
        let trailers = self
            .trailers
            .as_ref()
            .map_or(Value::Absent, Headers::grpc_code);
        let head = self
            .response
            .as_ref()
            .map_or(Value::Unknown, Headers::grpc_code);
        trailers.or(head)
    }

    pub fn grpc_message(&self) -> Option<&str> {
        [self.trailers.as_ref(), self.response.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|h| h.grpc_message.as_deref())
    }
}

/// What following streams produced (besides exchanges, what the tracker counts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Boxed: an exchange is large, the other outcomes tiny.
    Exchange(Box<Exchange>),
    /// Bytes that break HTTP/2 framing or HPACK; or a header block over the size limit.
    Invalid(&'static str),
    /// A stream that will never complete (connection closed before its status, stream cap).
    Dropped(&'static str),
    /// A response on a stream whose request was not seen (it started before Periscope
    /// joined, or in bytes that were missed).
    Unmatched,
}

#[derive(Debug, Clone)]
struct Open {
    start_ns: u64,
    request: Headers,
    response: Option<Headers>,
    trailers: Option<Headers>,
}

/// The client-initiated streams of one connection.
#[derive(Debug, Clone, Default)]
pub struct Streams {
    /// Boxed: a stream's three header sets make it large, and a B-tree moves its values
    /// within a node on every insert and removal.
    open: BTreeMap<u32, Box<Open>>,
    /// The highest client stream id seen: ids only grow, so a HEADERS on a higher odd id
    /// opens a stream and one on a lower id that is not open is late or stray.
    highest: u32,
}

impl Streams {
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// A complete header block on `id`, sent by `from`.
    pub fn on_headers(
        &mut self,
        from: Side,
        id: u32,
        headers: Headers,
        end_stream: bool,
        time_ns: u64,
        out: &mut Vec<Outcome>,
    ) {
        if id.is_multiple_of(2) {
            // Server-initiated (pushed) streams are not requests of the client's.
            return;
        }
        match from {
            Side::Client => self.on_request(id, headers, time_ns, out),
            Side::Server => self.on_response(id, headers, end_stream, time_ns, out),
        }
    }

    fn on_request(&mut self, id: u32, headers: Headers, time_ns: u64, out: &mut Vec<Outcome>) {
        if id <= self.highest || headers.get(&headers.method) == Value::Absent {
            // Request trailers (of an open stream, or of one begun before Periscope joined: a
            // request always has `:method`), or a stray block: no new exchange.
            return;
        }
        self.highest = id;
        if self.open.len() >= MAX_STREAMS {
            self.open.pop_first();
            out.push(Outcome::Dropped("stream_overflow"));
        }
        self.open.insert(
            id,
            Box::new(Open {
                start_ns: time_ns,
                request: headers,
                response: None,
                trailers: None,
            }),
        );
    }

    fn on_response(
        &mut self,
        id: u32,
        headers: Headers,
        end_stream: bool,
        time_ns: u64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(open) = self.open.get_mut(&id) else {
            out.push(Outcome::Unmatched);
            return;
        };
        if open.response.is_none() {
            // 1xx heads (100 Continue, 103 Early Hints) come before the final one.
            if !matches!(headers.status_code(), Value::Known(100..=199)) {
                open.response = Some(headers);
            }
        } else {
            open.trailers = Some(headers);
        }
        if end_stream {
            self.finish(id, time_ns, End::Stream, out);
        }
    }

    /// A DATA frame with END_STREAM.
    pub fn on_data_end(&mut self, from: Side, id: u32, time_ns: u64, out: &mut Vec<Outcome>) {
        if from == Side::Server {
            self.finish(id, time_ns, End::Stream, out);
        }
    }

    /// Bytes the server sent were missed: an open stream whose response head was seen may
    /// have lost its trailers there, so they are unknown unless they still come.
    pub fn on_server_gap(&mut self) {
        for open in self.open.values_mut() {
            if open.response.is_some() {
                open.trailers.get_or_insert_with(Headers::undecoded);
            }
        }
    }

    pub fn on_reset(&mut self, by: Side, id: u32, code: u32, time_ns: u64, out: &mut Vec<Outcome>) {
        self.finish(id, time_ns, End::Reset { by, code }, out);
    }

    /// A GOAWAY from `from`: a server's ends the client streams above `last` (not processed;
    /// the client may retry them on another connection). A client's names server-initiated
    /// streams, which are not followed.
    pub fn on_goaway(
        &mut self,
        from: Side,
        last: u32,
        code: u32,
        time_ns: u64,
        out: &mut Vec<Outcome>,
    ) {
        if from != Side::Server {
            return;
        }
        let above: Vec<u32> = self
            .open
            .range(last.saturating_add(1)..)
            .map(|(id, _)| *id)
            .collect();
        for id in above {
            self.finish(id, time_ns, End::GoAway { code }, out);
        }
    }

    /// The connection closed: an exchange whose response status was seen counts, ended now;
    /// the others will never complete.
    pub fn on_close(&mut self, time_ns: u64, out: &mut Vec<Outcome>) {
        while let Some((id, open)) = self.open.pop_first() {
            if open.response.is_some() {
                self.open.insert(id, open);
                self.finish(id, time_ns, End::Closed, out);
            } else {
                out.push(Outcome::Dropped("connection_closed"));
            }
        }
    }

    fn finish(&mut self, id: u32, time_ns: u64, end: End, out: &mut Vec<Outcome>) {
        let Some(open) = self.open.remove(&id) else {
            return;
        };
        let open = *open;
        out.push(Outcome::Exchange(Box::new(Exchange {
            stream_id: id,
            request: open.request,
            response: open.response,
            trailers: open.trailers,
            start_ns: open.start_ns,
            end_ns: time_ns.max(open.start_ns),
            end,
        })));
    }
}
