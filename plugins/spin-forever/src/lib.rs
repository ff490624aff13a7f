//! `spin-forever`: never returns from `handle`.
//!
//! The loop's counter goes through `black_box`, so the optimiser cannot prove the loop has no
//! effect and remove it. The host must stop it (fuel or epoch deadline) and fail the message.

use std::hint::black_box;

use wasmill_guest::{Error, Handler, Message, export_handler};

struct SpinForever;

impl Handler for SpinForever {
    fn handle(_msg: Message) -> Result<Vec<Message>, Error> {
        let mut n: u64 = 0;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }
}

export_handler!(SpinForever);
