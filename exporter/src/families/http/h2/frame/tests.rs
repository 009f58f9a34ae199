use super::*;
use crate::families::http::h2::testenc;

/// What a framer emitted, owned: (kind, stream, flags, payload kept, missing) per frame, and
/// the other events by name.
fn events(framer: &mut Framer, transfers: &[(&[u8], u64)]) -> Vec<String> {
    let mut seen = Vec::new();
    for (captured, len) in transfers {
        framer.feed(captured, *len, &mut |event| {
            seen.push(match event {
                Event::Frame {
                    header,
                    payload,
                    missing,
                } => format!(
                    "{:?} s{} f{:x} {:x?}{}",
                    header.kind,
                    header.stream,
                    header.flags,
                    payload,
                    if missing { " missing" } else { "" }
                ),
                other => format!("{other:?}"),
            })
        });
    }
    seen
}

fn whole(bytes: &[u8]) -> (&[u8], u64) {
    (bytes, bytes.len() as u64)
}

fn sample() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(testenc::settings(&[(SETTINGS_HEADER_TABLE_SIZE, 8192)]));
    bytes.extend(testenc::headers(1, false, &[0x82, 0x84]));
    bytes.extend(testenc::data(1, true, b"hello"));
    bytes.extend(testenc::frame(0x42, 0, 0, b"ext"));
    bytes.extend(testenc::frame(6, 0, 0, &[0; 8]));
    bytes
}

#[test]
fn frames_are_the_same_however_the_bytes_are_split() {
    let bytes = sample();
    let expected = events(&mut Framer::client_at_start(), &[whole(&bytes)]);
    assert_eq!(expected.len(), 6, "{expected:?}");
    assert_eq!(expected[0], "Preface");
    assert_eq!(expected[2], "Headers s1 f4 [82, 84]");
    assert_eq!(expected[3], "Data s1 f1 []");
    for a in 0..bytes.len() {
        for b in a..bytes.len() {
            let parts = [whole(&bytes[..a]), whole(&bytes[a..b]), whole(&bytes[b..])];
            assert_eq!(
                events(&mut Framer::client_at_start(), &parts),
                expected,
                "{a} {b}"
            );
        }
    }
}

#[test]
fn missing_bytes_inside_a_payload_are_skipped_by_count() {
    let mut bytes = testenc::data(1, false, &[7; 2000]);
    bytes.extend(testenc::headers(1, true, &[0x88]));
    // A transfer of the whole DATA frame of which only 100 bytes were captured, then the
    // HEADERS in the next transfer.
    let got = events(
        &mut Framer::server_at_start(),
        &[(&bytes[..100], 2009), whole(&bytes[2009..])],
    );
    assert_eq!(got, vec!["Data s1 f0 [] missing", "Headers s1 f5 [88]"]);
}

/// A header block whose bytes were not all captured is reported incomplete.
#[test]
fn a_header_frame_cut_by_the_capture_is_marked_missing() {
    let bytes = testenc::headers(3, false, &[0x82; 40]);
    let got = events(&mut Framer::server_at_start(), &[(&bytes[..20], 49)]);
    assert_eq!(
        got,
        vec![format!("Headers s3 f4 {:x?} missing", [0x82; 11])]
    );
}

/// A gap that swallows a frame header loses the boundaries; the next transfer that starts
/// with plausible frame headers finds them again, and one that starts inside a payload does not.
#[test]
fn a_gap_over_a_frame_header_desyncs_until_a_plausible_transfer() {
    let mut first = testenc::data(1, false, &[0; 100]);
    first.extend(testenc::headers(1, true, &[0x88]));
    let next = testenc::headers(3, true, &[0x88]);
    let text = b"just some body bytes, not frames";
    let got = events(
        &mut Framer::server_at_start(),
        &[
            (&first[..50], first.len() as u64),
            whole(text),
            whole(&next),
        ],
    );
    assert_eq!(got, vec!["Desync", "Resync", "Headers s3 f5 [88]"]);
}

/// A whole transfer whose frames do not end at its end (it starts inside a payload, or its
/// last frame goes on) is not where frames are found again; one whose frames end exactly is,
/// and so is one cut by the capture whose captured headers are plausible.
#[test]
fn resync_needs_frames_that_end_with_a_whole_transfer() {
    let data = testenc::data(1, false, &[0; 100]);
    let short = &data[..40];
    assert!(!plausible_frames(
        short,
        short.len() as u64,
        DEFAULT_MAX_FRAME
    ));
    assert!(plausible_frames(
        &data,
        data.len() as u64,
        DEFAULT_MAX_FRAME
    ));
    assert!(plausible_frames(
        short,
        data.len() as u64,
        DEFAULT_MAX_FRAME
    ));
    // A gRPC message (flag, length 1, one byte) read as a frame header: length 0, DATA,
    // flags 1, then the next "header" is the rest of the payload.
    let message = [0, 0, 0, 0, 1, 0x2a, 0, 0, 1, 0x08, 0x96, 0x01];
    assert!(!plausible_frames(
        &message,
        message.len() as u64,
        DEFAULT_MAX_FRAME
    ));
    let mut framer = Framer::midway();
    let got = events(&mut framer, &[whole(short), whole(&message), whole(&data)]);
    assert_eq!(got, vec!["Resync".to_string(), format!("Data s1 f0 []")]);
}

#[test]
fn midway_joins_at_the_first_plausible_transfer_or_the_preface() {
    let mut framer = Framer::midway();
    let data = testenc::data(5, true, b"xyz");
    let got = events(&mut framer, &[(&data[4..], 8), whole(&data)]);
    assert_eq!(got, vec!["Resync", "Data s5 f1 []"]);
    let got = events(&mut Framer::midway(), &[whole(&sample())]);
    assert_eq!(got[..2], ["Resync", "Preface"]);
}

#[test]
fn broken_framing_is_invalid() {
    let mut reserved = testenc::data(1, false, b"x");
    reserved[5] |= 0x80;
    let oversized = testenc::frame(0, 0, 1, &[0; 16_385]);
    for bytes in [&b"GET / HTTP/1.1\r\n\r\n"[..], &reserved, &oversized] {
        let mut framer = Framer::server_at_start();
        if bytes.starts_with(b"GET") {
            framer = Framer::client_at_start();
        }
        assert_eq!(events(&mut framer, &[whole(bytes)]), vec!["Invalid"]);
        assert!(!framer.in_sync());
    }
}

#[test]
fn header_block_fragments_lose_padding_and_priority() {
    let header = |flags| FrameHeader {
        len: 0,
        kind: Kind::Headers,
        flags,
        stream: 1,
        reserved: false,
    };
    let padded = [2, 0x82, 0x84, 0, 0];
    assert_eq!(
        block_fragment(&header(PADDED), &padded),
        Some(&[0x82, 0x84][..])
    );
    let both = [1, 0, 0, 0, 3, 16, 0x82, 0];
    assert_eq!(
        block_fragment(&header(PADDED | PRIORITY), &both),
        Some(&[0x82][..])
    );
    assert_eq!(block_fragment(&header(PADDED), &[9, 0x82]), None);
    assert_eq!(block_fragment(&header(PRIORITY), &[0, 0]), None);
}

#[test]
fn plausibility_follows_each_type_s_rules() {
    let parse = |bytes: Vec<u8>| FrameHeader::parse(bytes[..9].try_into().unwrap());
    assert!(parse(testenc::settings(&[(1, 0)])).plausible(DEFAULT_MAX_FRAME));
    assert!(!parse(testenc::frame(4, 0, 1, &[0; 6])).plausible(DEFAULT_MAX_FRAME));
    assert!(!parse(testenc::frame(6, 0, 0, &[0; 7])).plausible(DEFAULT_MAX_FRAME));
    assert!(!parse(testenc::frame(0, 0x40, 1, b"")).plausible(DEFAULT_MAX_FRAME));
    assert!(!parse(testenc::frame(9, 4, 1, b"")).plausible(DEFAULT_MAX_FRAME));
    assert!(parse(testenc::frame(8, 0, 0, &[0; 4])).plausible(DEFAULT_MAX_FRAME));
}

proptest::proptest! {
    /// Arbitrary transfers (any bytes, any capture cut) never panic, and what a framer keeps
    /// stays within its bound.
    #[test]
    fn arbitrary_bytes_are_bounded(
        transfers in proptest::collection::vec(
            (proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0u64..40_000),
            0..30,
        ),
        client in proptest::bool::ANY,
    ) {
        let mut framer = if client { Framer::client_at_start() } else { Framer::midway() };
        for (bytes, extra) in &transfers {
            framer.feed(bytes, bytes.len() as u64 + extra, &mut |_| {});
            proptest::prop_assert!(framer.payload.len() <= super::super::hpack::MAX_HEADER_BLOCK + 1);
        }
    }
}
