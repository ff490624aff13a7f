//! `memory-hog`: allocates memory without bound, 1 MiB at a time, until something stops it.
//!
//! Every chunk is written to (one byte per 4 KiB page) and kept, so the memory is really used
//! and cannot be optimised away. The host's memory limit must make the allocation fail, which
//! aborts (a trap), and the message fails; the host itself must not run out of memory.

use std::hint::black_box;

use wasmill_guest::{Error, Handler, Message, export_handler};

const CHUNK: usize = 1 << 20;

struct MemoryHog;

impl Handler for MemoryHog {
    fn handle(_msg: Message) -> Result<Vec<Message>, Error> {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            for i in (0..CHUNK).step_by(4096) {
                chunk[i] = (i / 4096) as u8 | 1;
            }
            chunks.push(black_box(chunk));
        }
    }
}

export_handler!(MemoryHog);
