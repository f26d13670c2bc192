//! Numbers as people read them, the same in every line, table and page: byte sizes,
//! durations and counts. A leaf: it depends on nothing of pipe's.

/// `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `12.0s`, `3.4 min`, `2.1 h`.
pub fn secs(s: f64) -> String {
    if s >= 5400.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 90.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1}s")
    }
}

/// `950`, `12.3k`, `4.56M`, `1.20G`.
pub fn count(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_times_and_counts_read_as_people_write_them() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(9_542_041), "9.1 MiB");
        assert_eq!(super::bytes(3 << 30), "3.0 GiB");
        assert_eq!(super::secs(4.25), "4.2s");
        assert_eq!(super::secs(204.0), "3.4 min");
        assert_eq!(super::secs(7560.0), "2.1 h");
        assert_eq!(super::count(950), "950");
        assert_eq!(super::count(12_345), "12.3k");
        assert_eq!(super::count(4_560_000), "4.56M");
    }
}
