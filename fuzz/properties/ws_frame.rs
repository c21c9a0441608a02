//! The WebSocket frame reader must turn any client bytes into messages or an error, never a
//! panic or a message over the limit, and must read the same messages however the bytes are
//! split into reads. Shared by the `ws_frame` fuzz target and the corpus replay in
//! `engineio/tests/fuzz_corpora.rs`.

use engineio::frame::{Incoming, Reader, WsError};

/// What the reader made of the bytes, split into reads of `split` bytes (0: one read).
fn read(data: &[u8], max: usize, split: usize) -> (Vec<String>, Option<WsError>) {
    let mut reader = Reader::default();
    let mut seen = Vec::new();
    let mut closed = false;
    let chunks: Vec<&[u8]> = if split == 0 {
        vec![data]
    } else {
        data.chunks(split).collect()
    };
    for chunk in chunks {
        // The session stops reading at a close frame.
        if closed {
            break;
        }
        let mut chunk = chunk.to_vec();
        let fed = reader.feed(&mut chunk, max, &mut |m| {
            seen.push(match m {
                Incoming::Text(t) => {
                    assert!(t.len() <= max, "text over the limit");
                    format!("text:{t}")
                }
                Incoming::Binary(b) => {
                    assert!(b.len() <= max, "binary over the limit");
                    format!("binary:{b:?}")
                }
                Incoming::Ping(p) => {
                    assert!(p.len() <= 125, "control frame over 125 bytes");
                    format!("ping:{p:?}")
                }
                Incoming::Pong => "pong".into(),
                Incoming::Close(code) => {
                    closed = true;
                    format!("close:{code:?}")
                }
            })
        });
        if let Err(e) = fed {
            return (seen, Some(e));
        }
    }
    (seen, None)
}

/// The property, on one input: its first two bytes choose the limit and the split.
pub fn check(input: &[u8]) {
    let Some((&[max, split], data)) = input.split_first_chunk::<2>() else {
        return;
    };
    let max = usize::from(max) * 4;
    let whole = read(data, max, 0);
    let split = read(data, max, usize::from(split % 16) + 1);
    assert_eq!(whole, split, "the split into reads changed what was read");
}
