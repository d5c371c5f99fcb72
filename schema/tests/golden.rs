//! Golden vectors: the exact bytes and hashes `docs/encoding.md` documents.
//! If one of these changes, every existing chain stops verifying: change
//! the format version instead.

#![allow(clippy::unwrap_used)]

use fschain_schema::merkle::{leaf_hash, root_of};
use fschain_schema::{
    jcs, state_hash, state_leaf_data, state_leaf_hash, BlockHeader, ChainName, EventDraft,
    EventsRoot, HeaderDraft, Operation, StateRoot, Timestamp,
};

struct Vectors {
    state_json: String,
    state_hash: String,
    event1_line: String,
    event1_hash: String,
    event2_line: String,
    event2_hash: String,
    leaf_data_hex: String,
    state_root: String,
    events_root: String,
    genesis_line: String,
    block1_line: String,
    block1_hash: String,
}

fn compute() -> Vectors {
    let chain = ChainName::parse("host1").unwrap();
    let t0 = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let t1 = Timestamp::parse_rfc3339("2026-01-01T00:00:01.5Z").unwrap();
    let set = Operation::from_json(
        r#"{"element":"iface:eth0","action":"set","state":{"up":true,"mtu":9000,"addresses":["10.0.0.1/24"],"note":"caf\u00e9 \"A\"\n"},"reason":"jumbo frames","actor":"ops@host1"}"#,
    )
    .unwrap();
    let state = set.state.clone().unwrap();
    let state_bytes = jcs::canonical_object(&state).unwrap();
    let sh = state_hash(&state).unwrap();
    let (e1, line1) = EventDraft {
        chain: chain.clone(),
        element_seq: 1,
        prev: None,
        chain_seq: 1,
        op: set,
        state_hash: Some(sh),
        time: t0,
    }
    .seal_with_line()
    .unwrap();
    let patch = Operation::from_json(
        r#"{"element":"iface:eth0","action":"patch","state":{"mtu":1500,"note":null}}"#,
    )
    .unwrap();
    let after = patch.apply_to(Some(&state)).unwrap().unwrap();
    let (e2, line2) = EventDraft {
        chain: chain.clone(),
        element_seq: 2,
        prev: Some(e1.hash),
        chain_seq: 2,
        op: patch,
        state_hash: Some(state_hash(&after).unwrap()),
        time: t1,
    }
    .seal_with_line()
    .unwrap();
    let element = e1.element.clone();
    let leaf = state_leaf_hash(&element, &e2.state_hash.unwrap());
    let state_root = StateRoot(root_of(&[leaf]));
    let events_root = EventsRoot(root_of(&[
        leaf_hash(e1.hash.digest().as_bytes()),
        leaf_hash(e2.hash.digest().as_bytes()),
    ]));
    let genesis = HeaderDraft {
        chain: chain.clone(),
        height: 0,
        prev: None,
        time: t0,
        state_root: StateRoot(root_of(&[])),
        events_root: EventsRoot(root_of(&[])),
        event_count: 0,
        first_seq: None,
        last_seq: None,
    }
    .seal()
    .unwrap();
    let block1 = HeaderDraft {
        chain,
        height: 1,
        prev: Some(genesis.hash),
        time: t1,
        state_root,
        events_root,
        event_count: 2,
        first_seq: Some(1),
        last_seq: Some(2),
    }
    .seal()
    .unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    Vectors {
        state_json: text(state_bytes),
        state_hash: sh.to_hex(),
        event1_hash: e1.hash.to_hex(),
        event1_line: text(line1),
        event2_hash: e2.hash.to_hex(),
        event2_line: text(line2),
        leaf_data_hex: hex(&state_leaf_data(&element, &e2.state_hash.unwrap())),
        state_root: state_root.to_hex(),
        events_root: events_root.to_hex(),
        genesis_line: text(genesis.to_canonical().unwrap()),
        block1_hash: block1.hash.to_hex(),
        block1_line: text(block1.to_canonical().unwrap()),
    }
}

const DOC: &str = include_str!("../../docs/encoding.md");

#[test]
fn vectors_are_stable_and_documented() {
    let v = compute();
    let want = [
        ("state_json", v.state_json.as_str(), r#"{"addresses":["10.0.0.1/24"],"mtu":9000,"note":"café \"A\"\n","up":true}"#),
        ("state_hash", &v.state_hash, "36baeac84f8a8b4e0d462cc266163540966b33d9f5b0aac9ac784b4965a0a6c5"),
        ("event1_hash", &v.event1_hash, "725fba75e5808198c98b5a9fbaa10ba0496bf92913f4ccfe918868ba4e081146"),
        ("event2_hash", &v.event2_hash, "9f4553ec84d6a196d34208f91cda166c62d0de60a44f41a714c3f7a3649e6938"),
        ("leaf_data_hex", &v.leaf_data_hex, "69666163653a6574683000b9803260c80a01cb69c75f54140a950b966b5b646effb8d7c0374dc6e268cc33"),
        ("state_root", &v.state_root, "4980ca95156eafef383757167fa1abcd8f80bd6b4d55cabc7e0f65482226f3fe"),
        ("events_root", &v.events_root, "05854165416b647d0df97a1f1c3b5c0e7951396331d6c57c08622aca1dbf92b1"),
        ("block1_hash", &v.block1_hash, "e40dd4b30118a84854c006e9013e507367b1074574d7ae7b725e0de760990bac"),
    ];
    for (name, got, expected) in want {
        assert_eq!(got, expected, "{name}");
    }
    for (name, text) in [
        ("state_json", &v.state_json),
        ("event1_line", &v.event1_line),
        ("event2_line", &v.event2_line),
        ("leaf_data_hex", &v.leaf_data_hex),
        ("state_root", &v.state_root),
        ("events_root", &v.events_root),
        ("genesis_line", &v.genesis_line),
        ("block1_line", &v.block1_line),
    ] {
        assert!(
            DOC.contains(text.as_str()),
            "docs/encoding.md lacks {name}: {text}"
        );
    }
    // The lines parse back, and the slow, obvious encoding agrees with the fast one.
    let e1 = fschain_schema::Event::from_canonical(v.event1_line.as_bytes()).unwrap();
    assert_eq!(e1.to_canonical().unwrap(), v.event1_line.as_bytes());
    let b1 = BlockHeader::from_canonical(v.block1_line.as_bytes()).unwrap();
    assert_eq!(b1.hash.to_hex(), v.block1_hash);
}

/// `cargo test -p fschain-schema --test golden -- --ignored --nocapture`
/// prints the vectors (for writing docs/encoding.md after a format change).
#[test]
#[ignore]
fn print_vectors() {
    let v = compute();
    for (name, value) in [
        ("state_json", &v.state_json),
        ("state_hash", &v.state_hash),
        ("event1_line", &v.event1_line),
        ("event1_hash", &v.event1_hash),
        ("event2_line", &v.event2_line),
        ("event2_hash", &v.event2_hash),
        ("leaf_data_hex", &v.leaf_data_hex),
        ("state_root", &v.state_root),
        ("events_root", &v.events_root),
        ("genesis_line", &v.genesis_line),
        ("block1_line", &v.block1_line),
        ("block1_hash", &v.block1_hash),
    ] {
        println!("{name}: {value}");
    }
}

/// A signed manifest and a chunk frame, byte for byte (docs/replication.md).
#[test]
fn replication_frames_are_pinned() {
    use fschain_schema::wire::{
        BlockManifest, Chunk, SigningKey, StreamAttempt, StreamCutter, StreamInfo,
    };
    use fschain_schema::{Digest, HeaderDraft, Timestamp};
    let header = HeaderDraft::genesis(
        ChainName::parse("host1").unwrap(),
        Timestamp::parse_rfc3339("2026-11-21T10:00:00Z").unwrap(),
    )
    .seal()
    .unwrap();
    let key = SigningKey::from_seed([7; 32]);
    let attempt = StreamAttempt::from_bytes([1; 16]);
    let manifest = BlockManifest::sign(&header, None, StreamInfo::zstd(attempt, 4), &key).unwrap();
    let frame = manifest.to_frame().unwrap();
    // Ten bytes cut into 4-byte chunks: three chunks, the third the last.
    let cut = StreamCutter::cut(b"zstd bytes", 4);
    assert_eq!(cut.len(), 3);
    let chunks: Vec<Chunk> = cut
        .into_iter()
        .map(|c| Chunk::sign(&manifest, c, &key).unwrap())
        .collect();
    for c in &chunks {
        c.authenticate(&manifest).unwrap();
    }
    let chunk = chunks[1].to_frame().unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/replication.md"
    ))
    .unwrap();
    let vectors = [
        ("public key", key.public().to_hex()),
        ("manifest signature", manifest.signature.clone()),
        ("manifest frame SHA-256", Digest::of(&frame).to_hex()),
        ("last chunk signature", chunks[2].meta.signature.clone()),
        ("chunk frame", hex(&chunk)),
    ];
    for (name, value) in &vectors {
        println!("{name}: {value}");
    }
    println!(
        "manifest metadata: {}",
        String::from_utf8_lossy(&frame[9..frame.len() - 4])
    );
    for (name, value) in &vectors {
        assert!(
            doc.contains(value.as_str()),
            "docs/replication.md lacks the {name} {value}"
        );
    }
    assert!(manifest.verify(&[key.public()]).is_ok());
}

/// The checkpoint, proof bundle, consistency proof and signed operation of
/// docs/encoding.md, byte for byte: ed25519 and sshsig over ed25519 are
/// deterministic, so the signatures are pinned too.
struct ProofVectors {
    vkey: String,
    checkpoint: String,
    bundle: String,
    consistency: String,
    op_canonical: String,
    op_signature: String,
    signed_event_line: String,
    witness_vkey: String,
    cosigned: String,
}

impl ProofVectors {
    /// Each vector by the name `print_proof_vectors` prints it under.
    fn named(&self) -> [(&'static str, &String); 9] {
        [
            ("vkey", &self.vkey),
            ("checkpoint", &self.checkpoint),
            ("bundle", &self.bundle),
            ("consistency", &self.consistency),
            ("op_canonical", &self.op_canonical),
            ("op_signature", &self.op_signature),
            ("signed_event_line", &self.signed_event_line),
            ("witness_vkey", &self.witness_vkey),
            ("cosigned", &self.cosigned),
        ]
    }
}

fn compute_proofs() -> ProofVectors {
    use fschain_schema::bundle::{ConsistencyProof, ProofExtra, StateProof};
    use fschain_schema::merkle::{consistency_proof, MerkleLevels};
    use fschain_schema::note::{block_leaves, chain_checkpoint, Verifier};
    use fschain_schema::sshsig::{AllowedSigners, SignaturePolicy, OP_NAMESPACE};
    use fschain_schema::wire::SigningKey;
    use fschain_schema::{OpSignature, StateTree};

    let chain = ChainName::parse("host1").unwrap();
    let t0 = Timestamp::parse_rfc3339("2026-01-01T00:00:00Z").unwrap();
    let t1 = Timestamp::parse_rfc3339("2026-01-01T00:00:01.5Z").unwrap();
    let key = SigningKey::from_seed([7; 32]);
    let origin = "fschain.example/host1";
    let log = Verifier::new(origin, key.public()).unwrap();

    // The signed operation: an ed25519 SSH key from seed [9; 32].
    let ssh_key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[9; 32]));
    let mut op = Operation::from_json(
        r#"{"element":"iface:eth0","action":"set","state":{"mtu":9000},"actor":"alice@example.com"}"#,
    )
    .unwrap();
    let canonical = op.signed_bytes().unwrap();
    let signature = ssh_key
        .sign(OP_NAMESPACE, ssh_key::HashAlg::Sha512, &canonical)
        .unwrap()
        .to_pem(ssh_key::LineEnding::LF)
        .unwrap();
    op.signature = Some(OpSignature {
        armored: signature.clone(),
        signer: None,
    });
    let allowed = AllowedSigners::parse(&format!(
        "alice@example.com {}",
        ssh_key.public_key().to_openssh().unwrap()
    ))
    .unwrap();
    SignaturePolicy {
        allowed: Some(allowed),
        require: true,
    }
    .check(&mut op, t0)
    .unwrap();
    let state = op.state.clone().unwrap();
    let (event, line) = EventDraft {
        chain: chain.clone(),
        element_seq: 1,
        prev: None,
        chain_seq: 1,
        op,
        state_hash: Some(state_hash(&state).unwrap()),
        time: t0,
    }
    .seal_with_line()
    .unwrap();

    // Genesis, then block 1 holding that event.
    let tree = StateTree::from_entries([(event.element.clone(), event.state_hash.unwrap())]);
    let genesis = HeaderDraft::genesis(chain.clone(), t0).seal().unwrap();
    let block1 = HeaderDraft {
        chain,
        height: 1,
        prev: Some(genesis.hash),
        time: t1,
        state_root: tree.root(),
        events_root: EventsRoot(root_of(&[leaf_hash(event.hash.digest().as_bytes())])),
        event_count: 1,
        first_seq: Some(1),
        last_seq: Some(1),
    }
    .seal()
    .unwrap();
    let headers = vec![genesis, block1];
    let checkpoint = chain_checkpoint(origin, &headers).sign(&key).unwrap();
    let (_, state_proof) = tree.proof(&event.element).unwrap();
    let extra = ProofExtra {
        header: headers[1].clone(),
        state: Some(StateProof {
            element: event.element.clone(),
            state,
            proof: state_proof,
        }),
    };
    let path = MerkleLevels::from_leaves(block_leaves(&headers))
        .proof(1)
        .unwrap()
        .path;
    let bundle = extra.tlog_proof(&path, &checkpoint).unwrap();
    let consistency = ConsistencyProof {
        old: chain_checkpoint(origin, &headers[..1]).sign(&key).unwrap(),
        new: checkpoint.clone(),
        proof: consistency_proof(&block_leaves(&headers), 1),
    };
    // Site east cosigns it at 2026-01-01T00:00:00Z with the key of seed [5; 32].
    let site_key = SigningKey::from_seed([5; 32]);
    let witness =
        fschain_schema::note::Witness::new("fschain.example/site/east", site_key.public()).unwrap();
    let body = chain_checkpoint(origin, &headers).body();
    let cosigned = format!(
        "{checkpoint}{}",
        witness.cosign(&body, 1_767_225_600, &site_key).unwrap()
    );
    ProofVectors {
        witness_vkey: witness.to_vkey(),
        cosigned,
        vkey: log.to_vkey(),
        checkpoint,
        bundle,
        consistency: String::from_utf8(jcs::canonical(&consistency.to_json()).unwrap()).unwrap(),
        op_canonical: String::from_utf8(canonical).unwrap(),
        op_signature: signature,
        signed_event_line: String::from_utf8(line).unwrap(),
    }
}

#[test]
fn proof_and_signature_vectors_are_stable_and_documented() {
    let v = compute_proofs();
    for (name, text) in v.named() {
        assert!(
            DOC.contains(text.as_str()),
            "docs/encoding.md lacks {name}:\n{text}"
        );
    }
    let log = fschain_schema::note::Verifier::parse(&v.vkey).unwrap();
    let proven = fschain_schema::bundle::check_bundle(&v.bundle, &log).unwrap();
    assert_eq!(proven.checkpoint.size, 2);
    fschain_schema::bundle::ConsistencyProof::parse(&v.consistency)
        .unwrap()
        .check(&log)
        .unwrap();
    let event = fschain_schema::Event::from_canonical(v.signed_event_line.as_bytes()).unwrap();
    assert_eq!(event.op.signer().unwrap().principal, "alice@example.com");
}

/// `cargo test -p fschain-schema --test golden -- --ignored --nocapture`
#[test]
#[ignore]
fn print_proof_vectors() {
    let v = compute_proofs();
    for (name, value) in v.named() {
        println!("== {name}\n{value}");
    }
}
