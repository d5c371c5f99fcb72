//! What each subcommand does, in terms of the library crates.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use fschain_producer::{
    init_root, make_loop_filesystem, recover_if_interrupted, ChainWriter, SealedBlock, SystemClock,
};
use fschain_schema::{Action, BlockHeader, BlockRef, ChainName, ElementId, Operation, State};
use fschain_store::{verify_root, Chain, RootLayout};
use serde_json::{json, Value};

use crate::cli::{Command, RootArg};
use crate::Invocation;

pub fn run(command: Command, inv: &Invocation) -> Result<ExitCode> {
    match command {
        Command::Init {
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
        Command::Apply {
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
            apply(&root, block_ops.max(1), input, &file, json.json)?;
        }
        Command::Set {
            root,
            element,
            assignments,
            reason,
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
            };
            single_op(writer, op, json.json)?;
        }
        Command::Delete {
            root,
            element,
            reason,
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
            };
            single_op(writer, op, json.json)?;
        }
        Command::Log { root, json } => {
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
        Command::History {
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
                        "block {height:<5} #{:<4} {}  {:<6}  {}{}",
                        e.element_seq,
                        e.time,
                        e.op.action,
                        e.op.reason.as_deref().unwrap_or("-"),
                        e.op.actor
                            .as_deref()
                            .map(|a| format!("  ({a})"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Command::Show {
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
        Command::Diff {
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
        Command::Verify { root, json } => {
            let root = root_dir(&root, inv)?;
            let layout = RootLayout::new(&root);
            recover_if_interrupted(&layout)
                .with_context(|| format!("recovering {}", root.display()))?;
            let report =
                verify_root(&layout).with_context(|| format!("verifying {}", root.display()))?;
            if json.json {
                print_json(&json!({
                    "clean": report.is_clean(),
                    "chain": report.chain,
                    "head": report.head,
                    "blocks": report.blocks,
                    "events": report.events,
                    "snapshots": report.snapshots,
                    "bytes": report.bytes,
                    "problems": report.problems.iter().map(|p| {
                        let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
                        if let Value::Object(m) = &mut v { m.insert("message".into(), Value::String(p.to_string())); }
                        v
                    }).collect::<Vec<_>>(),
                }));
            } else if report.is_clean() {
                println!(
                    "ok: chain {} verified: {} blocks, {} events, {} snapshots, {} bytes checked ({} of them shared on disk with bytes read)",
                    report.chain,
                    report.blocks,
                    report.events,
                    report.snapshots,
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
        Command::Rollback {
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
        Command::Checkout {
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
        Command::Reindex { root, index, json } => {
            return crate::search::reindex(&root, &index, json.json, inv)
        }
        Command::Search { root, args, index } => {
            return crate::search::search(&root, &args, &index, inv);
        }
        Command::Key { action } => return crate::replication::key(action, inv),
        Command::Topics { action } => return crate::replication::topics_cmd(action, inv),
        Command::Agent {
            root,
            kafka,
            chain,
            block_ops,
            block_interval,
            stream,
            until_idle,
        } => {
            let root = root_dir(&root, inv)?;
            let options = fschain_producer::agent::AgentOptions {
                block_ops: block_ops.max(1),
                block_interval: std::time::Duration::from_millis(block_interval),
                policy: crate::replication::policy(&stream)?,
                until_idle,
            };
            return crate::replication::agent(&root, &kafka, chain, options, inv);
        }
        Command::Submit { chain, kafka, file } => {
            return crate::replication::submit(&chain, &kafka, &file, inv)
        }
        Command::Publish {
            root,
            kafka,
            stream,
        } => {
            let root = root_dir(&root, inv)?;
            return crate::replication::publish(&root, &kafka, &stream, inv);
        }
        Command::Consume {
            site,
            kafka,
            chains,
            until_idle,
        } => return crate::replication::consume(&site, &kafka, &chains, until_idle, inv),
        Command::Replay {
            site,
            kafka,
            chains,
        } => return crate::replication::replay(&site, &kafka, &chains, inv),
        Command::Export {
            root,
            from,
            to,
            output,
            raw,
            stream,
        } => {
            let root = root_dir(&root, inv)?;
            return crate::replication::export(&root, from.as_deref(), &to, &output, raw, &stream);
        }
        Command::Import { site, file } => return crate::replication::import(&site, &file, inv),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn root_dir(arg: &RootArg, inv: &Invocation) -> Result<PathBuf> {
    arg.root
        .clone()
        .or_else(|| inv.settings.root.clone())
        .ok_or_else(|| {
            anyhow!(
                "no root given: pass --root DIR, set FSCHAIN_ROOT, or set root in the config file"
            )
        })
}

fn open_writer(root: &Path) -> Result<ChainWriter> {
    ChainWriter::open(RootLayout::new(root)).with_context(|| format!("opening {}", root.display()))
}

pub(crate) fn open_chain(root: &Path) -> Result<Chain> {
    recover_if_interrupted(&RootLayout::new(root))
        .with_context(|| format!("recovering {}", root.display()))?;
    Chain::open(root).with_context(|| format!("opening {}", root.display()))
}

fn single_op(mut writer: ChainWriter, op: Operation, json: bool) -> Result<()> {
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
    json: bool,
) -> Result<()> {
    let mut writer = open_writer(root)?;
    let mut sealed: Vec<SealedBlock> = Vec::new();
    let mut applied = 0u64;
    // Whatever stops the input (a line that is not an operation, not
    // UTF-8, or cannot be read), the operations before it are sealed.
    let mut failure: Option<(u64, String)> = None;
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
        let applied_op = match Operation::from_json(line) {
            Ok(op) => writer.apply(op).map(|_| ()),
            Err(e) => Err(e.into()),
        };
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

pub(crate) fn print_json(value: &Value) {
    use std::io::Write as _;
    // A reader that stops early (`| head`) is not an error worth a panic.
    let _ = writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `2G`, `512M`, `1048576`.
pub(crate) fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| anyhow!("bad size {text:?}: use e.g. 2G, 512M"))?;
    let mult: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => bail!("bad size {text:?}: use e.g. 2G, 512M"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow!("size {text:?} is too large"))
}
