//! notifier-svc end to end: the real binary against a real HTTP receiver written here (which
//! checks both signatures with SHA-2 and HMAC implemented from FIPS 180-4, RFC 2104 and the
//! Standard Webhooks specification, independently of the service's crates), a real SMTP
//! server (a sink in the test crate), and SQLite or PostgreSQL.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{SmtpSink, read_request, violations};
use ebb_tests::proto::notifier::v1 as pb;
use ebb_tests::{Channel, Process, TestDatabases, require_postgres};
use pb::notifier_service_client::NotifierServiceClient;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

// ---------------------------------------------------------------------------------------------
// SHA-256, SHA-512 (FIPS 180-4), HMAC (RFC 2104) and base64 (RFC 4648), for checking signatures.

const K256: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

pub(crate) fn sha256(data: &[u8]) -> Vec<u8> {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                block[4 * i],
                block[4 * i + 1],
                block[4 * i + 2],
                block[4 * i + 3],
            ]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K256[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().flat_map(|x| x.to_be_bytes()).collect()
}

const K512: [u64; 80] = [
    0x428a2f98d728ae22,
    0x7137449123ef65cd,
    0xb5c0fbcfec4d3b2f,
    0xe9b5dba58189dbbc,
    0x3956c25bf348b538,
    0x59f111f1b605d019,
    0x923f82a4af194f9b,
    0xab1c5ed5da6d8118,
    0xd807aa98a3030242,
    0x12835b0145706fbe,
    0x243185be4ee4b28c,
    0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f,
    0x80deb1fe3b1696b1,
    0x9bdc06a725c71235,
    0xc19bf174cf692694,
    0xe49b69c19ef14ad2,
    0xefbe4786384f25e3,
    0x0fc19dc68b8cd5b5,
    0x240ca1cc77ac9c65,
    0x2de92c6f592b0275,
    0x4a7484aa6ea6e483,
    0x5cb0a9dcbd41fbd4,
    0x76f988da831153b5,
    0x983e5152ee66dfab,
    0xa831c66d2db43210,
    0xb00327c898fb213f,
    0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2,
    0xd5a79147930aa725,
    0x06ca6351e003826f,
    0x142929670a0e6e70,
    0x27b70a8546d22ffc,
    0x2e1b21385c26c926,
    0x4d2c6dfc5ac42aed,
    0x53380d139d95b3df,
    0x650a73548baf63de,
    0x766a0abb3c77b2a8,
    0x81c2c92e47edaee6,
    0x92722c851482353b,
    0xa2bfe8a14cf10364,
    0xa81a664bbc423001,
    0xc24b8b70d0f89791,
    0xc76c51a30654be30,
    0xd192e819d6ef5218,
    0xd69906245565a910,
    0xf40e35855771202a,
    0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8,
    0x1e376c085141ab53,
    0x2748774cdf8eeb99,
    0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63,
    0x4ed8aa4ae3418acb,
    0x5b9cca4f7763e373,
    0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc,
    0x78a5636f43172f60,
    0x84c87814a1f0ab72,
    0x8cc702081a6439ec,
    0x90befffa23631e28,
    0xa4506cebde82bde9,
    0xbef9a3f7b2c67915,
    0xc67178f2e372532b,
    0xca273eceea26619c,
    0xd186b8c721c0c207,
    0xeada7dd6cde0eb1e,
    0xf57d4f7fee6ed178,
    0x06f067aa72176fba,
    0x0a637dc5a2c898a6,
    0x113f9804bef90dae,
    0x1b710b35131c471b,
    0x28db77f523047d84,
    0x32caab7b40c72493,
    0x3c9ebe0a15c9bebc,
    0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6,
    0x597f299cfc657e2a,
    0x5fcb6fab3ad6faec,
    0x6c44198c4a475817,
];

fn sha512(data: &[u8]) -> Vec<u8> {
    let mut h: [u64; 8] = [
        0x6a09e667f3bcc908,
        0xbb67ae8584caa73b,
        0x3c6ef372fe94f82b,
        0xa54ff53a5f1d36f1,
        0x510e527fade682d1,
        0x9b05688c2b3e6c1f,
        0x1f83d9abfb41bd6b,
        0x5be0cd19137e2179,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 128 != 112 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u128) * 8).to_be_bytes());
    for block in msg.chunks(128) {
        let mut w = [0u64; 80];
        for i in 0..16 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&block[8 * i..8 * i + 8]);
            w[i] = u64::from_be_bytes(b);
        }
        for i in 16..80 {
            let s0 = w[i - 15].rotate_right(1) ^ w[i - 15].rotate_right(8) ^ (w[i - 15] >> 7);
            let s1 = w[i - 2].rotate_right(19) ^ w[i - 2].rotate_right(61) ^ (w[i - 2] >> 6);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..80 {
            let s1 = e.rotate_right(14) ^ e.rotate_right(18) ^ e.rotate_right(41);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K512[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(28) ^ a.rotate_right(34) ^ a.rotate_right(39);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().flat_map(|x| x.to_be_bytes()).collect()
}

pub(crate) fn hmac(hash: fn(&[u8]) -> Vec<u8>, block: usize, key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > block {
        hash(key)
    } else {
        key.to_vec()
    };
    k.resize(block, 0);
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(hash(&inner)).collect();
    hash(&outer)
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_decode(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|x| *x == c).expect("base64 digit") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

pub(crate) fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Standard Webhooks verification: one `v1,` entry of `webhook-signature` must be the HMAC-SHA256
/// of `{id}.{timestamp}.{body}` under the secret's key, and the timestamp must be recent.
pub(crate) fn standard_webhooks_valid(
    secret: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> bool {
    let (Some(id), Some(ts), Some(sigs)) = (
        headers.get("webhook-id"),
        headers.get("webhook-timestamp"),
        headers.get("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts_num) = ts.parse::<i64>() else {
        return false;
    };
    let now = chrono::Utc::now().timestamp();
    if (now - ts_num).abs() > 300 {
        return false;
    }
    let key = b64_decode(secret.strip_prefix("whsec_").expect("whsec_ secret"));
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = format!("v1,{}", b64_encode(&hmac(sha256, 64, &key, &signed)));
    sigs.split(' ').any(|s| s == expected)
}

fn ebb_signature_valid(secret: &str, headers: &HashMap<String, String>, body: &[u8]) -> bool {
    headers.get("x-ebb-notification-signature")
        == Some(&hex(&hmac(sha512, 128, secret.as_bytes(), body)))
}

#[test]
fn the_checking_primitives_match_published_vectors() {
    // RFC 4231 test case 2.
    assert_eq!(
        hex(&hmac(sha256, 64, b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(&hmac(sha512, 128, b"Jefe", b"what do ya want for nothing?")),
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
    );
    // The Standard Webhooks specification's example.
    let headers: HashMap<String, String> = [
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".to_owned()),
        (
            "webhook-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let key = b64_decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let signed = b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}";
    assert_eq!(
        b64_encode(&hmac(sha256, 64, &key, signed)),
        "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    assert!(!standard_webhooks_valid(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        &headers,
        b"{}"
    ));
}

// ---------------------------------------------------------------------------------------------
// The HTTP receiver.

/// How the receiver answers one request.
#[derive(Debug, Clone)]
enum Reply {
    Status(u16),
    StatusBody(u16, String),
    RetryAfter(u16, u64),
    Hang(Duration),
}

#[derive(Debug, Clone)]
pub(crate) struct Received {
    path: String,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
    at: Instant,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

#[derive(Default)]
struct ReceiverState {
    script: VecDeque<Reply>,
    requests: Vec<Received>,
}

/// A real HTTP/1.1 server on 127.0.0.1:0 that answers from a script (200 when it is empty).
#[derive(Clone)]
pub(crate) struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(stream, s).await;
                });
            }
        });
        Self { addr, state }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().expect("lock").script.extend(replies);
    }

    fn requests(&self, path: &str) -> Vec<Received> {
        let st = self.state.lock().expect("lock");
        st.requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub(crate) async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.requests(path);
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    state: Arc<Mutex<ReceiverState>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf).await? {
        let reply = {
            let mut st = state.lock().expect("lock");
            st.requests.push(Received {
                path: request.path,
                headers: request.headers,
                body: request.body,
                at: Instant::now(),
            });
            st.script.pop_front().unwrap_or(Reply::Status(200))
        };
        let (status, extra, body) = match reply {
            Reply::Status(s) => (s, String::new(), format!("status {s}")),
            Reply::StatusBody(s, b) => (s, String::new(), b),
            Reply::RetryAfter(s, secs) => {
                (s, format!("Retry-After: {secs}\r\n"), "slow down".into())
            }
            Reply::Hang(d) => {
                tokio::time::sleep(d).await;
                return Ok(());
            }
        };
        let response = format!(
            "HTTP/1.1 {status} Scripted\r\nContent-Type: text/plain\r\nX-Receiver: test\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Starting notifier-svc.

/// notifier-svc configuration for tests: short retries, loopback allowed.
pub(crate) fn config_toml(schedule: &[&str], extra: &str) -> String {
    let schedule: Vec<String> = schedule.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[delivery]\nretry_schedule = [{}]\njitter = 0.0\nmin_throttle_wait = \"1s\"\n\
         request_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\npoll_interval = \"50ms\"\n\
         {extra}\n[egress]\nallow_loopback = true\n",
        schedule.join(", ")
    )
}

pub(crate) async fn start_notifier(dbs: &TestDatabases, url: &str, toml: &str) -> Process {
    start_notifier_with(dbs, url, toml, &[])
        .await
        .expect("start notifier-svc")
}

/// notifier-svc on `url` with the configuration `toml` and the variables `env`, once it serves.
pub(crate) async fn start_notifier_with(
    dbs: &TestDatabases,
    url: &str,
    toml: &str,
    env: &[(&str, String)],
) -> anyhow::Result<Process> {
    let path = dbs
        .dir()
        .join(format!("notifier-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, toml).expect("write config");
    let p = Process::spawn(
        "notifier-svc",
        &[
            "--config",
            path.to_str().expect("path"),
            "--database-url",
            url,
        ],
        env,
        dbs.dir(),
    )
    .await?;
    p.wait_serving("ebb.notifier.v1.NotifierService").await?;
    Ok(p)
}

pub(crate) async fn client(p: &Process) -> NotifierServiceClient<Channel> {
    NotifierServiceClient::new(p.channel().await)
}

pub(crate) fn webhook(org: &str, url: String, events: &[&str]) -> pb::NotificationConfiguration {
    pb::NotificationConfiguration {
        organization_id: org.into(),
        name: "ops hook".into(),
        scope_type: pb::ScopeType::Organization as i32,
        destination_type: pb::DestinationType::Webhook as i32,
        url,
        event_types: events.iter().map(|s| s.to_string()).collect(),
        enabled: true,
        ..Default::default()
    }
}

pub(crate) async fn create(
    c: &mut NotifierServiceClient<Channel>,
    config: pb::NotificationConfiguration,
) -> (pb::NotificationConfiguration, String) {
    let r = c
        .create_notification_configuration(pb::CreateNotificationConfigurationRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            configuration: Some(config),
        })
        .await
        .expect("create")
        .into_inner();
    (r.configuration.expect("configuration"), r.signing_secret)
}

pub(crate) fn event(id: &str, org: &str, kind: &str, workspace: &str) -> pb::Event {
    let data = prost_types::Struct {
        fields: [
            ("workspace_id", workspace),
            ("name", "staging-eu"),
            ("auto_destroy_at", "2030-01-01T00:00:00Z"),
        ]
        .into_iter()
        .map(|(k, v)| {
            (
                k.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(v.to_owned())),
                },
            )
        })
        .collect(),
    };
    pb::Event {
        id: id.into(),
        organization_id: org.into(),
        r#type: kind.into(),
        subject_type: "workspace".into(),
        subject_id: workspace.into(),
        data: Some(data),
        occur_time: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    }
}

pub(crate) async fn publish(c: &mut NotifierServiceClient<Channel>, e: pb::Event) -> i32 {
    c.publish_event(pb::PublishEventRequest { event: Some(e) })
        .await
        .expect("publish")
        .into_inner()
        .deliveries_created
}

async fn deliveries(
    c: &mut NotifierServiceClient<Channel>,
    org: &str,
    configuration_id: &str,
) -> Vec<pb::Delivery> {
    c.list_deliveries(pb::ListDeliveriesRequest {
        organization_id: org.into(),
        configuration_id: configuration_id.into(),
        page_size: 500,
        ..Default::default()
    })
    .await
    .expect("list deliveries")
    .into_inner()
    .deliveries
}

pub(crate) async fn wait_delivery(
    c: &mut NotifierServiceClient<Channel>,
    org: &str,
    configuration_id: &str,
    status: pb::DeliveryStatus,
    within: Duration,
) -> pb::Delivery {
    let deadline = Instant::now() + within;
    loop {
        let list = deliveries(c, org, configuration_id).await;
        if let Some(d) = list.iter().find(|d| d.status == status as i32) {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {status:?} delivery in time: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no delivery of `org` (to `configuration_id`, or to any for "") is pending and
/// returns them all: each had its last attempt, so its endpoint got every request it will
/// get, and nothing more is sent unless something creates or redelivers a delivery.
async fn wait_settled(
    c: &mut NotifierServiceClient<Channel>,
    org: &str,
    configuration_id: &str,
    within: Duration,
) -> Vec<pb::Delivery> {
    let deadline = Instant::now() + within;
    loop {
        let list = deliveries(c, org, configuration_id).await;
        if list
            .iter()
            .all(|d| d.status != pb::DeliveryStatus::Pending as i32)
        {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries still pending: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn attempts(c: &mut NotifierServiceClient<Channel>, id: &str) -> Vec<pb::DeliveryAttempt> {
    c.list_delivery_attempts(pb::ListDeliveryAttemptsRequest {
        delivery_id: id.into(),
        ..Default::default()
    })
    .await
    .expect("attempts")
    .into_inner()
    .attempts
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn webhooks_are_signed_retried_until_accepted_and_published_once() {
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let p = start_notifier(
        &dbs,
        &url,
        &config_toml(&["0s", "200ms", "200ms", "200ms"], ""),
    )
    .await;
    let mut c = client(&p).await;

    // Verification gets 200; then the delivery flaps 500, 503 and is accepted.
    receiver.script([
        Reply::Status(200),
        Reply::StatusBody(500, "x".repeat(30_000)),
        Reply::Status(503),
        Reply::Status(200),
    ]);
    let (config, secret) = create(
        &mut c,
        webhook(
            "org_a",
            receiver.url("/hook"),
            &["workspace.auto_destroy.*"],
        ),
    )
    .await;
    assert!(config.enabled);
    assert!(secret.starts_with("whsec_"));
    let verification = receiver.requests("/hook");
    assert_eq!(verification.len(), 1);
    assert_eq!(verification[0].json()["type"], "notification.verification");

    assert_eq!(
        publish(
            &mut c,
            event("evt_1", "org_a", "workspace.auto_destroy.reminder", "ws_1")
        )
        .await,
        1
    );
    let got = receiver.wait_for("/hook", 4, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4, "three attempts after the verification");
    let msg_id = got[1].headers["webhook-id"].clone();
    for r in &got {
        assert!(
            standard_webhooks_valid(&secret, &r.headers, &r.body),
            "{:?}",
            r.headers
        );
        assert!(ebb_signature_valid(&secret, &r.headers, &r.body));
    }
    for r in &got[1..] {
        assert_eq!(
            r.headers["webhook-id"], msg_id,
            "one message id across retries"
        );
        let body = r.json();
        assert_eq!(body["type"], "workspace.auto_destroy.reminder");
        assert_eq!(body["payload_version"], 1);
        assert!(body["timestamp"].as_str().is_some());
        assert_eq!(body["data"]["subject"]["name"], "staging-eu");
        assert_eq!(body["data"]["subject"]["id"], "ws_1");
        assert_eq!(body["data"]["notification_configuration"]["id"], config.id);
    }
    // Retries follow the shortened schedule, not sooner.
    assert!(got[2].at - got[1].at >= Duration::from_millis(150));

    let d = wait_delivery(
        &mut c,
        "org_a",
        &config.id,
        pb::DeliveryStatus::Succeeded,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(d.message_id, msg_id);
    assert_eq!(d.attempt_count, 3);
    let a = attempts(&mut c, &d.id).await;
    let statuses: Vec<i32> = a.iter().map(|a| a.response_status).collect();
    assert_eq!(statuses, vec![500, 503, 200]);
    assert_eq!(
        a[0].response_body.len(),
        20 * 1024,
        "bodies are capped at 20 KB"
    );
    assert!(a[0].response_body_truncated);
    assert_eq!(
        a[1].response_headers.get("x-receiver").map(String::as_str),
        Some("test")
    );
    assert_eq!(a[2].outcome, pb::AttemptOutcome::Succeeded as i32);

    // The database itself refuses a second attempt with the same number.
    let conn = sea_orm::Database::connect(url.as_str())
        .await
        .expect("connect");
    let duplicate = sea_orm::ConnectionTrait::execute_unprepared(
        &conn,
        &format!(
            "INSERT INTO delivery_attempts (delivery_id, number, outcome, response_status,
                response_headers, response_body, response_body_truncated, error, started_ms,
                duration_ms, redelivery, replica)
             VALUES ('{}', 3, 'succeeded', 200, '{{}}', '', 0, '', 0, 0, 0, 'intruder')",
            d.id
        ),
    )
    .await;
    assert!(
        duplicate.is_err(),
        "a duplicate attempt number was accepted"
    );
    drop(conn);

    // Idempotent by event id: nothing more is created or sent.
    assert_eq!(
        publish(
            &mut c,
            event("evt_1", "org_a", "workspace.auto_destroy.reminder", "ws_1")
        )
        .await,
        0
    );
    // Not subscribed: no delivery.
    assert_eq!(
        publish(&mut c, event("evt_2", "org_a", "run.completed", "ws_1")).await,
        0
    );
    wait_settled(&mut c, "org_a", "", Duration::from_secs(5)).await;
    assert_eq!(receiver.requests("/hook").len(), 4);

    // The two refused attempts count as failures, the accepted one as delivered; nothing waits.
    let scrape = p.scrape().await.expect("scrape");
    let webhook = ("destination", "webhook");
    assert_eq!(
        scrape.value("ebb_notifier_delivery_failures_total", &[webhook]),
        Some(2.0)
    );
    assert_eq!(
        scrape.value(
            "ebb_notifier_delivery_attempts_total",
            &[webhook, ("outcome", "rejected")]
        ),
        Some(2.0)
    );
    assert_eq!(
        scrape.value(
            "ebb_notifier_delivery_attempts_total",
            &[webhook, ("outcome", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("ebb_notifier_deliveries", &[("status", "pending")]),
        Some(0.0)
    );

    // Secrets are never returned again.
    let fetched = c
        .get_notification_configuration(pb::GetNotificationConfigurationRequest {
            id: config.id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(!format!("{fetched:?}").contains(&secret[6..]));
    let listed = c
        .list_notification_configurations(pb::ListNotificationConfigurationsRequest {
            organization_id: "org_a".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.configurations.len(), 1);
    assert!(!format!("{listed:?}").contains(&secret[6..]));
}

#[tokio::test]
async fn scopes_and_hcp_terraform_trigger_aliases_select_events() {
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let p = start_notifier(&dbs, &url, &config_toml(&["0s"], "")).await;
    let mut c = client(&p).await;
    let mut scoped = webhook(
        "org_s",
        receiver.url("/ws1"),
        &["workspace:auto_destroy_run_results"],
    );
    scoped.scope_type = pb::ScopeType::Workspace as i32;
    scoped.scope_id = "ws_1".into();
    create(&mut c, scoped).await;
    create(
        &mut c,
        webhook(
            "org_s",
            receiver.url("/rem"),
            &["workspace:auto_destroy_reminder"],
        ),
    )
    .await;

    let cases = [
        ("e1", "workspace.auto_destroy.succeeded", "ws_1", 1),
        ("e2", "workspace.auto_destroy.failed", "ws_1", 1),
        ("e3", "workspace.auto_destroy.queued", "ws_1", 0),
        ("e4", "workspace.auto_destroy.succeeded", "ws_2", 0),
        ("e5", "workspace.auto_destroy.reminder", "ws_2", 1),
    ];
    for (id, kind, ws, want) in cases {
        assert_eq!(
            publish(&mut c, event(id, "org_s", kind, ws)).await,
            want,
            "{id}"
        );
    }
    // Another organization's events never reach these configurations.
    assert_eq!(
        publish(
            &mut c,
            event("e6", "org_other", "workspace.auto_destroy.reminder", "ws_2")
        )
        .await,
        0
    );
    assert_eq!(
        receiver
            .wait_for("/ws1", 3, Duration::from_secs(5))
            .await
            .len(),
        3
    );
    assert_eq!(
        receiver
            .wait_for("/rem", 2, Duration::from_secs(5))
            .await
            .len(),
        2
    );
}

#[tokio::test]
async fn verification_must_succeed_and_failures_say_what_the_endpoint_answered() {
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let p = start_notifier(&dbs, &url, &config_toml(&["0s"], "")).await;
    let mut c = client(&p).await;

    receiver.script([Reply::StatusBody(403, "token rejected".into())]);
    let err = c
        .create_notification_configuration(pb::CreateNotificationConfigurationRequest {
            request_id: "r1".into(),
            configuration: Some(webhook("org_v", receiver.url("/v"), &["*"])),
        })
        .await
        .expect_err("verification fails");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // The status line only: a body can hold whatever the endpoint (or what it redirects
    // to) chose to show, and errors never quote it.
    assert!(
        err.message().contains("403 Forbidden") && !err.message().contains("token rejected"),
        "{}",
        err.message()
    );

    // Created disabled, then verified: 500 first (refused, recorded), then 200 (enabled).
    let mut disabled = webhook("org_v", receiver.url("/v"), &["*"]);
    disabled.enabled = false;
    let (config, _) = create(&mut c, disabled).await;
    assert!(!config.enabled);
    assert_eq!(
        publish(&mut c, event("ev1", "org_v", "run.completed", "ws")).await,
        0
    );
    receiver.script([Reply::Status(500)]);
    let err = c
        .verify_notification_configuration(pb::VerifyNotificationConfigurationRequest {
            request_id: String::new(),
            id: config.id.clone(),
        })
        .await
        .expect_err("500");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("500"), "{}", err.message());
    let verified = c
        .verify_notification_configuration(pb::VerifyNotificationConfigurationRequest {
            request_id: String::new(),
            id: config.id.clone(),
        })
        .await
        .expect("verified")
        .into_inner();
    assert_eq!(verified.response_status, 200);
    assert!(verified.configuration.expect("configuration").enabled);
    assert_eq!(
        publish(&mut c, event("ev2", "org_v", "run.completed", "ws")).await,
        1
    );
}

#[tokio::test]
async fn throttling_retry_after_and_gone() {
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let p = start_notifier(
        &dbs,
        &url,
        &config_toml(&["0s", "100ms", "100ms", "100ms"], ""),
    )
    .await;
    let mut c = client(&p).await;
    let (config, _) = create(&mut c, webhook("org_t", receiver.url("/t"), &["*"])).await;

    // 429 with Retry-After: 0 still waits the configured minimum (1s); a 503 asking for 5 s
    // waits at most twice the scheduled 100 ms; then 410 disables the configuration.
    receiver.script([
        Reply::RetryAfter(429, 0),
        Reply::RetryAfter(503, 5),
        Reply::Status(410),
    ]);
    publish(&mut c, event("t1", "org_t", "run.completed", "ws")).await;
    let got = receiver.wait_for("/t", 4, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 4, "verification and three attempts");
    let throttled_gap = got[2].at - got[1].at;
    assert!(
        throttled_gap >= Duration::from_millis(950),
        "{throttled_gap:?}"
    );
    let retry_after_gap = got[3].at - got[2].at;
    assert!(
        retry_after_gap >= Duration::from_millis(90)
            && retry_after_gap < Duration::from_millis(1500),
        "{retry_after_gap:?}"
    );
    let d = wait_delivery(
        &mut c,
        "org_t",
        &config.id,
        pb::DeliveryStatus::Failed,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(d.last_response_status, 410);
    let fetched = c
        .get_notification_configuration(pb::GetNotificationConfigurationRequest {
            id: config.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .configuration
        .expect("configuration");
    assert!(!fetched.enabled);
    assert!(
        fetched.disabled_reason.contains("410"),
        "{}",
        fetched.disabled_reason
    );
    // Disabled: new events create no deliveries.
    assert_eq!(
        publish(&mut c, event("t2", "org_t", "run.completed", "ws")).await,
        0
    );
}

#[tokio::test]
async fn timeouts_exhaust_into_a_dead_letter_event_and_redelivery_succeeds() {
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let p = start_notifier(&dbs, &url, &config_toml(&["0s", "100ms"], "")).await;
    let mut c = client(&p).await;
    let (config, _) = create(&mut c, webhook("org_x", receiver.url("/slow"), &["run.*"])).await;
    let (watcher, watcher_secret) = create(
        &mut c,
        webhook(
            "org_x",
            receiver.url("/dead"),
            &["notification.delivery.exhausted"],
        ),
    )
    .await;

    receiver.script([
        Reply::Hang(Duration::from_secs(2)),
        Reply::Hang(Duration::from_secs(2)),
    ]);
    publish(&mut c, event("x1", "org_x", "run.errored", "ws")).await;
    let d = wait_delivery(
        &mut c,
        "org_x",
        &config.id,
        pb::DeliveryStatus::Failed,
        Duration::from_secs(8),
    )
    .await;
    assert_eq!(d.attempt_count, 2);
    assert!(!d.exhausted_event_id.is_empty());
    let a = attempts(&mut c, &d.id).await;
    assert!(
        a.iter()
            .all(|a| a.outcome == pb::AttemptOutcome::TimedOut as i32),
        "{a:?}"
    );
    // A timeout waits at least the minimum (1s) before the next attempt.
    let gap = a[1].start_time.as_ref().expect("t").seconds * 1000
        + i64::from(a[1].start_time.as_ref().expect("t").nanos / 1_000_000)
        - (a[0].start_time.as_ref().expect("t").seconds * 1000
            + i64::from(a[0].start_time.as_ref().expect("t").nanos / 1_000_000));
    assert!(gap >= 1000, "{gap}");

    // The dead letter is listed and its event reaches the configuration subscribed to it.
    let failed = c
        .list_deliveries(pb::ListDeliveriesRequest {
            organization_id: "org_x".into(),
            statuses: vec![pb::DeliveryStatus::Failed as i32],
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .deliveries;
    assert_eq!(failed.len(), 1);
    let dead = receiver.wait_for("/dead", 2, Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 2, "verification and the exhaustion event");
    let body = dead[1].json();
    assert_eq!(body["type"], "notification.delivery.exhausted");
    assert_eq!(body["data"]["delivery_id"], d.id.as_str());
    assert_eq!(body["data"]["failed_event_id"], "x1");
    assert_eq!(body["data"]["failed_event_type"], "run.errored");
    assert!(standard_webhooks_valid(
        &watcher_secret,
        &dead[1].headers,
        &dead[1].body
    ));
    let watcher_list = deliveries(&mut c, "org_x", &watcher.id).await;
    assert_eq!(watcher_list[0].event_id, d.exhausted_event_id);

    // Redelivery: the receiver answers now; attempt numbers continue.
    let redelivered = c
        .redeliver_delivery(pb::RedeliverDeliveryRequest {
            request_id: "again-1".into(),
            delivery_id: d.id.clone(),
        })
        .await
        .expect("redeliver")
        .into_inner()
        .delivery
        .expect("delivery");
    assert_eq!(redelivered.status, pb::DeliveryStatus::Pending as i32);
    let done = wait_delivery(
        &mut c,
        "org_x",
        &config.id,
        pb::DeliveryStatus::Succeeded,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(done.message_id, d.message_id);
    let a = attempts(&mut c, &d.id).await;
    assert_eq!(a.len(), 3);
    assert!(a[2].redelivery && a[2].response_status == 200);

    // Range redelivery of failed deliveries finds none now; of succeeded ones, this one.
    let range = |statuses: Vec<i32>, rid: &str| pb::RedeliverDeliveriesRequest {
        request_id: rid.into(),
        organization_id: "org_x".into(),
        start_time: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() - 3600,
            nanos: 0,
        }),
        end_time: Some(prost_types::Timestamp {
            seconds: chrono::Utc::now().timestamp() + 60,
            nanos: 0,
        }),
        configuration_id: config.id.clone(),
        statuses,
    };
    let n = c
        .redeliver_deliveries(range(vec![], "range-1"))
        .await
        .expect("range")
        .into_inner();
    assert_eq!(n.deliveries_scheduled, 0);
    let n = c
        .redeliver_deliveries(range(vec![pb::DeliveryStatus::Succeeded as i32], "range-2"))
        .await
        .expect("range")
        .into_inner();
    assert_eq!(n.deliveries_scheduled, 1);
    // The same request id replays the first answer instead of acting again.
    let again = c
        .redeliver_deliveries(range(vec![pb::DeliveryStatus::Succeeded as i32], "range-2"))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(again.deliveries_scheduled, 1);
    // Verification, two timeouts, the redelivery, and the range redelivery; the replay sent
    // nothing more.
    let got = receiver.wait_for("/slow", 5, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 5);
    wait_settled(&mut c, "org_x", &config.id, Duration::from_secs(5)).await;
    assert_eq!(receiver.requests("/slow").len(), 5);
}

#[tokio::test]
async fn rotation_signs_with_every_unexpired_secret() {
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let p = start_notifier(&dbs, &url, &config_toml(&["0s"], "")).await;
    let mut c = client(&p).await;
    let (config, old) = create(&mut c, webhook("org_r", receiver.url("/r"), &["*"])).await;
    let rotated = c
        .rotate_signing_secret(pb::RotateSigningSecretRequest {
            request_id: "rot-1".into(),
            configuration_id: config.id.clone(),
            overlap_seconds: 3600,
        })
        .await
        .expect("rotate")
        .into_inner();
    let new = rotated.signing_secret;
    assert_ne!(new, old);
    let infos = rotated
        .configuration
        .expect("configuration")
        .signing_secrets;
    assert_eq!(infos.len(), 2);
    assert!(infos[0].expire_time.is_some() && infos[1].expire_time.is_none());
    publish(&mut c, event("r1", "org_r", "run.completed", "ws")).await;
    let got = receiver.wait_for("/r", 2, Duration::from_secs(5)).await;
    let r = &got[1];
    assert_eq!(r.headers["webhook-signature"].split(' ').count(), 2);
    assert!(standard_webhooks_valid(&old, &r.headers, &r.body));
    assert!(standard_webhooks_valid(&new, &r.headers, &r.body));
    assert!(
        ebb_signature_valid(&new, &r.headers, &r.body),
        "newest secret signs the HMAC-SHA512 header"
    );
}

#[tokio::test]
async fn slack_and_teams_get_their_own_formats() {
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let p = start_notifier(&dbs, &url, &config_toml(&["0s"], "")).await;
    let mut c = client(&p).await;
    let mut slack = webhook(
        "org_f",
        receiver.url("/slack"),
        &["workspace.auto_destroy.*"],
    );
    slack.destination_type = pb::DestinationType::Slack as i32;
    let mut teams = webhook(
        "org_f",
        receiver.url("/teams"),
        &["workspace.auto_destroy.*"],
    );
    teams.destination_type = pb::DestinationType::Teams as i32;
    create(&mut c, slack).await;
    create(&mut c, teams).await;
    publish(
        &mut c,
        event("f1", "org_f", "workspace.auto_destroy.failed", "ws_9"),
    )
    .await;
    let s = receiver.wait_for("/slack", 2, Duration::from_secs(5)).await[1].json();
    assert_eq!(s["blocks"][0]["type"], "header");
    assert!(
        s["text"].as_str().expect("text").contains("staging-eu"),
        "{s}"
    );
    let t = receiver.wait_for("/teams", 2, Duration::from_secs(5)).await[1].json();
    assert_eq!(t["type"], "message");
    assert_eq!(
        t["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(t["attachments"][0]["content"]["type"], "AdaptiveCard");
}

#[tokio::test]
async fn email_goes_through_smtp_with_text_and_html_parts() {
    let dbs = TestDatabases::new();
    let sink = SmtpSink::start().await;
    let port = sink.port;
    let mut dbs = dbs;
    let url = dbs.create("notifier").await;
    let smtp_config = format!(
        "[smtp]\nrelay = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"Ebb <ebb@example.com>\"\n"
    );
    let toml = format!("{}{smtp_config}", config_toml(&["0s", "200ms"], ""));
    let p = start_notifier(&dbs, &url, &toml).await;
    let mut c = client(&p).await;
    let config = pb::NotificationConfiguration {
        organization_id: "org_m".into(),
        name: "on-call mail".into(),
        destination_type: pb::DestinationType::Email as i32,
        email_addresses: vec!["oncall@example.com".into()],
        event_types: vec!["workspace:auto_destroy_reminder".into()],
        enabled: true,
        ..Default::default()
    };
    let (config, _) = create(&mut c, config).await;
    assert!(config.enabled, "the verification email was accepted");
    publish(
        &mut c,
        event("m1", "org_m", "workspace.auto_destroy.reminder", "ws_m"),
    )
    .await;
    wait_delivery(
        &mut c,
        "org_m",
        &config.id,
        pb::DeliveryStatus::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mail = loop {
        let all = sink.messages();
        if let Some(m) = all.into_iter().find(|m| m.contains("auto-destroyed")) {
            break m;
        }
        assert!(Instant::now() < deadline, "no reminder email arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(mail.contains("To: oncall@example.com"), "{mail}");
    assert!(mail.contains("multipart/alternative"), "{mail}");
    assert!(mail.contains("Content-Type: text/plain"), "{mail}");
    assert!(mail.contains("Content-Type: text/html"), "{mail}");
    assert!(mail.contains("staging-eu"), "{mail}");
    let delivery_id = deliveries(&mut c, "org_m", &config.id).await[0].id.clone();
    let a = attempts(&mut c, &delivery_id).await;
    assert_eq!(a[0].response_status, 250);
}

#[tokio::test]
async fn bad_input_is_refused_with_field_violations() {
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let p = start_notifier(&dbs, &url, &config_toml(&["0s"], "")).await;
    let mut c = client(&p).await;
    let bad = pb::NotificationConfiguration {
        organization_id: String::new(),
        name: String::new(),
        destination_type: pb::DestinationType::Webhook as i32,
        url: "http://169.254.169.254/latest/meta-data".into(),
        event_types: vec!["Workspace.*".into()],
        ..Default::default()
    };
    let err = c
        .create_notification_configuration(pb::CreateNotificationConfigurationRequest {
            request_id: String::new(),
            configuration: Some(bad),
        })
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violations(&err);
    for f in [
        "configuration.organization_id",
        "configuration.name",
        "configuration.url",
        "configuration.event_types[0]",
    ] {
        assert!(fields.contains(&f.to_owned()), "{f} in {fields:?}");
    }
    // Email without a relay configured, and a Slack URL that is not http(s).
    let mut email = webhook("o", String::new(), &["*"]);
    email.destination_type = pb::DestinationType::Email as i32;
    email.email_addresses = vec!["not an address".into()];
    let err = c
        .create_notification_configuration(pb::CreateNotificationConfigurationRequest {
            request_id: String::new(),
            configuration: Some(email),
        })
        .await
        .expect_err("invalid");
    let fields = violations(&err);
    assert!(
        fields.contains(&"configuration.destination_type".to_owned()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"configuration.email_addresses[0]".to_owned()),
        "{fields:?}"
    );

    let err = c
        .publish_event(pb::PublishEventRequest {
            event: Some(pb::Event {
                id: "e".into(),
                r#type: "bad type".into(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("invalid event");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violations(&err);
    assert!(
        fields.contains(&"event.organization_id".to_owned())
            && fields.contains(&"event.type".to_owned()),
        "{fields:?}"
    );

    let err = c
        .list_deliveries(pb::ListDeliveriesRequest {
            organization_id: "o".into(),
            page_size: -1,
            page_token: "garbage!".into(),
            ..Default::default()
        })
        .await
        .expect_err("invalid page");
    let fields = violations(&err);
    assert!(
        fields.contains(&"page_size".to_owned()) && fields.contains(&"page_token".to_owned()),
        "{fields:?}"
    );

    let err = c
        .update_notification_configuration(pb::UpdateNotificationConfigurationRequest {
            request_id: String::new(),
            configuration: Some(pb::NotificationConfiguration {
                id: "nc_missing".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .expect_err("missing");
    assert_eq!(err.code(), Code::NotFound);

    // A request id reused for a different request is refused.
    let receiver = Receiver::start().await;
    let mut first = webhook("o", receiver.url("/x"), &["*"]);
    first.enabled = false;
    let req = |name: &str| {
        let mut cfg = first.clone();
        cfg.name = name.into();
        pb::CreateNotificationConfigurationRequest {
            request_id: "same".into(),
            configuration: Some(cfg),
        }
    };
    let a = c
        .create_notification_configuration(req("a"))
        .await
        .expect("create")
        .into_inner();
    let replay = c
        .create_notification_configuration(req("a"))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(a.configuration, replay.configuration);
    let err = c
        .create_notification_configuration(req("b"))
        .await
        .expect_err("reused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["request_id".to_owned()]);

    // Pagination walks every configuration exactly once.
    for i in 0..5 {
        let mut cfg = first.clone();
        cfg.name = format!("n{i}");
        create(&mut c, cfg).await;
    }
    let mut seen = HashSet::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_notification_configurations(pb::ListNotificationConfigurationsRequest {
                organization_id: "o".into(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert!(page.configurations.len() <= 2);
        for cfg in page.configurations {
            assert!(seen.insert(cfg.id));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 6);
}

#[tokio::test]
async fn loopback_is_refused_unless_configured() {
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::new();
    let url = dbs.create("notifier").await;
    let toml = config_toml(&["0s"], "").replace("allow_loopback = true", "allow_loopback = false");
    let p = start_notifier(&dbs, &url, &toml).await;
    let mut c = client(&p).await;
    let err = c
        .create_notification_configuration(pb::CreateNotificationConfigurationRequest {
            request_id: String::new(),
            configuration: Some(webhook("o", receiver.url("/x"), &["*"])),
        })
        .await
        .expect_err("loopback refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    // A host name that resolves to loopback is refused at connection time.
    let err = c
        .create_notification_configuration(pb::CreateNotificationConfigurationRequest {
            request_id: String::new(),
            configuration: Some(webhook(
                "o",
                format!("http://localhost:{}/x", receiver.addr.port()),
                &["*"],
            )),
        })
        .await
        .expect_err("loopback refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("refused"), "{}", err.message());
    assert!(receiver.requests("/x").is_empty());
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EBB_TEST_DATABASE_URL"]
async fn two_replicas_on_postgres_deliver_every_event_once() {
    let pg = require_postgres("two_replicas_on_postgres_deliver_every_event_once");
    let receiver = Receiver::start().await;
    let mut dbs = TestDatabases::on(Some(pg));
    let url = dbs.create("notifier").await;
    let toml = config_toml(&["0s", "200ms"], "batch_size = 20\nconcurrency = 16");
    let a = start_notifier(&dbs, &url, &toml).await;
    let b = start_notifier(&dbs, &url, &toml).await;
    let mut ca = client(&a).await;
    let mut cb = client(&b).await;
    let configs = 4;
    for i in 0..configs {
        create(
            &mut ca,
            webhook("org_p", receiver.url(&format!("/p{i}")), &["*"]),
        )
        .await;
    }
    let events = 100;
    for i in 0..events {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        assert_eq!(
            publish(c, event(&format!("p{i}"), "org_p", "run.completed", "ws")).await,
            configs
        );
    }
    for i in 0..configs {
        receiver
            .wait_for(&format!("/p{i}"), events + 1, Duration::from_secs(30))
            .await;
    }
    // Every delivery had its last attempt: the receiver has seen every request it will get.
    let all = wait_settled(&mut ca, "org_p", "", Duration::from_secs(30)).await;
    let mut total = Vec::new();
    for i in 0..configs {
        total.extend(receiver.requests(&format!("/p{i}")).into_iter().skip(1));
    }
    let mut ids = HashSet::new();
    for r in &total {
        assert!(
            ids.insert(r.headers["webhook-id"].clone()),
            "delivered twice: {}",
            r.headers["webhook-id"]
        );
    }
    assert_eq!(ids.len(), events * configs as usize);
    assert!(
        all.iter()
            .all(|d| d.status == pb::DeliveryStatus::Succeeded as i32 && d.attempt_count == 1)
    );
}
