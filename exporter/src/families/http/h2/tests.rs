use super::*;
use testenc::{Encoder, data, frame, headers, settings, walked};

/// A recorded connection (`testdata/record.py`): each line one chunk, `c HEX` sent by the
/// client, `s HEX` by the server.
///
/// - `nginx_nghttp.txt`: nginx 1.22 (`listen 127.0.0.1:18080 http2`, plaintext) and
///   `nghttp -n -H 'traceparent: ...' /users/42 /missing /users/43` (nghttp2 1.52) on one
///   connection: nghttp's PRIORITY frames, Huffman strings, dynamic-table references.
/// - `nginx_h2load.txt`: the same nginx and `h2load -n 24 -c 1 -m 8` over /users/1, /missing
///   and /other: 24 requests, 8 streams in flight at once on one connection.
/// - `grpc_python.txt`: Python `grpcio` 1.85 server and client (generic handlers, see
///   `record.py`'s header): SayHello OK, SayHello NOT_FOUND (trailers-only), ListFeatures
///   (server streaming, three messages), Fail INTERNAL, SayHello OK.
fn fixture(text: &str) -> Vec<(Side, Vec<u8>)> {
    text.lines()
        .filter_map(|line| {
            let (tag, hex) = line.split_once(' ')?;
            let side = if tag == "c" {
                Side::Client
            } else {
                Side::Server
            };
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            Some((side, bytes))
        })
        .collect()
}

const NGHTTP: &str = include_str!("testdata/nginx_nghttp.txt");
const H2LOAD: &str = include_str!("testdata/nginx_h2load.txt");
const GRPC: &str = include_str!("testdata/grpc_python.txt");
const RECORDINGS: [&str; 3] = [NGHTTP, H2LOAD, GRPC];

/// Feeds chunks as whole transfers, chunk `i` at time `(i + 1) * 100`.
fn run(start: Start, chunks: &[(Side, Vec<u8>)]) -> Vec<Outcome> {
    let mut c = Connection::new(start);
    let mut out = Vec::new();
    for (i, (side, bytes)) in chunks.iter().enumerate() {
        let transfer = Transfer {
            time_ns: (i as u64 + 1) * 100,
            len: bytes.len() as u64,
            captured: bytes,
        };
        c.on_transfer(*side, transfer, &mut out);
    }
    c.on_close(1_000_000, &mut out);
    out
}

fn exchanges(out: &[Outcome]) -> Vec<&Exchange> {
    out.iter()
        .filter_map(|o| match o {
            Outcome::Exchange(e) => Some(&**e),
            _ => None,
        })
        .collect()
}

/// (stream, method, target, status, grpc, grpc status, start, end)
type Summary = (
    u32,
    Value<String>,
    Value<String>,
    Value<u16>,
    Value<bool>,
    Value<u32>,
    u64,
    u64,
);

fn summary(e: &Exchange) -> Summary {
    (
        e.stream_id,
        e.method().map(str::to_string),
        e.target().map(str::to_string),
        e.status(),
        e.grpc(),
        e.grpc_status(),
        e.start_ns,
        e.end_ns,
    )
}

fn k(s: &str) -> Value<String> {
    Value::Known(s.to_string())
}

#[test]
fn nginx_answers_nghttp_on_one_connection() {
    let out = run(Start::Beginning, &fixture(NGHTTP));
    let got: Vec<_> = exchanges(&out).into_iter().map(summary).collect();
    let row = |id, path: &str, status| {
        let no = Value::Known(false);
        (
            id,
            k("GET"),
            k(path),
            Value::Known(status),
            no,
            Value::Absent,
            100,
            200,
        )
    };
    assert_eq!(
        got,
        vec![
            row(13, "/users/42", 200),
            row(15, "/missing", 404),
            row(17, "/users/43", 200)
        ]
    );
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for e in exchanges(&out) {
        assert_eq!(e.traceparent(), Value::Known(traceparent));
        assert_eq!(e.authority(), Value::Known("127.0.0.1:18081"));
        assert_eq!(e.end, End::Stream);
    }
    assert_eq!(out.len(), 3, "{out:?}");
}

/// Eight streams in flight at once: every request is matched to its own response.
#[test]
fn nginx_answers_multiplexed_h2load_streams_exactly() {
    let out = run(Start::Beginning, &fixture(H2LOAD));
    assert_eq!(out.len(), 24, "{out:?}");
    let mut counts = std::collections::BTreeMap::new();
    for e in exchanges(&out) {
        assert_eq!(e.method(), Value::Known("GET"));
        assert_eq!(e.end, End::Stream);
        *counts
            .entry((e.target().known(), e.status().known()))
            .or_insert(0) += 1;
    }
    let expected = [
        ((Some("/missing"), Some(404)), 8),
        ((Some("/other"), Some(200)), 8),
        ((Some("/users/1"), Some(200)), 8),
    ];
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), expected);
}

#[test]
fn grpc_calls_are_one_exchange_each_with_their_status() {
    let out = run(Start::Beginning, &fixture(GRPC));
    let got: Vec<_> = exchanges(&out)
        .iter()
        .map(|e| {
            (
                e.target(),
                e.status(),
                e.grpc(),
                e.grpc_status(),
                e.grpc_message(),
            )
        })
        .collect();
    let ok = |m| {
        (
            Value::Known(m),
            Value::Known(200),
            Value::Known(true),
            Value::Known(0),
            Some(""),
        )
    };
    let error = |m, code, message| {
        let status = Value::Known(code);
        (
            Value::Known(m),
            Value::Known(200),
            Value::Known(true),
            status,
            Some(message),
        )
    };
    assert_eq!(
        got,
        vec![
            ok("/demo.Greeter/SayHello"),
            error("/demo.Greeter/SayHello", 5, "no such user"),
            ok("/demo.Greeter/ListFeatures"),
            error("/demo.Greeter/Fail", 13, "boom"),
            ok("/demo.Greeter/SayHello"),
        ]
    );
    assert_eq!(out.len(), 5, "{out:?}");
    // The server-streaming call ends with its trailers, after its three messages.
    let streaming = exchanges(&out)[2];
    assert!(streaming.trailers.is_some() && streaming.end_ns > streaming.start_ns);
}

/// Cuts every chunk at the given points (each piece keeps its chunk's time).
fn split(chunks: &[(Side, Vec<u8>)], cuts: &[usize]) -> Vec<(Side, Vec<u8>, u64)> {
    let mut pieces = Vec::new();
    for (i, (side, bytes)) in chunks.iter().enumerate() {
        let mut at = 0;
        for cut in cuts.iter().map(|c| c % (bytes.len() + 1)) {
            if cut > at {
                pieces.push((*side, bytes[at..cut].to_vec(), (i as u64 + 1) * 100));
                at = cut;
            }
        }
        pieces.push((*side, bytes[at..].to_vec(), (i as u64 + 1) * 100));
    }
    pieces
}

fn run_pieces(pieces: &[(Side, Vec<u8>, u64)]) -> Vec<Outcome> {
    let mut c = Connection::new(Start::Beginning);
    let mut out = Vec::new();
    for (side, bytes, time_ns) in pieces {
        let transfer = Transfer {
            time_ns: *time_ns,
            len: bytes.len() as u64,
            captured: bytes,
        };
        c.on_transfer(*side, transfer, &mut out);
    }
    c.on_close(1_000_000, &mut out);
    out
}

proptest::proptest! {
    /// Any split of each direction's bytes into transfers gives the same outcomes.
    #[test]
    fn any_split_gives_the_same_exchanges(
        cuts in proptest::collection::vec(0usize..1100, 0..6),
        recording in 0usize..3,
    ) {
        let chunks = fixture(RECORDINGS[recording]);
        let whole = run(Start::Beginning, &chunks);
        let mut sorted = cuts.clone();
        sorted.sort_unstable();
        proptest::prop_assert_eq!(run_pieces(&split(&chunks, &sorted)), whole);
    }

    /// Joined before any chunk of a recorded connection: every stream whose request HEADERS
    /// went by after the join is counted, and each of its fields is either what the full
    /// recording says or unknown.
    #[test]
    fn joined_midway_every_later_stream_counts_and_nothing_is_wrong(
        join in 0usize..17,
        recording in 0usize..3,
    ) {
        let chunks = fixture(RECORDINGS[recording]);
        let join = join.min(chunks.len());
        let full = run(Start::Beginning, &chunks);
        let mut late = chunks.clone();
        for chunk in &mut late[..join] {
            chunk.1.clear();
        }
        let partial = run(Start::Midway, &late);
        for e in exchanges(&partial) {
            let truth = exchanges(&full).into_iter().find(|t| t.stream_id == e.stream_id);
            let truth = truth.expect("a stream of the recording");
            let (got, want) = (summary(e), summary(truth));
            proptest::prop_assert!(agrees(&got.1, &want.1) && agrees(&got.2, &want.2));
            proptest::prop_assert!(agrees(&got.3, &want.3) && agrees(&got.4, &want.4));
            proptest::prop_assert!(agrees(&got.5, &want.5));
        }
        let started_after: Vec<u32> = exchanges(&full)
            .iter()
            .filter(|t| t.start_ns > join as u64 * 100)
            .map(|t| t.stream_id)
            .collect();
        let counted: Vec<u32> = exchanges(&partial).iter().map(|e| e.stream_id).collect();
        for id in started_after {
            proptest::prop_assert!(counted.contains(&id), "stream {} not counted", id);
        }
    }
}

/// A value seen midway is the true one, or unknown.
fn agrees<T: PartialEq>(got: &Value<T>, truth: &Value<T>) -> bool {
    *got == Value::Unknown || got == truth
}

/// Client bytes of one connection opened before Periscope: the path was indexed then, so a
/// later request that names it by index has an unknown target (and, since the unknown field
/// could have been `content-type`, unknown gRPC-ness), while a path inserted since is known;
/// every stream counts.
#[test]
fn a_connection_opened_before_start_counts_streams_with_unknown_parts() {
    let mut client = Encoder::default();
    let mut server = Encoder::default();
    let request = |enc: &mut Encoder, path| enc.block(&[(":method", "GET"), (":path", path)]);
    request(&mut client, "/old/1");
    let mut c = Connection::new(Start::Midway);
    let mut out = Vec::new();
    let mut send = |c: &mut Connection, side, t, bytes: Vec<u8>| {
        let transfer = Transfer {
            time_ns: t,
            len: bytes.len() as u64,
            captured: &bytes,
        };
        c.on_transfer(side, transfer, &mut out);
    };
    send(
        &mut c,
        Side::Client,
        10,
        headers(5, true, &request(&mut client, "/old/1")),
    );
    send(
        &mut c,
        Side::Client,
        20,
        headers(7, true, &request(&mut client, "/new")),
    );
    send(
        &mut c,
        Side::Client,
        30,
        headers(9, true, &request(&mut client, "/new")),
    );
    for (id, t) in [(5, 40), (7, 50), (9, 60)] {
        let block = server.block(&[(":status", "200")]);
        send(&mut c, Side::Server, t, headers(id, true, &block));
    }
    let got: Vec<_> = exchanges(&out).into_iter().map(summary).collect();
    let row = |id, target, grpc, start, end| {
        let status = Value::Known(200);
        (
            id,
            k("GET"),
            target,
            status,
            grpc,
            Value::Absent,
            start,
            end,
        )
    };
    let no = Value::Known(false);
    assert_eq!(
        got,
        vec![
            row(5, Value::Unknown, Value::Unknown, 10, 40),
            row(7, k("/new"), no, 20, 50),
            row(9, k("/new"), no, 30, 60),
        ]
    );
}

/// A request whose header block was cut by the capture still counts, with unknown fields;
/// the table is unknown after it, and a response's DATA longer than its capture is skipped
/// by count.
#[test]
fn truncated_transfers_count_with_unknowns() {
    let mut enc = Encoder::default();
    let long = "x".repeat(600);
    let block = enc.block(&[(":method", "POST"), (":path", &long)]);
    let mut c = Connection::new(Start::Beginning);
    let mut out = Vec::new();
    let mut client = PREFACE.to_vec();
    client.extend(headers(1, false, &block));
    c.on_transfer(
        Side::Client,
        Transfer {
            time_ns: 1,
            len: client.len() as u64,
            captured: &client[..300],
        },
        &mut out,
    );
    let response = [headers(1, false, &[0x88]), data(1, true, &[0; 5000])].concat();
    c.on_transfer(
        Side::Server,
        Transfer {
            time_ns: 2,
            len: response.len() as u64,
            captured: &response[..512],
        },
        &mut out,
    );
    let e = exchanges(&out)[0];
    assert_eq!(
        (e.method(), e.target(), e.status()),
        (Value::Unknown, Value::Unknown, Value::Known(200))
    );
    assert_eq!((e.start_ns, e.end_ns, e.end), (1, 2, End::Stream));
}

fn transfer(c: &mut Connection, side: Side, t: u64, bytes: &[u8], out: &mut Vec<Outcome>) {
    c.on_transfer(
        side,
        Transfer {
            time_ns: t,
            len: bytes.len() as u64,
            captured: bytes,
        },
        out,
    );
}

fn open_connection(streams: &[u32], out: &mut Vec<Outcome>) -> Connection {
    let mut c = Connection::new(Start::Beginning);
    let mut enc = Encoder::default();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings(&[]));
    for id in streams {
        bytes.extend(headers(
            *id,
            true,
            &enc.block(&[(":method", "GET"), (":path", "/s")]),
        ));
    }
    transfer(&mut c, Side::Client, 10, &bytes, out);
    c
}

#[test]
fn reset_goaway_and_close_end_streams() {
    let mut out = Vec::new();
    let mut c = open_connection(&[1, 3, 5, 7], &mut out);
    // Stream 1 reset by the client, 3 answered then closed, 5 and 7 above the GOAWAY's last.
    transfer(
        &mut c,
        Side::Client,
        20,
        &frame(3, 0, 1, &8u32.to_be_bytes()),
        &mut out,
    );
    transfer(
        &mut c,
        Side::Server,
        30,
        &headers(3, false, &[0x8d]),
        &mut out,
    );
    let goaway = [3u32.to_be_bytes(), 0u32.to_be_bytes()].concat();
    transfer(&mut c, Side::Server, 40, &frame(7, 0, 0, &goaway), &mut out);
    c.on_close(50, &mut out);
    let ends: Vec<_> = exchanges(&out)
        .iter()
        .map(|e| (e.stream_id, e.end, e.status(), e.end_ns))
        .collect();
    assert_eq!(
        ends,
        vec![
            (
                1,
                End::Reset {
                    by: Side::Client,
                    code: 8
                },
                Value::Unknown,
                20
            ),
            (5, End::GoAway { code: 0 }, Value::Unknown, 40),
            (7, End::GoAway { code: 0 }, Value::Unknown, 40),
            (3, End::Closed, Value::Known(404), 50),
        ]
    );
    assert_eq!(c.open_streams(), 0);
}

/// Joined midway, a client block without `:method` is the trailers of a request begun
/// before: no exchange, and the next request still opens one.
#[test]
fn request_trailers_seen_first_do_not_open_a_stream() {
    let mut c = Connection::new(Start::Midway);
    let mut out = Vec::new();
    let mut enc = Encoder::default();
    let trailers = headers(3, true, &enc.block(&[("x-checksum", "1")]));
    transfer(&mut c, Side::Client, 10, &trailers, &mut out);
    let request = headers(5, true, &enc.block(&[(":method", "GET"), (":path", "/")]));
    transfer(&mut c, Side::Client, 20, &request, &mut out);
    transfer(
        &mut c,
        Side::Server,
        30,
        &headers(3, true, &[0x88]),
        &mut out,
    );
    transfer(
        &mut c,
        Side::Server,
        40,
        &headers(5, true, &[0x88]),
        &mut out,
    );
    assert_eq!(out[0], Outcome::Unmatched);
    let got: Vec<_> = exchanges(&out)
        .iter()
        .map(|e| (e.stream_id, e.target()))
        .collect();
    assert_eq!(got, vec![(5, Value::Known("/"))]);
}

#[test]
fn a_close_drops_streams_without_a_status() {
    let mut out = Vec::new();
    let mut c = open_connection(&[1], &mut out);
    c.on_close(20, &mut out);
    assert_eq!(out, vec![Outcome::Dropped("connection_closed")]);
}

#[test]
fn streams_beyond_the_cap_drop_the_oldest() {
    let mut out = Vec::new();
    let ids: Vec<u32> = (0..stream::MAX_STREAMS as u32 + 3)
        .map(|i| 2 * i + 1)
        .collect();
    let c = open_connection(&ids, &mut out);
    assert_eq!(c.open_streams(), stream::MAX_STREAMS);
    assert_eq!(out, vec![Outcome::Dropped("stream_overflow"); 3]);
}

#[test]
fn a_huge_header_block_is_invalid_and_its_stream_unknown() {
    let mut out = Vec::new();
    let mut c = open_connection(&[], &mut out);
    let mut enc = Encoder::default();
    let cookie = "c".repeat(hpack::MAX_HEADER_BLOCK);
    let block = enc.block(&[(":method", "GET"), ("cookie", &cookie)]);
    // Split over HEADERS and two CONTINUATIONs, each under the frame size limit.
    let third = block.len() / 3;
    let mut bytes = frame(1, frame::END_STREAM, 1, &block[..third]);
    bytes.extend(frame(9, 0, 1, &block[third..2 * third]));
    bytes.extend(frame(9, frame::END_HEADERS, 1, &block[2 * third..]));
    transfer(&mut c, Side::Client, 20, &bytes, &mut out);
    transfer(
        &mut c,
        Side::Server,
        30,
        &headers(1, true, &[0x88]),
        &mut out,
    );
    assert_eq!(out[0], Outcome::Invalid("header_block_too_large"));
    let e = exchanges(&out)[0];
    assert_eq!(
        (e.method(), e.status()),
        (Value::Unknown, Value::Known(200))
    );
}

/// Frames delivered one by one (a frame-aware capture) give what the bytes give.
#[test]
fn per_frame_records_give_the_same_exchanges_as_bytes() {
    let chunks = fixture(GRPC);
    let whole = run(Start::Beginning, &chunks);
    let mut c = Connection::new(Start::Beginning);
    let mut out = Vec::new();
    for (i, (side, bytes)) in chunks.iter().enumerate() {
        let mut rest = bytes.strip_prefix(&PREFACE[..]).unwrap_or(bytes);
        while rest.len() >= frame::HEADER_LEN {
            let header = FrameHeader::parse(rest[..9].try_into().unwrap());
            let end = 9 + header.len as usize;
            let record = FrameRecord {
                time_ns: (i as u64 + 1) * 100,
                header,
                payload: &rest[9..end],
            };
            c.on_frame(*side, record, &mut out);
            rest = &rest[end..];
        }
    }
    c.on_close(1_000_000, &mut out);
    assert_eq!(out, whole);
}

proptest::proptest! {
    /// Arbitrary transfers (hostile, truncated, binary) never panic, and what a connection
    /// holds stays bounded.
    #[test]
    fn arbitrary_traffic_is_bounded(
        transfers in proptest::collection::vec(
            (proptest::bool::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..400), 0u64..20_000),
            0..40,
        ),
        midway in proptest::bool::ANY,
    ) {
        let mut c = Connection::new(if midway { Start::Midway } else { Start::Beginning });
        let mut out = Vec::new();
        for (i, (client, bytes, extra)) in transfers.iter().enumerate() {
            let side = if *client { Side::Client } else { Side::Server };
            let transfer = Transfer { time_ns: i as u64, len: bytes.len() as u64 + extra, captured: bytes };
            c.on_transfer(side, transfer, &mut out);
            proptest::prop_assert!(c.open_streams() <= stream::MAX_STREAMS);
            proptest::prop_assert!(c.buffered() <= 4 * (hpack::MAX_HEADER_BLOCK + 1) + 2 * hpack::MAX_TABLE_BYTES);
        }
        c.on_close(1_000, &mut out);
        proptest::prop_assert_eq!(c.open_streams(), 0);
    }
}

/// Valid frames with random fields, not just random bytes: the decoder never panics on a
/// well-framed connection either.
#[test]
fn garbage_inside_valid_frames_is_invalid_not_a_panic() {
    let mut out = Vec::new();
    let mut c = open_connection(&[], &mut out);
    transfer(
        &mut c,
        Side::Client,
        20,
        &headers(1, false, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        &mut out,
    );
    transfer(&mut c, Side::Client, 21, &frame(9, 4, 1, &[0x82]), &mut out);
    transfer(
        &mut c,
        Side::Server,
        30,
        &headers(1, true, &[0x88]),
        &mut out,
    );
    assert_eq!(out[0], Outcome::Invalid("hpack"));
    assert_eq!(out[1], Outcome::Invalid("stray_continuation"));
    let e = exchanges(&out)[0];
    assert_eq!(
        (e.method(), e.status()),
        (Value::Unknown, Value::Known(200))
    );
}

proptest::proptest! {
    /// The kernel's walked frames, however its records cut them, give the same exchanges as
    /// the whole bytes.
    #[test]
    fn walked_frames_give_the_same_exchanges_as_bytes(
        cuts in proptest::collection::vec(0usize..600, 0..6),
        recording in 0usize..3,
    ) {
        let chunks = fixture(RECORDINGS[recording]);
        let whole = run(Start::Beginning, &chunks);
        let mut sorted = cuts.clone();
        sorted.sort_unstable();
        let records: Vec<(Side, Vec<u8>)> =
            walked(&chunks).into_iter().map(|(s, b, _)| (s, b)).collect();
        // Times: each record keeps its chunk's (split() stamps pieces by record index, so
        // stamp them again from the walk).
        let times: Vec<u64> = walked(&chunks).into_iter().map(|(_, _, t)| t).collect();
        let mut c = Connection::new(Start::Beginning);
        let mut out = Vec::new();
        for (side, bytes, record) in split(&records, &sorted) {
            let time_ns = times[(record / 100 - 1) as usize];
            c.on_walked(side, time_ns, &bytes, &mut out);
        }
        c.on_close(1_000_000, &mut out);
        proptest::prop_assert_eq!(out, whole);
    }
}

#[test]
fn walked_frames_leave_data_payloads_out() {
    let chunks = fixture(GRPC);
    let sent: usize = chunks.iter().map(|(_, b)| b.len()).sum();
    let kept: usize = walked(&chunks).iter().map(|(_, b, _)| b.len()).sum();
    assert!(kept < sent, "{kept} of {sent}");
    let mut w = frame::Walked::default();
    let mut seen = Vec::new();
    // A DATA frame of 5 bytes (header only), then a HEADERS frame cut after 4 bytes of its
    // payload, completed by the next record.
    let data_header = [0, 0, 5, 0, 1, 0, 0, 0, 1];
    let headers = [
        0, 0, 6, 1, 4, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41, 0x8a, 0x08,
    ];
    let mut first = data_header.to_vec();
    first.extend_from_slice(&headers[..13]);
    w.feed(&first, &mut |h, p| seen.push((h.kind, p.to_vec())));
    assert_eq!(seen, [(frame::Kind::Data, vec![])]);
    assert_eq!(w.buffered(), 13);
    w.feed(&headers[13..], &mut |h, p| seen.push((h.kind, p.to_vec())));
    assert_eq!(seen[1], (frame::Kind::Headers, headers[9..].to_vec()));
    assert_eq!(w.buffered(), 0);
}
