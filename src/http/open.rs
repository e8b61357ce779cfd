//! `herald_connections{transport}`: a zero-sized guard each session holds, counting it while
//! it lives (zero-sized so the count costs an idle connection nothing).

use std::marker::PhantomData;

pub trait Transport {
    const NAME: &'static str;
}

pub struct Sse;
pub struct Ws;
pub struct Pusher;

impl Transport for Sse {
    const NAME: &'static str = "sse";
}
impl Transport for Ws {
    const NAME: &'static str = "ws";
}
impl Transport for Pusher {
    const NAME: &'static str = "pusher";
}

pub struct Open<T: Transport>(PhantomData<T>);

impl<T: Transport> Open<T> {
    pub fn new() -> Open<T> {
        metrics::gauge!("herald_connections", "transport" => T::NAME).increment(1.0);
        Open(PhantomData)
    }
}

impl<T: Transport> Default for Open<T> {
    fn default() -> Open<T> {
        Open::new()
    }
}

impl<T: Transport> Drop for Open<T> {
    fn drop(&mut self) {
        metrics::gauge!("herald_connections", "transport" => T::NAME).decrement(1.0);
    }
}
