//! HTTP/2 on a connection the tracker follows: the [`h2`] decoder fed with the connection's
//! transfers from the client preface on, its per-stream exchanges handed back as the HTTP/1
//! connection's outcomes, so that routes, series and self-metrics are the same for both.
//!
//! A connection is HTTP/2 from the transfer whose first bytes are the client preface (h2c with
//! prior knowledge; HTTP/2 over TLS through the OpenSSL and Go probes, whose plaintext starts
//! the same way): the kernel sees it and walks the connection's frames from there. A stream
//! whose method, path or status could not be decoded is counted as dropped
//! (`http2_undecoded`), never under a guessed route. Spans are given when a stream ends (the
//! tracker's `stream_span`). Not yet: connections first seen mid-stream, h2c upgrades from
//! HTTP/1.1.

use super::{
    connection::{Capture, Exchange, Io, Outcome, Request, Role, Version},
    h2,
};

/// One HTTP/2 connection's decoder, the last time it saw bytes (an exit ends its streams
/// then), and, per direction, whether the kernel's walk lost its place (its transfers then
/// come plain, and the decoder finds frames in them as best it can).
#[derive(Debug)]
pub struct Http2 {
    conn: h2::Connection,
    last_ns: u64,
    plain: [bool; 2],
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
        out.extend(decoded.into_iter().map(|o| outcome(o, io.tid)));
    }

    /// Records were lost: both directions' framing and tables are unknown from here.
    pub fn on_lost(&mut self, out: &mut Vec<Outcome>) {
        let mut decoded = Vec::new();
        self.conn.on_lost(h2::Side::Client, &mut decoded);
        self.conn.on_lost(h2::Side::Server, &mut decoded);
        out.extend(decoded.into_iter().map(|o| outcome(o, 0)));
    }

    /// The connection closed (or, `exited`, its process is gone): streams whose status was
    /// seen count, the rest are dropped.
    pub fn on_close(&mut self, exited: bool, out: &mut Vec<Outcome>) {
        let mut decoded = Vec::new();
        self.conn.on_close(self.last_ns, &mut decoded);
        out.extend(decoded.into_iter().map(|o| match outcome(o, 0) {
            Outcome::Dropped("connection_closed") if exited => Outcome::Dropped("process_exit"),
            other => other,
        }));
    }
}

/// The tracker's outcome for one of the decoder's; `tid`: the thread of the transfer that
/// ended it. A gRPC stream (`content-type:
/// application/grpc*`) is an RPC call (`super::grpc`), any other an HTTP exchange.
fn outcome(decoded: h2::Outcome, tid: u32) -> Outcome {
    use super::grpc;
    match decoded {
        h2::Outcome::Exchange(e) if grpc::is_call(&e) => grpc::call(&e)
            .map(Outcome::Call)
            .unwrap_or(Outcome::Dropped("http2_undecoded")),
        h2::Outcome::Exchange(e) => exchange(&e, tid)
            .map(Outcome::Exchange)
            .unwrap_or(Outcome::Dropped("http2_undecoded")),
        h2::Outcome::Invalid(_) => Outcome::Invalid,
        h2::Outcome::Dropped(reason) => Outcome::Dropped(reason),
        h2::Outcome::Unmatched => Outcome::Unmatched,
    }
}

/// A stream as an exchange, when its method, path and status are known.
fn exchange(e: &h2::Exchange, tid: u32) -> Option<Exchange> {
    let request = Request {
        method: e.method().known()?.to_string(),
        target: e.target().known()?.to_string(),
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
