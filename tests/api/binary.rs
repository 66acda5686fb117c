//! The `billing` binary as operators run it: configuration from the environment, `--help`,
//! and how it refuses to start. Configuration parsing does not depend on the backend, so these
//! run on SQLite.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;

use crate::helpers::{event, subscription};
use crate::support::{Backend, TestDb};

/// `billing` with a clean environment: only the variables a test names. Its output goes to
/// pipes, so it must carry no colour codes even without NO_COLOR.
pub fn billing(vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(crate::helpers::billing_bin());
    command.env_clear().env("RUST_LOG", "info,sqlx=warn");
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    command
}

/// A running `billing serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub address: String,
    /// What it printed before it listened.
    pub started: Vec<String>,
    /// Each line it prints to stderr from then on.
    logs: mpsc::Receiver<String>,
    _db: TestDb,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signing secrets shaped like Stripe's (`whsec_` and 32 characters, or 64 as the Stripe CLI
/// prints them): the server refuses anything else.
const NEW_SECRET: &str = "whsec_realNewSecret0123456789abcdefghij";
const OLD_SECRET: &str = "whsec_realOldSecret0123456789abcdefghij";
const LOGS_SECRET: &str = "whsec_logsSecret0123456789abcdefghijklm";

/// Starts the server with `secrets` in `STRIPE_WEBHOOK_SECRETS`. `Ok` once it listens; `Err`
/// with everything it printed when it exits instead.
async fn serve(secrets: &str) -> Result<Server, String> {
    serve_with(&[("STRIPE_WEBHOOK_SECRETS", secrets)]).await
}

/// [`serve`] with more variables.
pub async fn serve_with(vars: &[(&str, &str)]) -> Result<Server, String> {
    serve_configured(vars, |_| {}).await
}

/// [`serve_with`], with `configure` changing the command before it runs.
pub async fn serve_configured(
    vars: &[(&str, &str)],
    configure: impl FnOnce(&mut Command),
) -> Result<Server, String> {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut all = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("BIND_ADDR", "127.0.0.1:0"),
    ];
    // Test mode, as the events the tests build say (`"livemode": false`), unless the test
    // names STRIPE_MODE itself (empty: leave it unset).
    if !vars.iter().any(|(name, _)| *name == "STRIPE_MODE") {
        all.push(("STRIPE_MODE", "test"));
    }
    all.extend(
        vars.iter()
            .filter(|(name, value)| !(*name == "STRIPE_MODE" && value.is_empty())),
    );
    let mut command = billing(&all);
    configure(&mut command);
    let mut child = command
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run billing");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = mpsc::channel();
    // Keeps reading after we stop listening: a closed pipe would break the server's logging.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut printed = String::new();
    let mut started = Vec::new();
    // Generous: this only catches a server that neither listens nor exits.
    while let Ok(line) = received.recv_timeout(Duration::from_secs(120)) {
        if let Some(address) = listening_address(&line) {
            started.push(line);
            return Ok(Server {
                address,
                child,
                started,
                logs: received,
                _db: db,
            });
        }
        printed.push_str(&line);
        printed.push('\n');
        started.push(line);
    }
    let status = child.wait().expect("wait for billing");
    Err(format!("{status}\n{printed}"))
}

/// The address in the "listening on" line, as text or as JSON.
fn listening_address(line: &str) -> Option<String> {
    let message = match serde_json::from_str::<Value>(line) {
        Ok(json) => json["message"].as_str()?.to_owned(),
        Err(_) => line.to_owned(),
    };
    let (_, address) = message.split_once("listening on ")?;
    Some(address.trim().to_owned())
}

impl Server {
    /// The lines printed since it listened, up to and including the first that `last` picks.
    pub fn logs_until(&self, mut last: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.logs.recv_timeout(Duration::from_secs(30)) {
            let done = last(&line);
            lines.push(line);
            if done {
                return lines;
            }
        }
        panic!(
            "the awaited line never came; printed:\n{}",
            lines.join("\n")
        );
    }

    /// Delivers an event signed with `secret` (which may be empty: a forgery).
    async fn deliver_signed_with(&self, secret: &str, id: &str) -> (u16, Value) {
        let now = Utc::now().timestamp();
        self.deliver_event_signed_with(secret, &event(id, "invoice.paid", now, Value::Null))
            .await
    }

    /// Delivers `event`, signed with `secret`.
    async fn deliver_event_signed_with(&self, secret: &str, event: &Value) -> (u16, Value) {
        let now = Utc::now().timestamp();
        let body = event.to_string();
        let signature = api::stripe::signature::sign(body.as_bytes(), secret, now);
        let response = reqwest::Client::new()
            .post(format!("{}/webhooks/stripe", self.address))
            .header("content-type", "application/json")
            .header("stripe-signature", signature)
            .body(body)
            .send()
            .await
            .expect("deliver");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// The one `error:` line a refused start printed, checked to name STRIPE_WEBHOOK_SECRETS and
/// `what`, and to print none of `secrets` nor a panic.
fn refusal(printed: &str, what: &str, secrets: &[&str]) {
    let errors: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{printed}");
    assert!(errors[0].contains("STRIPE_WEBHOOK_SECRETS"), "{printed}");
    assert!(errors[0].contains(what), "{printed}");
    for secret in secrets {
        assert!(!printed.contains(secret), "{printed}");
    }
    assert!(!printed.contains("panicked"), "{printed}");
}

/// A stray comma used to add the empty key, with which anyone can sign: the server must
/// refuse to start, say why in one `error:` line, and not print the secrets.
#[tokio::test]
async fn an_empty_webhook_secret_entry_stops_the_server() {
    for secrets in [
        format!("{NEW_SECRET},"),
        format!(",{NEW_SECRET}"),
        format!("{NEW_SECRET},,{OLD_SECRET}"),
        format!("{NEW_SECRET},  "),
    ] {
        let refused = match serve(&secrets).await {
            Ok(server) => {
                let forged = server.deliver_signed_with("", "evt_forged").await;
                panic!("started with {secrets:?}; a forged event got {forged:?}");
            }
            Err(printed) => printed,
        };
        refusal(&refused, "empty", &[NEW_SECRET, OLD_SECRET]);
    }
}

/// Issue 18: README's own example (`whsec_...`), `whsec_` and `x` started the server, and
/// events signed with them granted Pro. Anything not shaped like a Stripe signing secret now
/// stops it, in one line naming the entry's position and not its value.
#[tokio::test]
async fn a_placeholder_webhook_secret_stops_the_server() {
    for (secrets, position) in [
        ("whsec_...".to_owned(), "number 1 of 1"),
        ("whsec_".to_owned(), "number 1 of 1"),
        ("x".to_owned(), "number 1 of 1"),
        (format!("{NEW_SECRET},whsec_placeholder"), "number 2 of 2"),
    ] {
        let refused = match serve(&secrets).await {
            Ok(server) => {
                let forged = server.deliver_signed_with(&secrets, "evt_forged").await;
                panic!("started with {secrets:?}; a forged event got {forged:?}");
            }
            Err(printed) => printed,
        };
        refusal(
            &refused,
            position,
            &[NEW_SECRET, "whsec_placeholder", "whsec_..."],
        );
    }
}

/// With webhooks on, the deployment must say which Stripe mode it serves; a key of the other
/// mode than STRIPE_MODE is a contradiction. Both refuse the start in one line.
#[tokio::test]
async fn webhooks_need_a_stripe_mode() {
    for (vars, what) in [
        (vec![("STRIPE_MODE", "")], "STRIPE_MODE=live"),
        (
            vec![("STRIPE_MODE", "live"), ("STRIPE_API_KEY", "sk_test_abc")],
            "STRIPE_MODE is live but STRIPE_API_KEY is a test key",
        ),
    ] {
        let mut all = vec![("STRIPE_WEBHOOK_SECRETS", NEW_SECRET)];
        all.extend(vars);
        let printed = match serve_with(&all).await {
            Ok(_) => panic!("started with {all:?}"),
            Err(printed) => printed,
        };
        let errors: Vec<&str> = printed
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{printed}");
        assert!(errors[0].contains(what), "{printed}");
        assert!(!printed.contains(NEW_SECRET) && !printed.contains("sk_test_abc"));
    }
    // The key's prefix alone settles it: a live key serves live events only, and a
    // test-mode event (`"livemode": false`) is acknowledged and ignored.
    let now = Utc::now().timestamp();
    let test_mode = subscription(
        "evt_mode",
        "updated",
        now,
        ("cus_nobody", "sub_nobody"),
        "active",
        now + 86_400,
        true,
    );
    let mut live_mode = test_mode.clone();
    live_mode["id"] = "evt_live".into();
    live_mode["livemode"] = true.into();
    for (key, admitted, ignored) in [
        ("sk_live_abc", &live_mode, &test_mode),
        ("rk_test_abc", &test_mode, &live_mode),
    ] {
        let server = serve_with(&[
            ("STRIPE_WEBHOOK_SECRETS", NEW_SECRET),
            ("STRIPE_MODE", ""),
            ("STRIPE_API_KEY", key),
        ])
        .await
        .expect("server starts");
        let outcome = |(status, body): (u16, Value)| (status, body["outcome"].clone());
        assert_eq!(
            outcome(server.deliver_event_signed_with(NEW_SECRET, ignored).await),
            (200, "ignored".into()),
            "{key}"
        );
        assert_eq!(
            outcome(server.deliver_event_signed_with(NEW_SECRET, admitted).await),
            (200, "unknown_customer".into()),
            "{key}"
        );
    }
}

/// `"whsec_new, whsec_old"`: the space after the comma is not part of the secret.
#[tokio::test]
async fn rotation_works_with_spaces_around_the_entries() {
    let server = serve(&format!(" {NEW_SECRET} , {OLD_SECRET} "))
        .await
        .expect("server starts");
    for (secret, id) in [(NEW_SECRET, "evt_new"), (OLD_SECRET, "evt_old")] {
        let (status, body) = server.deliver_signed_with(secret, id).await;
        assert_eq!(status, 200, "{secret}: {body}");
    }
    let (status, body) = server.deliver_signed_with("", "evt_forged").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = server
        .deliver_signed_with(&format!(" {OLD_SECRET}"), "evt_spaced")
        .await;
    assert_eq!(status, 400);
}

/// An empty (or blank) variable means "not configured": the documented 503, and the empty
/// key verifies nothing.
#[tokio::test]
async fn an_empty_secrets_variable_means_not_configured() {
    for secrets in ["", "  "] {
        let server = serve(secrets).await.expect("server starts");
        let (status, body) = server.deliver_signed_with("", "evt_forged").await;
        assert_eq!(status, 503, "{secrets:?}: {body}");
        assert_eq!(body["error"]["code"], "not_configured", "{body}");
    }
}

/// clap prints `[env: NAME=value]` in `--help`; for secrets it must print only the name.
#[tokio::test]
async fn help_does_not_print_secrets_from_the_environment() {
    for args in [&["--help"][..], &["serve", "--help"], &["help", "serve"]] {
        let output = billing(&[
            ("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/billing"),
            (
                "STRIPE_WEBHOOK_SECRETS",
                &format!("whsec_live_supersecret0123456789abcdef,{OLD_SECRET}"),
            ),
        ])
        .args(args)
        .output()
        .expect("run billing --help");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{args:?}: {text}");
        for secret in ["hunter2", "whsec_live_supersecret", OLD_SECRET] {
            assert!(!text.contains(secret), "{args:?} printed {secret}:\n{text}");
        }
    }
    // The top-level help still names the variables.
    let output = billing(&[]).arg("--help").output().expect("run billing");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("DATABASE_URL"), "{text}");
    assert!(text.contains("STRIPE_WEBHOOK_SECRETS"), "{text}");
}

/// The server's flags are global: a subcommand takes them after its name too, as its `--help`
/// lists them.
#[tokio::test]
async fn server_flags_are_accepted_after_the_subcommand() {
    let db = TestDb::new(Backend::Sqlite).await;
    let output = billing(&[("DATABASE_URL", db.url.as_str())])
        .args([
            "purge-deleted",
            "--purge-batch-size",
            "2",
            "--retention-days-free",
            "0",
        ])
        .output()
        .expect("run billing purge-deleted");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(text.contains("(Free 0 days"), "{text}");
    // Before the subcommand, as ever.
    let output = billing(&[("DATABASE_URL", db.url.as_str())])
        .args(["--retention-days-free", "1", "purge-deleted"])
        .output()
        .expect("run billing purge-deleted");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}");
    assert!(text.contains("(Free 1 days"), "{text}");
}

/// A webhook delivery with a request id of the caller's, as a proxy would set it.
async fn deliver_with_request_id(server: &Server, request_id: &str) -> u16 {
    let now = Utc::now().timestamp();
    let body = event("evt_logged", "invoice.paid", now, Value::Null).to_string();
    let signature = api::stripe::signature::sign(body.as_bytes(), LOGS_SECRET, now);
    let response = reqwest::Client::new()
        .post(format!("{}/webhooks/stripe", server.address))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .header("x-request-id", request_id)
        .body(body)
        .send()
        .await
        .expect("deliver");
    assert_eq!(
        response.headers()["x-request-id"],
        request_id,
        "the request id is sent back"
    );
    response.status().as_u16()
}

/// Logs to a pipe (a file, a collector) carry no ANSI colour codes; each request's lines name
/// its request id.
#[tokio::test]
async fn text_logs_to_a_pipe_have_no_colour_codes() {
    let server = serve_with(&[("STRIPE_WEBHOOK_SECRETS", LOGS_SECRET)])
        .await
        .expect("server starts");
    assert_eq!(deliver_with_request_id(&server, "req-text-1").await, 200);
    let lines = server.logs_until(|line| line.contains("finished processing request"));
    let printed = [server.started.clone(), lines.clone()].concat().join("\n");
    assert!(!printed.contains('\x1b'), "colour codes in:\n{printed:?}");
    // The handler's own line and the request's closing line, both inside the request's span.
    let request_lines: Vec<&String> = lines.iter().filter(|l| l.contains("request{")).collect();
    assert!(request_lines.len() >= 2, "{printed}");
    for line in request_lines {
        assert!(line.contains("request_id=req-text-1"), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("receive") && l.contains("Stripe event")),
        "{printed}"
    );
}

/// `LOG_FORMAT=json`: every line is one JSON object, and a request's lines carry its id in
/// the request's span.
#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_request_id() {
    let server = serve_with(&[
        ("STRIPE_WEBHOOK_SECRETS", LOGS_SECRET),
        ("LOG_FORMAT", "json"),
    ])
    .await
    .expect("server starts");
    assert_eq!(deliver_with_request_id(&server, "req-json-1").await, 200);
    let lines = server.logs_until(|line| line.contains("finished processing request"));
    let mut during_request = 0;
    for line in server.started.iter().chain(&lines) {
        let json: Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line:?}"));
        assert!(
            json["level"].is_string() && json["message"].is_string(),
            "{line}"
        );
        if let Some(spans) = json["spans"].as_array() {
            during_request += 1;
            assert_eq!(spans[0]["name"], "request", "{line}");
            assert_eq!(spans[0]["request_id"], "req-json-1", "{line}");
        }
    }
    // The handler's event (inside its own span) and the request's closing line.
    assert!(during_request >= 2, "{lines:#?}");
    let handled = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|json| json["message"] == "Stripe event")
        .expect("the handler logs the event");
    assert_eq!(handled["spans"][1]["name"], "receive", "{handled}");
    assert_eq!(handled["event"], "evt_logged", "{handled}");
}

/// A LOG_FORMAT the server does not know stops it with one clear line, before it starts.
#[tokio::test]
async fn an_unknown_log_format_is_refused() {
    let output = billing(&[("LOG_FORMAT", "xml")])
        .arg("serve")
        .output()
        .expect("run billing");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("invalid value 'xml'"), "{text}");
    assert!(text.contains("LOG_FORMAT"), "{text}");
    assert!(text.contains("[possible values: text, json]"), "{text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, not clap's usage block: {text}");
    assert!(lines[0].starts_with("error: "), "{text}");
}
