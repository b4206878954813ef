//! How much of this test process is resident: the whole (`VmRSS`) or the mappings of some files
//! (`Rss:` of the `/proc/self/smaps` entries whose path contains a needle).

/// Bytes of this process resident now.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Bytes resident in the mappings whose path contains `needle`.
pub fn resident_of(needle: &str) -> u64 {
    resident_where(|path| path.contains(needle))
}

/// Bytes resident in the mappings of files under `dir` whose name ends with `suffix` (tests
/// of one binary run at once: a needle without the directory counts the others' files too).
pub fn resident_in(dir: &std::path::Path, suffix: &str) -> u64 {
    let dir = format!("{}/", dir.display());
    resident_where(|path| {
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        path.contains(&dir) && path.ends_with(suffix)
    })
}

fn resident_where(wanted: impl Fn(&str) -> bool) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header line: its path is the last field.
            inside = wanted(line);
        } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap();
            total += kb * 1024;
        }
    }
    total
}
