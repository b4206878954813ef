//! The transaction log's record: what the coordinator knows of one transactional id, written to
//! the internal compacted topic [`TXN_LOG_TOPIC`] keyed by that id (Kafka's
//! `TransactionLogValue`). The codec is pure (bytes in, values out); the layout is drawn in
//! docs/format.md. The engine checksums every record, so the codec adds no checksum of its own,
//! but it refuses anything malformed with an error naming the problem, never a panic.

use std::collections::BTreeSet;

/// The internal topic holding the transaction log (Kafka's `__transaction_state`), compacted and
/// keyed by transactional id, so it stays bounded by the number of transactional ids.
///
/// ```
/// # use std::sync::Arc;
/// # use duolog::{CleanupPolicy, LogStore, StoreOptions};
/// use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TXN_LOG_TOPIC};
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// let _coordinator = TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())?;
/// assert_eq!(store.describe_topic(TXN_LOG_TOPIC)?.cleanup_policy, CleanupPolicy::Compact);
/// # Ok(()) }
/// ```
pub const TXN_LOG_TOPIC: &str = "__transaction_state";

/// Partitions of [`TXN_LOG_TOPIC`] (Kafka has 50; a transactional id always maps to the same one,
/// by the key partitioner).
pub const TXN_LOG_PARTITIONS: u32 = 4;

/// `segment.bytes` of [`TXN_LOG_TOPIC`]: small, so the cleaner keeps it near one record per id.
pub const TXN_LOG_SEGMENT_BYTES: u64 = 64 * 1024;

/// The first byte of a transaction log value.
const VERSION: u8 = 1;

/// Where a transactional id's transaction stands (Kafka's `TransactionState`).
///
/// ```
/// use duolog::txn::TxnState;
/// assert!(TxnState::CompleteCommit.is_idle());
/// assert!(!TxnState::PrepareCommit.is_idle(), "a decided commit still has markers to send");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnState {
    /// No transaction yet under the current epoch.
    Empty,
    /// A transaction is open: partitions are enrolled, data may be written.
    Ongoing,
    /// The commit is decided (durably): markers go out, and recovery finishes them.
    PrepareCommit,
    /// The abort is decided: markers go out, and recovery finishes them.
    PrepareAbort,
    /// Every partition has its commit marker.
    CompleteCommit,
    /// Every partition has its abort marker.
    CompleteAbort,
}

impl TxnState {
    fn code(self) -> u8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            _ => return None,
        })
    }

    /// Whether no transaction is in progress (a new one may begin).
    pub fn is_idle(self) -> bool {
        matches!(
            self,
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
        )
    }
}

/// One transaction log record's value: a transactional id's whole state.
///
/// ```
/// use duolog::txn::{TxnLogEntry, TxnState};
/// let mut entry = TxnLogEntry {
///     transactional_id: "payments".into(),
///     producer_id: 7,
///     epoch: 2,
///     state: TxnState::Ongoing,
///     timeout_ms: 60_000,
///     txn_start_ms: 1_700_000_000_000,
///     last_update_ms: 1_700_000_000_100,
///     ..TxnLogEntry::default()
/// };
/// entry.partitions.insert(("orders".into(), 3));
/// let bytes = entry.encode();
/// assert_eq!(TxnLogEntry::decode(&bytes).unwrap(), entry);
/// assert!(TxnLogEntry::decode(&bytes[..bytes.len() - 1]).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnLogEntry {
    /// The transactional id (also the record's key).
    pub transactional_id: String,
    /// The producer id it maps to.
    pub producer_id: i64,
    /// The producer epoch: the newest instance's (or the one a timeout abort fenced with).
    pub epoch: i16,
    /// The transaction's state.
    pub state: TxnState,
    /// Partitions enrolled in the current (or last) transaction: every partition that may
    /// hold its data (enrolled durably before the first write to it).
    pub partitions: BTreeSet<(String, u32)>,
    /// The transaction timeout, in milliseconds.
    pub timeout_ms: u32,
    /// When the current transaction began (ms since the epoch; −1 when none).
    pub txn_start_ms: i64,
    /// When this state was written (ms since the epoch).
    pub last_update_ms: i64,
}

impl Default for TxnLogEntry {
    fn default() -> Self {
        TxnLogEntry {
            transactional_id: String::new(),
            producer_id: -1,
            epoch: 0,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            timeout_ms: 60_000,
            txn_start_ms: -1,
            last_update_ms: 0,
        }
    }
}

fn take<'a>(buf: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], String> {
    let end = at
        .checked_add(n)
        .filter(|&e| e <= buf.len())
        .ok_or_else(|| format!("truncated at byte {at}"))?;
    let s = &buf[*at..end];
    *at = end;
    Ok(s)
}

fn take_array<const N: usize>(buf: &[u8], at: &mut usize) -> Result<[u8; N], String> {
    let s = take(buf, at, N)?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Ok(a)
}

fn take_str(buf: &[u8], at: &mut usize) -> Result<String, String> {
    let len = u16::from_be_bytes(take_array(buf, at)?);
    let s = take(buf, at, usize::from(len))?;
    std::str::from_utf8(s)
        .map(str::to_owned)
        .map_err(|_| "a name is not UTF-8".to_owned())
}

impl TxnLogEntry {
    /// Encodes the value (big-endian throughout): `version u8 = 1`, `id_len u16, id`,
    /// `producer_id i64`, `epoch i16`, `state u8`, `timeout_ms u32`, `txn_start_ms i64`,
    /// `last_update_ms i64`, `partitions u32`, then per partition (sorted) `topic_len u16,
    /// topic, partition u32`. Names longer than 65,535 bytes are refused before they get here
    /// (topic names and transactional ids are at most 255 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.partitions.len() * 16);
        out.push(VERSION);
        let put_str = |out: &mut Vec<u8>, s: &str| {
            let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
        };
        put_str(&mut out, &self.transactional_id);
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.push(self.state.code());
        out.extend_from_slice(&self.timeout_ms.to_be_bytes());
        out.extend_from_slice(&self.txn_start_ms.to_be_bytes());
        out.extend_from_slice(&self.last_update_ms.to_be_bytes());
        let n = u32::try_from(self.partitions.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for (topic, p) in &self.partitions {
            put_str(&mut out, topic);
            out.extend_from_slice(&p.to_be_bytes());
        }
        out
    }

    /// Decodes [`encode`](Self::encode)'s bytes. Never panics: an unknown version or state,
    /// truncation, trailing bytes, a negative producer id or epoch, or a name that is not UTF-8
    /// is an error naming the problem.
    pub fn decode(bytes: &[u8]) -> Result<TxnLogEntry, String> {
        let mut at = 0;
        let [version] = take_array(bytes, &mut at)?;
        if version != VERSION {
            return Err(format!("unknown transaction log version {version}"));
        }
        let transactional_id = take_str(bytes, &mut at)?;
        let producer_id = i64::from_be_bytes(take_array(bytes, &mut at)?);
        let epoch = i16::from_be_bytes(take_array(bytes, &mut at)?);
        if producer_id < 0 || epoch < 0 {
            return Err(format!("producer {producer_id} epoch {epoch} is negative"));
        }
        let [code] = take_array(bytes, &mut at)?;
        let state = TxnState::from_code(code).ok_or_else(|| format!("unknown state {code}"))?;
        let timeout_ms = u32::from_be_bytes(take_array(bytes, &mut at)?);
        let txn_start_ms = i64::from_be_bytes(take_array(bytes, &mut at)?);
        let last_update_ms = i64::from_be_bytes(take_array(bytes, &mut at)?);
        let n = u32::from_be_bytes(take_array(bytes, &mut at)?);
        let mut partitions = BTreeSet::new();
        for _ in 0..n {
            let topic = take_str(bytes, &mut at)?;
            let p = u32::from_be_bytes(take_array(bytes, &mut at)?);
            if !partitions.insert((topic, p)) {
                return Err("a partition is listed twice".into());
            }
        }
        if at != bytes.len() {
            return Err(format!("{} trailing bytes", bytes.len() - at));
        }
        Ok(TxnLogEntry {
            transactional_id,
            producer_id,
            epoch,
            state,
            partitions,
            timeout_ms,
            txn_start_ms,
            last_update_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> TxnLogEntry {
        let mut e = TxnLogEntry {
            transactional_id: "tx".into(),
            producer_id: 1000,
            epoch: 3,
            state: TxnState::PrepareCommit,
            timeout_ms: 60_000,
            txn_start_ms: 5,
            last_update_ms: 6,
            ..TxnLogEntry::default()
        };
        e.partitions.insert(("a".into(), 0));
        e.partitions.insert(("__consumer_offsets".into(), 0));
        e
    }

    #[test]
    fn every_state_round_trips() {
        for code in 0..6 {
            let e = TxnLogEntry {
                state: TxnState::from_code(code).unwrap(),
                ..entry()
            };
            assert_eq!(TxnLogEntry::decode(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn damage_is_named_not_a_panic() {
        let bytes = entry().encode();
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(TxnLogEntry::decode(&bad).unwrap_err().contains("version"));
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(
            TxnLogEntry::decode(&extra)
                .unwrap_err()
                .contains("trailing")
        );
        for cut in 0..bytes.len() {
            assert!(TxnLogEntry::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // state byte: after version, id (2 + 2), pid (8), epoch (2)
        let mut state = bytes.clone();
        state[1 + 2 + 2 + 8 + 2] = 77;
        assert!(TxnLogEntry::decode(&state).unwrap_err().contains("state"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = TxnLogEntry::decode(&bytes);
            let mut versioned = vec![VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = TxnLogEntry::decode(&versioned);
        }
    }
}
