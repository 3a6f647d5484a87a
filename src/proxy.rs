//! The data plane. The life of a request, top to bottom:
//!
//! 1. `listener.rs` accepts the connection (HTTP/1.1 or h2c), hands it to the least busy worker
//!    if the one that accepted it serves clearly more (`balance.rs`), and loads the generation in
//!    force;
//! 2. `stack.rs` runs the request path: route (`route.rs`), tenant, admission policies;
//!    `exchange.rs` the deadlines and tries;
//! 3. `forward.rs` rewrites headers for the hop, `upstream.rs` picks an endpoint and sends the
//!    try over a pooled connection;
//! 4. the upstream's answer streams back untouched but for hop-by-hop headers, or
//!    `respond.rs` builds rampart's own answer.

/// `impl AsyncWrite for $ty<I>` that hands every call to its `io` field: the wrappers that watch
/// or replay a stream's reads (`h1::Rewind`, `h1::gone::Watched`, `conn::SeesPreface`) leave its
/// writes alone, so they share this one pass-through rather than three copies of it.
macro_rules! write_through {
    ($ty:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<I> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}

pub mod access_log;
pub mod authority;
pub mod balance;
pub mod bind;
pub mod body;
pub mod conn;
pub mod ctx;
pub mod degrade;
pub mod exchange;
pub mod finish;
pub mod forward;
pub mod grpc;
pub mod guard;
pub mod h1;
pub mod health;
pub mod idempotent;
pub mod listener;
pub mod normalize;
pub mod pool;
pub mod respond;
pub mod route;
pub mod shared;
pub mod sock;
pub mod spare;
pub mod stack;
pub mod stall;
pub mod tee;
pub mod tunnel;
pub mod upgrade;
pub mod upstream;
pub mod wire;

use std::future::Future;
use std::pin::Pin;

/// `make()`'s future, boxed: the box is allocated first and the future built in it.
/// `Box::pin(f)` builds `f` aside and copies it in, the whole of its largest state: 4,544
/// bytes a request for the request path's future handed to hyper, 5 KiB a connection for the
/// lean server's. For a future that is boxed because it is large.
pub(crate) fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
