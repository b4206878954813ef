//! The command line, declared with clap's derive API: every command, its flags and its help.
//! Value parsers turn bad values into errors that name the flag (clap prefixes them with
//! `invalid value '…' for '--flag <V>'`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;
use duolog::consumer::SqlFilter;
use duolog::{EngineKind, IsolationLevel};

/// Produce to, consume from, inspect and verify duolog stores.
#[derive(Debug, Parser)]
#[command(
    name = "duolog",
    version,
    args_override_self = true,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Appends stdin's lines as messages and prints `<partition> <offset>` per acknowledged one
    ///
    /// Reads lines from stdin (with --keyed: key<TAB>body) and prints `<partition> <offset>`
    /// for each acknowledged message (with --sync: only once it is durable on disk). With
    /// --tombstones a line `key<TAB>` with nothing after the tab is a tombstone (a delete
    /// marker for the key). The topic is created (with --partitions) if it does not exist.
    Produce(ProduceArgs),
    /// Prints records of a partition, or consumes a topic as a member of a group
    ///
    /// Without --group: prints `<offset><TAB><key><TAB><body>` per record of one partition
    /// (`null` as the body of a tombstone), from --from (default: the log start).
    ///
    /// With --group G: consumes every partition of the topic as a member of group G from the
    /// group's committed offsets (the log start where there are none), prints
    /// `<partition><TAB><offset><TAB><key><TAB><body>` per record, and commits exactly what it
    /// printed (after flushing stdout), so a second run prints only what is new. Records that
    /// --filter or --sql leave out are not printed but are committed past all the same.
    Consume(ConsumeArgs),
    /// Creates, alters or deletes a topic, or adds partitions to it
    ///
    /// Config names are Kafka's: cleanup.policy (delete, compact, compact,delete),
    /// retention.ms, retention.bytes (-1: unlimited), segment.bytes, segment.ms,
    /// max.message.bytes, min.compaction.lag.ms, delete.retention.ms.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Lists topics, their partitions and configs
    ///
    /// Prints `<topic><TAB>partitions=N` and the configs the topic sets itself (with --all:
    /// every config with the value that applies; `*` marks the topic's own).
    Topics(TopicsArgs),
    /// Lists consumer groups: committed offset, end offset and lag per partition
    ///
    /// Prints `<group><TAB><topic><TAB><partition><TAB><committed><TAB><end><TAB><lag>` for
    /// every partition a group has committed (`-` as end and lag when the partition no longer
    /// exists).
    Groups(GroupsArgs),
    /// Copies a topic into another exactly once (consume-transform-produce)
    ///
    /// Reads --from read-committed as a member of --group and writes each record to the same
    /// partition of --to (created with as many partitions if missing), the records and the
    /// group's offsets in one transaction per poll: killed at any moment and run again, it
    /// resumes where its last committed transaction ended, and --to holds every record once.
    /// Stops when caught up; prints the number of records copied.
    Copy(CopyArgs),
    /// Runs the log cleaner now and reports what it removed
    Compact(CompactArgs),
    /// Prints partitions, bounds, files and bytes on disk
    Stats(DirArgs),
    /// Checks every checksum and every derived file
    Verify(DirArgs),
    /// Prints `<partition><TAB><offset><TAB><store time><TAB><body>` of records carrying a key
    Query(QueryArgs),
    /// Prints the earliest offset stored at or after a time (ms since the epoch), or `none`
    OffsetForTime(OffsetForTimeArgs),
    /// Drops the key index and rebuilds it from the log
    Reindex(DirArgs),
    /// Prints a segment's .log (batches, records), .index or .timeindex
    Dump {
        /// A segmented-engine file: NNN.log, NNN.index or NNN.timeindex
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell)
    ///
    /// For bash: `duolog completions bash > /etc/bash_completion.d/duolog`, or
    /// `source <(duolog completions bash)`.
    Completions {
        /// The shell to write the script for
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Prints the trace events of a message, by id or by key
    ///
    /// Prints, oldest first, one line per event written by `produce --trace` and
    /// `consume --trace` (or by an application's Tracer):
    /// `<time ms><TAB><type><TAB><id><TAB><group><TAB><key><TAB><tags><TAB><body bytes><TAB><cost µs><TAB><success><TAB><retries>`,
    /// `-` where a field does not apply. Types: Pub (produced; with success=true, stored at
    /// the id's offset), SubBefore (delivered to a consumer of the group), SubAfter (handled).
    /// A message id is `<topic>-<partition>-<offset>`.
    Trace(TraceArgs),
    /// Prints delayed messages still pending, counted by due second: `<due time><TAB><count>`
    ///
    /// Due times are RFC 3339 (UTC) to the second; a last line `total<TAB><count>`. Read-only
    /// as far as the delay layer goes: it only reads the layer's topics (nothing is placed,
    /// delivered or written; delivery is for `consume --follow` and other processes that run
    /// the layer).
    Delayed(DirArgs),
    /// Prints half (transactional) messages not yet committed or rolled back (at most --limit)
    ///
    /// One line each: `<id><TAB><topic><TAB><partition><TAB><checks><TAB><key><TAB><body>`
    /// (id: the half message's id; checks: how many check-backs answered unknown), then
    /// `total<TAB><count>`, preceded by `truncated<TAB><limit>` if more are undecided.
    ///
    /// Not read-only: it opens the half-message layer, which finishes every commit or discard
    /// a crash left in doubt (writing the message to its real topic, or parking it, and its op
    /// record) before listing. It runs no check-back.
    Half(HalfArgs),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["id", "key"]))]
pub struct TraceArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// The message id: TOPIC-PARTITION-OFFSET
    #[arg(long, value_name = "ID", value_parser = message_id, allow_hyphen_values = true)]
    pub id: Option<String>,
    /// The message key
    #[arg(long, value_name = "K", allow_hyphen_values = true)]
    pub key: Option<String>,
    /// The trace topic [default: __trace]
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub trace_topic: Option<String>,
    /// Read at most N trace messages, the newest [default: 1024]
    #[arg(long, value_name = "N", value_parser = number::<usize>)]
    pub max: Option<usize>,
}

fn message_id(id: &str) -> Result<String, String> {
    duolog::consumer::parse_message_id(id)
        .map(|_| id.to_owned())
        .ok_or_else(|| format!("needs TOPIC-PARTITION-OFFSET, not {id:?}"))
}

#[derive(Debug, Args)]
pub struct DirArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct HalfArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// List at most this many half messages (memory and time grow with it)
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The store's directory (created if missing)
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// The engine of a new store (an existing one must match): commitlog or segmented
    #[arg(long, value_name = "ENGINE", value_parser = engine)]
    pub engine: Option<EngineKind>,
    /// The topic
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub topic: String,
    /// Partitions of the topic if it is created here [default: 1]
    #[arg(long, value_name = "N", value_parser = number::<u32>)]
    pub partitions: Option<u32>,
    /// Every line to this partition (default: by key with --keyed, else round robin)
    #[arg(long, value_name = "P", value_parser = number::<u32>)]
    pub partition: Option<u32>,
    /// Lines are key<TAB>body (a line without a tab has no key)
    #[arg(long)]
    pub keyed: bool,
    /// A line `key<TAB>` with nothing after the tab is a tombstone
    #[arg(long, requires = "keyed")]
    pub tombstones: bool,
    /// Acknowledge each line only once it is durable on disk
    #[arg(long)]
    pub sync: bool,
    /// Tags of every message (what `consume --filter` matches)
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub tags: Option<String>,
    /// A property of every message (repeatable; what `consume --sql` reads)
    #[arg(long = "property", value_name = "NAME=VALUE", value_parser = name_value, allow_hyphen_values = true)]
    pub properties: Vec<(String, String)>,
    /// Record a trace event per message (see `duolog trace`)
    #[arg(long)]
    pub trace: bool,
    /// Deliver each line this long after it is produced (the delay layer): 500ms, 30s, 5m,
    /// 2h, 40d. Prints `<partition> <id>@<due ms>` per line instead of an offset; a process
    /// with the delay layer open (`consume --group --follow`) delivers it when due
    #[arg(long, value_name = "DUR", value_parser = delay, conflicts_with = "deliver_at")]
    pub delay: Option<Duration>,
    /// Deliver each line at this time (ms since the epoch), as --delay
    #[arg(long, value_name = "MS", value_parser = number::<i64>)]
    pub deliver_at: Option<i64>,
    /// Write lines in transactions of --txn-size lines each, spread over the topic's
    /// partitions; `<partition> <offset>` is printed for a line only once its transaction is
    /// committed (visible to `consume --isolation read-committed`)
    #[arg(long, conflicts_with_all = ["delay", "deliver_at", "trace"])]
    pub transactional: bool,
    /// Priority 0-9 (9 highest) of every line: the topic is a priority topic (created with
    /// --partitions, default 10) and each line goes to its priority's partition, with the
    /// PRIORITY property (see `consume --priority`)
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u8).range(0..=9),
        conflicts_with_all = ["partition", "transactional", "delay", "deliver_at"]
    )]
    pub priority: Option<u8>,
    /// With --transactional: lines per transaction (the last one may be shorter) [default: 1]
    #[arg(long, value_name = "N", value_parser = positive, requires = "transactional")]
    pub txn_size: Option<u64>,
    /// With --transactional: the transactional id (a new process with the same id fences the
    /// old one and aborts what it left open) [default: duolog-produce-<topic>]
    #[arg(long, value_name = "ID", requires = "transactional")]
    pub transactional_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// The topic
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub topic: String,
    /// The partition to print (without --group)
    #[arg(
        long,
        value_name = "P",
        value_parser = number::<u32>,
        required_unless_present = "group",
        conflicts_with = "group"
    )]
    pub partition: Option<u32>,
    /// The first offset to print (without --group) [default: the log start]
    #[arg(long, value_name = "O", value_parser = number::<u64>, conflicts_with = "group")]
    pub from: Option<u64>,
    /// Print at most N records
    #[arg(long, value_name = "N", value_parser = number::<u64>)]
    pub max: Option<u64>,
    /// Consume every partition of the topic as a member of this group, from its committed
    /// offsets, and commit what was printed
    #[arg(long, value_name = "G", allow_hyphen_values = true)]
    pub group: Option<String>,
    /// Print only records whose tag is one of these: `TagA || TagB` (`*`: every record)
    #[arg(
        long,
        value_name = "EXPR",
        requires = "group",
        conflicts_with_all = ["sql", "partition", "from"],
        allow_hyphen_values = true
    )]
    pub filter: Option<String>,
    /// Print only records whose properties match this SQL92 expression (RocketMQ's grammar;
    /// `TAGS` is the tag): `a > 5 AND TAGS IN ('TagA')`
    #[arg(
        long,
        value_name = "EXPR",
        requires = "group",
        conflicts_with_all = ["partition", "from"],
        value_parser = sql,
        allow_hyphen_values = true
    )]
    pub sql: Option<SqlFilter>,
    /// Consume a priority topic (see `produce --priority`) highest priority first while a
    /// backlog exists; a partition passed over for 10 s is served regardless
    #[arg(long, requires = "group", conflicts_with_all = ["partition", "from"])]
    pub priority: bool,
    /// Keep waiting for new records until none arrived for --idle-exit
    #[arg(long, requires = "group", conflicts_with_all = ["partition", "from"])]
    pub follow: bool,
    /// With --follow: stop after this long without a new record: 500ms, 2s, 5m, 1h [default: 2s]
    #[arg(long, value_name = "DUR", value_parser = duration, requires = "follow")]
    pub idle_exit: Option<Duration>,
    /// Consume orderly (RocketMQ's orderly listener): each partition's records strictly in
    /// offset order under a lease; prints `<partition><TAB><offset><TAB><key><TAB><body>`
    #[arg(
        long,
        requires = "group",
        conflicts_with_all = ["partition", "from", "filter", "sql", "trace"]
    )]
    pub orderly: bool,
    /// Record a trace event per record consumed (see `duolog trace`)
    #[arg(long, requires = "group", conflicts_with_all = ["partition", "from"])]
    pub trace: bool,
    /// read-committed: only records of committed transactions (and non-transactional ones),
    /// below the last stable offset; read-uncommitted: everything written
    #[arg(long, value_name = "LEVEL", value_parser = isolation, default_value = "read-committed")]
    pub isolation: IsolationLevel,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Creates a topic
    Create {
        /// The store's directory (created if missing)
        #[arg(long, value_name = "D")]
        dir: PathBuf,
        /// The engine of a new store (an existing one must match): commitlog or segmented
        #[arg(long, value_name = "ENGINE", value_parser = engine)]
        engine: Option<EngineKind>,
        /// The topic
        #[arg(long, value_name = "T", allow_hyphen_values = true)]
        topic: String,
        /// Its partitions [default: 1]
        #[arg(long, value_name = "N", value_parser = number::<u32>)]
        partitions: Option<u32>,
        /// A config (repeatable)
        #[arg(long = "config", value_name = "NAME=VALUE", value_parser = name_value, allow_hyphen_values = true)]
        configs: Vec<(String, String)>,
    },
    /// Changes a topic's configs
    Alter {
        /// The store's directory
        #[arg(long, value_name = "D")]
        dir: PathBuf,
        /// The topic
        #[arg(long, value_name = "T", allow_hyphen_values = true)]
        topic: String,
        /// A config to set (repeatable)
        #[arg(long = "config", value_name = "NAME=VALUE", value_parser = name_value, allow_hyphen_values = true)]
        configs: Vec<(String, String)>,
        /// A config to remove: the store's default applies again (repeatable)
        #[arg(
            long = "delete-config",
            value_name = "NAME",
            allow_hyphen_values = true
        )]
        delete_configs: Vec<String>,
    },
    /// Deletes a topic and its data
    Delete {
        /// The store's directory
        #[arg(long, value_name = "D")]
        dir: PathBuf,
        /// The topic
        #[arg(long, value_name = "T", allow_hyphen_values = true)]
        topic: String,
    },
    /// Adds N partitions to a topic
    AddPartitions {
        /// The store's directory
        #[arg(long, value_name = "D")]
        dir: PathBuf,
        /// The topic
        #[arg(long, value_name = "T", allow_hyphen_values = true)]
        topic: String,
        /// How many partitions to add
        #[arg(long, value_name = "N", value_parser = number::<u32>)]
        count: u32,
    },
}

#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// Every config, with the value that applies (`*` marks the topic's own)
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// The topic to read
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub from: String,
    /// The topic to write
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub to: String,
    /// The consumer group whose offsets track the copy
    #[arg(long, value_name = "G", allow_hyphen_values = true)]
    pub group: String,
    /// The transactional id [default: duolog-copy-<group>]
    #[arg(long, value_name = "ID")]
    pub transactional_id: Option<String>,
    /// Records per transaction at most [default: 100]
    #[arg(long, value_name = "N", value_parser = positive)]
    pub batch: Option<u64>,
}

#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// Only this group
    #[arg(long, value_name = "G", allow_hyphen_values = true)]
    pub group: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// Only this topic [default: every compacted topic]
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// The topic
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub topic: String,
    /// The key
    #[arg(long, value_name = "K", allow_hyphen_values = true)]
    pub key: String,
    /// Stored at or after this time (ms since the epoch)
    #[arg(long, value_name = "MS", value_parser = number::<i64>, allow_hyphen_values = true)]
    pub from: Option<i64>,
    /// Stored at or before this time (ms since the epoch)
    #[arg(long, value_name = "MS", value_parser = number::<i64>, allow_hyphen_values = true)]
    pub to: Option<i64>,
    /// At most N records [default: 64]
    #[arg(long, value_name = "N", value_parser = number::<usize>)]
    pub max: Option<usize>,
}

#[derive(Debug, Args)]
pub struct OffsetForTimeArgs {
    /// The store's directory
    #[arg(long, value_name = "D")]
    pub dir: PathBuf,
    /// The topic
    #[arg(long, value_name = "T", allow_hyphen_values = true)]
    pub topic: String,
    /// The partition
    #[arg(long, value_name = "P", value_parser = number::<u32>)]
    pub partition: u32,
    /// The time, in ms since the epoch
    #[arg(long, value_name = "MS", value_parser = number::<i64>, allow_hyphen_values = true)]
    pub time: i64,
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse::<T>()
        .map_err(|_| format!("needs a number, not {v:?}"))
}

fn positive(v: &str) -> Result<u64, String> {
    match number::<u64>(v)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

fn isolation(v: &str) -> Result<IsolationLevel, String> {
    match v {
        "read-committed" | "read_committed" => Ok(IsolationLevel::ReadCommitted),
        "read-uncommitted" | "read_uncommitted" => Ok(IsolationLevel::ReadUncommitted),
        _ => Err(format!(
            "{v:?}: expected read-committed or read-uncommitted"
        )),
    }
}

fn engine(name: &str) -> Result<EngineKind, String> {
    EngineKind::from_name(name)
        .ok_or_else(|| format!("unknown engine {name:?} (commitlog or segmented)"))
}

fn name_value(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("needs NAME=VALUE, not {pair:?}")),
    }
}

fn sql(expr: &str) -> Result<SqlFilter, String> {
    SqlFilter::parse(expr).map_err(|e| format!("bad SQL expression {e}"))
}

/// `500ms`, `2s`, `5m`, `1h` (a whole number and a unit).
pub fn duration(v: &str) -> Result<Duration, String> {
    let bad = || format!("needs a duration such as 500ms, 2s, 5m or 1h, not {v:?}");
    let split = v.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

/// A delay: as [`duration`], and also in days (`40d`).
pub fn delay(v: &str) -> Result<Duration, String> {
    let bad = || format!("needs a delay such as 500ms, 30s, 5m, 2h or 40d, not {v:?}");
    if let Some(days) = v.strip_suffix('d') {
        let n: u64 = days.parse().map_err(|_| bad())?;
        return n
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(bad);
    }
    duration(v).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "2", "s", "2x", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn delays_take_days_too() {
        assert_eq!(delay("40d"), Ok(Duration::from_secs(40 * 86_400)));
        assert_eq!(delay("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["d", "-1d", "1.5d", "99999999999999999999d", "2x"] {
            assert!(delay(bad).is_err(), "{bad}");
        }
    }
}
