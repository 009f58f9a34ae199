//! HTTP/2 on a connection the tracker follows: the [`h2`] decoder fed with the connection's
//! transfers from the client preface on, its per-stream exchanges handed back as the HTTP/1
//! connection's outcomes, so that routes, series and self-metrics are the same for both.
//!
//! A connection is HTTP/2 from the transfer whose first bytes are the client preface (h2c with
//! prior knowledge; HTTP/2 over TLS through the OpenSSL and Go probes, whose plaintext starts
//! the same way), a server's SETTINGS written before it, or, on a connection opened before
//! Periscope started, a HEADERS frame: the kernel sees it and walks the connection's frames
//! from there. A stream whose method or path could not be decoded (a connection joined
//! midway) is counted with them unknown, never under a guessed route; one whose status could
//! not be is dropped (`http2_undecoded`). Spans are given when a stream ends (the tracker's
//! `stream_span`). Not yet: h2c upgrades from HTTP/1.1.

use super::{
    connection::{Capture, Exchange, Io, Outcome, Request, Role, Version},
    grpc, h2,
};

/// One HTTP/2 connection's decoder, the last time it saw bytes (an exit ends its streams
/// then), and, per direction, whether the kernel's walk lost its place (its transfers then
/// come plain, and the decoder finds frames in them as best it can).
#[derive(Debug)]
pub struct Http2 {
    conn: h2::Connection,
    last_ns: u64,
    plain: [bool; 2],
    /// A stream of this connection was a gRPC call (see [`grpc::is_call`]).
    calls_seen: bool,
}

impl Http2 {
    /// A connection whose frames the kernel walks; `preface`: from its start (else it was
    /// joined midway: its tables are unknown).
    pub fn new(preface: bool) -> Self {
        let start = if preface {
            h2::Start::Beginning
        } else {
            h2::Start::Midway
        };
        Self {
            conn: h2::Connection::new(start),
            last_ns: 0,
            plain: [false; 2],
            calls_seen: false,
        }
    }

    /// A transfer of a connection of `role` (`read`, else written).
    pub fn on_io(&mut self, role: Role, read: bool, io: &Io<'_>, out: &mut Vec<Outcome>) {
        // Stamped as HTTP/1 transfers are: reads at their end, writes at their start.
        let time_ns = if read { io.end_ns } else { io.start_ns };
        self.last_ns = self.last_ns.max(time_ns);
        let from = match (role, read) {
            (Role::Server, true) | (Role::Client, false) => h2::Side::Client,
            _ => h2::Side::Server,
        };
        let plain = &mut self.plain[from as usize];
        let mut decoded = Vec::new();
        match io.capture {
            Capture::Frames { cut, .. } => {
                *plain = false;
                self.conn
                    .on_walked(from, time_ns, io.captured, &mut decoded);
                if cut {
                    self.conn.on_lost(from, &mut decoded);
                }
            }
            Capture::Plain => {
                if !*plain {
                    // The walk's end was not seen (its record was lost, or its state aged out).
                    *plain = true;
                    self.conn.on_lost(from, &mut decoded);
                }
                let transfer = h2::Transfer {
                    time_ns,
                    len: io.len,
                    captured: io.captured,
                };
                self.conn.on_transfer(from, transfer, &mut decoded);
            }
        }
        self.hand_back(decoded, io.tid, out);
    }

    /// Records were lost: both directions' framing and tables are unknown from here.
    pub fn on_lost(&mut self, out: &mut Vec<Outcome>) {
        let mut decoded = Vec::new();
        self.conn.on_lost(h2::Side::Client, &mut decoded);
        self.conn.on_lost(h2::Side::Server, &mut decoded);
        self.hand_back(decoded, 0, out);
    }

    /// The connection closed (or, `exited`, its process is gone): streams whose status was
    /// seen count, the rest are dropped.
    pub fn on_close(&mut self, exited: bool, out: &mut Vec<Outcome>) {
        let mut decoded = Vec::new();
        self.conn.on_close(self.last_ns, &mut decoded);
        let from = out.len();
        self.hand_back(decoded, 0, out);
        for o in &mut out[from..] {
            if exited && *o == Outcome::Dropped("connection_closed") {
                *o = Outcome::Dropped("process_exit");
            }
        }
    }

    /// The decoder's outcomes as the tracker's; `tid`: the thread of the transfer that ended
    /// them.
    fn hand_back(&mut self, decoded: Vec<h2::Outcome>, tid: u32, out: &mut Vec<Outcome>) {
        for o in decoded {
            out.push(outcome(o, tid, &mut self.calls_seen));
        }
    }
}

/// The tracker's outcome for one of the decoder's; `tid`: the thread of the transfer that
/// ended it. A gRPC call ([`grpc::is_call`]; `calls_seen`: one went by on this connection) is
/// an RPC call, any other stream an HTTP exchange.
fn outcome(decoded: h2::Outcome, tid: u32, calls_seen: &mut bool) -> Outcome {
    match decoded {
        h2::Outcome::Exchange(e) => {
            let call = grpc::is_call(&e, *calls_seen);
            *calls_seen |= call;
            if call {
                grpc::call(&e).map(Outcome::Call)
            } else {
                exchange(&e, tid).map(Outcome::Exchange)
            }
            .unwrap_or(Outcome::Dropped("http2_undecoded"))
        }
        h2::Outcome::Invalid(_) => Outcome::Invalid,
        h2::Outcome::Dropped(reason) => Outcome::Dropped(reason),
        h2::Outcome::Unmatched => Outcome::Unmatched,
    }
}

/// A stream as an exchange, when its status is known. Its method and path may not be (a
/// connection joined midway): they are then empty, counted as `_OTHER` and without
/// `http.route` (never guessed).
fn exchange(e: &h2::Exchange, tid: u32) -> Option<Exchange> {
    let request = Request {
        method: e.method().known_or_empty()?.to_string(),
        target: e.target().known_or_empty()?.to_string(),
        version: Version::Http2,
        traceparent: e.traceparent().known().map(str::to_string),
        host: e.authority().known().map(str::to_string),
        start_ns: e.start_ns,
        tid,
        span: None,
    };
    Some(Exchange {
        request,
        status: e.status().known()?,
        end_ns: e.end_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use h2::{End, Headers};

    /// A stream of a connection joined midway: its method and status came from the static
    /// table, its path and content type referred into the unknown part of the dynamic one.
    fn midway_stream(trailers: bool) -> h2::Outcome {
        let response = Headers {
            status: Some("200".into()),
            unknown: 1,
            ..Headers::default()
        };
        h2::Outcome::Exchange(Box::new(h2::Exchange {
            stream_id: 3,
            request: Headers {
                method: Some("POST".into()),
                unknown: 2,
                ..Headers::default()
            },
            response: Some(response),
            trailers: trailers.then(Headers::undecoded),
            start_ns: 10,
            end_ns: 30,
            end: End::Stream,
        }))
    }

    #[test]
    fn a_stream_with_undecoded_fields_counts_with_them_unknown() {
        let mut calls_seen = false;
        match outcome(midway_stream(false), 7, &mut calls_seen) {
            Outcome::Exchange(e) => {
                assert_eq!(
                    (e.request.method.as_str(), e.request.target.as_str()),
                    ("POST", "")
                );
                assert_eq!(e.status, 200);
            }
            other => panic!("{other:?}"),
        }
        assert!(!calls_seen, "no trailers: nothing says gRPC");
        // Trailers: a gRPC call, its method and status unknown; from then on the connection's
        // other streams of unknown content type are calls too.
        match outcome(midway_stream(true), 7, &mut calls_seen) {
            Outcome::Call(call) => assert_eq!((call.path.as_str(), call.status), ("", None)),
            other => panic!("{other:?}"),
        }
        assert!(calls_seen);
        assert!(matches!(
            outcome(midway_stream(false), 7, &mut calls_seen),
            Outcome::Call(_)
        ));
    }

    #[test]
    fn a_decoded_stream_without_a_path_or_a_grpc_content_type_is_not_guessed() {
        let mut calls_seen = true;
        let h2::Outcome::Exchange(mut e) = midway_stream(true) else {
            unreachable!()
        };
        // Every field decoded, the content type known not to be gRPC: an HTTP exchange, even
        // with trailers on a connection that carried calls.
        e.request.unknown = 0;
        e.request.path = Some("/report".into());
        e.request.content_type = Some("text/csv".into());
        let known = h2::Outcome::Exchange(e.clone());
        assert!(
            matches!(outcome(known, 7, &mut calls_seen), Outcome::Exchange(x) if x.request.target == "/report")
        );
        // Decoded, and no `:path` at all: malformed, dropped.
        e.request.path = None;
        assert_eq!(
            outcome(h2::Outcome::Exchange(e), 7, &mut calls_seen),
            Outcome::Dropped("http2_undecoded")
        );
    }
}
