//! The local chain's commands: init, apply, set, delete, log, history,
//! show, diff, verify, rollback, checkout.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use fschain_producer::Clock as _;
use fschain_producer::{
    init_root, make_loop_filesystem, recover_if_interrupted, ChainWriter, SealedBlock, SystemClock,
};
use fschain_schema::sshsig::SignaturePolicy;
use fschain_schema::{Action, BlockHeader, BlockRef, ChainName, ElementId, Operation, State};
use fschain_store::retention::{
    prune_root, KeepReason, PruneOptions, PruneOutcome, RetentionPolicy,
};
use fschain_store::{verify_root_with_progress, RootLayout};
use serde_json::{json, Value};

use crate::cli::{KeepArgs, LocalCommand};
use crate::context::{
    chain_roots, open_chain, open_writer, parse_size, print_json, root_dir, signature_policy,
    Invocation,
};
use crate::progress::{Progress, Unit};

pub(crate) fn run(command: LocalCommand, inv: &Invocation) -> Result<ExitCode> {
    match command {
        LocalCommand::Init {
            root,
            chain,
            image,
            size,
        } => {
            let root = root_dir(&root, inv)?;
            if let (Some(image), Some(size)) = (image, size) {
                let bytes = parse_size(&size)?;
                make_loop_filesystem(&image, bytes, &root).with_context(|| {
                    format!(
                        "creating btrfs image {} at {}",
                        image.display(),
                        root.display()
                    )
                })?;
            }
            let name = chain
                .or_else(|| inv.settings.chain.clone())
                .unwrap_or_else(|| inv.hostname.clone());
            let chain = ChainName::parse(&name)?;
            let genesis = init_root(&root, chain, &mut SystemClock)
                .with_context(|| format!("initialising {}", root.display()))?;
            println!(
                "initialised chain {} at {}: block 0 {}",
                genesis.chain,
                root.display(),
                genesis.hash
            );
        }
        LocalCommand::Apply {
            root,
            block_ops,
            file,
            json,
        } => {
            let root = root_dir(&root, inv)?;
            let input: Box<dyn Read> = if file == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::fs::File::open(&file).with_context(|| format!("opening {file}"))?)
            };
            let signatures = signature_policy(inv)?;
            apply(
                &root,
                block_ops.max(1),
                input,
                &file,
                &signatures,
                json.json,
            )?;
        }
        LocalCommand::Op { action } => op_command(action)?,
        LocalCommand::Set {
            root,
            element,
            assignments,
            reason,
            sign,
            json,
        } => {
            let root = root_dir(&root, inv)?;
            let element = ElementId::parse(&element)?;
            let mut writer = open_writer(&root)?;
            let mut state = State::new();
            for assignment in &assignments {
                let (key, value) = assignment
                    .split_once('=')
                    .ok_or_else(|| anyhow!("{assignment:?} is not KEY=VALUE"))?;
                if key.is_empty() {
                    bail!("{assignment:?} has an empty KEY");
                }
                let value =
                    serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
                state.insert(key.to_owned(), value);
            }
            let exists = writer.current_state(&element)?.is_some();
            let action = if exists { Action::Patch } else { Action::Set };
            let op = Operation {
                element,
                action,
                state: Some(state),
                reason,
                actor: Some(inv.actor.clone()),
                signature: None,
            };
            single_op(writer, op, sign.as_deref(), inv, json.json)?;
        }
        LocalCommand::Delete {
            root,
            element,
            reason,
            sign,
            json,
        } => {
            let root = root_dir(&root, inv)?;
            let element = ElementId::parse(&element)?;
            let writer = open_writer(&root)?;
            let op = Operation {
                element,
                action: Action::Delete,
                state: None,
                reason,
                actor: Some(inv.actor.clone()),
                signature: None,
            };
            single_op(writer, op, sign.as_deref(), inv, json.json)?;
        }
        LocalCommand::Log { root, json } => {
            let chain = open_chain(&root_dir(&root, inv)?)?;
            if json.json {
                let headers: Vec<Value> = chain
                    .headers()
                    .iter()
                    .map(BlockHeader::body_value_with_hash)
                    .collect();
                print_json(&json!({ "chain": chain.meta().chain, "blocks": headers }));
            } else {
                println!(
                    "{:>6}  {:<27}  {:<16}  {:>6}  {:<16}",
                    "height", "time", "hash", "events", "state root"
                );
                for h in chain.headers() {
                    println!(
                        "{:>6}  {:<27}  {:<16}  {:>6}  {:<16}",
                        h.height,
                        h.time.to_string(),
                        &h.hash.to_hex()[..16],
                        h.event_count,
                        &h.state_root.to_hex()[..16]
                    );
                }
            }
        }
        LocalCommand::History {
            root,
            element,
            json,
        } => {
            let chain = open_chain(&root_dir(&root, inv)?)?;
            let element = ElementId::parse(&element)?;
            let events = chain.history(&element)?;
            if events.is_empty() {
                bail!("{element} has no history in chain {}", chain.meta().chain);
            }
            if json.json {
                let list: Vec<Value> = events
                    .iter()
                    .map(|(height, e)| json!({ "height": height, "event": event_json(e) }))
                    .collect();
                print_json(&json!({ "element": element, "events": list }));
            } else {
                for (height, e) in &events {
                    println!(
                        "block {height:<5} #{:<4} {}  {:<6}  {}{}{}",
                        e.element_seq,
                        e.time,
                        e.op.action,
                        e.op.reason.as_deref().unwrap_or("-"),
                        e.op.actor
                            .as_deref()
                            .map(|a| format!("  ({a})"))
                            .unwrap_or_default(),
                        e.op.signer()
                            .map(|s| format!("  signed by {s}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        LocalCommand::Show {
            root,
            element,
            at,
            json,
        } => {
            let chain = open_chain(&root_dir(&root, inv)?)?;
            let element = ElementId::parse(&element)?;
            let height = chain.resolve(&BlockRef::parse(&at)?)?;
            let state = chain
                .state_at(&element, height)?
                .ok_or_else(|| anyhow!("{element} does not exist at block {height}"))?;
            if json.json {
                print_json(&json!({ "element": element, "height": height, "state": state }));
            } else {
                print_json(&Value::Object(state));
            }
        }
        LocalCommand::Diff {
            root,
            from,
            to,
            json,
        } => {
            let chain = open_chain(&root_dir(&root, inv)?)?;
            let from = chain.resolve(&BlockRef::parse(&from)?)?;
            let to = match to {
                Some(r) => chain.resolve(&BlockRef::parse(&r)?)?,
                None => chain.head().height,
            };
            let diff = chain.diff(from, to)?;
            if json.json {
                print_json(&serde_json::to_value(&diff)?);
            } else {
                println!("diff block {from} -> block {to}");
                for (mark, list) in [
                    ("+", &diff.added),
                    ("~", &diff.changed),
                    ("-", &diff.removed),
                ] {
                    for e in list {
                        println!("{mark} {e}");
                    }
                }
            }
        }
        LocalCommand::Verify { root, json } => {
            let root = root_dir(&root, inv)?;
            let layout = RootLayout::new(&root);
            recover_if_interrupted(&layout)
                .with_context(|| format!("recovering {}", root.display()))?;
            let bar = std::sync::Mutex::new(Progress::new("verify", Unit::Snapshots, None));
            let report = verify_root_with_progress(&layout, &|done, total| {
                if let Ok(mut bar) = bar.lock() {
                    bar.set_total(total);
                    bar.set(done, "");
                }
            })
            .with_context(|| format!("verifying {}", root.display()))?;
            if let Ok(bar) = bar.into_inner() {
                bar.finish();
            }
            if json.json {
                print_json(&json!({
                    "clean": report.is_clean(),
                    "chain": report.chain,
                    "head": report.head,
                    "blocks": report.blocks,
                    "events": report.events,
                    "snapshots": report.snapshots,
                    "pruned": report.pruned,
                    "bytes": report.bytes,
                    "problems": report.problems.iter().map(|p| {
                        let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
                        if let Value::Object(m) = &mut v { m.insert("message".into(), Value::String(p.to_string())); }
                        v
                    }).collect::<Vec<_>>(),
                }));
            } else if report.is_clean() {
                println!(
                    "ok: chain {} verified: {} blocks, {} events, {} snapshots{}, {} bytes checked ({} of them shared on disk with bytes read)",
                    report.chain,
                    report.blocks,
                    report.events,
                    report.snapshots,
                    pruned_note(&report.pruned),
                    report.bytes,
                    report.shared
                );
            } else {
                for p in &report.problems {
                    println!("PROBLEM {p}");
                }
                println!(
                    "{} problem(s) found in chain {}",
                    report.problems.len(),
                    report.chain
                );
            }
            return Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        LocalCommand::Rollback {
            root,
            reference,
            reason,
            json,
        } => {
            let root = root_dir(&root, inv)?;
            let mut writer = open_writer(&root)?;
            let target = BlockRef::parse(&reference)?.resolve(writer.headers())?;
            let sealed = writer.rollback(target, reason.as_deref(), Some(&inv.actor))?;
            match &sealed {
                Some(b) => report_blocks(
                    std::slice::from_ref(b),
                    b.header.event_count,
                    json.json,
                    &b.header,
                ),
                None => println!("nothing to do: the head already has block {target}'s states"),
            }
            writer.close()?;
        }
        LocalCommand::Prune {
            root,
            keep,
            dry_run,
            unpublished,
            json,
        } => {
            let policy = retention_policy(&keep, inv)?;
            let mut outcomes = Vec::new();
            for root in chain_roots(&root_dir(&root, inv)?)? {
                let layout = RootLayout::new(&root);
                let _lock = fschain_store::layout::lock(&layout)
                    .with_context(|| format!("locking {}", root.display()))?;
                let chain = layout.read_marker()?.chain;
                let options = PruneOptions {
                    dry_run,
                    unpublished_ok: unpublished,
                };
                let outcome = prune_root(&layout, &policy, options)
                    .with_context(|| format!("pruning {}", root.display()))?;
                outcomes.push((chain, outcome));
            }
            if json.json {
                print_json(&json!({ "chains": outcomes.iter().map(|(chain, o)| json!({
                    "chain": chain, "dry_run": o.dry_run, "pruned": o.plan.prune,
                    "deleted": o.deleted, "kept": o.plan.keep,
                })).collect::<Vec<_>>() }));
            } else {
                for (chain, o) in &outcomes {
                    print_prune(chain, o);
                }
            }
        }
        LocalCommand::Checkout {
            root,
            reference,
            dest,
        } => {
            let chain = open_chain(&root_dir(&root, inv)?)?;
            let height = chain.resolve(&BlockRef::parse(&reference)?)?;
            chain
                .checkout(height, &dest)
                .with_context(|| format!("checking out block {height}"))?;
            println!(
                "block {height} checked out at {} (writable; changes there do not touch the chain)",
                dest.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy of `prune`'s options, else of the config's `[retention]`.
fn retention_policy(keep: &KeepArgs, inv: &Invocation) -> Result<RetentionPolicy> {
    let given = RetentionPolicy {
        keep_last: keep.keep_last.unwrap_or(0),
        keep_hourly: keep.keep_hourly.unwrap_or(0),
        keep_daily: keep.keep_daily.unwrap_or(0),
        keep_weekly: keep.keep_weekly.unwrap_or(0),
        keep_monthly: keep.keep_monthly.unwrap_or(0),
    };
    let any = [
        keep.keep_last,
        keep.keep_hourly,
        keep.keep_daily,
        keep.keep_weekly,
        keep.keep_monthly,
    ]
    .iter()
    .any(Option::is_some);
    let policy = if any {
        given
    } else {
        inv.settings.retention.clone().unwrap_or_default()
    };
    if policy.is_empty() {
        bail!("no retention policy: give at least one --keep-* option with N > 0, or a [retention] table in the config");
    }
    Ok(policy)
}

fn print_prune(chain: &ChainName, o: &PruneOutcome) {
    let verb = if o.dry_run { "would prune" } else { "pruned" };
    if o.plan.prune.is_empty() {
        println!(
            "chain {chain}: nothing to prune ({} snapshots kept)",
            o.plan.keep.len()
        );
    } else {
        println!(
            "chain {chain}: {verb} {} snapshots ({}); {} kept",
            o.plan.prune.len(),
            fschain_store::retention::ranges(&o.plan.prune),
            o.plan.keep.len()
        );
    }
    let mut by_reason: std::collections::BTreeMap<KeepReason, Vec<u64>> = Default::default();
    for (h, reasons) in &o.plan.keep {
        for r in reasons {
            by_reason.entry(*r).or_default().push(*h);
        }
    }
    for (reason, heights) in by_reason {
        println!(
            "  kept ({}): {}",
            serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            fschain_store::retention::ranges(&heights)
        );
    }
}

/// ` (N heights pruned: a-b, c)` for a verify line, or nothing.
fn pruned_note(pruned: &[u64]) -> String {
    if pruned.is_empty() {
        return String::new();
    }
    format!(
        " ({} heights pruned: {})",
        pruned.len(),
        fschain_store::retention::ranges(pruned)
    )
}

/// Applies one operation of `set` or `delete`, signed with `sign` when
/// given (then the signer, not the login, is who it records), under the
/// configured signature policy.
fn single_op(
    mut writer: ChainWriter,
    mut op: Operation,
    sign: Option<&Path>,
    inv: &Invocation,
    json: bool,
) -> Result<()> {
    if let Some(key) = sign {
        op.actor = None;
        crate::signing::sign_operation(&mut op, key)?;
    }
    signature_policy(inv)?.check(&mut op, SystemClock.now())?;
    writer.apply(op)?;
    let sealed = writer
        .seal()?
        .ok_or_else(|| anyhow!("nothing was sealed"))?;
    report_blocks(std::slice::from_ref(&sealed), 1, json, &sealed.header);
    writer.close()?;
    Ok(())
}

/// Applies JSON Lines. A bad line stops the run: the valid operations before
/// it are sealed, the bad line and everything after it are not applied.
fn apply(
    root: &Path,
    block_ops: usize,
    input: Box<dyn Read>,
    name: &str,
    signatures: &SignaturePolicy,
    json: bool,
) -> Result<()> {
    let mut writer = open_writer(root)?;
    let mut sealed: Vec<SealedBlock> = Vec::new();
    let mut applied = 0u64;
    // Whatever stops the input (a line that is not an operation, not
    // UTF-8, or cannot be read), the operations before it are sealed.
    let mut failure: Option<(u64, String)> = None;
    let mut refused: Vec<u64> = Vec::new();
    let mut reader = BufReader::new(input);
    let mut bytes = Vec::new();
    let mut line_no = 0u64;
    loop {
        bytes.clear();
        line_no += 1;
        match reader.read_until(b'\n', &mut bytes) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                failure = Some((line_no, format!("could not be read: {e}")));
                break;
            }
        }
        let Ok(line) = std::str::from_utf8(&bytes) else {
            failure = Some((line_no, "is not UTF-8".to_owned()));
            break;
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut op = match Operation::from_json(line) {
            Ok(op) => op,
            Err(e) => {
                failure = Some((line_no, e.to_string()));
                break;
            }
        };
        // A refused signature skips that operation only: the rest goes on.
        if let Err(e) = signatures.check(&mut op, SystemClock.now()) {
            tracing::warn!(file = name, line = line_no, error = %e, "operation not applied");
            refused.push(line_no);
            continue;
        }
        let applied_op = writer.apply(op).map(|_| ());
        if let Err(e) = applied_op {
            failure = Some((line_no, e.to_string()));
            break;
        }
        applied += 1;
        if writer.pending_len() >= block_ops {
            sealed.extend(writer.seal()?);
        }
    }
    sealed.extend(writer.seal()?);
    let head = writer.head().clone();
    writer.close()?;
    if !sealed.is_empty() || failure.is_none() {
        report_blocks(&sealed, applied, json, &head);
    }
    if !refused.is_empty() && failure.is_none() {
        bail!(
            "{name}: {} operation(s) refused for their signature (lines {}), each logged above; the other {applied} are sealed, head is block {}",
            refused.len(),
            refused.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            head.height
        );
    }
    if let Some((line, e)) = failure {
        bail!(
            "{name} line {line}: {e}; nothing from line {line} on was applied ({applied} operation(s) before it are sealed, head is block {}); fix the line and resume from it",
            head.height
        );
    }
    Ok(())
}

fn report_blocks(sealed: &[SealedBlock], applied: u64, json: bool, head: &BlockHeader) {
    if json {
        let blocks: Vec<Value> = sealed
            .iter()
            .map(|b| json!({ "height": b.header.height, "hash": b.header.hash, "events": b.header.event_count }))
            .collect();
        print_json(
            &json!({ "applied": applied, "blocks": blocks, "head": { "height": head.height, "hash": head.hash } }),
        );
    } else {
        match (sealed.first(), sealed.last()) {
            (Some(first), Some(last)) if sealed.len() > 1 => println!(
                "applied {applied} operation(s) in {} blocks ({}..={}); head is block {} {}",
                sealed.len(),
                first.header.height,
                last.header.height,
                head.height,
                head.hash
            ),
            (Some(_), _) => println!(
                "applied {applied} operation(s); sealed block {} {}",
                head.height, head.hash
            ),
            _ => println!("no operations; head is block {} {}", head.height, head.hash),
        }
    }
}

fn event_json(e: &fschain_schema::Event) -> Value {
    e.to_canonical()
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

fn op_command(action: crate::cli::OpAction) -> Result<()> {
    use std::io::Write as _;
    let open = |file: &str| -> Result<Box<dyn BufRead>> {
        Ok(if file == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(BufReader::new(
                std::fs::File::open(file).with_context(|| format!("opening {file}"))?,
            ))
        })
    };
    match action {
        crate::cli::OpAction::Canonical { file } => {
            let bytes = crate::signing::canonical(open(&file)?)?;
            std::io::stdout().write_all(&bytes)?;
        }
        crate::cli::OpAction::Sign { key, file } => {
            crate::signing::sign_lines(open(&file)?, &key, std::io::stdout().lock())?;
        }
    }
    Ok(())
}
