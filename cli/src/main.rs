//! `duolog`: produce to, consume from, inspect and verify duolog stores.

mod args;
mod dump;

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use duolog::consumer::{
    Consumer, ConsumerConfig, ConsumerRecord, GroupCoordinator, OffsetReset, SqlFilter, TagFilter,
};
use duolog::consumer::{TRACE_TOPIC, TraceConfig, TraceKind, TracedStore, Tracer};
use duolog::delay::{DelayOptions, DelayQueue};
use duolog::order::{PriorityConfig, PriorityConsumer};
use duolog::txn::{TXN_LOG_TOPIC, TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
use duolog::{
    FlushPolicy, IsolationLevel, LogStore, Message, ReadLimits, StoreOptions, TopicConfig,
};

use args::{Cli, Command, ConsumeArgs, CopyArgs, ProduceArgs, TopicCommand};

/// A command's error: printed as one line, exit code 2 for usage, 1 otherwise.
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

/// `println!` that returns the write error instead of panicking (a reader that closed the pipe,
/// as `duolog stats | head` does, ends the command quietly).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

fn open_existing(dir: &Path, options: StoreOptions) -> Result<Box<dyn LogStore>, CliError> {
    if duolog::stored_engine(dir, &options)?.is_none() {
        return Err(CliError::Failed(format!(
            "no duolog store at {}",
            dir.display()
        )));
    }
    Ok(duolog::open(dir, options)?)
}

fn produce(args: &ProduceArgs) -> Result<(), CliError> {
    let topic = args.topic.as_str();
    let options = StoreOptions {
        engine: args.engine,
        flush: if args.sync {
            FlushPolicy::Sync
        } else {
            FlushPolicy::default()
        },
        ..StoreOptions::default()
    };
    let mut store: Arc<dyn LogStore> = Arc::from(duolog::open(&args.dir, options)?);
    if args.trace {
        // Closing the traced store closes the tracer first, writing every queued event.
        let tracer = Tracer::new(Arc::clone(&store), TraceConfig::default())?;
        store = Arc::new(TracedStore::new(store, Arc::new(tracer)));
    }
    let partitions = match store.describe_topic(topic) {
        Ok(c) => c.partitions,
        Err(duolog::Error::UnknownTopic(_)) if args.priority.is_some() => {
            let n = args.partitions.unwrap_or(duolog::order::PRIORITY_LEVELS);
            duolog::order::create_priority_topic(&*store, topic, n, TopicConfig::default())?;
            n
        }
        Err(duolog::Error::UnknownTopic(_)) => {
            let n = args.partitions.unwrap_or(1);
            store.create_topic(topic, TopicConfig::with_partitions(n))?;
            n
        }
        Err(e) => return Err(e.into()),
    };
    // --priority: the band of the topic's partitions the priority maps onto (an existing
    // topic must have a priority topic's partition count).
    let band = match args.priority {
        Some(p) => Some(duolog::order::priority_partition_range(p, partitions)?),
        None => None,
    };
    let mut band_round_robin = 0u32;
    let fixed = args.partition;
    if let Some(p) = fixed.filter(|&p| p >= partitions) {
        return Err(CliError::Usage(format!(
            "--partition {p} but topic {topic} has {partitions} partitions"
        )));
    }
    if args.transactional {
        let result = produce_transactional(args, &store, partitions);
        store.close()?;
        return result;
    }
    let mut input = io::BufReader::with_capacity(1 << 16, io::stdin());
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut round_robin = 0u32;
    // With --delay / --deliver-at the lines go through the delay layer (scheduling only:
    // delivery is for a process that keeps the store open).
    let delayed = match (args.delay, args.deliver_at) {
        (None, None) => None,
        _ => Some(DelayQueue::open(
            Arc::clone(&store),
            DelayOptions {
                background: false,
                ..DelayOptions::default()
            },
        )?),
    };
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
            let (mut p, mut m) = line_message(args, text, partitions, &mut round_robin);
            if let (Some(band), Some(priority)) = (&band, args.priority) {
                let width = band.end - band.start;
                p = band.start
                    + match &m.key {
                        Some(k) => duolog::partition_for_key(k, width),
                        None => {
                            band_round_robin = band_round_robin.wrapping_add(1);
                            band_round_robin % width
                        }
                    };
                m = m.with_property(duolog::order::PRIORITY_PROPERTY, priority.to_string());
            }
            pending.push((p, m));
        }
        let flush_now = n == 0 || input.buffer().is_empty() || pending.len() >= 512;
        if let Some(q) = &delayed {
            for (p, m) in pending.drain(..) {
                let at = match (args.delay, args.deliver_at) {
                    (Some(d), _) => {
                        now_ms().saturating_add(d.as_millis().min(i64::MAX as u128) as i64)
                    }
                    (None, Some(at)) => at,
                    (None, None) => unreachable!("delayed only with --delay or --deliver-at"),
                };
                let handle = q.schedule(topic, p, m, at)?;
                writeln!(out, "{p} {handle}")?;
            }
            if flush_now {
                out.flush()?;
            }
        }
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
    if let Some(q) = delayed {
        q.close()?;
    }
    store.close()?;
    Ok(())
}

/// Parses one input line of `produce` into its message and partition (`round_robin` advances
/// for a line with neither a fixed partition nor a key).
fn line_message(
    args: &ProduceArgs,
    text: &str,
    partitions: u32,
    round_robin: &mut u32,
) -> (u32, Message) {
    let (key, body) = match (args.keyed, text.split_once('\t')) {
        (true, Some((k, b))) => (Some(k), b),
        _ => (None, text),
    };
    let partition = match (args.partition, key) {
        (Some(p), _) => p,
        (None, Some(k)) => duolog::partition_for_key(k.as_bytes(), partitions),
        (None, None) => {
            *round_robin = (*round_robin + 1) % partitions;
            *round_robin
        }
    };
    let mut m = Message::new(body.to_owned());
    if let Some(k) = key {
        m = if args.tombstones && body.is_empty() {
            Message::tombstone(k.to_owned())
        } else {
            m.with_key(k.to_owned())
        };
    }
    if let Some(tags) = &args.tags {
        m = m.with_tags(tags.clone());
    }
    for (name, value) in &args.properties {
        m = m.with_property(name.clone(), value.clone());
    }
    (partition, m)
}

/// `produce --transactional`: every `--txn-size` lines are one transaction over the
/// partitions their lines go to; a line's `<partition> <offset>` is printed only after its
/// transaction committed (so every printed line is visible to read-committed consumers, after
/// any crash), and a transaction cut short by a crash is aborted at the next open.
fn produce_transactional(
    args: &ProduceArgs,
    store: &Arc<dyn LogStore>,
    partitions: u32,
) -> Result<(), CliError> {
    let size = args.txn_size.unwrap_or(1);
    let id = args
        .transactional_id
        .clone()
        .unwrap_or_else(|| format!("duolog-produce-{}", args.topic));
    let coordinator =
        TransactionCoordinator::open(Arc::clone(store), TxnCoordinatorConfig::default())?;
    let producer = coordinator.producer(&id, TxnProducerConfig::default())?;
    let mut input = io::BufReader::with_capacity(1 << 16, io::stdin());
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut round_robin = 0u32;
    let mut line = String::new();
    let mut eof = false;
    while !eof {
        let mut lines: Vec<(u32, Message)> = Vec::new();
        while (lines.len() as u64) < size {
            line.clear();
            if input.read_line(&mut line)? == 0 {
                eof = true;
                break;
            }
            let text = line.strip_suffix('\n').unwrap_or(&line);
            let text = text.strip_suffix('\r').unwrap_or(text);
            lines.push(line_message(args, text, partitions, &mut round_robin));
        }
        if lines.is_empty() {
            break;
        }
        let mut by_partition: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, (p, _)) in lines.iter().enumerate() {
            by_partition.entry(*p).or_default().push(i);
        }
        producer.begin()?;
        let mut acked: Vec<(usize, u32, u64)> = Vec::with_capacity(lines.len());
        for (p, idx) in by_partition {
            let batch: Vec<Message> = idx.iter().map(|&i| lines[i].1.clone()).collect();
            let r = producer.send(&args.topic, p, &batch)?;
            for (k, &i) in idx.iter().enumerate() {
                acked.push((i, p, r.base_offset + k as u64));
            }
        }
        producer.commit()?;
        acked.sort_unstable();
        for (_, p, o) in acked {
            writeln!(out, "{p} {o}")?;
        }
        out.flush()?;
    }
    coordinator.close()?;
    Ok(())
}

/// `copy`: the consume-transform-produce loop of `duolog::txn::transform`, with the identity
/// as the transform, until the group is caught up with `--from`'s last stable offsets.
fn copy(args: &CopyArgs) -> Result<(), CliError> {
    let store: Arc<dyn LogStore> = Arc::from(open_existing(&args.dir, StoreOptions::default())?);
    let partitions = store.describe_topic(&args.from)?.partitions;
    match store.create_topic(&args.to, TopicConfig::with_partitions(partitions)) {
        Ok(()) | Err(duolog::Error::TopicExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let to_partitions = store.describe_topic(&args.to)?.partitions;
    let groups = GroupCoordinator::new(Arc::clone(&store))?;
    let txns = TransactionCoordinator::open(
        Arc::clone(&store),
        TxnCoordinatorConfig {
            groups: Some(groups.clone()),
            ..TxnCoordinatorConfig::default()
        },
    )?;
    let consumer = Consumer::new(
        &groups,
        ConsumerConfig {
            isolation: IsolationLevel::ReadCommitted,
            enable_auto_commit: false,
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: args.batch.unwrap_or(100).min(1 << 20) as usize,
            ..ConsumerConfig::new(args.group.clone())
        },
    )?;
    let parts: Vec<(&str, u32)> = (0..partitions).map(|p| (args.from.as_str(), p)).collect();
    consumer.assign(&parts)?;
    let id = args
        .transactional_id
        .clone()
        .unwrap_or_else(|| format!("duolog-copy-{}", args.group));
    let producer = txns.producer(&id, TxnProducerConfig::default())?;
    let mut copied = 0u64;
    loop {
        let n = duolog::txn::transform(&consumer, &producer, Duration::from_millis(50), |r| {
            vec![(
                args.to.clone(),
                r.partition() % to_partitions,
                r.record().to_message(),
            )]
        })?;
        copied += n as u64;
        if n == 0 && caught_up(&consumer, store.as_ref(), IsolationLevel::ReadCommitted)? {
            break;
        }
    }
    out!("{copied}");
    consumer.close()?;
    drop(consumer);
    txns.close()?;
    drop(txns);
    drop(groups);
    store.close()?;
    Ok(())
}

/// The transaction coordinator, when the store has ever run transactions: opening it finishes
/// or aborts what a crashed process left open, so the last stable offsets move on.
fn open_transactions(
    store: &Arc<dyn LogStore>,
    groups: Option<&GroupCoordinator>,
) -> Result<Option<TransactionCoordinator>, CliError> {
    if store.describe_topic(TXN_LOG_TOPIC).is_err() {
        return Ok(None);
    }
    let config = TxnCoordinatorConfig {
        groups: groups.cloned(),
        ..TxnCoordinatorConfig::default()
    };
    Ok(Some(TransactionCoordinator::open(
        Arc::clone(store),
        config,
    )?))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The delay layer in the background (it delivers due messages while the command runs), if
/// the store has ever scheduled one.
fn open_delay(store: &Arc<dyn LogStore>) -> Result<Option<DelayQueue>, CliError> {
    if store.describe_topic(duolog::delay::MESSAGES_TOPIC).is_err() {
        return Ok(None);
    }
    Ok(Some(DelayQueue::open(
        Arc::clone(store),
        DelayOptions::default(),
    )?))
}

/// `delayed`: pending delayed messages by due second, and their total. Read-only as far as
/// the delay layer goes: it does not open the layer (which would place scheduled records,
/// redo a round in doubt and so deliver), it reads its topics (`DelayQueue::pending_in`).
fn delayed(dir: &Path) -> Result<(), CliError> {
    let store: Arc<dyn LogStore> = Arc::from(open_existing(dir, StoreOptions::default())?);
    let mut total = 0u64;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let pending = DelayQueue::pending_in(&*store, std::time::Duration::from_secs(1))?;
    for (ms, n) in pending {
        writeln!(out, "{}\t{n}", rfc3339(ms.div_euclid(1000)))?;
        total += n;
    }
    writeln!(out, "total\t{total}")?;
    out.flush()?;
    store.close()?;
    Ok(())
}

/// `half`: the undecided half messages, from the check-back's position on, at most `limit`.
fn half(dir: &Path, limit: usize) -> Result<(), CliError> {
    use duolog::txn::half::{HALF_TOPIC, REAL_QID, REAL_TOPIC, TRANSACTION_CHECK_TIMES};
    use duolog::txn::{HalfConfig, HalfMessages, LocalTransactionState};
    let store: Arc<dyn LogStore> = Arc::from(open_existing(dir, StoreOptions::default())?);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut total = 0u64;
    if store.describe_topic(HALF_TOPIC).is_ok() {
        let config = HalfConfig {
            background: false,
            ..HalfConfig::default()
        };
        // Never called: the listing runs no check.
        let checker = Arc::new(|_: &duolog::Record| LocalTransactionState::Unknown);
        let layer = HalfMessages::open(Arc::clone(&store), config, checker)?;
        // One more than asked, to tell the reader the listing was cut.
        let mut undecided = layer.undecided(limit.saturating_add(1))?;
        let truncated = undecided.len() > limit;
        undecided.truncate(limit);
        for r in undecided {
            let p = r.properties();
            let id = p
                .get(duolog::txn::half::TRAN_PREPARED_QUEUE_OFFSET)
                .map_or_else(|| r.offset().to_string(), str::to_owned);
            let (key, body) = key_and_body(&r);
            writeln!(
                out,
                "{id}\t{}\t{}\t{}\t{key}\t{body}",
                p.get(REAL_TOPIC).unwrap_or("-"),
                p.get(REAL_QID).unwrap_or("-"),
                p.get(TRANSACTION_CHECK_TIMES).unwrap_or("0"),
            )?;
            total += 1;
        }
        layer.close()?;
        if truncated {
            writeln!(out, "truncated\t{limit}")?;
        }
    }
    writeln!(out, "total\t{total}")?;
    out.flush()?;
    store.close()?;
    Ok(())
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC; Howard
/// Hinnant's days-to-civil).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn key_and_body(r: &duolog::Record) -> (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>) {
    let key = r.key().map(String::from_utf8_lossy).unwrap_or_default();
    let body = match r.value() {
        Some(v) => String::from_utf8_lossy(v),
        None => "null".into(),
    };
    (key, body)
}

fn consume(args: &ConsumeArgs) -> Result<(), CliError> {
    if args.orderly {
        return consume_orderly(args);
    }
    if args.group.is_some() {
        return consume_group(args);
    }
    let topic = args.topic.as_str();
    let Some(partition) = args.partition else {
        return Err(CliError::Usage("--partition is required".into()));
    };
    let store: Arc<dyn LogStore> = Arc::from(open_existing(&args.dir, StoreOptions::default())?);
    let txns = open_transactions(&store, None)?;
    let mut at = match args.from {
        Some(o) => o,
        None => store.bounds(topic, partition)?.start,
    };
    let max = args.max.unwrap_or(u64::MAX);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    // The first read also reports an offset outside the partition's bounds.
    while printed < max {
        let want = (max - printed).min(1000) as usize;
        let limits = ReadLimits::messages(want).with_isolation(args.isolation);
        let fetch = store.fetch(topic, partition, at, limits)?;
        for r in &fetch.records {
            let (key, body) = key_and_body(r);
            writeln!(out, "{}\t{}\t{}", r.offset(), key, body)?;
        }
        printed += fetch.records.len() as u64;
        // Past markers and skipped aborted records; stops at the end (or the last stable
        // offset, read-committed).
        if fetch.next_offset <= at {
            break;
        }
        at = fetch.next_offset;
    }
    out.flush()?;
    if let Some(t) = txns {
        t.close()?;
    }
    store.close()?;
    Ok(())
}

/// `consume --orderly --group G`: an orderly member of G (one partition's records strictly in
/// offset order, under a lease). Each record is printed and stdout flushed inside the handler
/// call, so what is committed (every 200 ms and at exit) was printed. Without --follow it stops
/// once every partition is handled to the end it had at the start (or after 1 s with nothing
/// new: the end may be transaction markers); with --follow, after --idle-exit with nothing new.
fn consume_orderly(args: &ConsumeArgs) -> Result<(), CliError> {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use duolog::order::{ConsumeOrderlyStatus, OrderlyConfig, OrderlyConsumer, OrderlyContext};

    let topic = args.topic.as_str();
    let group = args.group.as_deref().unwrap_or_default();
    let store: Arc<dyn LogStore> = Arc::from(open_existing(&args.dir, StoreOptions::default())?);
    let partitions = store.describe_topic(topic)?.partitions;
    let ends: Vec<u64> = (0..partitions)
        .map(|p| store.bounds(topic, p).map(|b| b.end))
        .collect::<Result<_, _>>()?;
    let groups = GroupCoordinator::new(Arc::clone(&store))?;
    let txns = open_transactions(&store, Some(&groups))?;
    let mut config = OrderlyConfig {
        consume_threads: (partitions as usize).clamp(1, 20),
        commit_interval: Duration::from_millis(200),
        ..OrderlyConfig::new(group)
    };
    config.consumer.isolation = args.isolation;
    config.consumer.auto_offset_reset = OffsetReset::Earliest;
    let max = args.max.unwrap_or(u64::MAX);
    let printed = Arc::new(AtomicU64::new(0));
    // Per partition, the offset after the last record printed; and when one was last printed.
    let progress = Arc::new(Mutex::new((BTreeMap::<u32, u64>::new(), Instant::now())));
    let out = Arc::new(Mutex::new(io::stdout()));
    let (n, prog, o) = (
        Arc::clone(&printed),
        Arc::clone(&progress),
        Arc::clone(&out),
    );
    let handler = move |r: &duolog::consumer::ConsumerRecord, _: &OrderlyContext| {
        // A slot under --max first: past it nothing is printed (nor committed).
        if n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v < max).then_some(v + 1)
        })
        .is_err()
        {
            return ConsumeOrderlyStatus::SuspendCurrentQueueAMoment;
        }
        let (key, body) = key_and_body(r.record());
        let mut out = o.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = writeln!(out, "{}\t{}\t{}\t{}", r.partition(), r.offset(), key, body)
            .and_then(|()| out.flush());
        if written.is_err() {
            n.fetch_sub(1, Ordering::AcqRel);
            return ConsumeOrderlyStatus::SuspendCurrentQueueAMoment;
        }
        let mut p = prog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.0.insert(r.partition(), r.offset() + 1);
        p.1 = Instant::now();
        ConsumeOrderlyStatus::Success
    };
    let consumer = OrderlyConsumer::start(&groups, config, &[topic], handler)?;
    let idle = if args.follow {
        args.idle_exit.unwrap_or(Duration::from_secs(2))
    } else {
        Duration::from_secs(1)
    };
    loop {
        std::thread::sleep(Duration::from_millis(10));
        if printed.load(Ordering::Acquire) >= max {
            break;
        }
        let p = progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at_end = (0..partitions).all(|i| p.0.get(&i).copied().unwrap_or(0) >= ends[i as usize]);
        if (!args.follow && at_end) || p.1.elapsed() >= idle {
            break;
        }
    }
    let closed = consumer.close();
    let txns_closed = txns.map_or(Ok(()), |t| t.close());
    drop(groups);
    closed?;
    txns_closed?;
    store.close()?;
    Ok(())
}

/// Which records `consume --group` prints.
enum Filter {
    All,
    Tags(TagFilter),
    Sql(SqlFilter),
}

impl Filter {
    fn matches(&self, r: &duolog::Record) -> bool {
        match self {
            Filter::All => true,
            Filter::Tags(f) => f.matches(r.tags()),
            Filter::Sql(f) => f.matches(|name| {
                if name == "TAGS" {
                    r.tags()
                } else {
                    r.properties().get(name)
                }
            }),
        }
    }
}

/// `consume --group G`: a member of G subscribed to the topic, auto commit off. Each polled
/// batch is printed (what the filter lets through), stdout flushed, and only then the offsets
/// after the batch committed: a crash before the commit prints the batch again next time
/// (at least once), and nothing is committed that was not printed (or filtered out).
fn consume_group(args: &ConsumeArgs) -> Result<(), CliError> {
    let topic = args.topic.as_str();
    let group = args.group.as_deref().unwrap_or_default();
    let filter = match (&args.filter, &args.sql) {
        (_, Some(sql)) => Filter::Sql(sql.clone()),
        (Some(tags), None) => Filter::Tags(TagFilter::parse(tags)),
        (None, None) => Filter::All,
    };
    let store: Arc<dyn LogStore> = Arc::from(open_existing(&args.dir, StoreOptions::default())?);
    let partitions = store.describe_topic(topic)?.partitions;
    let groups = GroupCoordinator::new(Arc::clone(&store))?;
    let txns = open_transactions(&store, Some(&groups))?;
    let config = ConsumerConfig {
        isolation: args.isolation,
        auto_offset_reset: OffsetReset::Earliest,
        enable_auto_commit: false,
        max_poll_records: 2000,
        // The engine skips records of other tags (by the consume queue's tag hash on the
        // CommitLog engine, without reading them); the filter below re-checks anyway.
        tag_filter: match &filter {
            Filter::Tags(t) => Some(t.clone()),
            _ => None,
        },
        ..ConsumerConfig::new(group)
    };
    let tracer = if args.trace {
        let tracer = Tracer::new(Arc::clone(&store), TraceConfig::default())?;
        Some(Arc::new(tracer))
    } else {
        None
    };
    let config = ConsumerConfig {
        trace: tracer.clone(),
        ..config
    };
    // --priority: the priority consumer wraps the group member; the loop polls through it.
    let (plain, priority) = if args.priority {
        let c = PriorityConsumer::new(&groups, config, topic, PriorityConfig::default())?;
        c.subscribe()?;
        (None, Some(c))
    } else {
        let c = Consumer::new(&groups, config)?;
        c.subscribe(&[topic])?;
        (Some(c), None)
    };
    let consumer = match (&plain, &priority) {
        (Some(c), _) => c,
        (None, Some(p)) => p.consumer(),
        (None, None) => unreachable!("one of the two was made above"),
    };
    let delay = open_delay(&store)?;
    let result = consume_loop(
        args,
        consumer,
        priority.as_ref(),
        store.as_ref(),
        &filter,
        partitions,
    );
    let delay_closed = delay.map_or(Ok(()), |q| q.close());
    // Auto commit is off: closing commits nothing beyond what the loop committed.
    let closed = consumer.close();
    drop(plain);
    drop(priority);
    let txns_closed = txns.map_or(Ok(()), |t| t.close());
    drop(groups);
    // Written while the store is still open.
    let traced = tracer.as_deref().map_or(Ok(()), Tracer::close);
    result?;
    closed?;
    txns_closed?;
    traced?;
    delay_closed?;
    store.close()?;
    Ok(())
}

fn consume_loop(
    args: &ConsumeArgs,
    consumer: &Consumer,
    priority: Option<&PriorityConsumer>,
    store: &dyn LogStore,
    filter: &Filter,
    partitions: u32,
) -> Result<(), CliError> {
    let topic = args.topic.as_str();
    let max = args.max.unwrap_or(u64::MAX);
    let idle = args.idle_exit.unwrap_or(Duration::from_secs(2));
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let mut idle_since = Instant::now();
    while printed < max {
        // Without --follow, an empty poll once every partition is held means every partition
        // is at its end (no other process can append: the store is single-process). A short
        // timeout only covers the first poll's rebalance.
        let timeout = if args.follow {
            idle.saturating_sub(idle_since.elapsed())
        } else {
            Duration::from_millis(50)
        };
        let records = match priority {
            Some(p) => p.poll(timeout)?,
            None => consumer.poll(timeout)?,
        };
        if records.is_empty() {
            if args.follow {
                if idle_since.elapsed() >= idle {
                    break;
                }
            } else if (consumer.assignment().len() >= partitions as usize
                && caught_up(consumer, store, args.isolation)?)
                || idle_since.elapsed() >= Duration::from_secs(10)
            {
                // (The second case cannot happen with one member in one process; it only
                // keeps a surprise from turning into a hang.)
                break;
            }
            continue;
        }
        idle_since = Instant::now();
        // Next offset per partition, of what was printed or filtered out.
        let mut done: Vec<(u32, u64)> = Vec::new();
        for r in &records {
            if printed >= max {
                break;
            }
            if filter.matches(r.record()) {
                print_record(&mut out, r)?;
                printed += 1;
            }
            match done.iter_mut().find(|(p, _)| *p == r.partition()) {
                Some(d) => d.1 = r.offset() + 1,
                None => done.push((r.partition(), r.offset() + 1)),
            }
        }
        out.flush()?;
        let offsets: Vec<(&str, u32, u64)> = done.iter().map(|&(p, o)| (topic, p, o)).collect();
        consumer.commit_offsets(&offsets)?;
    }
    out.flush()?;
    if printed < max {
        // Everything polled was printed: the positions (past records a tag filter skipped
        // without returning them) are what was consumed.
        consumer.commit()?;
    }
    Ok(())
}

/// Whether every assigned partition's position is at its end (an empty poll may also mean
/// that a tag-filtered scan of a long run of other tags outlasted the poll's timeout).
/// Under read-committed, the last stable offset is as far as a position can go.
fn caught_up(
    consumer: &Consumer,
    store: &dyn LogStore,
    isolation: IsolationLevel,
) -> Result<bool, CliError> {
    for tp in consumer.assignment() {
        let b = store.bounds(&tp.topic, tp.partition)?;
        let bound = match isolation {
            IsolationLevel::ReadCommitted => b.last_stable,
            IsolationLevel::ReadUncommitted => b.end,
        };
        if consumer.position(&tp.topic, tp.partition)? < bound {
            return Ok(false);
        }
    }
    Ok(true)
}

fn print_record(out: &mut impl Write, r: &ConsumerRecord) -> io::Result<()> {
    let (key, body) = key_and_body(r.record());
    writeln!(out, "{}\t{}\t{}\t{}", r.partition(), r.offset(), key, body)
}

/// `groups`: every committed partition of every group, with its end offset and lag.
fn groups(args: &args::GroupsArgs) -> Result<(), CliError> {
    let store: Arc<dyn LogStore> = Arc::from(open_existing(&args.dir, StoreOptions::default())?);
    let coordinator = GroupCoordinator::new(Arc::clone(&store))?;
    let names = match &args.group {
        Some(g) => vec![g.clone()],
        None => coordinator.groups(),
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    for group in names {
        for (topic, parts) in coordinator.committed_offsets(&group) {
            for (partition, committed) in parts {
                match store.bounds(&topic, partition) {
                    Ok(b) => writeln!(
                        out,
                        "{group}\t{topic}\t{partition}\t{committed}\t{}\t{}",
                        b.end,
                        b.end.saturating_sub(committed)
                    )?,
                    Err(
                        duolog::Error::UnknownTopic(_) | duolog::Error::UnknownPartition { .. },
                    ) => writeln!(out, "{group}\t{topic}\t{partition}\t{committed}\t-\t-")?,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    out.flush()?;
    drop(coordinator);
    store.close()?;
    Ok(())
}

/// Applies every `--config NAME=VALUE` (and `--delete-config NAME`) to `config`.
fn apply_configs(
    configs: &[(String, String)],
    deletes: &[String],
    config: &mut TopicConfig,
) -> Result<(), CliError> {
    for (name, value) in configs {
        config.set(name, value)?;
    }
    for name in deletes {
        config.unset(name.trim())?;
    }
    Ok(())
}

fn topic(cmd: &TopicCommand) -> Result<(), CliError> {
    match cmd {
        TopicCommand::Create {
            dir,
            engine,
            topic,
            partitions,
            configs,
        } => {
            let mut config = TopicConfig::with_partitions(partitions.unwrap_or(1));
            apply_configs(configs, &[], &mut config)?;
            let options = StoreOptions {
                engine: *engine,
                ..StoreOptions::default()
            };
            let store = duolog::open(dir, options)?;
            store.create_topic(topic, config)?;
            store.close()?;
            out!("created {topic}");
        }
        TopicCommand::Alter {
            dir,
            topic,
            configs,
            delete_configs,
        } => {
            let store = open_existing(dir, StoreOptions::default())?;
            let mut config = store.describe_topic(topic)?;
            apply_configs(configs, delete_configs, &mut config)?;
            store.alter_topic(topic, config)?;
            store.close()?;
            out!("altered {topic}");
        }
        TopicCommand::Delete { dir, topic } => {
            let store = open_existing(dir, StoreOptions::default())?;
            store.delete_topic(topic)?;
            store.close()?;
            out!("deleted {topic}");
        }
        TopicCommand::AddPartitions { dir, topic, count } => {
            let store = open_existing(dir, StoreOptions::default())?;
            let total = store.add_partitions(topic, *count)?;
            store.close()?;
            out!("{topic} has {total} partitions");
        }
    }
    Ok(())
}

fn topics(args: &args::TopicsArgs) -> Result<(), CliError> {
    let options = StoreOptions::default();
    let store = open_existing(&args.dir, options.clone())?;
    for t in store.list_topics(true) {
        let config = store.describe_topic(&t)?;
        let mut line = format!("{t}\tpartitions={}", config.partitions);
        if args.all {
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

fn compact(args: &args::CompactArgs) -> Result<(), CliError> {
    let store = open_existing(&args.dir, StoreOptions::default())?;
    let r = store.compact(args.topic.as_deref())?;
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

fn stats(dir: &Path) -> Result<(), CliError> {
    let store = open_existing(dir, StoreOptions::default())?;
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

fn verify(dir: &Path) -> Result<(), CliError> {
    let store = open_existing(dir, StoreOptions::default())?;
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

fn query(args: &args::QueryArgs) -> Result<(), CliError> {
    let store = open_existing(&args.dir, StoreOptions::default())?;
    let from = args.from.unwrap_or(0);
    let to = args.to.unwrap_or(i64::MAX / 2);
    let max = args.max.unwrap_or(64);
    let found = store.find_by_key(&args.topic, &args.key, (from, to), max)?;
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

fn offset_for_time(args: &args::OffsetForTimeArgs) -> Result<(), CliError> {
    let store = open_existing(&args.dir, StoreOptions::default())?;
    match store.offset_for_time(&args.topic, args.partition, args.time)? {
        Some(o) => out!("{o}"),
        None => out!("none"),
    }
    store.close()?;
    Ok(())
}

fn reindex(dir: &Path) -> Result<(), CliError> {
    let store = open_existing(dir, StoreOptions::default())?;
    let n = store.reindex()?;
    store.close()?;
    out!("indexed {n} records");
    Ok(())
}

fn dump(file: &Path) -> Result<(), CliError> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match dump::dump(file, &mut out) {
        Ok(()) => Ok(out.flush()?),
        Err(dump::DumpError::Io(e)) => Err(CliError::Failed(format!("{}: {e}", file.display()))),
        Err(dump::DumpError::Invalid(msg)) => {
            out.flush()?;
            Err(CliError::Failed(format!("{}: {msg}", file.display())))
        }
    }
}

/// `trace`: the events of a message id or key, oldest first.
fn trace(args: &args::TraceArgs) -> Result<(), CliError> {
    let store = open_existing(&args.dir, StoreOptions::default())?;
    let topic = args.trace_topic.as_deref().unwrap_or(TRACE_TOPIC);
    let what = args
        .id
        .as_deref()
        .or(args.key.as_deref())
        .unwrap_or_default();
    let found = match Tracer::query_topic(store.as_ref(), topic, what, args.max.unwrap_or(1024)) {
        Err(duolog::Error::UnknownTopic(_)) => {
            return Err(CliError::Failed(format!(
                "no message trace in {} (topic {topic} is missing; produce or consume with --trace)",
                args.dir.display()
            )));
        }
        r => r?,
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    for e in &found.events {
        let id = e.message_id().unwrap_or_else(|| "-".into());
        let (body, cost, success, retries) = match e.kind {
            TraceKind::Pub => (
                e.body_length.to_string(),
                e.cost_us.to_string(),
                e.success.to_string(),
                "-".to_owned(),
            ),
            TraceKind::SubBefore => ("-".into(), "-".into(), "-".into(), e.retries.to_string()),
            _ => (
                "-".into(),
                e.cost_us.to_string(),
                e.success.to_string(),
                e.retries.to_string(),
            ),
        };
        writeln!(
            out,
            "{}\t{}\t{id}\t{}\t{}\t{}\t{body}\t{cost}\t{success}\t{retries}",
            e.timestamp_ms,
            e.kind,
            dash(&e.group),
            dash(&e.key),
            dash(&e.tags)
        )?;
    }
    out.flush()?;
    if found.malformed > 0 {
        eprintln!(
            "duolog: skipped {} trace message(s) that did not decode",
            found.malformed
        );
    }
    store.close()?;
    Ok(())
}

fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "duolog", &mut script);
    let mut stdout = io::stdout().lock();
    stdout.write_all(&script)?;
    stdout.flush()?;
    Ok(())
}

fn run(cli: &Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Produce(a) => produce(a),
        Command::Consume(a) => consume(a),
        Command::Topic(t) => topic(t),
        Command::Topics(a) => topics(a),
        Command::Groups(a) => groups(a),
        Command::Copy(a) => copy(a),
        Command::Compact(a) => compact(a),
        Command::Stats(a) => stats(&a.dir),
        Command::Verify(a) => verify(&a.dir),
        Command::Query(a) => query(a),
        Command::OffsetForTime(a) => offset_for_time(a),
        Command::Reindex(a) => reindex(&a.dir),
        Command::Dump { file } => dump(file),
        Command::Completions { shell } => completions(*shell),
        Command::Trace(a) => trace(a),
        Command::Delayed(a) => delayed(&a.dir),
        Command::Half(a) => half(&a.dir, a.limit),
    }
}

/// Parses the command line; a usage error is printed with its usage line (exit 2), `--help`
/// and `--version` print to stdout (exit 0).
fn parse() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            let code = ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
            if e.kind() == clap::error::ErrorKind::InvalidSubcommand {
                // clap says "unrecognized subcommand"; duolog always said "unknown command".
                let text = e.render().to_string().replacen(
                    "unrecognized subcommand",
                    "unknown command",
                    1,
                );
                let _ = io::stderr().write_all(text.as_bytes());
            } else {
                // Help goes to stdout, errors to stderr; a closed pipe is not worth a panic.
                let _ = e.print();
            }
            Err(code)
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(msg)) => {
            eprintln!("duolog: {msg}\n\nFor more information, try '--help'.");
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
