//! Property tests: round trips, determinism, proofs, hash sensitivity.

#![allow(clippy::unwrap_used)]

use fschain_schema::{
    jcs, Action, BlockHash, ChainName, Digest, ElementId, Event, EventDraft, EventHash, EventLine,
    EventsRoot, HeaderDraft, Operation, State, StateHash, StateRoot, Timestamp,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((any::<String>(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn state() -> impl Strategy<Value = State> {
    proptest::collection::vec(("[a-z_]{1,8}", json_value()), 0..6)
        .prop_map(|kv| kv.into_iter().collect())
}

fn element() -> impl Strategy<Value = ElementId> {
    (
        "[a-z][a-z0-9-]{0,8}",
        "[^\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]{1,40}",
    )
        .prop_map(|(k, n)| ElementId::parse(&format!("{k}:{n}")).unwrap())
}

fn operation() -> impl Strategy<Value = Operation> {
    (
        element(),
        0u8..3,
        state(),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(element, a, state, reason, actor)| {
            let action = [Action::Set, Action::Patch, Action::Delete][a as usize];
            let state = (action != Action::Delete).then_some(state);
            Operation {
                element,
                action,
                state,
                reason,
                actor,
                signature: None,
            }
        })
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_bytes)
}

fn draft() -> impl Strategy<Value = EventDraft> {
    (
        operation(),
        1u64..1 << 40,
        proptest::option::of(digest()),
        1u64..1 << 40,
        proptest::option::of(digest()),
        0i64..1 << 52,
    )
        .prop_map(
            |(op, element_seq, prev, chain_seq, state, micros)| EventDraft {
                chain: ChainName::parse("host-1").unwrap(),
                element_seq,
                prev: prev.map(EventHash),
                chain_seq,
                op,
                state_hash: state.map(StateHash),
                time: Timestamp::from_micros(micros),
            },
        )
}

proptest! {
    #[test]
    fn operations_round_trip(op in operation()) {
        prop_assert_eq!(Operation::from_value(op.to_value()).unwrap(), op);
    }

    #[test]
    fn events_round_trip_and_both_encoders_agree(d in draft()) {
        let slow = d.clone().seal_slow().unwrap();
        let (event, line) = d.seal_with_line().unwrap();
        prop_assert_eq!(&event, &slow);
        prop_assert_eq!(&line, &event.to_canonical().unwrap());
        // Decoding keeps everything hashed. (Values may change representation
        // but not meaning: JCS writes -0.0 as 0 and 1.0 as 1.)
        let back = Event::from_canonical(&line).unwrap();
        prop_assert_eq!(back.hash, event.hash);
        prop_assert_eq!(back.to_canonical().unwrap(), line);
    }

    #[test]
    fn canonical_json_ignores_member_order_and_is_idempotent(v in json_value()) {
        let bytes = jcs::canonical(&v).unwrap();
        // Re-insert every object's members in reverse order.
        fn reverse(v: &Value) -> Value {
            match v {
                Value::Object(m) => {
                    let mut r = Map::new();
                    for (k, x) in m.iter().rev() { r.insert(k.clone(), reverse(x)); }
                    Value::Object(r)
                }
                Value::Array(a) => Value::Array(a.iter().map(reverse).collect()),
                x => x.clone(),
            }
        }
        prop_assert_eq!(&jcs::canonical(&reverse(&v)).unwrap(), &bytes);
        let reparsed: Value = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(jcs::canonical(&reparsed).unwrap(), bytes);
    }

    #[test]
    fn every_event_field_changes_the_hash(d in draft(), which in 0usize..8) {
        let base = d.clone().seal().unwrap().hash;
        let mut m = d;
        match which {
            0 => m.chain = ChainName::parse("host-2").unwrap(),
            1 => m.element_seq += 1,
            2 => m.prev = match m.prev { None => Some(EventHash(Digest::ZERO)), Some(_) => None },
            3 => m.chain_seq += 1,
            4 => m.op.reason = Some(format!("{}x", m.op.reason.unwrap_or_default())),
            5 => m.op.element = ElementId::parse(&format!("{}x", m.op.element)).unwrap(),
            6 => m.state_hash = match m.state_hash { None => Some(StateHash(Digest::ZERO)), Some(_) => None },
            _ => m.time = Timestamp::from_micros(m.time.as_micros() + 1),
        }
        prop_assert_ne!(m.seal().unwrap().hash, base);
    }

    #[test]
    fn every_header_field_changes_the_hash(which in 0usize..9, height in 1u64..1000, n in 0u64..50) {
        let draft = HeaderDraft {
            chain: ChainName::parse("c").unwrap(),
            height,
            prev: Some(BlockHash(Digest::of(b"p"))),
            time: Timestamp::from_micros(5),
            state_root: StateRoot(Digest::of(b"s")),
            events_root: EventsRoot(Digest::of(b"e")),
            event_count: n,
            first_seq: Some(1),
            last_seq: Some(n + 1),
        };
        let base = draft.clone().seal().unwrap();
        let mut m = draft;
        match which {
            0 => m.chain = ChainName::parse("d").unwrap(),
            1 => m.height += 1,
            2 => m.prev = None,
            3 => m.time = Timestamp::from_micros(6),
            4 => m.state_root = StateRoot(Digest::of(b"t")),
            5 => m.events_root = EventsRoot(Digest::of(b"f")),
            6 => m.event_count += 1,
            7 => m.first_seq = None,
            _ => m.last_seq = Some(n + 2),
        }
        let changed = m.seal().unwrap();
        prop_assert_ne!(changed.hash, base.hash);
        prop_assert_eq!(
            fschain_schema::BlockHeader::from_canonical(&changed.to_canonical().unwrap()).unwrap(),
            changed
        );
    }
}

/// One small edit of a byte string: insert, replace or delete a byte.
#[derive(Clone, Debug)]
struct Edit {
    at: usize,
    kind: u8,
    byte: u8,
}

fn edit() -> impl Strategy<Value = Edit> {
    const BYTES: &[u8] = b" \"\\01-.eE+{}[],:nulAa\x01\x7f\xc3";
    (any::<usize>(), 0u8..3, 0..BYTES.len()).prop_map(|(at, kind, i)| Edit {
        at,
        kind,
        byte: BYTES[i],
    })
}

fn edited(bytes: &[u8], edit: &Edit) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = edit.at % (out.len() + 1);
    match edit.kind {
        0 => out.insert(at, edit.byte),
        1 if at < out.len() => out[at] = edit.byte,
        _ if at < out.len() => {
            out.remove(at);
        }
        _ => {}
    }
    out
}

/// What `is_canonical` must agree with: parse, write canonically, compare.
fn reencodes_to_itself(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| jcs::canonical(&v).ok())
        .is_some_and(|c| c == bytes)
}

/// Puts the hash of a line's body (everything but its `hash` member) into
/// its `hash` member, so an edited line fails for its form or fields, not
/// only for its hash.
fn rehashed(line: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b",\"hash\":\"";
    let Some(at) = line.windows(KEY.len()).position(|w| w == KEY) else {
        return line.to_vec();
    };
    let hex_at = at + KEY.len();
    if line.len() < hex_at + 66 {
        return line.to_vec();
    }
    let body = [&line[..at], b",", &line[hex_at + 66..]].concat();
    let mut out = line.to_vec();
    out[hex_at..hex_at + 64].copy_from_slice(Digest::of(&body).to_hex().as_bytes());
    out
}

proptest! {
    #[test]
    fn canonical_check_agrees_with_parsing_and_reencoding(v in json_value(), edits in proptest::collection::vec(edit(), 0..3)) {
        let mut bytes = jcs::canonical(&v).unwrap();
        prop_assert!(jcs::is_canonical(&bytes));
        for e in &edits {
            bytes = edited(&bytes, e);
        }
        prop_assert_eq!(jcs::is_canonical(&bytes), reencodes_to_itself(&bytes), "{}", String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn fast_event_reader_agrees_with_the_parser(d in draft(), edits in proptest::collection::vec(edit(), 0..3)) {
        let (event, mut line) = d.seal_with_line().unwrap();
        let fast = EventLine::read(&line).unwrap();
        prop_assert_eq!(fast.hash, event.hash);
        prop_assert_eq!(&fast.element, &event.element);
        prop_assert_eq!(EventLine::element_of(&line), Some(event.element.clone()));
        // The element alone is read from the first members: a cut line
        // still names it, which is all the events topic's key needs.
        let cut = line.len() / 2 + 1;
        let element_end = line.windows(14).position(|w| w == b",\"element_seq\"").unwrap();
        prop_assert_eq!(
            EventLine::element_of(&line[..cut.max(element_end + 1)]),
            Some(event.element.clone())
        );
        prop_assert_eq!(EventLine::element_of(&line[..element_end - 1]), None);
        let state = event.op.state.as_ref().map(|s| jcs::canonical_object(s).unwrap());
        prop_assert_eq!(fast.state, state.as_deref());
        for e in &edits {
            line = rehashed(&edited(&line, e));
        }
        let slow = Event::from_canonical(&line);
        match EventLine::read(&line) {
            Some(fast) => {
                let slow = slow.unwrap();
                prop_assert_eq!(
                    (&fast.chain, &fast.element, fast.element_seq, fast.prev, fast.chain_seq),
                    (&slow.chain, &slow.element, slow.element_seq, slow.prev, slow.chain_seq)
                );
                prop_assert_eq!((fast.action, fast.state_hash, fast.time, fast.hash), (slow.op.action, slow.state_hash, slow.time, slow.hash));
                prop_assert_eq!(fast.state.map(<[u8]>::to_vec), slow.op.state.as_ref().map(|s| jcs::canonical_object(s).unwrap()));
            }
            None => prop_assert!(slow.is_err(), "slow path accepted {}", String::from_utf8_lossy(&line)),
        }
    }
}

#[test]
fn fast_event_reader_refuses_what_is_not_canonical() {
    let d = EventDraft {
        chain: ChainName::parse("host-1").unwrap(),
        element_seq: 2,
        prev: Some(EventHash(Digest::of(b"p"))),
        chain_seq: 7,
        op: Operation::from_json(
            r#"{"element":"iface:eth0","action":"patch","state":{"mtu":9000},"actor":"ops"}"#,
        )
        .unwrap(),
        state_hash: Some(StateHash(Digest::of(b"s"))),
        time: Timestamp::from_micros(1_700_000_000_000_000),
    };
    let (_, line) = d.seal_with_line().unwrap();
    let text = String::from_utf8(line.clone()).unwrap();
    assert!(EventLine::read(&line).is_some());
    for not_an_event in [
        text.replacen("\"chain\"", "\"chains\"", 1),
        text.replacen("\"element\"", "\"elements\"", 1),
        text.replacen("\"element\":\"iface:eth0\"", "\"element\":\"iface\"", 1),
        format!(" {text}"),
        "{}".to_string(),
    ] {
        assert_eq!(
            EventLine::element_of(not_an_event.as_bytes()),
            None,
            "{not_an_event}"
        );
    }
    let hex = |d: Digest| d.to_hex();
    let cases = [
        text.replace("\"mtu\":9000", "\"mtu\":9000.0"),
        text.replace("\"mtu\":9000", "\"mtu\": 9000"),
        text.replace("\"actor\":\"ops\"", "\"actor\":\"ops\",\"reason\":null"),
        text.replace(
            "\"action\":\"patch\",",
            "\"action\":\"patch\",\"element\":\"iface:eth0\",",
        ),
        text.replace("\"chain_seq\":7", "\"chain_seq\":07"),
        text.replace(
            &hex(Digest::of(b"p")),
            &hex(Digest::of(b"p")).to_uppercase(),
        ),
        text.replace(&format!("\"prev\":\"{}\",", hex(Digest::of(b"p"))), ""),
        text.replace("\"v\":1", "\"v\":2"),
        text.replace(
            "\"action\":\"patch\",\"actor\":\"ops\"",
            "\"actor\":\"ops\",\"action\":\"patch\"",
        ),
        text.replace("\"state\":{\"mtu\":9000}", "\"state\":[]"),
    ];
    for case in cases {
        assert_ne!(case, text);
        let case = rehashed(case.as_bytes());
        assert!(
            EventLine::read(&case).is_none(),
            "{}",
            String::from_utf8_lossy(&case)
        );
        assert!(
            Event::from_canonical(&case).is_err(),
            "{}",
            String::from_utf8_lossy(&case)
        );
    }
    // A changed byte that keeps the form is caught by the hash alone.
    let case = text.replace("9000", "9001");
    assert!(EventLine::read(case.as_bytes()).is_none());
}
