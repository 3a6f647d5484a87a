//! Idempotency keys on the request path (policy `idempotency`, SPEC §10).
//!
//! A request without the key header goes straight to the exchange: the only cost is one header
//! lookup. With it, the body is read ahead (up to `max_body`) to digest it, the store is asked
//! about the key, and either a refusal or the kept answer is given at once, or the request
//! runs holding a [`Claim`]. The claim ends exactly once: completed with the answer when an
//! upstream answer below 500 has been read to its end (teed as it streams, see `tee.rs`),
//! completed as too large, released (5xx, rampart's own refusal) so the client may retry, or
//! held: when the request ends without its answer after a try was started (its client left
//! before the answer, or during its body; or the answer's body broke), the upstream may still
//! be working on it, so the key stays in flight (a repeat is 409) until the request's deadline
//! (`timeout.request`), or for `ttl` up to 60 s without one, and is free after that. Letting
//! the try run on without its client and keeping its answer would be better for the client,
//! but the tries borrow the request's context, which lives in the client's connection task.
//!
//! A malformed key (empty, over 255 bytes, two header lines that differ) is refused 400
//! `bad_request` before anything runs: running it unprotected would let the client believe
//! its retry is safe.
//!
//! A request body too large to digest (over `max_body`) runs unprotected, as if it had no key,
//! and its answer says so (`x-rampart-idempotency: body-too-large`), so the client knows a
//! repeat would run again. A new key while the route's table is full of claims in flight is
//! refused 503 `idempotency_table_full` (`Begin::Full`) before it runs.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use tokio::time::Instant;

use super::body::{whole_headers, Body, Buffered, ClientBody, ClientFault, ClientIn, FaultCell};
use super::ctx::{RequestCtx, TryLog};
use super::exchange::{self, client_fault_answer, retry_loop, try_once, BodyDeadline, Tried};
use super::forward;
use super::grpc;
use super::respond::{self, answer};
use super::tee::{Ending, Keeper, Tee};
use crate::error::{BoxError, Reason};
use crate::policy::idempotency::{
    digest, Begin, Digest, IdempotencyStore, RouteIdempotency, StoreKey, StoredAnswer,
    UNPROTECTED_HEADER,
};
use crate::policy::retry::is_idempotent;

/// The `retry-after` of `idempotency_table_full`: a claim in flight ends with its request.
const TABLE_FULL_RETRY: Duration = Duration::from_secs(1);

/// A request's hold on its key; on drop, unless completed, released, or held a while when the
/// upstream may still be working on the request (`sent`).
#[derive(Debug)]
struct Claim {
    store: Arc<dyn IdempotencyStore>,
    key: StoreKey,
    digest: Digest,
    done: bool,
    /// Set when the request ends without its answer after a try was started: its outcome at
    /// the upstream is unknown.
    sent: bool,
    /// The request's deadline: the longest the upstream's work for it is waited for.
    deadline: Option<Instant>,
    /// How long to hold the key without a deadline.
    hold_max: Duration,
}

/// The claim while the tries run: if the request is dropped there (its client left) after a
/// try was started, the claim is held, not released.
struct Running<'a> {
    claim: Option<Claim>,
    tries: &'a TryLog,
}

/// Completes the claim with the answer once its body has been read.
#[derive(Debug)]
struct ClaimKeeper {
    claim: Claim,
    status: StatusCode,
    headers: HeaderMap,
    /// A gRPC answer whose status comes in its trailers: kept only if they say it did not fail.
    trailed_grpc: bool,
}

/// Steps 5–8 under the route's idempotency policy.
pub async fn run(
    ctx: &RequestCtx<'_>,
    idem: &RouteIdempotency,
    mut req: Request<ClientIn>,
) -> Response<Body> {
    let key = match idem.key_of(req.headers(), ctx.tenant.as_str(), ctx.tenant.is_verified()) {
        Ok(Some(key)) => key,
        Ok(None) => return exchange::run(ctx, req).await,
        Err(msg) => return answer(Reason::BadRequest, msg, None),
    };
    forward::prepare_request(&mut req, ctx.peer, ctx.sent, ctx.spare.names());
    let fault = Arc::new(FaultCell::new(ctx.spare.identity(), ctx.body_idle));
    // The access log's `bytes_in`: the cell counts what the body read ahead takes in.
    ctx.tries.body(&fault);
    let (parts, incoming) = req.into_parts();
    let body = ClientBody::new(incoming, fault.clone());
    let read = match read_ahead(ctx, body, idem.max_body).await {
        Ok(Buffered::Replayable(b, t)) => (b, t),
        Ok(streaming) => {
            tracing::debug!(
                max_body = idem.max_body,
                "idempotency key not applied: the request body is larger than max_body"
            );
            let mut rsp = run_read(ctx, parts, streaming, &fault).await;
            whole_headers(&mut rsp);
            rsp.headers_mut().insert(
                UNPROTECTED_HEADER,
                http::HeaderValue::from_static("body-too-large"),
            );
            return rsp;
        }
        Err(e) => {
            tracing::debug!(error = %e, "client request body failed");
            return client_fault_answer(fault.get().unwrap_or(ClientFault::Late));
        }
    };
    let (read, trailers) = read;
    let digest = digest(&parts.method, &parts.uri, &read);
    if let Some(rsp) = refusal(idem.store.begin(&key, digest).await) {
        return rsp;
    }
    let claim = Claim {
        store: idem.store.clone(),
        key,
        digest,
        done: false,
        sent: false,
        deadline: ctx.deadline,
        hold_max: idem.hold_without_deadline(),
    };
    let mut running = Running {
        claim: Some(claim),
        tries: ctx.tries,
    };
    let mut rsp = run_read(ctx, parts, Buffered::Replayable(read, trailers), &fault).await;
    let Some(claim) = running.claim.take() else {
        return rsp;
    };
    // The kept answer is replayed with all its headers.
    whole_headers(&mut rsp);
    // A gRPC answer stands for the status its `grpc-status` maps to (a failed call is an HTTP
    // 200): one in its head (Trailers-Only) is judged now, one in its trailers at its end.
    let grpc = grpc::is_grpc(rsp.headers());
    let stands_for = match grpc {
        true => grpc::answer_status(rsp.status(), rsp.headers()),
        false => rsp.status().as_u16(),
    };
    // An answer with a transfer coding (`transfer-encoding: gzip`, from an HTTP/1.1 upstream's
    // `gzip, chunked`) is not kept either: its replay, whole in memory, would be framed by its
    // length beside a coding that needs the chunked framing, which no client can read.
    let kept = rsp.body().is_upstream()
        && stands_for < 500
        && !rsp.headers().contains_key(http::header::TRANSFER_ENCODING);
    if !kept {
        // Dropping the claim releases the key: the client may retry.
        return rsp;
    }
    let (head, inner) = rsp.into_parts();
    let keeper = ClaimKeeper {
        claim,
        status: head.status,
        headers: head.headers.clone(),
        trailed_grpc: grpc && !head.headers.contains_key(grpc::GRPC_STATUS),
    };
    let body = Tee::new(inner, idem.max_body, Box::new(keeper));
    Response::from_parts(head, Body::Teed(Box::new(body)))
}

/// Steps 5–8 for a request whose body an earlier step has read ahead (idempotency digests
/// it); `parts` are prepared for the hop already.
async fn run_read(
    ctx: &RequestCtx<'_>,
    mut parts: Parts,
    body: Buffered,
    fault: &FaultCell,
) -> Response<Body> {
    let retry = ctx.route.policy.retry.as_ref();
    if let Some(r) = retry {
        r.budget.deposit();
    }
    match (retry, body) {
        (Some(r), Buffered::Replayable(b, t)) if is_idempotent(&parts.method, &parts.headers) => {
            retry_loop(ctx, r, &mut parts, b, t, Some(fault)).await
        }
        (_, Buffered::Replayable(b, t)) => {
            try_once(
                ctx,
                &mut parts,
                Body::with_trailers(b, t.map(|t| *t)),
                None,
                Some(fault),
                &mut Tried::new(),
            )
            .await
        }
        (_, Buffered::Streaming(body)) => {
            try_once(ctx, &mut parts, body, None, Some(fault), &mut Tried::new()).await
        }
    }
}

/// The answer for a key already held, or `None` when this request claimed it.
fn refusal(begin: Begin) -> Option<Response<Body>> {
    let (reason, msg) = match begin {
        Begin::Claimed => return None,
        Begin::Replay(kept) => return Some(respond::replay(&kept)),
        Begin::InFlight => (
            Reason::IdempotencyInFlight,
            "the first request with this idempotency key is still in flight",
        ),
        Begin::Reused => (
            Reason::IdempotencyKeyReused,
            "this idempotency key was used by a different request (method, path or body)",
        ),
        Begin::NotReplayable => (
            Reason::IdempotencyNotReplayable,
            "the first answer for this idempotency key was too large to keep",
        ),
        Begin::Full => {
            let msg = "too many requests with idempotency keys are in flight on this route \
                       (idempotency.max_entries); the request did not run";
            return Some(answer(
                Reason::IdempotencyTableFull,
                msg,
                Some(TABLE_FULL_RETRY),
            ));
        }
    };
    Some(answer(reason, msg, None))
}

/// Reads the body ahead, bounded by the request deadline.
async fn read_ahead(
    ctx: &RequestCtx<'_>,
    body: ClientBody,
    limit: usize,
) -> Result<Buffered, BoxError> {
    match ctx.deadline {
        Some(d) => tokio::time::timeout_at(d, body.buffer(limit))
            .await
            .unwrap_or_else(|_| Err(BodyDeadline.into())),
        None => body.buffer(limit).await,
    }
}

// === impl Claim ===

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let hold = match (self.sent, self.deadline) {
            (false, _) => Duration::ZERO,
            (true, Some(d)) => d.saturating_duration_since(Instant::now()),
            (true, None) => self.hold_max,
        };
        match hold.is_zero() {
            true => self.store.release(&self.key, self.digest),
            false => self.store.hold(&self.key, self.digest, hold),
        }
    }
}

// === impl Running ===

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.claim.as_mut() {
            c.sent = self.tries.started();
        }
    }
}

// === impl ClaimKeeper ===

impl Keeper for ClaimKeeper {
    fn kept(mut self: Box<Self>, ending: Ending) {
        let answer = match ending {
            // A failed gRPC call (its trailers' status maps to a 5xx, or it has none): released
            // on drop, as a 5xx is, so the client may retry.
            Ending::Whole(_, trailers)
                if self.trailed_grpc
                    && grpc::trailers_status(trailers.as_ref().unwrap_or(&HeaderMap::new()))
                        >= 500 =>
            {
                return;
            }
            Ending::Whole(body, trailers) => Some(StoredAnswer {
                status: self.status,
                headers: std::mem::take(&mut self.headers),
                // Copied out of the read buffer only now that it is kept.
                body: body.into_owned(),
                trailers,
            }),
            Ending::TooLarge => None,
            // The upstream answered, but the answer never arrived whole (its client left, or
            // its body broke): the key is held until the request's deadline, as for a request
            // whose client left before the answer.
            Ending::Broken => {
                self.claim.sent = true;
                return;
            }
        };
        let c = &mut self.claim;
        c.store.complete(&c.key, c.digest, answer);
        c.done = true;
    }
}
