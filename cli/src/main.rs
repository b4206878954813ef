//! `duolog`: produce to, consume from, inspect and verify duolog stores.

mod dump;

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use duolog::{EngineKind, FlushPolicy, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};

const USAGE: &str = "\
usage:
  duolog produce --dir D [--engine commitlog|segmented] --topic T [--partitions N] [--partition P] [--keyed [--tombstones]] [--sync]
      reads lines from stdin (with --keyed: key<TAB>body) and prints `<partition> <offset>` for each
      acknowledged message (with --sync: only once it is durable on disk); with --tombstones a
      line `key<TAB>` with nothing after the tab is a tombstone (a delete marker for the key)
  duolog consume --dir D --topic T --partition P [--from O] [--max N]
      prints `<offset><TAB><key><TAB><body>` per record (`null` as the body of a tombstone)
  duolog topic create --dir D [--engine commitlog|segmented] --topic T [--partitions N] [--config NAME=VALUE]...
  duolog topic alter --dir D --topic T [--config NAME=VALUE]... [--delete-config NAME]...
  duolog topic delete --dir D --topic T
  duolog topic add-partitions --dir D --topic T --count N     adds N partitions
      config names are Kafka's: cleanup.policy (delete, compact, compact,delete), retention.ms,
      retention.bytes (-1: unlimited), segment.bytes, segment.ms, max.message.bytes,
      min.compaction.lag.ms, delete.retention.ms
  duolog topics --dir D [--all]  lists topics, their partitions and configs (--all: every config,
      with the value that applies; `*` marks the topic's own)
  duolog compact --dir D [--topic T]   runs the log cleaner now and reports what it removed
  duolog stats --dir D          partitions, bounds, files and bytes on disk
  duolog verify --dir D         checks every checksum and every derived file
  duolog query --dir D --topic T --key K [--from MS --to MS] [--max N]
      prints `<partition><TAB><offset><TAB><store time><TAB><body>` of records carrying key K
  duolog offset-for-time --dir D --topic T --partition P --time MS
      prints the earliest offset stored at or after MS (ms since the epoch), or `none`
  duolog reindex --dir D        drops the key index and rebuilds it from the log
  duolog dump FILE              prints a segment's .log (batches, records), .index or .timeindex";

/// A command-line error: printed as one line, exit code 2 for usage, 1 otherwise.
enum CliError {
    Usage(String),
    Store(duolog::Error),
    Io(io::Error),
    Failed(String),
}

impl From<duolog::Error> for CliError {
    fn from(e: duolog::Error) -> Self {
        CliError::Store(e)
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError::Io(e)
    }
}

struct Args {
    flags: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse(raw: &[String], switches: &[&str]) -> Result<Args, CliError> {
        let mut flags = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let a = &raw[i];
            let Some(name) = a.strip_prefix("--") else {
                return Err(CliError::Usage(format!("unexpected argument {a:?}")));
            };
            if switches.contains(&name) {
                flags.push((name.to_owned(), None));
                i += 1;
            } else {
                let v = raw
                    .get(i + 1)
                    .ok_or_else(|| CliError::Usage(format!("--{name} needs a value")))?;
                flags.push((name.to_owned(), Some(v.clone())));
                i += 2;
            }
        }
        Ok(Args { flags })
    }

    fn check_known(&self, known: &[&str]) -> Result<(), CliError> {
        for (name, _) in &self.flags {
            if !known.contains(&name.as_str()) {
                return Err(CliError::Usage(format!("unknown option --{name}")));
            }
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.flags
            .iter()
            .filter(move |(n, _)| n == name)
            .filter_map(|(_, v)| v.as_deref())
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn required(&self, name: &str) -> Result<&str, CliError> {
        self.get(name)
            .ok_or_else(|| CliError::Usage(format!("--{name} is required")))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, CliError> {
        self.get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| CliError::Usage(format!("--{name} needs a number, not {v:?}")))
            })
            .transpose()
    }
}

/// `println!` that returns the write error instead of panicking (a reader that closed the pipe,
/// as `duolog stats | head` does, ends the command quietly).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

fn open_existing(dir: &str, options: StoreOptions) -> Result<Box<dyn LogStore>, CliError> {
    if duolog::stored_engine(dir, &options)?.is_none() {
        return Err(CliError::Failed(format!("no duolog store at {dir}")));
    }
    Ok(duolog::open(dir, options)?)
}

fn produce(args: &Args) -> Result<(), CliError> {
    args.check_known(&[
        "dir",
        "engine",
        "topic",
        "partitions",
        "partition",
        "keyed",
        "tombstones",
        "sync",
    ])?;
    let dir = PathBuf::from(args.required("dir")?);
    let topic = args.required("topic")?;
    let engine = engine_arg(args)?;
    let sync = args.has("sync");
    let options = StoreOptions {
        engine,
        flush: if sync {
            FlushPolicy::Sync
        } else {
            FlushPolicy::default()
        },
        ..StoreOptions::default()
    };
    let store = duolog::open(&dir, options)?;
    let partitions = match store.describe_topic(topic) {
        Ok(c) => c.partitions,
        Err(duolog::Error::UnknownTopic(_)) => {
            let n = args.number::<u32>("partitions")?.unwrap_or(1);
            store.create_topic(topic, TopicConfig::with_partitions(n))?;
            n
        }
        Err(e) => return Err(e.into()),
    };
    let fixed = args.number::<u32>("partition")?;
    if let Some(p) = fixed.filter(|&p| p >= partitions) {
        return Err(CliError::Usage(format!(
            "--partition {p} but topic {topic} has {partitions} partitions"
        )));
    }
    let keyed = args.has("keyed");
    let tombstones = args.has("tombstones");
    if tombstones && !keyed {
        return Err(CliError::Usage("--tombstones needs --keyed".into()));
    }
    let mut input = io::BufReader::with_capacity(1 << 16, io::stdin());
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut round_robin = 0u32;
    // Lines are batched per partition while more input is already buffered, so a fast producer
    // shares fsyncs; every printed offset is acknowledged (durable with --sync).
    let mut pending: Vec<(u32, Message)> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = input.read_line(&mut line)?;
        if n > 0 {
            let text = line.strip_suffix('\n').unwrap_or(&line);
            let text = text.strip_suffix('\r').unwrap_or(text);
            let (key, body) = match (keyed, text.split_once('\t')) {
                (true, Some((k, b))) => (Some(k), b),
                (true, None) => (None, text),
                (false, _) => (None, text),
            };
            let partition = match (fixed, key) {
                (Some(p), _) => p,
                (None, Some(k)) => duolog::partition_for_key(k.as_bytes(), partitions),
                (None, None) => {
                    round_robin = (round_robin + 1) % partitions;
                    round_robin
                }
            };
            let mut m = Message::new(body.to_owned());
            if let Some(k) = key {
                m = if tombstones && body.is_empty() {
                    Message::tombstone(k.to_owned())
                } else {
                    m.with_key(k.to_owned())
                };
            }
            pending.push((partition, m));
        }
        let flush_now = n == 0 || input.buffer().is_empty() || pending.len() >= 512;
        if flush_now && !pending.is_empty() {
            let mut by_partition: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
            for (i, (p, _)) in pending.iter().enumerate() {
                by_partition.entry(*p).or_default().push(i);
            }
            let mut acked: Vec<(usize, u32, u64)> = Vec::with_capacity(pending.len());
            for (p, idx) in by_partition {
                let batch: Vec<Message> = idx.iter().map(|&i| pending[i].1.clone()).collect();
                let r = store.append(topic, p, &batch)?;
                for (k, &i) in idx.iter().enumerate() {
                    acked.push((i, p, r.base_offset + k as u64));
                }
            }
            acked.sort_unstable();
            for (_, p, o) in acked {
                writeln!(out, "{p} {o}")?;
            }
            out.flush()?;
            pending.clear();
        }
        if n == 0 {
            break;
        }
    }
    store.close()?;
    Ok(())
}

fn consume(args: &Args) -> Result<(), CliError> {
    args.check_known(&["dir", "topic", "partition", "from", "max"])?;
    let dir = args.required("dir")?;
    let topic = args.required("topic")?;
    let partition = args
        .number::<u32>("partition")?
        .ok_or_else(|| CliError::Usage("--partition is required".into()))?;
    let store = open_existing(dir, StoreOptions::default())?;
    let mut at = match args.number::<u64>("from")? {
        Some(o) => o,
        None => store.bounds(topic, partition)?.start,
    };
    let max = args.number::<u64>("max")?.unwrap_or(u64::MAX);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    // The first read also reports an offset outside the partition's bounds.
    while printed < max {
        let want = (max - printed).min(1000) as usize;
        let recs = store.read(topic, partition, at, ReadLimits::messages(want))?;
        if recs.is_empty() {
            break;
        }
        for r in &recs {
            let key = r.key().map(String::from_utf8_lossy).unwrap_or_default();
            let body = match r.value() {
                Some(v) => String::from_utf8_lossy(v),
                None => "null".into(),
            };
            writeln!(out, "{}\t{}\t{}", r.offset(), key, body)?;
        }
        printed += recs.len() as u64;
        at = recs[recs.len() - 1].offset() + 1;
    }
    out.flush()?;
    store.close()?;
    Ok(())
}

fn engine_arg(args: &Args) -> Result<Option<EngineKind>, CliError> {
    match args.get("engine") {
        None => Ok(None),
        Some(name) => EngineKind::from_name(name)
            .map(Some)
            .ok_or_else(|| CliError::Usage(format!("unknown engine {name:?}"))),
    }
}

/// Applies every `--config NAME=VALUE` (and `--delete-config NAME`) to `config`.
fn apply_configs(args: &Args, config: &mut TopicConfig) -> Result<(), CliError> {
    for pair in args.all("config") {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--config needs NAME=VALUE, not {pair:?}")))?;
        config.set(name.trim(), value)?;
    }
    for name in args.all("delete-config") {
        config.unset(name.trim())?;
    }
    Ok(())
}

fn topic(rest: &[String]) -> Result<(), CliError> {
    let Some(action) = rest.first() else {
        return Err(CliError::Usage(
            "topic needs create, alter, delete or add-partitions".into(),
        ));
    };
    let args = Args::parse(&rest[1..], &[])?;
    match action.as_str() {
        "create" => {
            args.check_known(&["dir", "engine", "topic", "partitions", "config"])?;
            let topic = args.required("topic")?;
            let mut config =
                TopicConfig::with_partitions(args.number::<u32>("partitions")?.unwrap_or(1));
            apply_configs(&args, &mut config)?;
            let options = StoreOptions {
                engine: engine_arg(&args)?,
                ..StoreOptions::default()
            };
            let store = duolog::open(args.required("dir")?, options)?;
            store.create_topic(topic, config)?;
            store.close()?;
            out!("created {topic}");
        }
        "alter" => {
            args.check_known(&["dir", "topic", "config", "delete-config"])?;
            let topic = args.required("topic")?;
            let store = open_existing(args.required("dir")?, StoreOptions::default())?;
            let mut config = store.describe_topic(topic)?;
            apply_configs(&args, &mut config)?;
            store.alter_topic(topic, config)?;
            store.close()?;
            out!("altered {topic}");
        }
        "delete" => {
            args.check_known(&["dir", "topic"])?;
            let topic = args.required("topic")?;
            let store = open_existing(args.required("dir")?, StoreOptions::default())?;
            store.delete_topic(topic)?;
            store.close()?;
            out!("deleted {topic}");
        }
        "add-partitions" => {
            args.check_known(&["dir", "topic", "count"])?;
            let topic = args.required("topic")?;
            let count = args
                .number::<u32>("count")?
                .ok_or_else(|| CliError::Usage("--count is required".into()))?;
            let store = open_existing(args.required("dir")?, StoreOptions::default())?;
            let total = store.add_partitions(topic, count)?;
            store.close()?;
            out!("{topic} has {total} partitions");
        }
        other => {
            return Err(CliError::Usage(format!(
                "unknown topic action {other:?} (create, alter, delete, add-partitions)"
            )));
        }
    }
    Ok(())
}

fn topics(args: &Args) -> Result<(), CliError> {
    args.check_known(&["dir", "all"])?;
    let options = StoreOptions::default();
    let store = open_existing(args.required("dir")?, options.clone())?;
    for t in store.list_topics(true) {
        let config = store.describe_topic(&t)?;
        let mut line = format!("{t}\tpartitions={}", config.partitions);
        if args.has("all") {
            for (name, value, own) in config.describe(&options, store.engine()) {
                let mark = if own { "*" } else { "" };
                line.push_str(&format!("\t{name}={value}{mark}"));
            }
        } else {
            for (name, value) in config.overrides() {
                line.push_str(&format!("\t{name}={value}"));
            }
        }
        out!("{line}");
    }
    store.close()?;
    Ok(())
}

fn compact(args: &Args) -> Result<(), CliError> {
    args.check_known(&["dir", "topic"])?;
    let store = open_existing(args.required("dir")?, StoreOptions::default())?;
    let r = store.compact(args.get("topic"))?;
    store.close()?;
    out!(
        "cleaned {} partition(s): removed {} record(s) ({} tombstone(s)), {} -> {} bytes",
        r.partitions_cleaned,
        r.records_removed,
        r.tombstones_removed,
        r.bytes_before,
        r.bytes_after
    );
    Ok(())
}

fn stats(args: &Args) -> Result<(), CliError> {
    args.check_known(&["dir"])?;
    let store = open_existing(args.required("dir")?, StoreOptions::default())?;
    out!("engine\t{}", store.engine());
    let usage = store.disk_usage()?;
    out!("files\t{}", usage.files);
    out!("bytes\t{}", usage.bytes);
    for t in store.list_topics(true) {
        let parts = store.describe_topic(&t)?.partitions;
        for p in 0..parts {
            let b = store.bounds(&t, p)?;
            out!(
                "partition\t{t}\t{p}\tstart={}\tend={}\tdurable={}\toffsets={}\tbytes={}",
                b.start,
                b.end,
                b.durable_end,
                b.end - b.start,
                store.partition_bytes(&t, p)?
            );
        }
    }
    store.close()?;
    Ok(())
}

fn verify(args: &Args) -> Result<(), CliError> {
    args.check_known(&["dir"])?;
    let store = open_existing(args.required("dir")?, StoreOptions::default())?;
    let report = store.verify()?;
    store.close()?;
    out!(
        "records checked: {}, derived entries checked: {}",
        report.records_checked,
        report.derived_checked
    );
    if report.is_ok() {
        out!("ok");
        Ok(())
    } else {
        for p in &report.problems {
            out!("problem: {p}");
        }
        Err(CliError::Failed(format!(
            "{} problem(s) found",
            report.problems.len()
        )))
    }
}

fn query(args: &Args) -> Result<(), CliError> {
    args.check_known(&["dir", "topic", "key", "from", "to", "max"])?;
    let store = open_existing(args.required("dir")?, StoreOptions::default())?;
    let from = args.number::<i64>("from")?.unwrap_or(0);
    let to = args.number::<i64>("to")?.unwrap_or(i64::MAX / 2);
    let max = args.number::<usize>("max")?.unwrap_or(64);
    let found = store.find_by_key(
        args.required("topic")?,
        args.required("key")?,
        (from, to),
        max,
    )?;
    for m in &found {
        let r = &m.record;
        out!(
            "{}\t{}\t{}\t{}",
            m.partition,
            r.offset(),
            r.store_timestamp(),
            String::from_utf8_lossy(r.body())
        );
    }
    store.close()?;
    Ok(())
}

fn offset_for_time(args: &Args) -> Result<(), CliError> {
    args.check_known(&["dir", "topic", "partition", "time"])?;
    let store = open_existing(args.required("dir")?, StoreOptions::default())?;
    let partition = args
        .number::<u32>("partition")?
        .ok_or_else(|| CliError::Usage("--partition is required".into()))?;
    let time = args
        .number::<i64>("time")?
        .ok_or_else(|| CliError::Usage("--time is required".into()))?;
    match store.offset_for_time(args.required("topic")?, partition, time)? {
        Some(o) => out!("{o}"),
        None => out!("none"),
    }
    store.close()?;
    Ok(())
}

fn reindex(args: &Args) -> Result<(), CliError> {
    args.check_known(&["dir"])?;
    let store = open_existing(args.required("dir")?, StoreOptions::default())?;
    let n = store.reindex()?;
    store.close()?;
    out!("indexed {n} records");
    Ok(())
}

fn run(argv: &[String]) -> Result<(), CliError> {
    let Some(cmd) = argv.first() else {
        return Err(CliError::Usage("no command".into()));
    };
    let rest = &argv[1..];
    match cmd.as_str() {
        "produce" => produce(&Args::parse(rest, &["keyed", "tombstones", "sync"])?),
        "topic" => topic(rest),
        "compact" => compact(&Args::parse(rest, &[])?),
        "consume" => consume(&Args::parse(rest, &[])?),
        "topics" => topics(&Args::parse(rest, &["all"])?),
        "stats" => stats(&Args::parse(rest, &[])?),
        "verify" => verify(&Args::parse(rest, &[])?),
        "query" => query(&Args::parse(rest, &[])?),
        "offset-for-time" => offset_for_time(&Args::parse(rest, &[])?),
        "reindex" => reindex(&Args::parse(rest, &[])?),
        "dump" => {
            let [file] = rest else {
                return Err(CliError::Usage("dump takes one file".into()));
            };
            let stdout = io::stdout();
            let mut out = io::BufWriter::new(stdout.lock());
            match dump::dump(std::path::Path::new(file), &mut out) {
                Ok(()) => Ok(out.flush()?),
                Err(dump::DumpError::Io(e)) => Err(CliError::Failed(format!("{file}: {e}"))),
                Err(dump::DumpError::Invalid(msg)) => {
                    out.flush()?;
                    Err(CliError::Failed(format!("{file}: {msg}")))
                }
            }
        }
        "help" | "--help" | "-h" => {
            out!("{USAGE}");
            Ok(())
        }
        other => Err(CliError::Usage(format!("unknown command {other:?}"))),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("duolog: {msg}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(CliError::Store(e)) => {
            eprintln!("duolog: error: {e}");
            ExitCode::from(1)
        }
        Err(CliError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(CliError::Io(e)) => {
            eprintln!("duolog: error: {e}");
            ExitCode::from(1)
        }
        Err(CliError::Failed(msg)) => {
            eprintln!("duolog: {msg}");
            ExitCode::from(1)
        }
    }
}
