//! HTTP/2 on a connection the tracker follows: the [`h2`] decoder fed with the connection's
//! transfers from the client preface on, its per-stream exchanges handed back as the HTTP/1
//! connection's outcomes, so that routes, series and self-metrics are the same for both.
//!
//! A connection is HTTP/2 when the client's first bytes are the preface (h2c with prior
//! knowledge; HTTP/2 over TLS through the OpenSSL probes, whose plaintext starts the same way).
//! A stream whose method, path or status could not be decoded (bytes beyond the capture) is
//! counted as dropped (`http2_undecoded`), never under a guessed route. Not yet: connections
//! first seen mid-stream, h2c upgrades from HTTP/1.1, spans, gRPC's own metrics.

use super::{
    connection::{Exchange, Io, Outcome, Request, Role, Version},
    h2,
};

/// One HTTP/2 connection's decoder and the last time it saw bytes (an exit ends its streams
/// then).
#[derive(Debug)]
pub struct Http2 {
    conn: h2::Connection,
    last_ns: u64,
}

/// Whether a transfer that `read` (else wrote) on a connection of `role` is the start of the
/// client preface: a server reads it, a client writes it.
pub fn starts(role: Role, read: bool, captured: &[u8]) -> bool {
    let from_client = matches!((role, read), (Role::Server, true) | (Role::Client, false));
    // The preface's first line is enough to tell (a capture may end inside the rest).
    from_client && captured.starts_with(&h2::PREFACE[..16])
}

impl Http2 {
    pub fn new() -> Self {
        Self {
            conn: h2::Connection::new(h2::Start::Beginning),
            last_ns: 0,
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
        let mut decoded = Vec::new();
        let transfer = h2::Transfer {
            time_ns,
            len: io.len,
            captured: io.captured,
        };
        self.conn.on_transfer(from, transfer, &mut decoded);
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

impl Default for Http2 {
    fn default() -> Self {
        Self::new()
    }
}

/// The tracker's outcome for one of the decoder's; `tid`: the thread of the transfer that
/// ended it (spans are not made for HTTP/2 yet). A gRPC stream (`content-type:
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_starts_http2_only_in_the_clients_direction() {
        let preface = h2::PREFACE;
        assert!(starts(Role::Server, true, preface));
        assert!(starts(Role::Client, false, preface));
        assert!(!starts(Role::Server, false, preface));
        assert!(!starts(Role::Client, true, preface));
        assert!(!starts(Role::Server, true, b"GET / HTTP/1.1\r\n\r\n"));
    }
}
