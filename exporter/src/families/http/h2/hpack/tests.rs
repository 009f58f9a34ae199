use super::*;
use crate::families::http::h2::testenc::{Encoder, Mode};

type Fields = Vec<(Option<String>, Option<String>)>;

fn text(bytes: Option<&[u8]>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(b).into_owned())
}

fn decode(d: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
    let mut fields = Vec::new();
    d.decode(block, |f| fields.push((text(f.name), text(f.value))))?;
    Ok(fields)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn known(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(n, v)| (Some(n.to_string()), Some(v.to_string())))
        .collect()
}

/// RFC 7541 C.3 (plain strings) and C.4 (the same requests Huffman-coded): three requests on
/// one connection, the dynamic table growing.
#[test]
fn rfc7541_request_examples_decode_with_and_without_huffman() {
    let blocks = [
        [
            "828684410f7777772e6578616d706c652e636f6d",
            "828684be58086e6f2d6361636865",
            "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
        ],
        [
            "828684418cf1e3c2e5f23a6ba0ab90f4ff",
            "828684be5886a8eb10649cbf",
            "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        ],
    ];
    for set in blocks {
        let mut d = Decoder::at_start();
        let first = decode(&mut d, &hex(set[0])).unwrap();
        let authority = (":authority", "www.example.com");
        assert_eq!(
            first,
            known(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                authority
            ])
        );
        assert_eq!(d.table_size(), 57);
        let second = decode(&mut d, &hex(set[1])).unwrap();
        assert_eq!(second[3], known(&[authority])[0]);
        assert_eq!(second[4], known(&[("cache-control", "no-cache")])[0]);
        assert_eq!(d.table_size(), 110);
        let third = decode(&mut d, &hex(set[2])).unwrap();
        assert_eq!(
            third,
            known(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                authority,
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.table_size(), 164);
    }
}

/// RFC 7541 C.5: responses with a 256-byte table, so entries are evicted (the size update
/// that sets 256 is prefixed to the first block).
#[test]
fn rfc7541_response_examples_evict_oldest_entries() {
    let mut d = Decoder::at_start();
    let date = "Mon, 21 Oct 2013 20:13:21 GMT";
    let location = ("location", "https://www.example.com");
    let first = hex(concat!(
        "3fe101",
        "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a32312047",
        "4d546e1768747470733a2f2f7777772e6578616d706c652e636f6d"
    ));
    assert_eq!(
        decode(&mut d, &first).unwrap(),
        known(&[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", date),
            location
        ])
    );
    assert_eq!(d.table_size(), 222);
    assert_eq!(
        decode(&mut d, &hex("4803333037c1c0bf")).unwrap(),
        known(&[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", date),
            location
        ])
    );
    assert_eq!(d.table_size(), 222);
    let third = hex(concat!(
        "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a6970773866",
        "6f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630",
        "303b2076657273696f6e3d31"
    ));
    let fields = decode(&mut d, &third).unwrap();
    assert_eq!(fields[0], known(&[(":status", "200")])[0]);
    assert_eq!(fields[3], known(&[location])[0]);
    assert_eq!(d.table_size(), 215);
}

/// Joined mid-connection: entries inserted before are unknown (both the indexed field and an
/// entry whose name was indexed into them), entries inserted since are exact.
#[test]
fn a_missed_table_reports_unknown_and_trusts_only_entries_seen_since() {
    let mut enc = Encoder::default();
    // Before Periscope: the encoder indexes an authority and a path.
    enc.block(&[(":authority", "api"), (":path", "/old")]);
    let mut d = Decoder::midway();
    // Seen: a new path is inserted (62); the authority (now 64) is referenced.
    let block = enc.block(&[(":path", "/new"), (":authority", "api"), (":path", "/new")]);
    assert_eq!(
        decode(&mut d, &block).unwrap(),
        vec![
            (Some(":path".into()), Some("/new".into())),
            (None, None),
            (Some(":path".into()), Some("/new".into())),
        ]
    );
    // A literal whose name is indexed into the unknown part: its value is known, its name not,
    // and the entry it adds still takes index 62.
    let mut block = Vec::new();
    crate::families::http::h2::testenc::integer(64, 6, 0x40, &mut block);
    block.extend([2, b'v', b'2']);
    block.push(0x80 | 63); // The earlier "/new", shifted by one.
    block.push(0x80 | 62); // The entry just added: name unknown.
    assert_eq!(
        decode(&mut d, &block).unwrap(),
        vec![
            (None, Some("v2".into())),
            (Some(":path".into()), Some("/new".into())),
            (None, Some("v2".into())),
        ]
    );
    assert!(!d.is_complete());
}

#[test]
fn a_size_update_to_zero_makes_a_missed_table_known_empty() {
    let mut d = Decoder::midway();
    assert_eq!(decode(&mut d, &[0x80 | 62]).unwrap(), vec![(None, None)]);
    let mut enc = Encoder::default();
    let mut block = Vec::new();
    enc.resize(0, &mut block);
    enc.resize(4096, &mut block);
    enc.field(":path", "/a", Mode::Index, &mut block);
    assert_eq!(decode(&mut d, &block).unwrap(), known(&[(":path", "/a")]));
    assert!(d.is_complete());
    // The table is known: index 63 does not exist.
    assert_eq!(decode(&mut d, &[0x80 | 63]), Err(HpackError::Index));
}

#[test]
fn an_entry_larger_than_a_known_maximum_empties_the_table() {
    let mut d = Decoder::midway();
    let mut enc = Encoder::default();
    let mut block = Vec::new();
    enc.resize(64, &mut block);
    enc.field("x-big", &"v".repeat(40), Mode::Index, &mut block);
    decode(&mut d, &block).unwrap();
    assert!(d.is_complete());
    assert_eq!(d.table_size(), 0);
}

/// A table larger than Periscope keeps: the oldest entries are forgotten, and references to
/// them are unknown rather than errors.
#[test]
fn a_table_over_the_memory_bound_forgets_its_oldest_entries() {
    let mut d = Decoder::at_start();
    d.allow_table_size(1 << 20);
    let mut enc = Encoder::default();
    let mut block = Vec::new();
    enc.resize(1 << 20, &mut block);
    for i in 0..400 {
        enc.field("x-key", &format!("{i:0>60}"), Mode::Index, &mut block);
    }
    decode(&mut d, &block).unwrap();
    assert!(d.table_size() <= MAX_TABLE_BYTES);
    assert!(!d.is_complete());
    assert_eq!(
        decode(&mut d, &[0xff, 0x80, 0x02]).unwrap(),
        vec![(None, None)]
    );
}

#[test]
fn malformed_blocks_are_errors_and_leave_the_table_unknown() {
    for (block, error) in [
        (&[0x80][..], HpackError::Index),
        (&[0x41, 0x05, b'a'][..], HpackError::Truncated),
        (
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
            HpackError::Integer,
        ),
        (&[0x40, 0x81, 0xff, 0x01, b'a'][..], HpackError::Huffman),
        (&[0x7f][..], HpackError::Truncated),
    ] {
        let mut d = Decoder::at_start();
        assert_eq!(decode(&mut d, block), Err(error), "{block:x?}");
        assert!(!d.is_complete());
    }
}

/// What the reference encoder writes: blocks of fields drawn from a small vocabulary (so
/// entries are reused by index), some unindexed, some size updates.
fn blocks_strategy() -> impl proptest::strategy::Strategy<Value = Vec<Vec<(u8, u8, bool)>>> {
    use proptest::prelude::*;
    proptest::collection::vec(
        proptest::collection::vec((0u8..6, 0u8..8, any::<bool>()), 1..8),
        1..30,
    )
}

const NAMES: [&str; 6] = [
    ":path",
    ":authority",
    "content-type",
    "x-id",
    ":method",
    "te",
];

proptest::proptest! {
    /// The property the tracker relies on: joined after any number of blocks, missing any run
    /// of blocks later, and with any size updates on the way, every field decoded with a name
    /// and value is exactly what was encoded; the rest is unknown, never wrong.
    #[test]
    fn joined_at_any_block_a_decoded_field_is_never_wrong(
        blocks in blocks_strategy(),
        join in 0usize..30,
        gap in (0usize..30, 0usize..5),
        huffman in proptest::bool::ANY,
        updates in proptest::collection::vec(0usize..300, 30),
    ) {
        let mut enc = Encoder::default();
        enc.huffman = huffman;
        let mut d = Decoder::midway();
        for (i, fields) in blocks.iter().enumerate() {
            let mut block = Vec::new();
            if updates[i] < 100 {
                enc.resize(updates[i] * 3, &mut block);
            }
            let mut truth = Vec::new();
            for &(name, value, index) in fields {
                let (name, value) = (NAMES[name as usize], format!("value-{value}"));
                let mode = if index { Mode::Index } else { Mode::NoIndex };
                enc.field(name, &value, mode, &mut block);
                truth.push((name.to_string(), value));
            }
            if i < join || (gap.0..gap.0 + gap.1).contains(&i) {
                d.lose();
                continue;
            }
            let got = decode(&mut d, &block).expect("a valid block");
            proptest::prop_assert_eq!(got.len(), truth.len());
            for ((name, value), (true_name, true_value)) in got.iter().zip(&truth) {
                proptest::prop_assert!(name.as_ref().is_none_or(|n| n == true_name));
                proptest::prop_assert!(value.as_ref().is_none_or(|v| v == true_value));
            }
        }
    }

    /// Arbitrary Huffman-coded strings (the crate's decoder on hostile input) never panic; a
    /// value that decodes is what the crate's encoder gives back for it.
    #[test]
    fn arbitrary_huffman_strings_never_panic(
        coded in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
    ) {
        let mut block = Vec::new();
        crate::families::http::h2::testenc::integer(coded.len(), 7, 0x80, &mut block);
        block.extend(&coded);
        if let Ok(value) = string(&mut &block[..]) {
            let mut again = Vec::new();
            httlib_huffman::encode(&value, &mut again).expect("encode");
            proptest::prop_assert!(again.len() <= coded.len());
        }
    }

    /// Arbitrary bytes never panic and never grow the table past its bound.
    #[test]
    fn arbitrary_blocks_are_bounded(
        blocks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..200), 1..20),
        midway in proptest::bool::ANY,
    ) {
        let mut d = if midway { Decoder::midway() } else { Decoder::at_start() };
        d.allow_table_size(u32::MAX);
        for block in &blocks {
            let _ = decode(&mut d, block);
            proptest::prop_assert!(d.table_size() <= MAX_TABLE_BYTES);
        }
    }
}

/// A decoder that saw everything decodes everything exactly (the reference encoder's blocks,
/// with evictions).
#[test]
fn from_the_start_every_field_is_known() {
    let mut enc = Encoder::default();
    let mut d = Decoder::at_start();
    for i in 0..200 {
        let fields = [
            (":path", format!("/p/{}", i % 37)),
            ("x-id", format!("{i:0>50}")),
        ];
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let got = decode(&mut d, &enc.block(&pairs)).unwrap();
        assert_eq!(got, known(&pairs));
    }
}

#[test]
fn a_block_says_what_it_is_without_a_table() {
    use super::{Head, head_of};
    // RFC 7541 C.3.1 (a request) and C.5.1 (a response).
    let request = hex("828684410f7777772e6578616d706c652e636f6d");
    let response = hex("4803333032580770726976617465611d");
    assert_eq!(head_of(&request), Some(Head::Request));
    assert_eq!(head_of(&response), Some(Head::Response));
    // Joined midway: references into the unknown table are passed over, as are literal
    // fields that are not pseudo-headers and table size updates.
    assert_eq!(head_of(&hex("bebf82")), Some(Head::Request));
    assert_eq!(
        head_of(&hex("200003666f6f036261728d")),
        Some(Head::Response)
    );
    // A literal pseudo-header name.
    assert_eq!(head_of(b"\x00\x07:status\x03200"), Some(Head::Response));
    assert_eq!(head_of(b"\x00\x05:path\x01/"), Some(Head::Request));
    // Nothing says, or bytes that are not HPACK.
    assert_eq!(head_of(&hex("bebf")), None);
    assert_eq!(head_of(&[]), None);
    assert_eq!(head_of(&hex("80")), None);
    assert_eq!(head_of(&hex("00ff")), None);
}

/// nginx's response blocks insert `server`, `date` and `content-type` into the table on every
/// response, Huffman-coded: the recent strings hand back what the same bytes decoded to, and
/// more distinct strings than they keep (a new date every second) still decode exactly, the
/// same value sent raw or coded alike.
#[test]
fn strings_sent_again_decode_as_the_first_time() {
    let mut d = Decoder::at_start();
    // RFC 7541 C.6.1 (Huffman): :status 302, cache-control private, date, location.
    let first = hex(
        "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
    );
    let expected = known(&[
        (":status", "302"),
        ("cache-control", "private"),
        ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
        ("location", "https://www.example.com"),
    ]);
    assert_eq!(decode(&mut d, &first).unwrap(), expected);
    // The same block again (its literals now among the recent ones), then blocks of twelve
    // distinct values each, more than are kept, then the first block again.
    assert_eq!(decode(&mut d, &first).unwrap(), expected);
    let mut e = Encoder::default();
    for round in 0..3 {
        for huffman in [true, false] {
            e.huffman = huffman;
            let fields: Vec<(String, String)> = (0..12)
                .map(|i| (format!("x-{i}"), format!("value {i} of round {round}")))
                .collect();
            let pairs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            assert_eq!(decode(&mut d, &e.block(&pairs)).unwrap(), known(&pairs));
        }
    }
    assert_eq!(decode(&mut d, &first).unwrap(), expected);
}
