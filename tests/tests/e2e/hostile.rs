//! Hostile input: arbitrary and boundary messages to every unary and server-streaming RPC of
//! every Ebb service, built from the API's own descriptors. A refused call must never be a
//! panic or INTERNAL, and must change nothing.

use std::time::Duration;

use crate::support::ebb_serve;
use ebb_tests::cluster::fixture;
use ebb_tests::{ADMIN_TOKEN, TestDatabases};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use prost::bytes::{Buf, BufMut, Bytes};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Passes encoded messages through untouched.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Strings worth trying: empty, huge, control characters, injection attempts, and ids of
/// things that exist so calls get past the first checks.
fn string_pool(ids: &[String]) -> Vec<String> {
    let mut pool = vec![
        String::new(),
        "a".into(),
        "x".repeat(100_000),
        "\u{0}\u{7}\u{202e}☃".into(),
        "' OR 1=1 --".into(),
        "$1 ?1 %_\\".into(),
        "../../etc/passwd".into(),
        "00000000-0000-0000-0000-000000000000".into(),
        "-5".into(),
        "10000d".into(),
        "14d".into(),
        "workspace.auto_destroy.*".into(),
        "state == active".into(),
    ];
    pool.extend(ids.iter().cloned());
    pool
}

const INTS: [i64; 8] = [
    0,
    1,
    -1,
    2,
    i32::MAX as i64,
    i32::MIN as i64,
    i64::MAX,
    i64::MIN,
];
const SECONDS: [i64; 7] = [
    i64::MIN,
    -62_135_596_801,
    0,
    1_795_000_000,
    253_402_300_800,
    i64::MAX,
    -1,
];

fn scalar(kind: &Kind, rng: &mut StdRng, strings: &[String], depth: u32) -> Value {
    match kind {
        Kind::Double | Kind::Float => Value::F64(
            *[0.0, -1.0, f64::NAN, f64::INFINITY, 1e308, 30.0]
                .get(rng.random_range(0..6))
                .unwrap_or(&0.0),
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(INTS[rng.random_range(0..INTS.len())] as i32)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(INTS[rng.random_range(0..INTS.len())])
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(INTS[rng.random_range(0..INTS.len())] as u32),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(INTS[rng.random_range(0..INTS.len())] as u64),
        Kind::Bool => Value::Bool(rng.random()),
        Kind::String => Value::String(strings[rng.random_range(0..strings.len())].clone()),
        Kind::Bytes => Value::Bytes(Bytes::from(
            strings[rng.random_range(0..strings.len())]
                .clone()
                .into_bytes(),
        )),
        Kind::Enum(_) => Value::EnumNumber(
            *[0, 1, 2, 3, 99, -5]
                .get(rng.random_range(0..6))
                .unwrap_or(&0),
        ),
        Kind::Message(m) => Value::Message(message(m, rng, strings, depth + 1)),
    }
}

fn message(
    desc: &MessageDescriptor,
    rng: &mut StdRng,
    strings: &[String],
    depth: u32,
) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    match desc.full_name() {
        "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
            msg.set_field_by_name(
                "seconds",
                Value::I64(SECONDS[rng.random_range(0..SECONDS.len())]),
            );
            msg.set_field_by_name(
                "nanos",
                Value::I32(
                    *[0, -1, 999_999_999, 1_000_000_000]
                        .get(rng.random_range(0..4))
                        .unwrap_or(&0),
                ),
            );
            return msg;
        }
        _ => {}
    }
    if depth > 3 {
        return msg;
    }
    for field in desc.fields() {
        if rng.random_range(0..10) < 3 {
            continue;
        }
        set_field(&mut msg, &field, rng, strings, depth);
    }
    msg
}

fn set_field(
    msg: &mut DynamicMessage,
    field: &FieldDescriptor,
    rng: &mut StdRng,
    strings: &[String],
    depth: u32,
) {
    let kind = field.kind();
    if field.is_map() {
        let Kind::Message(entry) = &kind else { return };
        let (k, v) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let mut map = std::collections::HashMap::new();
        for _ in 0..rng.random_range(0..4) {
            let key = match scalar(&k.kind(), rng, strings, depth) {
                Value::String(s) => MapKey::String(s),
                Value::I32(i) => MapKey::I32(i),
                Value::I64(i) => MapKey::I64(i),
                Value::Bool(b) => MapKey::Bool(b),
                _ => continue,
            };
            map.insert(key, scalar(&v.kind(), rng, strings, depth));
        }
        msg.set_field(field, Value::Map(map));
    } else if field.is_list() {
        let items = (0..rng.random_range(0..4))
            .map(|_| scalar(&kind, rng, strings, depth))
            .collect();
        msg.set_field(field, Value::List(items));
    } else {
        msg.set_field(field, scalar(&kind, rng, strings, depth));
    }
}

/// The newest outbox sequence number: every change lifecycle makes writes an event.
async fn outbox_head(sql: &sea_orm::DatabaseConnection) -> i64 {
    use sea_orm::ConnectionTrait;
    let row = sql
        .query_one_raw(sea_orm::Statement::from_string(
            sql.get_database_backend(),
            "SELECT COALESCE(MAX(seq), 0) AS head FROM outbox",
        ))
        .await
        .expect("outbox head")
        .expect("row");
    row.try_get("", "head").expect("head")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_messages_to_every_rpc_never_panic_nor_answer_internal_nor_change_anything_when_refused()
 {
    // Everything on one port, as `ebb serve` runs it, on this test's own databases.
    let dbs = TestDatabases::on(None);
    let (serve, data) = ebb_serve(&dbs, &[]).await;
    let cluster_ids = {
        let mut api =
            ebb_tests::proto::lifecycle::v1::lifecycle_service_client::LifecycleServiceClient::new(
                serve.channel().await,
            );
        let f = fixture(&mut api, None, "target").await;
        vec![f.org.id, f.project.id, f.workspace.id]
    };
    let strings = string_pool(&cluster_ids);
    let pool = DescriptorPool::decode(ebb_tests::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut methods = Vec::new();
    for service in pool
        .services()
        .filter(|s| s.full_name().starts_with("ebb."))
    {
        for m in service.methods() {
            if !m.is_client_streaming() {
                methods.push(m);
            }
        }
    }
    assert!(methods.len() > 60, "{} methods", methods.len());

    let channel = tonic::transport::Channel::from_shared(serve.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let lifecycle_db = format!("sqlite://{}?mode=rw", data.join("lifecycle.db").display());
    let sql = sea_orm::Database::connect(lifecycle_db.as_str())
        .await
        .expect("lifecycle database");
    let cases = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25u32);
    let rt = tokio::runtime::Handle::current();
    let mut failures = Vec::new();
    let codes = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    for method in &methods {
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let mut runner = TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let result = tokio::task::block_in_place(|| {
            runner.run(&any::<u64>(), |seed| {
                let mut rng = StdRng::seed_from_u64(seed);
                let msg = message(&method.input(), &mut rng, &strings, 0);
                let bytes = Bytes::from(prost::Message::encode_to_vec(&msg));
                let (code, text, changed) = rt.block_on(call(
                    &channel,
                    &sql,
                    &path,
                    method.is_server_streaming(),
                    bytes,
                ));
                *codes
                    .lock()
                    .expect("codes")
                    .entry(format!("{code:?}"))
                    .or_default() += 1;
                prop_assert!(
                    code != Code::Internal && code != Code::Unknown,
                    "{path} answered {code:?}: {text}\nrequest: {msg:?}"
                );
                prop_assert!(
                    code == Code::Ok || !changed,
                    "{path} refused with {code:?} but changed data: {text}"
                );
                // Bytes that are not this message at all.
                let garbage: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
                let (code, text, changed) = rt.block_on(call(
                    &channel,
                    &sql,
                    &path,
                    method.is_server_streaming(),
                    Bytes::from(garbage),
                ));
                *codes
                    .lock()
                    .expect("codes")
                    .entry(format!("{code:?}"))
                    .or_default() += 1;
                prop_assert!(
                    code != Code::Internal
                        && code != Code::Unknown
                        && (code == Code::Ok || !changed),
                    "{path} answered {code:?} to undecodable bytes: {text}"
                );
                Ok(())
            })
        });
        if let Err(e) = result {
            failures.push(format!("{e}"));
        }
    }
    eprintln!(
        "{} methods; answers: {:?}",
        methods.len(),
        codes.lock().expect("codes")
    );
    assert!(
        failures.is_empty(),
        "{} RPCs misbehaved:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    serve.kill().await;
}

async fn call(
    channel: &tonic::transport::Channel,
    sql: &sea_orm::DatabaseConnection,
    path: &str,
    streaming: bool,
    body: Bytes,
) -> (Code, String, bool) {
    let before = outbox_head(sql).await;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let _ = grpc.ready().await;
    let mut request = tonic::Request::new(body);
    request.set_timeout(Duration::from_secs(20));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("header"),
    );
    let path = http::uri::PathAndQuery::try_from(path).expect("path");
    let outcome = if streaming {
        match grpc.server_streaming(request, path, RawCodec).await {
            Ok(r) => {
                let mut s = r.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                }
            }
            Err(e) => Err(e),
        }
    } else {
        grpc.unary(request, path, RawCodec).await.map(|_| ())
    };
    let after = outbox_head(sql).await;
    match outcome {
        Ok(()) => (Code::Ok, String::new(), after != before),
        Err(status) => (status.code(), status.message().to_owned(), after != before),
    }
}
