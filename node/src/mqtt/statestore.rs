//! The AIO state store service on its request topic (reference §3–§13): RESP3 commands
//! in, replies on the request's response topic with its correlation data, `__stat=200`,
//! `__protVer` and the key's version in `__ts`. Every command goes through `NodeHandle`;
//! `Error`s become replies in one place (`Reply::from`).

use super::resp3::{self, SyntaxError};
use super::{Broker, Message};
use crate::auth::rules::{Access, Principal};
use crate::error::Error;
use crate::handle::{Consistency, ListQuery};
use crate::kv::{Delete, DeleteCondition, DeleteOutcome, Hlc, Put, PutCondition};
use crate::pattern;
use bytes::Bytes;
use mqtt_proto::v5::{Publish, PublishProperties, UserProperty};
use mqtt_proto::{QoS, TopicName};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const REQUEST_TOPIC: &str = "statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/command/invoke";
const NOTIFY_PREFIX: &str = "clients/statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8";
const CONTENT_TYPE: &str = "application/octet-stream";
/// How far ahead of this node's clock a client's `__ts` or `__ft` may be.
const MAX_DRIFT_MS: u64 = 60_000;
/// Keys per SCAN page.
const SCAN_PAGE: usize = 100;

const ERR_TS_FUTURE: &str =
    "the request timestamp is too far in the future; ensure that the client and broker system clocks are synchronized";
const ERR_FT_FUTURE: &str = "the request fencing token timestamp is too far in the future; ensure that the client and broker system clocks are synchronized";

/// The topic a key notification for `client` goes to: upper-case hex of both (§2).
pub fn notify_topic(client: &str, key: &[u8]) -> String {
    format!("{NOTIFY_PREFIX}/{}/command/notify/{}", hex(client.as_bytes()), hex(key))
}

/// Topics only the store publishes to (key notifications).
pub fn reserved(topic: &str) -> bool {
    topic.starts_with(NOTIFY_PREFIX)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// What a command answers: a payload with `__stat=200` (the key's version in `__ts` when
/// it has one), or an RPC-level failure status.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Ok(Bytes, Option<Hlc>),
    Status { code: u16, message: String, props: Vec<(&'static str, String)> },
}

impl Reply {
    fn err(text: &str) -> Reply {
        Reply::Ok(resp3::err(text), None)
    }
}

/// The one `Error` → state store reply mapping.
impl From<Error> for Reply {
    fn from(e: Error) -> Reply {
        match e {
            Error::FencingRejected(text) => Reply::err(&text),
            Error::TooLarge(_) | Error::Exhausted(_) => Reply::err("the quota has been exceeded"),
            Error::InvalidArgument(_) => Reply::err("syntax error"),
            Error::ConditionFailed(text) => Reply::err(&text),
            Error::Forbidden(_) => Reply::err("not authorized"),
            Error::NotFound(text) => Reply::err(&text),
            Error::Unavailable { reason, .. } => Reply::Status { code: 503, message: reason, props: vec![] },
            Error::Timeout(reason) => Reply::Status { code: 408, message: reason, props: vec![] },
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Reply::Status { code: 500, message: "internal error".into(), props: vec![] }
            }
        }
    }
}

/// The request's metadata the commands use.
struct Meta<'a> {
    client: &'a Arc<str>,
    principal: &'a Principal,
    ts: Option<&'a str>,
    ft: Option<&'a str>,
    now_ms: u64,
}

/// Serves one request; returns the reply to route, `None` when there is nowhere to send it.
pub async fn serve(broker: &Broker, client: &Arc<str>, principal: &Principal, req: Publish) -> Option<Message> {
    let props = &req.properties;
    let response_topic = props.response_topic.clone().filter(|t| valid_response_topic(t))?;
    let Some(correlation) = props.correlation_data.clone() else {
        let reply = Reply::Status {
            code: 400,
            message: "missing correlation data".into(),
            props: vec![("__propName", "Correlation Data".into())],
        };
        return Some(message(response_topic, None, reply));
    };
    if let Some(cached) = broker.cached_reply(client, &correlation) {
        return Some(cached);
    }
    let reply = match check_rpc(props) {
        Some(refused) => refused,
        None => run(broker, client, principal, props, &req.payload).await,
    };
    // Only answers are kept for a repeat: after "unavailable" or "timed out" it runs again.
    let answered = matches!(reply, Reply::Ok(..));
    let reply = message(response_topic, Some(correlation.clone()), reply);
    if answered {
        let keep = Duration::from_secs(props.message_expiry_interval.unwrap_or(60).clamp(1, 600).into());
        broker.cache_reply(client, correlation, Instant::now() + keep, reply.clone());
    }
    Some(reply)
}

/// A response topic the store may answer on (§2): a topic, not the request topic, not
/// the notification space.
fn valid_response_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#']) && t != REQUEST_TOPIC && !t.starts_with(NOTIFY_PREFIX)
}

fn user_prop<'a>(props: &'a PublishProperties, name: &str) -> Option<&'a str> {
    props.user_properties.iter().find(|p| &*p.name == name).map(|p| &*p.value)
}

/// RPC-level checks of the SDK's command executor (§5): content type and protocol version.
fn check_rpc(props: &PublishProperties) -> Option<Reply> {
    if let Some(ct) = props.content_type.as_deref().filter(|ct| *ct != CONTENT_TYPE) {
        let props = vec![("__propName", "Content Type".into()), ("__propVal", ct.to_string())];
        return Some(Reply::Status { code: 415, message: "unsupported content type".into(), props });
    }
    let version = user_prop(props, "__protVer").unwrap_or("1.0");
    if version.split('.').next() != Some("1") {
        let props = vec![("__supProtMajVer", "1".into()), ("__requestProtVer", version.to_string())];
        return Some(Reply::Status { code: 505, message: "unsupported protocol version".into(), props });
    }
    None
}

async fn run(
    broker: &Broker,
    client: &Arc<str>,
    principal: &Principal,
    props: &PublishProperties,
    payload: &[u8],
) -> Reply {
    let Ok(args) = resp3::parse_request(payload) else {
        return Reply::err("syntax error");
    };
    let (ts, ft, now_ms) = (user_prop(props, "__ts"), user_prop(props, "__ft"), broker.handle().now_ms());
    let meta = Meta { client, principal, ts, ft, now_ms };
    let verb = args.first().map(|v| v.to_ascii_uppercase()).unwrap_or_default();
    let access = match verb.as_slice() {
        b"SET" | b"DEL" | b"VDEL" => Some(Access::Write),
        b"GET" | b"KEYNOTIFY" => Some(Access::Read),
        _ => None,
    };
    if let (Some(access), Some(key)) = (access, args.get(1)) {
        if !broker.policy().can_key(principal, key, access) {
            return Reply::err("not authorized");
        }
    }
    let result = match verb.as_slice() {
        b"SET" => set(broker, &meta, &args).await,
        b"GET" => get(broker, &args).await,
        b"DEL" | b"VDEL" => del(broker, &meta, &args, verb == b"VDEL").await,
        b"KEYNOTIFY" => keynotify(broker, &meta, &args).await,
        b"SCAN" => scan(broker, &meta, &args).await,
        _ => Ok(Reply::err("unknown command")),
    };
    result.unwrap_or_else(Reply::from)
}

/// An HLC from a user property: absent, or parsed and not too far ahead of `now_ms`.
fn clock(value: Option<&str>, now_ms: u64, too_far: &str) -> Result<Option<Hlc>, Reply> {
    let Some(v) = value else { return Ok(None) };
    let hlc: Hlc = v.parse().map_err(|_| Reply::err("malformed timestamp"))?;
    if hlc.ms > now_ms + MAX_DRIFT_MS {
        return Err(Reply::err(too_far));
    }
    Ok(Some(hlc))
}

/// The key argument: present and not empty.
fn key(args: &[Bytes]) -> Result<Bytes, Reply> {
    let k = args.get(1).cloned().unwrap_or_default();
    if k.is_empty() {
        return Err(Reply::err("the key length is zero"));
    }
    Ok(k)
}

/// `SET key value [NX|NEX] [PX ms]`, options in any order, each at most once.
fn set_options(opts: &[Bytes]) -> Result<(PutCondition, Option<u64>), SyntaxError> {
    let (mut condition, mut ttl) = (None, None);
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        match o.to_ascii_uppercase().as_slice() {
            b"NX" if condition.is_none() => condition = Some(PutCondition::IfAbsent),
            b"NEX" if condition.is_none() => condition = Some(PutCondition::IfAbsentOrEqual),
            b"PX" if ttl.is_none() => {
                let ms = it.next().ok_or(SyntaxError)?;
                let ms: u64 = std::str::from_utf8(ms).ok().and_then(|s| s.parse().ok()).ok_or(SyntaxError)?;
                ttl = Some(ms).filter(|ms| *ms > 0);
                if ttl.is_none() {
                    return Err(SyntaxError);
                }
            }
            _ => return Err(SyntaxError),
        }
    }
    Ok((condition.unwrap_or(PutCondition::Always), ttl))
}

async fn set(broker: &Broker, m: &Meta<'_>, args: &[Bytes]) -> Result<Reply, Error> {
    let parsed = (|| {
        if args.len() < 3 {
            return Err(Reply::err("wrong number of arguments"));
        }
        let key = key(args)?;
        let (condition, ttl_ms) = set_options(&args[3..]).map_err(|_| Reply::err("syntax error"))?;
        let client_ts = clock(m.ts, m.now_ms, ERR_TS_FUTURE)?.ok_or_else(|| Reply::err("missing timestamp"))?;
        let fencing = clock(m.ft, m.now_ms, ERR_FT_FUTURE)?;
        Ok(Put { key, value: args[2].clone(), ttl_ms, condition, fencing, client_ts: Some(client_ts) })
    })();
    let put = match parsed {
        Ok(p) => p,
        Err(reply) => return Ok(reply),
    };
    let client = put.client_ts.and_then(|ts| broker.client_ref(m.client, ts));
    let done = broker.handle().put(put, client).await?;
    let version = done.meta.map(|meta| meta.version);
    Ok(Reply::Ok(if done.applied { resp3::OK.into() } else { resp3::int(-1) }, version))
}

async fn get(broker: &Broker, args: &[Bytes]) -> Result<Reply, Error> {
    if args.len() != 2 {
        return Ok(Reply::err("wrong number of arguments"));
    }
    let key = match key(args) {
        Ok(k) => k,
        Err(reply) => return Ok(reply),
    };
    Ok(match broker.handle().get(&key, Consistency::Linearizable).await? {
        Some(e) => Reply::Ok(resp3::bulk(&e.value), Some(e.version)),
        None => Reply::Ok(resp3::NIL.into(), None),
    })
}

/// `DEL key` / `VDEL key value`.
async fn del(broker: &Broker, m: &Meta<'_>, args: &[Bytes], by_value: bool) -> Result<Reply, Error> {
    let parsed = (|| {
        if args.len() != if by_value { 3 } else { 2 } {
            return Err(Reply::err("wrong number of arguments"));
        }
        let key = key(args)?;
        let fencing = clock(m.ft, m.now_ms, ERR_FT_FUTURE)?;
        let condition = if by_value { DeleteCondition::IfValue(args[2].clone()) } else { DeleteCondition::Always };
        Ok(Delete { key, condition, fencing })
    })();
    let del = match parsed {
        Ok(d) => d,
        Err(reply) => return Ok(reply),
    };
    let ts = m.ts.and_then(|t| t.parse::<Hlc>().ok());
    let client = ts.and_then(|ts| broker.client_ref(m.client, ts));
    let n = match broker.handle().delete(del, client).await?.outcome {
        DeleteOutcome::Deleted => 1,
        DeleteOutcome::NotFound => 0,
        DeleteOutcome::ConditionFailed => -1,
    };
    Ok(Reply::Ok(resp3::int(n), None))
}

/// `KEYNOTIFY key [STOP]`; the registration is saved to the session before the reply.
async fn keynotify(broker: &Broker, m: &Meta<'_>, args: &[Bytes]) -> Result<Reply, Error> {
    let stop = match args.get(2).map(|a| a.to_ascii_uppercase()) {
        None if args.len() == 2 => false,
        Some(s) if s == b"STOP" && args.len() == 3 => true,
        Some(_) if args.len() == 3 => return Ok(Reply::err("syntax error")),
        _ => return Ok(Reply::err("wrong number of arguments")),
    };
    let key = match key(args) {
        Ok(k) => k,
        Err(reply) => return Ok(reply),
    };
    if !stop {
        if !broker.observe(m.client, key) {
            return Ok(Reply::err("the quota has been exceeded"));
        }
        broker.save(m.client).await?;
        return Ok(Reply::Ok(resp3::OK.into(), None));
    }
    let was = broker.unobserve(m.client, &key);
    broker.save(m.client).await?;
    Ok(Reply::Ok(if was { resp3::OK.into() } else { resp3::int(0) }, None))
}

/// `SCAN pattern [token]` (1.5.0-beta1): a page of keys matching a glob (`*`, `?`, `[..]`), and a
/// continuation token while there may be more.
/// Only keys the caller may read are listed.
async fn scan(broker: &Broker, m: &Meta<'_>, args: &[Bytes]) -> Result<Reply, Error> {
    if !(2..=3).contains(&args.len()) {
        return Ok(Reply::err("wrong number of arguments"));
    }
    let pattern = &args[1];
    let after = match args.get(2) {
        None => Bytes::new(),
        Some(t) if t.first() == Some(&1) => t.slice(1..),
        Some(_) => return Ok(Reply::err("syntax error")),
    };
    let q = ListQuery { prefix: Bytes::copy_from_slice(pattern::literal_prefix(pattern)), after, limit: SCAN_PAGE };
    let page = broker.handle().list(q, Consistency::Linearizable).await?;
    let glob = pattern::compile(pattern);
    let keys: Vec<Bytes> = page
        .entries
        .iter()
        .filter(|(k, _)| pattern::matches_compiled(&glob, k))
        .filter(|(k, _)| broker.policy().can_key(m.principal, k, Access::Read))
        .map(|(k, _)| resp3::bulk(k))
        .collect();
    let mut parts = vec![resp3::array(&keys)];
    if let Some(last) = page.next_cursor {
        let mut token = vec![1u8];
        token.extend_from_slice(&last);
        parts.push(resp3::bulk(&token));
    }
    Ok(Reply::Ok(resp3::array(&parts), None))
}

/// The reply as the message routed to the response topic.
fn message(topic: TopicName, correlation: Option<Bytes>, reply: Reply) -> Message {
    let prop = |name: &str, value: String| UserProperty { name: name.into(), value: value.into() };
    let (status, payload, mut extra) = match reply {
        Reply::Ok(payload, ts) => (200, payload, ts.map(|t| vec![prop("__ts", t.to_string())]).unwrap_or_default()),
        Reply::Status { code, message, props } => {
            let mut p = vec![prop("__stMsg", message), prop("__apErr", "false".into())];
            p.extend(props.into_iter().map(|(n, v)| prop(n, v)));
            (code, Bytes::new(), p)
        }
    };
    let mut user_properties = vec![prop("__stat", status.to_string()), prop("__protVer", "1.0".into())];
    user_properties.append(&mut extra);
    Message {
        topic,
        payload,
        qos: QoS::Level1,
        retain: false,
        properties: PublishProperties {
            correlation_data: correlation,
            content_type: Some(CONTENT_TYPE.into()),
            user_properties,
            ..Default::default()
        },
        received: Instant::now(),
    }
}

/// The message notifying `client` of a change to `key` (§9).
pub fn notification(client: &str, key: &[u8], value: Option<&[u8]>, version: Hlc) -> Option<Message> {
    let topic = TopicName::try_from(notify_topic(client, key).as_str()).ok()?;
    let ts = UserProperty { name: "__ts".into(), value: version.to_string().into() };
    Some(Message {
        topic,
        payload: resp3::notify(value),
        qos: QoS::Level1,
        retain: false,
        properties: PublishProperties { user_properties: vec![ts], ..Default::default() },
        received: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(items: &[&str]) -> Vec<Bytes> {
        items.iter().map(|s| Bytes::from(s.to_string())).collect()
    }

    #[test]
    fn set_options_in_any_order_once_each() {
        assert_eq!(set_options(&b(&[])), Ok((PutCondition::Always, None)));
        assert_eq!(set_options(&b(&["NX", "PX", "30000"])), Ok((PutCondition::IfAbsent, Some(30_000))));
        assert_eq!(set_options(&b(&["px", "10", "nex"])), Ok((PutCondition::IfAbsentOrEqual, Some(10))));
        for bad in
            [&["NX", "NEX"][..], &["PX"], &["PX", "ten"], &["PX", "-1"], &["PX", "0"], &["PX", "1", "PX", "2"], &["XX"]]
        {
            assert_eq!(set_options(&b(bad)), Err(SyntaxError), "{bad:?}");
        }
    }

    #[test]
    fn clocks_from_properties() {
        let now = 1_795_235_250_000;
        assert_eq!(clock(None, now, ERR_TS_FUTURE), Ok(None));
        let ok = clock(Some("001795235250622:00000:cf697b28-e1f0"), now, ERR_TS_FUTURE).unwrap();
        assert_eq!(ok, Some(Hlc::new(1_795_235_250_622, 0)));
        assert_eq!(clock(Some("nonsense"), now, ERR_TS_FUTURE), Err(Reply::err("malformed timestamp")));
        let ahead = format!("{}:0:c", now + 61_000);
        assert_eq!(clock(Some(&ahead), now, ERR_FT_FUTURE), Err(Reply::err(ERR_FT_FUTURE)));
    }

    #[test]
    fn topics() {
        assert_eq!(
            notify_topic("client-id1", b"SOMEKEY"),
            "clients/statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/636C69656E742D696431/command/notify/534F4D454B4559"
        );
        assert!(valid_response_topic("clients/c1/services/statestore/v1/x/command/invoke/response"));
        for bad in ["", REQUEST_TOPIC, "a/+", "clients/statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/x"] {
            assert!(!valid_response_topic(bad), "{bad}");
        }
    }

    #[test]
    fn errors_become_the_sdk_texts() {
        let fenced = "a fencing token is required for this request";
        assert_eq!(Reply::from(Error::FencingRejected(fenced.into())), Reply::err(fenced));
        assert_eq!(Reply::from(Error::TooLarge("v".into())), Reply::err("the quota has been exceeded"));
        assert!(matches!(Reply::from(Error::unavailable("x")), Reply::Status { code: 503, .. }));
    }
}
