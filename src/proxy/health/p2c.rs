//! Power of two choices: draw two distinct available endpoints at random and send the try to
//! the cheaper one ([`EndpointHealth::cost`]: latency EWMA weighted by tries in flight).
//!
//! Why two and not the cheapest of all: comparing every endpoint sends a burst of tries to the
//! same momentary winner (herding), and costs O(n) per pick; two random choices spread load
//! almost as well as the full comparison, at constant cost (Mitzenmacher; Finagle, Linkerd).

use super::EndpointHealth;

/// Random draws tried before falling back to a scan of the candidates (when most of them are
/// unavailable or avoided).
const DRAWS: usize = 4;

/// Picks a candidate by power of two choices among those `health` calls available at `now`
/// and `avoid` does not reject (pass `|_| false` to avoid nothing; a retry passes the address
/// its failed try used). One usable candidate is returned as is; none gives `None` and the
/// caller falls back (e.g. to every endpoint, or `upstream_unavailable`).
///
/// `rng`: `&mut fastrand::Rng::new()` is cheap (seeded from fastrand's thread-local generator).
pub fn p2c<'a, T>(
    cands: &'a [T],
    health: impl Fn(&T) -> &EndpointHealth,
    avoid: impl Fn(&T) -> bool,
    now: u64,
    rng: &mut fastrand::Rng,
) -> Option<&'a T> {
    let usable = |i: usize| !avoid(&cands[i]) && health(&cands[i]).available(now);
    let a = draw(cands.len(), &usable, None, rng)?;
    let Some(b) = draw(cands.len(), &usable, Some(a), rng) else {
        return Some(&cands[a]);
    };
    let (ca, cb) = (health(&cands[a]).cost(now), health(&cands[b]).cost(now));
    Some(&cands[if cb < ca { b } else { a }])
}

/// A random usable index other than `except`: a few random draws first (cheap when most
/// candidates are usable; a draw never lands on `except`), then a uniform choice among the
/// usable ones by scanning.
fn draw(
    len: usize,
    usable: &impl Fn(usize) -> bool,
    except: Option<usize>,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let span = len - usize::from(except.is_some());
    if span == 0 {
        return None;
    }
    for _ in 0..DRAWS {
        let i = rng.usize(..span);
        // Skip over `except` so every draw is a distinct candidate.
        let i = match except {
            Some(e) if i >= e => i + 1,
            _ => i,
        };
        if usable(i) {
            return Some(i);
        }
    }
    let ok = |i: usize| Some(i) != except && usable(i);
    let n = (0..len).filter(|&i| ok(i)).count();
    if n == 0 {
        return None;
    }
    let k = rng.usize(..n);
    (0..len).filter(|&i| ok(i)).nth(k)
}
