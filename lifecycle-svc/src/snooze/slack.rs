//! Slack interactivity requests: Slack's request signature (`v0`: HMAC-SHA256 with the app's
//! signing secret over `v0:<timestamp>:<body>`, hex, in `X-Slack-Signature`, with
//! `X-Slack-Request-Timestamp` within five minutes), and the snooze button's value in the
//! `payload` form field.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from now (Slack's guidance: five minutes).
const MAX_SKEW_SECS: i64 = 300;

/// The `action_id` of the snooze button in reminder messages (notifier-svc sets it).
pub const SNOOZE_ACTION: &str = "ebb_snooze";

/// Checks a request's Slack signature; the reason when it does not hold.
pub fn verify(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp = header("x-slack-request-timestamp").ok_or("no X-Slack-Request-Timestamp")?;
    let signature = header("x-slack-signature").ok_or("no X-Slack-Signature")?;
    let at: i64 = timestamp
        .parse()
        .map_err(|_| "X-Slack-Request-Timestamp is not a number")?;
    if (now_secs - at).abs() > MAX_SKEW_SECS {
        return Err("the request is more than five minutes old or ahead");
    }
    let given = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or("X-Slack-Signature is not a v0 signature")?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| "the Slack signature does not match")
}

/// A press of the snooze button: its token and who pressed it.
#[derive(Debug, PartialEq, Eq)]
pub struct Press {
    pub token: String,
    pub user: String,
}

/// The snooze button press in a `block_actions` interactivity body.
pub fn snooze_press(body: &[u8]) -> Result<Press, String> {
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or("the body has no payload field")?;
    let json: serde_json::Value =
        serde_json::from_str(&payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let token = json["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["action_id"] == SNOOZE_ACTION)
        .and_then(|a| a["value"].as_str())
        .ok_or_else(|| format!("no {SNOOZE_ACTION} action in the payload"))?;
    Ok(Press {
        token: token.to_owned(),
        user: json["user"]["id"].as_str().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Slack's "Verifying requests from Slack" page.
    #[test]
    fn slack_s_documented_example_verifies() {
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-slack-request-timestamp",
            "1531420618".parse().expect("h"),
        );
        headers.insert(
            "x-slack-signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
                .parse()
                .expect("h"),
        );
        assert_eq!(verify(secret, &headers, body, 1_531_420_618), Ok(()));
        assert!(verify(secret, &headers, b"token=other", 1_531_420_618).is_err());
        assert_eq!(
            verify(secret, &headers, body, 1_531_420_618 + 301),
            Err("the request is more than five minutes old or ahead")
        );
        assert!(verify("another secret", &headers, body, 1_531_420_618).is_err());
    }

    #[test]
    fn the_button_press_names_its_token_and_user() {
        let payload = serde_json::json!({
            "type": "block_actions",
            "user": {"id": "U123"},
            "actions": [{"action_id": "other", "value": "x"}, {"action_id": SNOOZE_ACTION, "value": "tok.sig"}],
        });
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        assert_eq!(
            snooze_press(body.as_bytes()),
            Ok(Press {
                token: "tok.sig".into(),
                user: "U123".into()
            })
        );
        assert!(snooze_press(b"payload=%7B%7D").is_err());
        assert!(snooze_press(b"nothing=1").is_err());
    }
}
