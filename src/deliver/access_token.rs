//! A bus's access token (Pub/Sub's OAuth token, Service Bus's SAS or Entra
//! ID token), kept between requests: fetched when a request first needs
//! it, renewed a margin before it expires, fetched by one request at a time
//! (the others wait for it rather than ask too), and dropped after the bus
//! refused it (a 401), so the next request fetches a new one. A failed fetch
//! is not kept: the next request tries again, at the scheduler's pace.

use std::future::Future;
use std::time::Duration;

use http::header::HeaderValue;
use tokio::time::Instant;

/// A token is renewed this long before its end: a request signed just
/// before the end still arrives in time, and a clock a little off does not
/// matter.
pub const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// A token with how long it is good for, as its issuer said.
pub struct Fetched {
    /// The `Authorization` header's value (`Bearer ...`,
    /// `SharedAccessSignature ...`), marked sensitive.
    pub header: HeaderValue,
    /// How long from now it is valid.
    pub valid_for: Duration,
}

struct Kept {
    header: HeaderValue,
    renew_at: Instant,
}

/// One subscription's token.
#[derive(Default)]
pub struct AccessToken {
    kept: tokio::sync::Mutex<Option<Kept>>,
}

impl AccessToken {
    /// The token to send: the kept one if it is not due for renewal, else
    /// one `fetch` gets (and then kept). Only one fetch runs at a time.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<HeaderValue, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, String>>,
    {
        let mut kept = self.kept.lock().await;
        if let Some(k) = kept.as_ref().filter(|k| Instant::now() < k.renew_at) {
            return Ok(k.header.clone());
        }
        *kept = None;
        let mut fetched = fetch().await?;
        fetched.header.set_sensitive(true);
        // A token valid for less than the margin is used for half its life.
        let margin = RENEW_BEFORE.min(fetched.valid_for / 2);
        *kept = Some(Kept {
            header: fetched.header.clone(),
            renew_at: Instant::now() + fetched.valid_for.saturating_sub(margin),
        });
        Ok(fetched.header)
    }

    /// Forgets the kept token if it is `refused`: several requests sent
    /// with one token that the bus refuses each forget it, but not the new
    /// one the first of them already fetched.
    pub async fn forget_refused(&self, refused: &HeaderValue) {
        let mut kept = self.kept.lock().await;
        if kept.as_ref().is_some_and(|k| k.header == *refused) {
            *kept = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;

    fn fetched(n: usize, valid_for: Duration) -> Result<Fetched, String> {
        Ok(Fetched {
            header: HeaderValue::from_str(&format!("Bearer t{n}")).map_err(|e| e.to_string())?,
            valid_for,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_kept_renewed_before_its_end_and_forgotten_when_refused() {
        let token = AccessToken::default();
        let fetches = AtomicUsize::new(0);
        let get = || async {
            let n = fetches.fetch_add(1, SeqCst) + 1;
            fetched(n, Duration::from_secs(3600))
        };
        assert_eq!(token.get(get).await.expect("fetched"), "Bearer t1");
        assert_eq!(token.get(get).await.expect("kept"), "Bearer t1");
        tokio::time::advance(Duration::from_secs(3600) - RENEW_BEFORE - Duration::from_secs(1)).await;
        assert_eq!(token.get(get).await.expect("still kept"), "Bearer t1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(token.get(get).await.expect("renewed"), "Bearer t2");
        token.forget_refused(&HeaderValue::from_static("Bearer t2")).await;
        assert_eq!(token.get(get).await.expect("fetched again"), "Bearer t3");
        assert_eq!(fetches.load(SeqCst), 3);
        // A late refusal of an older token leaves the new one.
        token.forget_refused(&HeaderValue::from_static("Bearer t2")).await;
        assert_eq!(token.get(get).await.expect("kept"), "Bearer t3");
        token.forget_refused(&HeaderValue::from_static("Bearer t3")).await;
        assert_eq!(token.get(get).await.expect("fetched again"), "Bearer t4");
        assert_eq!(fetches.load(SeqCst), 4);
        assert!(token.get(get).await.expect("kept").is_sensitive());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_is_not_kept_and_one_fetch_serves_every_waiting_request() {
        let token = Arc::new(AccessToken::default());
        let failed = token.get(|| async { Err::<Fetched, _>("HTTP 500".to_string()) }).await;
        assert_eq!(failed.err().as_deref(), Some("HTTP 500"));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut waiting = Vec::new();
        for _ in 0..8 {
            let (token, fetches) = (token.clone(), fetches.clone());
            waiting.push(tokio::spawn(async move {
                token
                    .get(|| async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        fetched(fetches.fetch_add(1, SeqCst) + 1, Duration::from_secs(60))
                    })
                    .await
            }));
        }
        for w in waiting {
            assert_eq!(w.await.expect("joined").expect("token"), "Bearer t1");
        }
        assert_eq!(fetches.load(SeqCst), 1, "one fetch for all of them");
        // A short-lived token (60 s, less than the margin) is used for half its life.
        tokio::time::advance(Duration::from_secs(31)).await;
        let renewed = token.get(|| async { fetched(9, Duration::from_secs(60)) }).await;
        assert_eq!(renewed.expect("renewed"), "Bearer t9");
    }
}
