use super::*;

/// A recorded connection (`testdata/record.py`): each line one chunk, `c HEX` sent by the
/// client, `s HEX` by the server.
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

fn feed(c: &mut Connection, chunks: &[(Side, Vec<u8>)], out: &mut Vec<Outcome>) {
    for (i, (side, bytes)) in chunks.iter().enumerate() {
        let transfer = Transfer {
            time_ns: (i as u64 + 1) * 100,
            len: bytes.len() as u64,
            captured: bytes,
        };
        c.on_transfer(*side, transfer, out);
    }
}

#[test]
fn debug_fixtures() {
    for text in [
        include_str!("testdata/nginx_nghttp.txt"),
        include_str!("testdata/grpc_python.txt"),
    ] {
        let mut c = Connection::new(Start::Beginning);
        let mut out = Vec::new();
        feed(&mut c, &fixture(text), &mut out);
        c.on_close(10_000, &mut out);
        for o in &out {
            println!("{o:?}");
        }
    }
}
