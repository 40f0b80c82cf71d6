//! `doctor`: can this store reach every subscription? Each destination
//! probes its own way (`deliver::destinations::probe`: a webhook's DNS, TCP,
//! TLS, HTTP and clock; NATS's DNS, TCP, login and streams), each step with a
//! pass/fail line and a hint; this command runs them for every subscription
//! at once and prints them. Exit 1 if any step fails.

use clap::Args;
use serde::Serialize;

use super::{init_logging, load_config, runtime, CliError, CliResult};
use crate::config::SubscriptionConfig;
use crate::deliver::destinations;
use crate::deliver::envelope::Source;
use crate::deliver::probe::{step, Step, Verdict};

/// Arguments of `doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Only this subscription.
    #[arg(long, value_name = "S")]
    pub subscription: Option<String>,
}

/// One subscription's checks.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Subscription name.
    pub subscription: String,
    /// Its URL (no credentials).
    pub url: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

async fn check(sub: SubscriptionConfig, source: Source) -> Report {
    let steps = destinations::probe(&sub, &source).await;
    Report {
        subscription: sub.name.clone(),
        url: sub.url_for_logs(),
        steps,
    }
}

/// Runs the checks and prints them.
pub fn run(path: Option<&std::path::Path>, args: DoctorArgs) -> CliResult {
    let config = load_config(path)?;
    init_logging("error");
    let subs: Vec<SubscriptionConfig> = config
        .subscriptions
        .iter()
        .filter(|s| args.subscription.as_deref().is_none_or(|n| n == s.name))
        .cloned()
        .collect();
    if subs.is_empty() {
        return match args.subscription {
            Some(name) => Err(CliError::usage(format!("--subscription {name:?}: not in the config"))),
            None => {
                println!("no subscriptions configured: nothing to check");
                Ok(())
            }
        };
    }
    let rt = runtime()?;
    let source = Source {
        store_id: config.agent.store_id.clone(),
        agent_id: config.agent.agent_id.clone(),
    };
    let reports: Vec<Report> = rt.block_on(check_all(subs, move |sub| check(sub, source.clone())));
    let failed = any_failed(&reports);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports).unwrap_or_default());
    } else {
        for r in &reports {
            println!("{}  {}", r.subscription, r.url);
            for s in &r.steps {
                let mark = match s.verdict {
                    Verdict::Ok => "ok  ",
                    Verdict::Warn => "WARN",
                    Verdict::Fail => "FAIL",
                    Verdict::Skip => "skip",
                };
                println!("  {mark}  {:<6} {}", s.step, s.detail);
                if let Some(h) = &s.hint {
                    if s.verdict != Verdict::Ok {
                        println!("              hint: {h}");
                    }
                }
            }
            println!();
        }
    }
    if failed {
        Err(CliError::runtime("some checks failed (see above)"))
    } else {
        Ok(())
    }
}

/// Whether any step of any report failed (doctor then exits 1).
fn any_failed(reports: &[Report]) -> bool {
    reports
        .iter()
        .flat_map(|r| &r.steps)
        .any(|s| s.verdict == Verdict::Fail)
}

/// Runs `check` on every subscription side by side; one report each, in
/// order. A check that panicked is a failed check: dropping it would let
/// doctor pass without having checked.
async fn check_all<F, Fut>(subs: Vec<SubscriptionConfig>, check: F) -> Vec<Report>
where
    F: Fn(SubscriptionConfig) -> Fut,
    Fut: std::future::Future<Output = Report> + Send + 'static,
{
    let handles: Vec<_> = subs
        .into_iter()
        .map(|s| (s.name.clone(), s.url_for_logs(), tokio::spawn(check(s))))
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for (subscription, url, handle) in handles {
        out.push(match handle.await {
            Ok(report) => report,
            Err(e) => Report {
                subscription,
                url,
                steps: vec![step(
                    "check",
                    Verdict::Fail,
                    format!("the check itself failed: {}", join_error_text(e)),
                    Some("a bug in store-outbox: please report it with this output"),
                )],
            },
        });
    }
    out
}

/// What a check task ended with instead of a report.
fn join_error_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(names: &[&str]) -> Vec<SubscriptionConfig> {
        let text: String = names
            .iter()
            .map(|n| {
                format!(
                    "[[subscription]]\nname = \"{n}\"\nurl = \"http://127.0.0.1:9/{n}\"\n\
                     secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n"
                )
            })
            .collect();
        crate::deliver::destinations::parse_config(&text, None)
            .expect("valid")
            .subscriptions
    }

    async fn fine_or_panic(sub: SubscriptionConfig) -> Report {
        if sub.name == "boom" {
            panic!("a check went wrong");
        }
        Report {
            subscription: sub.name.clone(),
            url: sub.url_for_logs(),
            steps: vec![step("dns", Verdict::Ok, "fine", None)],
        }
    }

    #[tokio::test]
    async fn no_http_answer_fails_at_http_and_skips_the_clock() {
        // Accepts connections and closes them unanswered.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let mut sub = subs(&["a"]).remove(0);
        sub.url = format!("http://127.0.0.1:{port}/").parse().expect("url");
        let steps = destinations::probe(&sub, &test_source()).await;
        let got: Vec<(&str, Verdict)> = steps.iter().map(|s| (s.step, s.verdict)).collect();
        assert_eq!(
            got,
            [
                ("dns", Verdict::Ok),
                ("tcp", Verdict::Ok),
                ("tls", Verdict::Skip),
                ("http", Verdict::Fail),
                ("clock", Verdict::Skip),
            ]
        );
    }

    fn test_source() -> Source {
        Source {
            store_id: "0042".into(),
            agent_id: "till-03".into(),
        }
    }

    #[tokio::test]
    async fn a_nats_server_that_does_not_speak_nats_fails_at_nats_after_dns_and_tcp() {
        // Accepts connections and says nothing: no NATS INFO ever comes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let text = format!(
            "[[subscription]]\nname = \"bus\"\nurl = \"nats://127.0.0.1:{port}\"\n\
             subject = \"pos.{{type}}\"\ntimeout = \"1s\"\n"
        );
        let sub = crate::deliver::destinations::parse_config(&text, None)
            .expect("valid")
            .subscriptions
            .remove(0);
        let steps = destinations::probe(&sub, &test_source()).await;
        let got: Vec<(&str, Verdict)> = steps.iter().map(|s| (s.step, s.verdict)).collect();
        assert_eq!(
            got,
            [
                ("dns", Verdict::Ok),
                ("tcp", Verdict::Ok),
                ("nats", Verdict::Fail),
                ("stream", Verdict::Skip),
            ]
        );
        assert!(steps[1].detail.contains(&port.to_string()), "{}", steps[1].detail);
        drop(listener);
    }

    #[tokio::test]
    async fn a_check_that_panicked_is_reported_as_failed() {
        let reports = check_all(subs(&["a", "boom", "c"]), fine_or_panic).await;
        let names: Vec<&str> = reports.iter().map(|r| r.subscription.as_str()).collect();
        assert_eq!(names, ["a", "boom", "c"], "one report per subscription, in order");
        let boom = &reports[1];
        assert_eq!(boom.url, "http://127.0.0.1:9/boom");
        assert_eq!(boom.steps.len(), 1);
        assert_eq!(boom.steps[0].verdict, Verdict::Fail);
        assert!(
            boom.steps[0].detail.contains("a check went wrong"),
            "{}",
            boom.steps[0].detail
        );
        assert!(any_failed(&reports), "doctor must exit non-zero");
        assert!(!any_failed(&reports[..1]));
    }
}
