//! Byte sizes: parsing `512MiB`/`4GiB`/`1.5G`, printing them, and reading
//! the machine's available memory and the process's peak RSS.

use std::path::Path;

/// Parses a size such as `0`, `4096`, `512MiB`, `4GiB`, `1.5GB`, `800M`.
/// Binary (`KiB`, `MiB`, `GiB`, `TiB`) and decimal (`KB`, `MB`, `GB`, `TB`) units;
/// a bare `K`/`M`/`G`/`T` is binary.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MiB, 4GiB, 0)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Formats a byte count with a binary unit (`1.50 GiB`).
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", units[i])
    }
}

/// Memory this process may use, in bytes: `MemAvailable` from
/// `/proc/meminfo`, lowered to the memory limit of the process's cgroup (v1
/// or v2, the smallest along its ancestry) when that is smaller; `None` when
/// neither is readable.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        });
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| cgroup_limit(&text, Path::new("/sys/fs/cgroup")));
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The smallest memory limit on the path of the cgroups named in
/// `proc_self_cgroup` (the text of `/proc/self/cgroup`), under the cgroup
/// file systems mounted at `root`: v2 `memory.max` (`root/PATH`) and v1
/// `memory.limit_in_bytes` (`root/memory/PATH`). `None` when there is no limit.
fn cgroup_limit(proc_self_cgroup: &str, root: &Path) -> Option<u64> {
    let mut best: Option<u64> = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = Some(Path::new(path.trim_start_matches('/')));
        while let Some(d) = dir {
            let limit = std::fs::read_to_string(base.join(d).join(file))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if let Some(l) = limit {
                best = Some(best.map_or(l, |b| b.min(l)));
            }
            dir = d.parent();
        }
    }
    best
}

/// The process's peak resident set size (`VmHWM`), in bytes, if readable.
pub fn peak_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size(" 8 KiB "), Ok(8192));
        assert_eq!(
            parse_size("lots"),
            Err(r#""lots" is not a size (e.g. 512MiB, 4GiB, 0)"#.into())
        );
        assert_eq!(
            parse_size("5 parsecs"),
            Err(r#"unknown size unit "parsecs" in "5 parsecs""#.into())
        );
        assert_eq!(human(1536), "1.50 KiB");
        assert_eq!(human(10), "10 B");
    }

    #[test]
    fn cgroup_limits_v1_and_v2() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("memory/a/b")).unwrap();
        std::fs::write(r.join("memory/a/memory.limit_in_bytes"), "4294967296\n").unwrap();
        std::fs::write(
            r.join("memory/a/b/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("c")).unwrap();
        std::fs::write(r.join("c/memory.max"), "max\n").unwrap();
        let v1 = "4:memory:/a/b\n0::/c\n";
        assert_eq!(cgroup_limit(v1, r), Some(4 << 30));
        std::fs::write(r.join("c/memory.max"), "2147483648\n").unwrap();
        assert_eq!(cgroup_limit(v1, r), Some(2 << 30));
        assert_eq!(cgroup_limit("3:cpu:/a\n", r), None);
        assert_eq!(cgroup_limit("garbage", r), None);
    }
}
